"""The Allocate page's edit state machine as pure transitions (``mixviz.allocation.editing``):
propose → applied or refused, a refused edit applied at its budget, undo / redo / reset with
their budgets, the slider's range, and the grid's clicks gathered."""

from __future__ import annotations

import doctest

import pytest

import mixviz.allocation.editing
from mixviz import MixvizError
from mixviz.allocation.editing import BudgetRange, EditState, Picks, Refusal
from mixviz.allocation.edits import History, lock, select
from mixviz.allocation.problem import Problem
from mixviz.sensitivity.synthetic import synthetic_profile

SHAPES = {
    "self_attn.q_proj": (64, 64), "self_attn.k_proj": (64, 32), "self_attn.v_proj": (64, 32),
    "self_attn.o_proj": (64, 64), "mlp.gate_proj": (64, 128), "mlp.up_proj": (64, 128),
    "mlp.down_proj": (128, 64),
}  # fmt: skip


@pytest.fixture(scope="module")
def prof():
    return synthetic_profile(SHAPES, 4, ["MXFP4", "MXFP8"], seed=3, model="tiny")


@pytest.fixture(scope="module")
def feasible(prof):
    """locks → their feasible average bits, as the page asks the problem (no scale bits)."""

    def feasible(locks, shared=()):
        p = Problem.from_profile(prof, ignore_scale_bits=True, pins=dict(locks), shared=shared)
        return p.feasible_range()

    return feasible


def test_doctests():
    assert doctest.testmod(mixviz.allocation.editing).failed == 0


def test_an_edit_the_budget_holds_goes_through(prof, feasible):
    downs = select(prof.layers, kinds=["down"])
    state = EditState().propose(lock({}, downs, "MXFP8"), 6.0, "Setting 4 layers", feasible)
    assert state.locks == dict.fromkeys(downs, "MXFP8")
    assert state.refused is None and state.refusals == 0
    assert state.history.budget == 6.0 and state.history.can_undo


def test_an_edit_beyond_the_budget_is_refused_and_changes_nothing(prof, feasible):
    """tiny's shape: 3 of 4 equal blocks at BF16 need 13–14 bits; 5 cannot hold them."""
    rows = select(prof.layers, blocks=[0, 1, 2])
    start = EditState()
    state = start.propose(lock({}, rows, "BF16"), 5.0, "Setting 21 layers to BF16", feasible)
    assert state.history == start.history and state.locks == {}
    assert state.refused == Refusal(
        "Setting 21 layers to BF16 needs an average of 13.00–14.00 bits; the budget is 5 bits. "
        "Nothing was changed.",
        lock({}, rows, "BF16"),
        13.0,  # the nearest budget the slider offers
    )
    assert state.refusals == 1  # a widget keyed by it (the lock table) starts afresh
    moved = state.apply_refused()
    assert len(moved.locks) == 21 and moved.history.budget == 13.0
    assert moved.refused is None and moved.refusals == 1
    # every layer locked: the range collapses to one value, which is the budget it applies at
    every = lock(moved.locks, select(prof.layers, blocks=[3]), "BF16")
    full = moved.propose(every, 13.0, "Setting 7 layers to BF16", feasible)
    assert "needs an average of 16.00 bits" in full.refused.message
    assert full.apply_refused().history.budget == 16.0


def test_undo_redo_reset_bring_their_budgets_back(prof, feasible):
    rows = lock({}, select(prof.layers, blocks=[0, 1, 2]), "BF16")
    state = EditState().at_budget(5.0).propose(rows, 5.0, "x", feasible).apply_refused()
    assert state.history.budget == 13.0
    assert state.undo().locks == {} and state.undo().history.budget == 5.0
    assert state.undo().redo().locks == rows
    reset = state.reset()
    assert reset.locks == {} and reset.history.budget == 5.0 and reset.history.can_undo
    assert reset.undo().locks == rows  # a reset is an undoable step


def test_a_transition_forgets_the_last_refusal(prof, feasible):
    refused = EditState().propose({"no.such.layer": "BF16"}, 5.0, "x", lambda locks: (9.0, 9.0))
    assert refused.refused is not None
    assert refused.undo().refused is None and refused.reset().refused is None
    assert refused.at_budget(6.0).refused == refused.refused  # the slider alone does not


def test_a_problem_the_locks_make_impossible_is_refused_with_its_reason(prof, feasible):
    q = "model.layers.0.self_attn.q_proj"
    k = "model.layers.0.self_attn.k_proj"

    def shared_qkv(locks):
        return feasible(locks, shared=["qkv"])

    state = EditState().propose({q: "MXFP8", k: "MXFP4"}, 6.0, "Locking 2 layers", shared_qkv)
    assert state.refused.message.startswith("Locking 2 layers: ")
    assert state.refused.message.endswith(". Nothing was changed.")
    assert state.refused.locks is None and state.apply_refused() == state  # nothing to apply
    with pytest.raises(MixvizError):
        shared_qkv({q: "MXFP8", k: "MXFP4"})


def test_the_slider_moving_keeps_the_edits():
    h = History().push({"a": "BF16"}, 9.0)
    state = EditState(h).at_budget(9.5)
    assert state.locks == {"a": "BF16"} and state.history.budget == 9.5
    assert state.at_budget(9.5) == state


@pytest.mark.parametrize(
    "lo, hi, ends, fixed",
    [
        (4.0, 8.0, (4.0, 8.0), False),
        (4.123, 7.987, (4.13, 7.98), False),  # inside the feasible range, at 0.01 steps
        (16.0, 16.0, (16.0, 16.0), True),  # one value: the range's own
    ],
)
def test_budget_range(lo, hi, ends, fixed):
    r = BudgetRange(lo, hi)
    assert r.ends == ends and r.fixed is fixed
    assert r.holds(r.nearest(-1.0)) and r.holds(r.nearest(99.0))
    assert not r.holds(max(ends) + 0.02)
    assert r.nearest(99.0) == (hi if fixed else ends[1])


def test_grid_clicks_add_up():
    p = Picks().add([], [1])  # a row
    p = p.add(["c"], [])  # then a cell: both are picked
    assert (p.names, p.rows) == (("c",), (1,))
    assert p.add(["c"], []) == p  # the grid reporting the same selection again adds nothing
    assert Picks().add(["a", "a"], []).names == ("a",)


def test_one_feasible_range_in_the_message_the_slider_and_the_fix():
    """A refused lock said "needs 4.26–8.25 bits … Raise the budget to 4.27" and the slider
    stopped at 8.24 under a stated 8.25: the message, the slider's ends and the fix now agree,
    and every budget they name is feasible."""
    lo, hi = 4.2612, 8.25
    state = EditState().propose({"a": "BF16"}, 4.0, "Setting 1 layer", lambda locks: (lo, hi))
    span = BudgetRange(lo, hi)
    assert span.ends == (4.27, 8.25) and lo <= span.ends[0] and span.ends[1] <= hi
    assert "needs an average of 4.27–8.25 bits" in state.refused.message
    assert state.refused.budget == 4.27 == span.nearest(4.0)
    assert span.holds(8.25) and not span.holds(4.26)

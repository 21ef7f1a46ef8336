"""Hand edits: selection (cells, rows, columns, fused groups), locks, re-solve cost, undo/redo,
locks in the recipe, and the CLI's --pin-kind / --pin-block."""

from __future__ import annotations

import doctest
import json

import pytest
from cli import run_cli

import mixviz.allocation.edits
from mixviz import MixvizError
from mixviz.allocation.edits import History, edit_cost, lock, parse_pins, select, unlock
from mixviz.allocation.problem import Problem
from mixviz.allocation.strategies import allocate
from mixviz.report.recipe import Recipe
from mixviz.sensitivity.synthetic import synthetic_profile

SHAPES = {
    "self_attn.q_proj": (64, 64), "self_attn.k_proj": (64, 32), "self_attn.v_proj": (64, 32),
    "self_attn.o_proj": (64, 64), "mlp.gate_proj": (64, 128), "mlp.up_proj": (64, 128),
    "mlp.down_proj": (128, 64),
}  # fmt: skip
OPTIONS = ["MXFP4", "MXFP8"]


@pytest.fixture(scope="module")
def prof():
    return synthetic_profile(SHAPES, 6, OPTIONS, seed=3, model="tiny")


def name(b: int, rel: str) -> str:
    return f"model.layers.{b}.{rel}"


def test_doctests():
    assert doctest.testmod(mixviz.allocation.edits).failed == 0


def test_select_cells_rows_columns_and_fused_groups(prof):
    assert select(prof.layers, names=[name(2, "mlp.up_proj")]) == [name(2, "mlp.up_proj")]
    row = select(prof.layers, blocks=[1])
    assert len(row) == 7 and all(".1." in n for n in row)
    col = select(prof.layers, kinds=["down_proj"])
    assert col == [name(b, "mlp.down_proj") for b in range(6)]
    assert len(select(prof.layers, blocks=[1], kinds=["down"])) == 7 + 5  # union
    fused = select(prof.layers, names=[name(0, "self_attn.k_proj")], fused=["qkv", "gate_up"])
    assert fused == [name(0, f"self_attn.{k}_proj") for k in "qkv"]
    assert select(prof.layers, names=[name(0, "mlp.up_proj")], fused=["qkv"]) == [
        name(0, "mlp.up_proj")
    ]
    with pytest.raises(MixvizError, match="block 9 does not exist; this model has blocks 0–5"):
        select(prof.layers, blocks=[9])
    with pytest.raises(MixvizError, match="unknown module kind 'ffn'"):
        select(prof.layers, kinds=["ffn"])
    with pytest.raises(MixvizError, match="no block linear named"):
        select(prof.layers, names=["model.layers.0.mlp.nope"])


def _recipe_bytes(prof, free, h: History, budget: float) -> bytes:
    """The recipe as the Allocate page downloads it for the history's current locks."""
    locked = Problem.from_profile(prof, ignore_scale_bits=True, pins=h.current)
    best = edit_cost(free, locked, budget).after
    recipe = Recipe.from_allocation(best, "tiny", "h", sorted(h.current))
    return json.dumps(recipe.to_dict(), indent=2).encode()


def test_lock_resolve_cost_and_undo_restores_the_recipe_exactly(prof):
    free = Problem.from_profile(prof, ignore_scale_bits=True)
    budget = 5.0
    h = History()
    # recorded before any edit: the bytes undo must give back
    before = _recipe_bytes(prof, free, h, budget)
    assert json.loads(before)["layers"] == allocate(free, budget).layers
    assert "locks" not in json.loads(before)["provenance"]

    # lock every down_proj to MXFP8: the rest must give bits back at the same budget
    downs = select(prof.layers, kinds=["down"])
    h = h.push(lock(h.current, downs, "mxfp8"))
    assert h.current == dict.fromkeys(downs, "MXFP8")
    locked = Problem.from_profile(prof, ignore_scale_bits=True, pins=h.current)
    c = edit_cost(free, locked, budget)
    assert all(c.after.layers[n] == "MXFP8" for n in downs)
    assert c.after.avg_bits_no_scale <= budget + 1e-9
    assert c.after.predicted_loss >= c.before.predicted_loss - 1e-12
    assert c.locked == tuple(sorted(downs))
    assert c.changed and not set(c.changed) & set(downs)
    assert set(c.gave_back) <= set(c.changed)
    assert all(c.after.layers[n] == "MXFP4" for n in c.gave_back)
    recipe1 = Recipe.from_allocation(c.after, "tiny", "h", sorted(h.current)).to_dict()
    assert recipe1["provenance"]["locks"] == sorted(downs)
    assert recipe1["provenance"]["pins"] == h.current

    locked_bytes = _recipe_bytes(prof, free, h, budget)
    assert locked_bytes != before

    # unlock one, then undo twice: back to the recipe recorded before the edits, byte for byte
    h = h.push(unlock(h.current, downs[:1]))
    assert len(h.current) == len(downs) - 1
    assert _recipe_bytes(prof, free, h, budget) not in (before, locked_bytes)
    h = h.undo()
    assert _recipe_bytes(prof, free, h, budget) == locked_bytes
    h = h.undo()
    assert _recipe_bytes(prof, free, h, budget) == before
    assert not h.can_undo and h.can_redo
    h = h.redo()
    assert h.current == dict.fromkeys(downs, "MXFP8")
    h = h.reset()
    assert h.current == {} and h.undo().current == dict.fromkeys(downs, "MXFP8")
    assert h.push({}) is h  # an edit that changes nothing is not a step


def test_locks_that_do_not_fit_the_budget_say_so(prof):
    free = Problem.from_profile(prof, ignore_scale_bits=True)
    locked = Problem.from_profile(
        prof, ignore_scale_bits=True, pins=lock({}, select(prof.layers, blocks=range(6)), "MXFP8")
    )
    with pytest.raises(MixvizError, match=r"the locks need an average between 8\.000"):
        edit_cost(free, locked, 5.0)


def test_parse_pins_precedence_and_errors(prof):
    p = parse_pins(
        prof.layers,
        pins=[f"{name(0, 'mlp.down_proj')}=MXFP4"],
        kinds=["down=MXFP8"],
        blocks=["0=BF16"],
    )
    assert p[name(0, "mlp.down_proj")] == "MXFP4"  # --pin beats --pin-block
    assert p[name(0, "self_attn.q_proj")] == "BF16"  # --pin-block beats --pin-kind
    assert p[name(3, "mlp.down_proj")] == "MXFP8"
    assert len(p) == 7 + 5
    for kwargs, msg in [
        ({"kinds": ["down"]}, "--pin-kind takes KIND=OPTION"),
        ({"blocks": ["x=MXFP8"]}, "--pin-block takes a block number"),
        ({"blocks": ["7=MXFP8"]}, "block 7 does not exist"),
        ({"kinds": ["down=FP3"]}, "FP3"),
    ]:
        with pytest.raises(MixvizError, match=msg):
            parse_pins(prof.layers, **kwargs)


def test_cli_pin_kind_and_block(prof, tmp_path):
    path = tmp_path / "profile.json"
    prof.save(path)
    r = run_cli(
        "allocate",
        path,
        "--avg-bits",
        "5.5",
        "--ignore-scale-bits",
        "--pin-kind",
        "down=MXFP8",
        "--pin-block",
        "0=MXFP8",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert all(doc["layers"][name(b, "mlp.down_proj")] == "MXFP8" for b in range(6))
    assert all(o == "MXFP8" for n, o in doc["layers"].items() if ".0." in n)
    assert doc["avg_bits_no_scale"] <= 5.5 and len(doc["pins"]) == 12
    bad = run_cli("allocate", path, "--avg-bits", "5", "--pin-kind", "ffn=MXFP8")
    assert bad.returncode == 2 and "unknown module kind 'ffn'" in bad.stderr
    assert "Traceback" not in bad.stderr

"""Allocator: exact (vs brute force, HiGHS, auto-round's DP), budgets, baselines, pins, groups."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
from cli import run_cli
from milp import solve_milp

from mixviz import MixvizError
from mixviz.allocation.baselines import llamacpp_more_bits
from mixviz.allocation.knapsack import solve_mckp
from mixviz.allocation.problem import Problem
from mixviz.allocation.strategies import allocate, frontier
from mixviz.sensitivity.synthetic import synthetic_profile

REPO = Path(__file__).resolve().parents[2]
LLAMA_SHAPES = {
    "self_attn.q_proj": (64, 64), "self_attn.k_proj": (64, 32), "self_attn.v_proj": (64, 32),
    "self_attn.o_proj": (64, 64), "mlp.gate_proj": (64, 128), "mlp.up_proj": (64, 128),
    "mlp.down_proj": (128, 64),
}  # fmt: skip


def _random_case(rng: random.Random, units: int, options: int):
    cost, score = [], []
    for _ in range(units):
        pts = sorted({(rng.randint(1, 60), rng.random()) for _ in range(options)})
        c, s, best = [], [], float("inf")
        for pc, ps in pts:  # keep them Pareto-sorted, as the solver expects
            if ps < best and (not c or pc > c[-1]):
                c.append(pc)
                s.append(ps)
                best = ps
        cost.append(c)
        score.append(s)
    return cost, score


def _objective(score, pick):
    return sum(score[u][j] for u, j in enumerate(pick))


def test_exact_against_brute_force():
    rng = random.Random(0)
    for _ in range(300):
        cost, score = _random_case(rng, rng.randint(1, 6), rng.randint(1, 4))
        lo, hi = sum(c[0] for c in cost), sum(c[-1] for c in cost)
        budget = rng.randint(lo, hi)
        best = min(
            (
                _objective(score, p)
                for p in itertools.product(*[range(len(c)) for c in cost])
                if sum(cost[u][j] for u, j in enumerate(p)) <= budget
            ),
        )
        pick = solve_mckp(cost, score, budget)
        assert sum(cost[u][j] for u, j in enumerate(pick)) <= budget
        assert _objective(score, pick) == pytest.approx(best, rel=1e-12, abs=1e-12)
    assert solve_mckp([[5]], [[1.0]], 4) is None


def test_exact_against_autoround_dp_and_highs():
    from auto_round.auto_scheme.delta_loss import choose_bits_per_layer_with_path

    rng = random.Random(1)
    for _ in range(20):
        cost, score = _random_case(rng, 40, 4)
        budget = (sum(c[0] for c in cost) + sum(c[-1] for c in cost)) // 2
        layers = {
            f"l{u}": [(j, cost[u][j], score[u][j], [f"l{u}"]) for j in range(len(cost[u]))]
            for u in range(len(cost))
        }
        dp_loss, _ = choose_bits_per_layer_with_path(layers, budget)
        ours = _objective(score, solve_mckp(cost, score, budget))
        assert ours <= dp_loss + 1e-9
        assert ours == pytest.approx(_objective(score, solve_milp(cost, score, budget)), rel=1e-9)


@pytest.fixture(scope="module")
def problem():
    prof = synthetic_profile(LLAMA_SHAPES, 8, ["MXFP4", "MXFP8"], seed=3)
    return Problem.from_profile(prof, ignore_scale_bits=True)


N_BLOCKS = 8
NUMEL = {
    f"model.layers.{b}.{rel}": i * o
    for b in range(N_BLOCKS)
    for rel, (i, o) in LLAMA_SHAPES.items()
}
TOTAL = N_BLOCKS * 36864  # 4096 + 2·2048 + 4096 + 3·8192 weights a block = 294912
BITS = {"MXFP4": 4, "MXFP8": 8}  # without scale bits: bits · numel


def _total_bits(layers: dict[str, str]) -> int:
    """The allocation's bits, counted here from the shapes (no scale bits, as the problem)."""
    return sum(BITS[o] * NUMEL[n] for n, o in layers.items())


def _upgrade_cost(layers: dict[str, str]) -> int | None:
    """The fewest bits that would move one MXFP4 layer to MXFP8 (None: all are MXFP8)."""
    costs = [(8 - 4) * NUMEL[n] for n, o in layers.items() if o == "MXFP4"]
    return min(costs) if costs else None


def test_budget_never_exceeded_and_monotone(problem):
    lo, hi = problem.feasible_range()
    assert (lo, hi) == (4.0, 8.0)
    assert problem.total_numel == TOTAL
    last = float("inf")
    for b in [4.0, 4.3, 4.5, 5.0, 5.5, 6.0, 7.2, 8.0]:
        budget = int(b * TOTAL)  # whole bits: ⌊b · 294912⌋ (4.3 → 1268121)
        a = allocate(problem, b)
        used = _total_bits(a.layers)
        assert used <= budget
        assert a.avg_bits_no_scale == used / TOTAL
        # MXFP8 scores less than MXFP4 on every layer, so the optimum leaves no room for one
        # more upgrade: what is left of the budget is less than any MXFP4 layer's step up.
        step = _upgrade_cost(a.layers)
        assert step is None or budget - used < step, (b, budget - used, step)
        assert a.predicted_loss <= last + 1e-12
        last = a.predicted_loss
        for s in ("head", "tail", "uniform"):
            base = allocate(problem, b, s)
            assert _total_bits(base.layers) <= budget
            assert base.avg_bits_no_scale == _total_bits(base.layers) / TOTAL
            assert base.predicted_loss >= a.predicted_loss - 1e-9
    assert set(allocate(problem, 8.0).layers.values()) == {"MXFP8"}


def test_more_sensitive_layers_never_get_fewer_bits():
    prof = synthetic_profile({"mlp.down_proj": (128, 64)}, 6, ["MXFP4", "MXFP8"], seed=5)
    a = allocate(Problem.from_profile(prof, ignore_scale_bits=True), 6.0)
    gain = {x.name: prof.score(x.name, "MXFP4") - prof.score(x.name, "MXFP8") for x in prof.layers}
    high = [n for n, o in a.layers.items() if o == "MXFP8"]
    low = [n for n, o in a.layers.items() if o == "MXFP4"]
    assert len(high) == 3 and min(gain[n] for n in high) >= max(gain[n] for n in low)


def test_head_tail_uniform_choose_the_right_layers(problem):
    head = allocate(problem, 5.0, "head")
    tail = allocate(problem, 5.0, "tail")

    def blocks_high(a):
        return sorted({int(n.split(".")[2]) for n, o in a.layers.items() if o == "MXFP8"})

    assert blocks_high(head) == [6, 7]  # 2 of 8 whole blocks at 8 bits = 5.0 bits
    assert blocks_high(tail) == [0, 1]
    assert head.avg_bits_no_scale == 5.0
    assert set(allocate(problem, 7.9, "uniform").layers.values()) == {"MXFP4"}
    assert set(allocate(problem, 8.0, "uniform").layers.values()) == {"MXFP8"}


def test_llamacpp_rule(problem):
    assert [b for b in range(8) if llamacpp_more_bits(b, 8)] == [0, 3, 6, 7]
    a = allocate(problem, 6.0, "llamacpp")
    high = {n for n, o in a.layers.items() if o == "MXFP8"}
    assert high == {
        f"model.layers.{b}.{k}" for b in (0, 3, 6, 7) for k in ("self_attn.v_proj", "mlp.down_proj")
    }
    with pytest.raises(MixvizError, match="Q4_K_M rule needs"):
        allocate(problem, 4.05, "llamacpp")


def test_pins_and_shared_groups():
    prof = synthetic_profile(LLAMA_SHAPES, 4, ["MXFP4", "MXFP8"], seed=7)
    pins = {"model.layers.2.mlp.down_proj": "MXFP8", "model.layers.0.self_attn.o_proj": "BF16"}
    pr = Problem.from_profile(prof, ignore_scale_bits=True, shared=["qkv", "gate_up"], pins=pins)
    for b in (4.6, 5.5, 6.5):
        for s in ("optimal", "head", "tail", "uniform"):
            a = allocate(pr, b, s)
            assert a.layers["model.layers.2.mlp.down_proj"] == "MXFP8"
            assert a.layers["model.layers.0.self_attn.o_proj"] == "BF16"
            for blk in range(4):
                trio = {a.layers[f"model.layers.{blk}.self_attn.{k}_proj"] for k in "qkv"}
                if s == "optimal":
                    assert len(trio) == 1
                    assert (
                        a.layers[f"model.layers.{blk}.mlp.gate_proj"]
                        == a.layers[f"model.layers.{blk}.mlp.up_proj"]
                    )
            assert a.avg_bits_no_scale <= b + 1e-12
    regex = Problem.from_profile(prof, ignore_scale_bits=True, shared=[r"mlp\."])
    a = allocate(regex, 5.5)
    for blk in range(4):
        assert (
            len({a.layers[f"model.layers.{blk}.mlp.{k}_proj"] for k in ("gate", "up", "down")}) == 1
        )
    with pytest.raises(MixvizError, match="conflicting pins"):
        Problem.from_profile(
            prof,
            shared=["qkv"],
            pins={
                "model.layers.0.self_attn.q_proj": "MXFP4",
                "model.layers.0.self_attn.k_proj": "MXFP8",
            },
        )
    with pytest.raises(MixvizError, match="not among the allocated layers"):
        Problem.from_profile(prof, pins={"model.layers.9.mlp.up_proj": "MXFP8"})


def test_availability_respected():
    prof = synthetic_profile(LLAMA_SHAPES, 2, ["W2A16", "W4A16G64", "W4A16"], seed=2)
    pr = Problem.from_profile(prof, ignore_scale_bits=True)
    for s in ("optimal", "head", "tail", "uniform"):
        a = allocate(pr, 3.8, s)
        for name, opt in a.layers.items():
            assert prof.score(name, opt) is not None, (s, name, opt)


@pytest.mark.parametrize(
    "bad, message",
    [
        (3.9, "outside the feasible range 4.0000–8.0000"),
        (8.5, "outside the feasible range"),
        (float("nan"), "finite number"),
        ("five", "must be a number"),
    ],
)
def test_infeasible_budget_is_clear(problem, bad, message):
    with pytest.raises(MixvizError, match=message):
        allocate(problem, bad)


def test_frontier(problem):
    f = frontier(problem, 11)
    # 11 budgets evenly spaced in whole bits over [4, 8]·294912: lo + ⌊(hi − lo)·i / 10⌋.
    lo, hi = 4 * TOTAL, 8 * TOTAL
    grid = [lo + (hi - lo) * i // 10 for i in range(11)]
    assert [p["budget"] for p in f["optimal"]] == [g / TOTAL for g in grid]
    losses = [p["predicted_loss"] for p in f["optimal"]]
    assert losses == sorted(losses, reverse=True)
    # Below 8 bits some layer is still at MXFP4, and the optimum leaves less room than its step
    # up; the largest step is gate/up/down's (8 − 4)·8192 bits.
    max_step = 4 * 8192 / TOTAL
    for p in f["optimal"]:
        assert p["avg_bits_no_scale"] <= p["budget"]
        assert p["budget"] - p["avg_bits_no_scale"] < max_step
    assert len(f["llamacpp"]) == 1
    for s in ("head", "tail", "uniform", "llamacpp"):
        assert f[s]
        for p in f[s]:
            assert p["budget"] in [g / TOTAL for g in grid]
            assert p["avg_bits_no_scale"] <= p["budget"], (s, p)


def test_cli_allocate_on_a_profile_file(tmp_path):
    prof = synthetic_profile(LLAMA_SHAPES, 4, ["MXFP4", "MXFP8"], seed=1, model="tiny")
    path = tmp_path / "profile.json"
    prof.save(path)
    out = tmp_path / "recipe.json"
    r = run_cli(
        "allocate",
        str(path),
        "--avg-bits",
        "5",
        "--ignore-scale-bits",
        "--shared",
        "qkv,gate_up",
        "--pin",
        "model.layers.0.mlp.down_proj=MXFP8",
        "--json",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert {
        "strategy",
        "budget_avg_bits",
        "avg_bits",
        "avg_bits_no_scale",
        "predicted_loss",
        "layers",
        "seconds",
    } <= set(doc)
    assert doc["strategy"] == "optimal" and doc["avg_bits_no_scale"] <= 5.0
    assert doc["layers"]["model.layers.0.mlp.down_proj"] == "MXFP8"
    assert json.loads(out.read_text())["layers"] == doc["layers"]
    # what the number is (a synthetic profile's metric has no unit to state)
    assert doc["predicted_loss_is"]["short"] == "Σ over layers of the synthetic score"
    bad = run_cli("allocate", str(path), "--avg-bits", "3")
    assert bad.returncode == 2 and "feasible range" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_cli_allocate_on_a_model_profiles_first():
    r = run_cli(
        "allocate",
        "tiny",
        "--avg-bits",
        "6",
        "--strategy",
        "tail",
        "--nsamples",
        "2",
        "--seqlen",
        "32",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["strategy"] == "tail" and len(doc["layers"]) == 28
    assert doc["layers"]["model.layers.0.self_attn.q_proj"] == "MXFP8"
    is_ = doc["predicted_loss_is"]  # fisher by default: its unit and what one score is
    assert is_["short"] == "Σ over layers of the fisher score, ≈ nats × calibration sequences"
    assert is_["score"].startswith("≈ the rise in mean token loss (nats)")

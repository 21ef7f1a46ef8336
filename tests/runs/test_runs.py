"""Runs: spec → worker → store, with fakes for speed and the real auto-round + lm-eval path."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from cli import run_cli
from fakes import fake_quantize, wait_for
from test_tasks import lastword_direct

from mixviz import MixvizError
from mixviz.runs.evaluation.evaluate import result_rows
from mixviz.runs.evaluation.quantize import layer_plan, run_bits, verify
from mixviz.runs.evaluation.tasks import lastword_items
from mixviz.runs.jobs.backends import LocalBackend, new_run_id, run_document, wait, write_spec
from mixviz.runs.jobs.worker import execute
from mixviz.runs.runspec import QuantArgs, RunResult, RunSpec
from mixviz.runs.store import Store, runs_dir

REPO = Path(__file__).resolve().parents[2]
TASKS = ("mixviz_lastword", "mixviz_nextsent")


_cli = run_cli


def _fake_eval(model, tok, spec, on_task):
    on_task(0, 1)
    return {
        "mixviz_lastword": {
            "results": {
                "mixviz_lastword": {
                    "acc,none": 0.5,
                    "acc_stderr,none": 0.1,
                    "perplexity,none": 12.0,
                    "alias": "x",
                }
            }
        }
    }


# Bits of one layer, by hand: bits·numel + groups·(scale bits + zero-point bits). MX formats
# keep an 8-bit shared exponent per 32 weights and no zero point; the integer formats a 16-bit
# scale and a zero point as wide as the weights per group (auto-round's count); BF16 16 bits.
_BY_HAND = {  # option: (bits, group size, scale bits, zero-point bits)
    "BF16": (16, 1, 0, 0),
    "MXFP4": (4, 32, 8, 0),
    "MXFP8": (8, 32, 8, 0),
    "W4A16G32": (4, 32, 16, 4),
    "W8A16G64": (8, 64, 16, 8),
}


def _bits_by_hand(layers, plan: dict[str, str], scales: bool = True) -> float:
    """Average bits over the block linears; a layer the plan does not name is BF16."""
    total = numel = 0
    for x in layers:
        if x.block is None:
            continue
        bits, group, scale, zp = _BY_HAND[plan.get(x.name, "BF16")]
        n = x.in_features * x.out_features
        total += bits * n + (n // group * (scale + zp) if scales else 0)
        numel += n
    return total / numel


def _mixed_recipe(layers) -> dict[str, str]:
    """Per block: q MXFP4, k MXFP8, v W4A16G32, o W8A16G64, gate BF16 (named), up MXFP4;
    down_proj and all of the last block left out (BF16 by default)."""
    by_kind = {
        "q": "MXFP4",
        "k": "MXFP8",
        "v": "W4A16G32",
        "o": "W8A16G64",
        "gate": "BF16",
        "up": "MXFP4",
    }
    last = max(x.block for x in layers if x.block is not None)
    return {
        x.name: by_kind[x.kind]
        for x in layers
        if x.block is not None and x.block < last and x.kind in by_kind
    }


def _queue(store: Store, spec: RunSpec) -> str:
    run_id = new_run_id()
    write_spec(run_id, spec)
    store.insert(run_id, spec.key, spec.model, spec.label, spec.to_dict())
    return run_id


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path / "cache"))
    return Store()


def test_spec_and_result_roundtrip():
    spec = RunSpec(
        model="tiny",
        recipe={"a": "MXFP4"},
        tasks=TASKS,
        limit=3,
        quant=QuantArgs(iters=2),
        strategy="optimal",
        budget=5.0,
    )
    assert RunSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.label == "optimal @5"
    assert RunSpec(model="tiny", recipe={"a": "MXFP4"}, tasks=TASKS).label == "uniform MXFP4"
    assert spec.key != RunSpec(model="tiny", recipe={"a": "MXFP8"}, tasks=TASKS).key
    r = RunResult("x", "done", 4.25, 4.0, {"t": {"acc": 0.5}}, {}, 1.0, {"load": 0.1})
    assert RunResult.from_dict(r.to_dict()) == r
    with pytest.raises(MixvizError, match="float16"):
        RunSpec(model="tiny", recipe=None, tasks=TASKS, dtype="float16", device="cpu")
    assert RunSpec(model="tiny", recipe=None, tasks=TASKS, dtype="float16").device == "auto"
    old = {k: v for k, v in spec.to_dict().items() if k != "device"}  # written before it
    assert RunSpec.from_dict(old) == spec
    with pytest.raises(MixvizError, match="unknown device"):
        RunSpec(model="tiny", recipe=None, tasks=TASKS, device="gpu")
    with pytest.raises(MixvizError, match="unknown option"):
        RunSpec(model="tiny", recipe={"a": "FP5"}, tasks=TASKS)


def test_result_rows_parse_lm_eval_keys():
    rows = result_rows(_fake_eval(None, None, None, lambda i, n: None))
    assert ("mixviz_lastword", "acc", 0.5, 0.1) in rows
    assert ("mixviz_lastword", "perplexity", 12.0, None) in rows


def test_execute_with_fakes_writes_everything(store, tiny_ref):
    spec = RunSpec(model="tiny", recipe=None, tasks=("mixviz_lastword",), model_hash=tiny_ref.hash)
    run_id = _queue(store, spec)
    assert execute(run_id, store, evaluate_fn=_fake_eval, kick=False) == "done"
    row = store.get(run_id)
    assert row.status == "done" and row.progress == 1.0 and row.avg_bits == 16.0
    assert store.results(run_id) == {"mixviz_lastword": {"acc": 0.5, "perplexity": 12.0}}
    folder = runs_dir() / run_id
    assert {"spec.json", "result.json", "lm_eval.json"} <= {p.name for p in folder.iterdir()}
    result = RunResult.from_dict(json.loads((folder / "result.json").read_text()))
    assert result.avg_bits == 16.0
    # what the numbers rest on: this machine, and the worker's peak memory (more than the
    # tiny model's float32 weights, less than the whole machine)
    import os

    import torch

    assert result.machine["device"] == "cpu" and result.machine["dtype"] == "float32"
    assert result.machine["cores"] == os.cpu_count()
    assert result.machine["threads"] == torch.get_num_threads()
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 100 * 2**20 < result.machine["peak_rss_bytes"] < total


def test_stored_bits_are_counted_from_what_the_model_carries(store, tiny_ref, tiny_layers):
    """A partial mixed recipe: verify() reads every layer's scheme off the (fake-)quantized
    model, and the bits stored — row, result.json, both accountings — equal a count by hand
    from the layer shapes (the layers the recipe leaves out count as BF16)."""
    recipe = _mixed_recipe(tiny_layers)
    spec = RunSpec(
        model="tiny", recipe=recipe, tasks=("mixviz_lastword",), model_hash=tiny_ref.hash
    )
    run_id = _queue(store, spec)
    status = execute(run_id, store, quantize_fn=fake_quantize, evaluate_fn=_fake_eval, kick=False)
    row = store.get(run_id)
    assert status == row.status == "done", row.error
    want = _bits_by_hand(tiny_layers, recipe)
    assert 4.25 < want < 16  # really mixed
    assert row.avg_bits == pytest.approx(want, rel=1e-12)
    result = RunResult.from_dict(json.loads((runs_dir() / run_id / "result.json").read_text()))
    assert result.avg_bits == pytest.approx(want, rel=1e-12)
    assert result.avg_bits_no_scale == pytest.approx(
        _bits_by_hand(tiny_layers, recipe, scales=False), rel=1e-12
    )


def test_quantized_model_differs_from_bf16_and_carries_its_plan(tiny_ref, tiny_layers):
    """Real auto-round (mixviz.runs.jobs.worker.quantize) on tiny with a partial mixed recipe: the
    logits move, each layer carries its option (weights of BF16 layers untouched, coarser formats
    further from the original weights), and the bits counted from the model are the hand
    count."""
    import torch

    from mixviz.models.loading import load_model
    from mixviz.runs.evaluation.quantize import quantize

    recipe = _mixed_recipe(tiny_layers)
    spec = RunSpec(model="tiny", recipe=recipe, tasks=("mixviz_lastword",))
    model, tok = load_model(tiny_ref)
    weights = {x.name: model.get_submodule(x.name).weight.detach().clone() for x in tiny_layers}
    ids = tok(lastword_items()[0]["context"], return_tensors="pt")["input_ids"][:, :32]
    with torch.no_grad():
        before = model(ids).logits
    qmodel = quantize(model, tok, spec)
    with torch.no_grad():
        after = qmodel(ids).logits
    assert (after - before).abs().max() > 1e-2
    plan = layer_plan(spec, tiny_layers)
    carried = verify(qmodel, plan)
    assert carried == plan
    assert run_bits(carried, tiny_layers) == pytest.approx(
        (_bits_by_hand(tiny_layers, plan), _bits_by_hand(tiny_layers, plan, scales=False))
    )
    err: dict[str, list[float]] = {}
    for name, option in plan.items():
        mod = qmodel.get_submodule(name)
        w = getattr(mod, "orig_layer", mod).weight.detach()
        rel = float((w - weights[name]).norm() / weights[name].norm())
        err.setdefault(option, []).append(rel)
    assert max(err["BF16"]) == 0.0
    assert 0 < max(err["MXFP8"]) < min(err["MXFP4"])
    assert 0 < max(err["W8A16G64"]) < min(err["W4A16G32"])


def test_verify_mismatch_fails_loudly(store, tiny_layers):
    recipe = {x.name: "MXFP4" for x in tiny_layers if x.block is not None}
    run_id = _queue(store, RunSpec(model="tiny", recipe=recipe, tasks=("mixviz_lastword",)))
    status = execute(
        run_id, store, quantize_fn=lambda m, t, s: m, evaluate_fn=_fake_eval, kick=False
    )
    row = store.get(run_id)
    assert status == "failed" and "did not get their scheme" in row.error
    assert store.results(run_id) == {}


def test_too_short_calibration_is_a_run_error(store, tiny_layers):
    recipe = {x.name: "W4A16G32" for x in tiny_layers if x.block is not None}
    spec = RunSpec(
        model="tiny",
        recipe=recipe,
        tasks=("mixviz_lastword",),
        quant=QuantArgs(iters=1, nsamples=2, seqlen=1_000_000),
    )
    run_id = _queue(store, spec)
    assert execute(run_id, store, evaluate_fn=_fake_eval, kick=False) == "failed"
    assert "calibration" in store.get(run_id).error


def test_end_to_end_tiny_real_autoround_and_lm_eval(tiny_ref, tiny_layers):
    """``mixviz run --uniform MXFP4`` end to end. The tiny model's weights are random, so its
    accuracy is 0 and quantization does not make its perplexity worse (a random model does
    worse than uniform and quantization shrinks its logits; the demo test checks "worse").
    Instead: the run's lastword perplexity is that of the model quantized here the same way on
    the same 8 items, not the BF16 model's, and its bits are the hand count."""
    from mixviz.models.loading import load_model
    from mixviz.runs.evaluation.quantize import quantize

    limit = 8
    r = _cli(
        "run",
        "tiny",
        "--uniform",
        "MXFP4",
        "--tasks",
        ",".join(TASKS),
        "--limit",
        str(limit),
        "--wait",
        "--json",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    plan = {x.name: "MXFP4" for x in tiny_layers if x.block is not None}
    assert doc["status"] == "done"
    assert doc["avg_bits"] == _bits_by_hand(tiny_layers, plan) == 4.25
    assert set(doc["results"]) == {*TASKS, "mixviz_kld"}  # KLD to BF16 comes with every run
    assert set(doc["results"]["mixviz_nextsent"]) == {"acc", "acc_norm", "items"}
    assert doc["results"]["mixviz_nextsent"]["items"] == limit
    kld = doc["results"]["mixviz_kld"]
    assert kld["tokens"] == limit * 511 and kld["kld"] > 0 and 0 < kld["top1"] < 1
    assert kld["df"] == limit - 1 and 0 < kld["kld_median"] < kld["kld_p99"]  # t; exact tails
    assert doc["stderrs"]["mixviz_kld"]["kld"] > 0 and "acc" in doc["stderrs"]["mixviz_nextsent"]
    items = lastword_items()[:limit]
    model, tok = load_model(tiny_ref)
    bf16 = lastword_direct(model, tok, items)
    mx = lastword_direct(quantize(model, tok, RunSpec("tiny", plan, TASKS)), tok, items)
    got = doc["results"]["mixviz_lastword"]
    assert got["perplexity"] == pytest.approx(mx["perplexity"], rel=1e-4)
    assert got["perplexity"] != pytest.approx(bf16["perplexity"], rel=1e-3)
    assert got["acc"] == mx["acc"]
    listed = json.loads(_cli("runs", "--json").stdout)["runs"]
    assert any(x["id"] == doc["id"] and x["status"] == "done" for x in listed)


def test_unknown_and_offline_tasks():
    r = _cli("run", "tiny", "--bf16", "--tasks", "no_such_task_xyz")
    assert r.returncode == 2 and "unknown lm-eval task 'no_such_task_xyz'" in r.stderr
    r = _cli("run", "tiny", "--bf16", "--tasks", "lambada_openai", "--limit", "2", "--wait")
    assert r.returncode == 2 and "lambada_openai" in r.stderr and "Traceback" not in r.stderr


def _wait_for(store, run_id, pred, timeout=300):
    return wait_for(store, run_id, pred, timeout)


@pytest.mark.parametrize("stage", ["quantizing", "evaluating"])
def test_killed_worker_is_lost_and_queue_goes_on(store, tiny_layers, stage, bf16_lastword_4):
    recipe = {x.name: "MXFP8" for x in tiny_layers if x.block is not None}
    backend = LocalBackend(store)
    first = backend.submit(RunSpec(model="tiny", recipe=recipe, tasks=TASKS, limit=40))
    second = backend.submit(RunSpec(model="tiny", recipe=None, tasks=("mixviz_lastword",), limit=4))
    assert store.get(second).status == "queued"
    row = _wait_for(store, first, lambda r: r.stage.startswith(stage) and r.pid)
    os.killpg(row.pid, signal.SIGKILL)
    _wait_for(store, first, lambda r: not _alive_pid(r.pid), timeout=30)
    backend.kick()  # what the app or CLI does on its next look
    assert store.get(first).status == "lost"
    assert wait(store, second, timeout=600).status == "done"
    got = store.results(second)["mixviz_lastword"]
    assert got.pop("items") == 4
    assert got == pytest.approx(bf16_lastword_4, rel=1e-4)


@pytest.fixture(scope="module")
def bf16_lastword_4(tiny_ref):
    """``mixviz_lastword`` on the first 4 items with the BF16 tiny model, computed here."""
    from mixviz.models.loading import load_model

    model, tok = load_model(tiny_ref)
    return lastword_direct(model, tok, lastword_items()[:4])


def _alive_pid(pid):
    from mixviz.runs.jobs.backends import alive

    return alive(pid)


def test_cancel_queued_and_running(store):
    backend = LocalBackend(store)
    a = backend.submit(RunSpec(model="tiny", recipe=None, tasks=TASKS, limit=200))
    b = backend.submit(RunSpec(model="tiny", recipe=None, tasks=TASKS, limit=2))
    assert backend.cancel(b).status == "cancelled"
    row = _wait_for(store, a, lambda r: r.status == "running" and r.pid)
    assert backend.cancel(a).status == "cancelled"
    _wait_for(store, a, lambda r: not _alive_pid(row.pid), timeout=30)
    assert store.get(a).status == "cancelled"
    with pytest.raises(MixvizError, match="already cancelled"):
        backend.cancel(a)


def test_run_document_shape(store, tiny_ref):
    run_id = _queue(store, RunSpec(model="tiny", recipe=None, tasks=("mixviz_lastword",)))
    execute(run_id, store, evaluate_fn=_fake_eval, kick=False)
    doc = run_document(store, run_id)
    assert {"id", "status", "avg_bits", "results", "seconds"} <= set(doc)
    assert doc["machine"]["device"] == "cpu" and doc["machine"]["peak_rss_bytes"] > 0
    assert set(doc["timings"]) == {"load", "evaluate"} and doc["seconds"] > 0


@pytest.mark.slow
def test_demo_mxfp4_is_worse_than_bf16_on_the_same_items(demo_layers):
    """The real demo model, end to end, BF16 and uniform MXFP4 on the same items: MXFP4's
    perplexities are higher (measured: lastword 35 → 279, word perplexity 209 → 863)."""
    docs = {}
    for how in (["--bf16"], ["--uniform", "MXFP4"]):
        r = _cli(
            "run",
            "demo",
            *how,
            "--tasks",
            "mixviz_lastword,mixviz_ppl",
            "--limit",
            "6",
            "--wait",
            "--json",
        )
        assert r.returncode == 0, r.stderr[-2000:]
        docs[how[-1]] = doc = json.loads(r.stdout)
        assert doc["status"] == "done"
    bf16, mx = docs["--bf16"], docs["MXFP4"]
    plan = {x.name: "MXFP4" for x in demo_layers if x.block is not None}
    assert bf16["avg_bits"] == 16.0
    assert mx["avg_bits"] == _bits_by_hand(demo_layers, plan) == 4.25
    for task, metric in (("mixviz_lastword", "perplexity"), ("mixviz_ppl", "word_perplexity")):
        assert mx["results"][task][metric] > 1.5 * bf16["results"][task][metric], task
    # KL divergence to BF16 (6 windows of 512 tokens with --limit 6): zero for BF16 itself
    assert bf16["results"]["mixviz_kld"]["kld"] == 0 and bf16["results"]["mixviz_kld"]["top1"] == 1
    kld = mx["results"]["mixviz_kld"]
    assert kld["tokens"] == 6 * 511 and kld["kld"] > 0.05 and kld["top1"] < 0.95
    assert kld["ppl"] > kld["ppl_ref"] == pytest.approx(bf16["results"]["mixviz_kld"]["ppl"])


# The Ray backend against a real local head: tests/runs/test_ray_backend.py.


def test_unreachable_ray_address_is_clear(store):
    from mixviz.runs.jobs.backends import get_backend

    with pytest.raises(MixvizError, match="cannot reach Ray at http://127.0.0.1:9"):
        get_backend("ray", store, ray_address="http://127.0.0.1:9")


def test_checkpoint_jobs_from_one_page_have_labels_of_their_own():
    """Two quantize jobs of the optimal allocation (two budgets, or two folders) were both
    "quantize auto_round (optimal)" in the queue."""
    from mixviz.runs.runspec import ShipArgs

    def job(budget, out):
        ship = ShipArgs("auto_round", out)
        return RunSpec(
            model="tiny", recipe={"a": "MXFP4"}, tasks=TASKS, strategy="optimal",
            budget=budget, ship=ship,
        )  # fmt: skip

    a, b, c = job(5.03, "/ck/tiny-optimal"), job(6.5, "/ck/tiny-optimal"), job(5.03, "/ck/other/")
    assert a.label == "quantize auto_round (optimal @5.03) → tiny-optimal"
    assert len({a.label, b.label, c.label}) == 3

"""The worker quantizes, checks and counts one plan (issue 13 item 7, issue 18 item 11).

A recipe that leaves layers out runs them as BF16 and counts them as BF16; the bits stored
with a run come from what the quantized model carries; the verify step fails a run whose
model carries anything else, naming the layer.
"""

from __future__ import annotations

import pytest
from fakes import fake_quantize

from mixviz.models.schemes import get_scheme, layer_bits
from mixviz.runs.evaluation.quantize import carried_scheme, layer_plan, quantize, run_bits, verify
from mixviz.runs.jobs.backends import new_run_id, write_spec
from mixviz.runs.jobs.worker import execute
from mixviz.runs.runspec import RunSpec
from mixviz.runs.store import Store

TASKS = ("mixviz_lastword",)


def _fake_eval(model, tok, spec, on_task):
    return {t: {"results": {t: {"acc,none": 0.5}}} for t in spec.tasks}


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path / "cache"))
    return Store()


def _queue(store: Store, spec: RunSpec) -> str:
    run_id = new_run_id()
    write_spec(run_id, spec)
    store.insert(run_id, spec.key, spec.model, spec.label, spec.to_dict())
    return run_id


def _blocks(layers):
    return [x for x in layers if x.block is not None]


def _half_recipe(layers):
    """Block 0–1 linears at W4A16G32 and MXFP8 (alternating); blocks 2–3 not named."""
    return {
        x.name: ("W4A16G32" if i % 2 else "MXFP8")
        for i, x in enumerate(x for x in _blocks(layers) if x.block < 2)
    }


def test_partial_recipe_is_quantized_as_it_is_counted(tiny_ref, tiny_layers):
    """Real auto-round: the layers a recipe leaves out stay BF16 (they were quantized at the
    recipe's most common option before), and the carried bits equal the counted bits."""
    from mixviz.models.loading import load_model

    recipe = _half_recipe(tiny_layers)
    spec = RunSpec(model="tiny", recipe=recipe, tasks=TASKS)
    plan = layer_plan(spec, tiny_layers)
    assert len(plan) == len(_blocks(tiny_layers))
    assert {o for n, o in plan.items() if n not in recipe} == {"BF16"}
    model, tok = load_model(tiny_ref)
    qmodel = quantize(model, tok, spec)
    mods = dict(qmodel.named_modules())
    for x in _blocks(tiny_layers):
        assert carried_scheme(mods[x.name]).name == plan[x.name], x.name
    got = verify(qmodel, plan)
    # hand count: Σ bits over the plan, BF16 for the rest
    total = sum(
        layer_bits(get_scheme(plan[x.name]), x.in_features, x.out_features)
        for x in _blocks(tiny_layers)
    )
    numel = sum(x.numel for x in _blocks(tiny_layers))
    assert run_bits(got, tiny_layers)[0] == pytest.approx(total / numel, rel=1e-12)
    assert total / numel > 10  # half the model BF16: far above the recipe's 4–8 bits


def test_run_bits_are_those_the_model_carries(store, tiny_ref, tiny_layers):
    recipe = _half_recipe(tiny_layers)
    spec = RunSpec(model="tiny", recipe=recipe, tasks=TASKS, model_hash=tiny_ref.hash)
    run_id = _queue(store, spec)
    assert execute(run_id, store, fake_quantize, _fake_eval, kick=False) == "done"
    blocks = _blocks(tiny_layers)
    want = sum(
        layer_bits(get_scheme(recipe.get(x.name, "BF16")), x.in_features, x.out_features)
        for x in blocks
    ) / sum(x.numel for x in blocks)
    assert store.get(run_id).avg_bits == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize(
    "asked, planted, why",
    [
        ("MXFP4", {"bits": 8, "act_bits": 8}, "a wrong layer (MXFP8 for MXFP4)"),
        ("W4A16G32", {"group_size": 64}, "a wrong group size"),
        ("MXFP4", {"data_type": "int"}, "a wrong data type"),
        ("BF16", {"bits": 4, "group_size": 32, "data_type": "int", "act_bits": 16}, "BF16 hit"),
    ],
)
def test_verify_fails_the_run_naming_the_layer(store, tiny_ref, tiny_layers, asked, planted, why):
    blocks = _blocks(tiny_layers)
    victim = blocks[5].name
    recipe = {x.name: "MXFP8" for x in blocks} | {victim: asked}
    spec = RunSpec(model="tiny", recipe=recipe, tasks=TASKS, model_hash=tiny_ref.hash)
    run_id = _queue(store, spec)

    def bad_quantizer(model, tok, s):
        return fake_quantize(model, tok, s, override={victim: planted})

    assert execute(run_id, store, bad_quantizer, _fake_eval, kick=False) == "failed", why
    row = store.get(run_id)
    assert victim in row.error and "did not get their scheme" in row.error
    assert store.results(run_id) == {}


def test_verify_passes_a_faithful_model(store, tiny_ref, tiny_layers):
    blocks = _blocks(tiny_layers)
    options = ["MXFP4", "W4A16G32", "W2A16G64", "NVFP4", "MXFP8", "W8A16G32", "BF16"]
    recipe = {x.name: options[i % len(options)] for i, x in enumerate(blocks)}
    spec = RunSpec(model="tiny", recipe=recipe, tasks=TASKS, model_hash=tiny_ref.hash)
    run_id = _queue(store, spec)
    assert execute(run_id, store, fake_quantize, _fake_eval, kick=False) == "done"

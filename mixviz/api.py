"""The front door: the main job — profile → allocate → recipe → export or quantize — in a few
calls, each a thin composition of the stages below (``import mixviz`` exposes them lazily).

>>> import mixviz                                                     # doctest: +SKIP
>>> profile = mixviz.profile("demo", options="MXFP4,MXFP8")           # doctest: +SKIP
>>> alloc = mixviz.allocate(profile, avg_bits=5)                      # doctest: +SKIP
>>> recipe = mixviz.Recipe.from_allocation(alloc)                     # doctest: +SKIP
>>> print(mixviz.export(recipe, "llmcompressor"))                     # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from mixviz.errors import MixvizError


def profile(model, spec=None, **fields):
    """Per-layer sensitivity of ``model`` (a name or a resolved ModelRef) to each option of
    ``spec`` (a :class:`~mixviz.sensitivity.spec.ProfileSpec`), cached: a
    :class:`~mixviz.sensitivity.profile.Profile`. ``fields`` are the spec's fields one by one
    (``options="MXFP4,MXFP8", metric="hessian"``), replacing those of ``spec``, and
    :func:`~mixviz.sensitivity.profile.profile_model`'s own keywords (``use_cache``,
    ``allow_partial``, ``progress``, ...)."""
    from dataclasses import fields as spec_fields
    from dataclasses import replace

    from mixviz.sensitivity.profile import profile_model
    from mixviz.sensitivity.spec import ProfileSpec

    names = {f.name for f in spec_fields(ProfileSpec)}
    given = {k: v for k, v in fields.items() if k in names}
    spec = replace(spec, **given) if spec is not None else ProfileSpec(**given)
    return profile_model(model, spec, **{k: v for k, v in fields.items() if k not in names})


def allocate(
    profile,
    avg_bits: float | None = None,
    *,
    bpw: float | None = None,
    strategy: str = "optimal",
    target: str | None = None,
    **rules,
):
    """One option per layer of ``profile`` (a :class:`~mixviz.sensitivity.profile.Profile`)
    within ``avg_bits`` (or ``bpw``: bits per weight with scales, as llama.cpp states it), by
    ``strategy``; ``target`` adds a runtime's rules (:mod:`mixviz.models.targets`). ``rules``
    are the problem's other rules, as :meth:`~mixviz.allocation.problem.Problem.from_profile`
    takes them: ``ignore_scale_bits``, ``shared``, ``pins``, ``include_lm_head``. The
    :class:`~mixviz.allocation.problem.Allocation` carries the model and its hash."""
    from mixviz.allocation.problem import Problem
    from mixviz.allocation.strategies import allocate as solve

    if (avg_bits is None) == (bpw is None):
        raise MixvizError("give one budget: avg_bits or bpw")
    if bpw is not None and rules.get("ignore_scale_bits"):
        raise MixvizError("bpw counts scale bits: leave ignore_scale_bits off")
    problem = Problem.from_profile(profile, target=target, **rules)
    return solve(problem, avg_bits if avg_bits is not None else bpw, strategy)


def export(recipe, to: str) -> str:
    """The recipe written by the exporter named ``to`` (``autoround``, ``gptqmodel``,
    ``llmcompressor``, ``llamacpp``, ... — :func:`~mixviz.report.export.exporter_names`): the
    text of the file."""
    from mixviz.report.export import export as render

    return render(recipe, to)


def quantize(
    recipe,
    format: str,
    out: str | Path,
    *,
    model: str | None = None,
    wait: bool = True,
    target: str | None = None,
    **fields,
):
    """Write ``recipe`` as a real ``format`` checkpoint in ``out`` (a queued job: auto-round
    quantizes, exports, reloads from disk and verifies — :mod:`mixviz.runs.ship.step`). With
    ``wait`` (default) returns the verification (``ship.json``) once ``out`` holds the
    verified checkpoint (an identical finished job's is copied there, or made anew when its
    files are gone: :mod:`mixviz.runs.ship.delivery`), else the
    :class:`~mixviz.runs.jobs.backends.Submitted` job. ``fields`` go to the run spec (``limit``,
    ``device``, ``dtype``, ...)."""
    from mixviz.models.inventory import inventory
    from mixviz.models.loading import meta_model, resolve_model
    from mixviz.runs.jobs.backends import LocalBackend, submit
    from mixviz.runs.jobs.deliver import deliver
    from mixviz.runs.ship.delivery import as_delivered
    from mixviz.runs.ship.step import quantize_spec, ship_document

    ref = resolve_model(model or recipe.model)
    if recipe.model_hash and ref.hash != recipe.model_hash:
        raise MixvizError(f"the recipe is for another version of {ref.name} (hash differs)")
    layers = inventory(meta_model(ref))
    recipe.validate(layers)
    prov = recipe.provenance or {}
    spec = quantize_spec(
        ref, dict(recipe.layers), format, out, layers=layers, target=target,
        strategy=str(prov.get("strategy") or ""), budget=prov.get("budget"), **fields,
    )  # fmt: skip
    backend = LocalBackend()
    sub = submit(backend, spec)
    if not wait:
        return sub
    got = deliver(backend, spec, sub.id, sub.reused)  # a reused job's files: copied, or redone
    if got.status != "done":
        row = backend.store.get(got.run_id)
        raise MixvizError(f"quantize job {got.run_id} {row.status}: {row.error or ''}".strip())
    return as_delivered(ship_document(got.run_id), spec.ship.out)

"""The Streamlit caches: every ``st.cache_data`` / ``st.cache_resource`` of the app, each keyed
by what changes its answer (a leading ``_`` argument is not hashed: the key beside it stands
for it)."""

from __future__ import annotations

import streamlit as st

import mixviz
from mixviz.allocation.problem import Problem
from mixviz.models.inventory import inventory_report
from mixviz.runs.ship.llamacpp import converted_path
from mixviz.sensitivity.profile import Profile, profile_model
from mixviz.sensitivity.spec import ProfileSpec


class ProfileMiss(LookupError):
    """No profile on disk for these settings (yet). Raised by the cached loader so that the
    miss is not memoised — the next look-up, after profiling, finds the file — while the
    profiles already cached stay cached."""


@st.cache_resource(show_spinner=False)
def model_ref(spec: str, trust_remote_code: bool = False) -> mixviz.ModelRef:
    return mixviz.resolve_model(spec, trust_remote_code=trust_remote_code)


@st.cache_data(show_spinner=False)
def model_report(spec: str, trust_remote_code: bool = False) -> dict:
    ref = model_ref(spec, trust_remote_code)
    doc = inventory_report(ref.name, mixviz.inventory(mixviz.meta_model(ref)))
    doc["note"] = ref.note
    return doc


@st.cache_resource(show_spinner=False, max_entries=8)
def model_layers(spec: str) -> dict:
    """``{name: Layer}`` of a model's linear layers (from its meta model: no weights)."""
    ref = model_ref(spec)
    return {x.name: x for x in mixviz.inventory(mixviz.meta_model(ref))}


@st.cache_data(show_spinner=False, max_entries=64)
def file_overhead(spec: str, allocated: tuple[str, ...], fmt: str) -> int:
    """Bytes of a ``fmt`` checkpoint of the model besides the ``allocated`` layers' data."""
    from mixviz.models.file_size import overhead

    ref = model_ref(spec)
    conv = converted_path(ref.hash, "f32")
    model = mixviz.meta_model(ref)
    return overhead(model, set(allocated), fmt, dtype="float32", folder=ref.path,
                    gguf_file=conv).bytes  # fmt: skip


@st.cache_data(show_spinner=False, max_entries=64)
def checkpoint_bytes(
    spec: str, plan: tuple[tuple[str, str], ...], fmt: str, device: str, dtype: str
) -> int:
    """The bytes of the ``fmt`` checkpoint that writes ``plan``, as ``quantize`` predicts them
    and checks the written files against (:func:`mixviz.models.file_size.predicted_bytes`)."""
    from mixviz.models.device import placement
    from mixviz.models.file_size import predicted_bytes

    ref = model_ref(spec)
    run_dtype = str(placement(device, dtype)[1]).removeprefix("torch.")
    return predicted_bytes(mixviz.meta_model(ref), dict(plan), fmt, dtype=run_dtype,
                           folder=ref.path, gguf_file=converted_path(ref.hash, "f32"))  # fmt: skip


@st.cache_resource(show_spinner=False, max_entries=16)
def profile_on_disk(model: str, spec: ProfileSpec, trust_remote_code: bool, where: str) -> Profile:
    """The profile ``profile_model(model, spec)`` finds on disk. Only hits are memoised: a miss
    raises :class:`ProfileMiss` (Streamlit caches no call that raises). ``where`` (the cache
    folder) is part of the key: another folder is another set of profiles."""
    prof = profile_model(
        model, spec, compute=False, allow_partial=True, trust_remote_code=trust_remote_code
    )
    if prof is None:
        raise ProfileMiss(model)
    return prof


@st.cache_resource(show_spinner=False, max_entries=32)
def problem_for(
    _profile,
    key: str,
    ignore_scale_bits: bool,
    shared: tuple[str, ...],
    pins: tuple[tuple[str, str], ...],
    target: str = "",
) -> Problem:
    return Problem.from_profile(
        _profile,
        ignore_scale_bits=ignore_scale_bits,
        shared=list(shared),
        pins=dict(pins),
        target=target or None,
    )


@st.cache_data(show_spinner=False, max_entries=32)
def frontier_for(_problem: Problem, key: tuple) -> dict:
    from mixviz.allocation.strategies import frontier

    return frontier(_problem, 30)


@st.cache_data(show_spinner=False, max_entries=256)
def recipe_bits(model: str, recipe: tuple[tuple[str, str], ...]) -> float:
    """A recipe's average bits (with scale bits, as runs report them) before it has run."""
    from mixviz.report.recipe import Recipe

    return Recipe(model, "", dict(recipe)).average_bits(model_layers(model).values(), False)


@st.cache_resource(show_spinner=False, max_entries=64)
def edit_cost_at(_free: Problem, _locked: Problem, key: tuple, budget: float):
    """:func:`~mixviz.allocation.edits.edit_cost` at ``budget``; ``key`` names the two problems
    (profile, accounting, groups, locks, runtime). A budget seen before is not solved again: a
    rerun that leaves the slider alone (a radio, a click on the grid) is cheap."""
    from mixviz.allocation.edits import edit_cost

    return edit_cost(_free, _locked, budget)


@st.cache_resource(show_spinner=False, max_entries=256)
def allocation_at(_problem: Problem, key: tuple, budget: float, strategy: str):
    """``allocate(problem, budget, strategy)`` for the problem ``key`` names, solved once."""
    from mixviz.allocation.strategies import allocate

    return allocate(_problem, budget, strategy)

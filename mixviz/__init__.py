"""mixviz: see the trade-off of mixed-precision quantization, layer by layer.

The main job in five lines (the front door, :mod:`mixviz.api`; loaded on first use)::

    profile = mixviz.profile("demo", options="MXFP4,MXFP8")
    alloc = mixviz.allocate(profile, avg_bits=5)
    recipe = mixviz.Recipe.from_allocation(alloc)
    mixviz.export(recipe, "llmcompressor")     # or mixviz.quantize(recipe, "auto_round", "out/")

Below it: models, layer inventory, schemes and bit accounting, text, sensitivity profiles
(:func:`profile_model` of a :class:`ProfileSpec`; metrics are a registry in
:mod:`mixviz.sensitivity.metrics`), and
``RunSpec`` / ``submit`` / ``wait`` for quantize-and-evaluate runs. No Streamlit here.
"""

from mixviz.errors import MixvizError
from mixviz.models.inventory import Layer, block_linears, inventory
from mixviz.models.loading import ModelRef, load_model, meta_model, resolve_model
from mixviz.models.schemes import (
    SCHEMES,
    Scheme,
    average_bits,
    get_scheme,
    layer_bits,
    parse_options,
)
from mixviz.models.text import Corpus, calibration_text, evaluation_text, load_user_text
from mixviz.sensitivity.profile import Profile, profile_model
from mixviz.sensitivity.spec import ProfileSpec

# the front door, imported on first use (as lm-eval's __init__): `import mixviz` stays light
_LAZY = {
    "profile": ("mixviz.api", "profile"),
    "allocate": ("mixviz.api", "allocate"),
    "export": ("mixviz.api", "export"),
    "quantize": ("mixviz.api", "quantize"),
    "Recipe": ("mixviz.report.recipe", "Recipe"),
    "Allocation": ("mixviz.allocation.problem", "Allocation"),
    "RunSpec": ("mixviz.runs.runspec", "RunSpec"),
    "submit": ("mixviz.runs.jobs.backends", "submit"),
    "wait": ("mixviz.runs.jobs.backends", "wait"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mixviz' has no attribute {name!r}")


__all__ = [
    *_LAZY,
    "SCHEMES",
    "Corpus",
    "Layer",
    "MixvizError",
    "ModelRef",
    "Profile",
    "ProfileSpec",
    "Scheme",
    "average_bits",
    "block_linears",
    "calibration_text",
    "evaluation_text",
    "get_scheme",
    "inventory",
    "layer_bits",
    "load_model",
    "load_user_text",
    "meta_model",
    "parse_options",
    "profile_model",
    "resolve_model",
]

"""mixviz: see the trade-off of mixed-precision quantization, layer by layer.

The library (no Streamlit here): models, layer inventory, schemes and bit accounting, text,
and sensitivity profiles (:func:`profile_model`; its metrics are a registry in
:mod:`mixviz.sensitivity.metrics`).
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

__all__ = [
    "SCHEMES",
    "Corpus",
    "Layer",
    "MixvizError",
    "ModelRef",
    "Profile",
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

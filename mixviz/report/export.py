"""The exporters by name: every way a recipe is written out, one :class:`Exporter` each.

:data:`EXPORTERS` is what ``mixviz export --to``, :func:`mixviz.export` and the Allocate page's
download row offer, in that order; adding a format is one :func:`register_exporter` call. The
formats themselves are written by :mod:`mixviz.report.formats`.

>>> recipe = Recipe("tiny", "", {"model.layers.0.mlp.up_proj": "MXFP4"})
>>> print(export(recipe, "llamacpp-file"), end="")
^blk\\.0\\.ffn_up\\.weight$=mxfp4
>>> EXPORTERS["gptqmodel"].why_not(recipe)[:48]
'GPTQModel quantizes integer weights only; model.'
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mixviz.errors import MixvizError
from mixviz.report.formats import (
    BUILT_BY_MIXVIZ,
    ModelSource,
    autoround_layer_config,
    autoround_script,
    gptqmodel_why_not,
    llamacpp_why_not,
    llmcompressor_why_not,
    to_autoround,
    to_gptqmodel,
    to_llamacpp,
    to_llamacpp_file,
    to_llmcompressor,
)
from mixviz.report.recipe import Recipe


def _any_recipe(recipe: Recipe) -> str | None:
    return None


@dataclass(frozen=True)
class Exporter:
    """One way to write a recipe: ``name`` is the ``--to`` value, ``label`` the download
    button's, ``suffix`` ends the downloaded file's name (``{model}-{bits}bits.{suffix}``).

    ``render`` gives the file's text; ``why_not`` says why a recipe can't be written this way
    (``None`` when it can). It is asked first and should be cheap: the app asks it for every
    exporter to disable a button and say why beside it.
    """

    name: str
    label: str
    suffix: str
    render: Callable[[Recipe], str]
    why_not: Callable[[Recipe], str | None] = _any_recipe


EXPORTERS: dict[str, Exporter] = {}
"""Every exporter by name, in the order shown to users (register with
:func:`register_exporter`; a test may add one with ``monkeypatch.setitem``)."""


def register_exporter(exporter: Exporter) -> Exporter:
    """Add ``exporter`` to :data:`EXPORTERS` (after those already there) and return it; it then
    reaches ``--to``'s choices, :func:`export` and the app's download row. A name registered
    again is replaced in its place (so re-importing this module is harmless)."""
    if exporter.name.split() != [exporter.name] or not exporter.suffix:
        raise ValueError(f"an exporter needs a name without spaces and a suffix: {exporter!r}")
    EXPORTERS[exporter.name] = exporter
    return exporter


def exporter_names() -> tuple[str, ...]:
    """The registered exporters' names, read now (so one registered later is included).

    >>> exporter_names()[:3]
    ('recipe', 'autoround-layer-config', 'autoround-script')
    """
    return tuple(EXPORTERS)


def export(recipe: Recipe, to: str) -> str:
    """The text of ``recipe`` written by the exporter named ``to``, ready for a file; a
    :class:`MixvizError` for an unknown name or a recipe that exporter can't write."""
    exporter = EXPORTERS.get(to)
    if exporter is None:
        raise MixvizError(f"unknown export target {to!r}; choose from {', '.join(EXPORTERS)}")
    if why := exporter.why_not(recipe):
        raise MixvizError(why)
    return exporter.render(recipe)


# --------------------------------------------------------------------------- the built-in ones


def _json(doc) -> str:
    return json.dumps(doc, indent=2) + "\n"


def _lines(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


def _source(model: str) -> ModelSource:
    """How a script names a recipe's model: ``demo``/``tiny`` through mixviz, a folder by its
    absolute path, else the name as it is (a hub id)."""
    folder = Path(model).expanduser()
    if model not in BUILT_BY_MIXVIZ and folder.is_dir():
        return ModelSource(str(folder.resolve()))
    return ModelSource(model)


def _names_a_model(recipe: Recipe) -> str | None:
    return None if recipe.model else "the recipe names no model for the script to load"


register_exporter(Exporter("recipe", "mixviz recipe", "recipe.json", lambda r: _json(r.to_dict())))
register_exporter(
    Exporter(
        "autoround-layer-config",
        "auto-round layer_config",
        "layer_config.json",
        autoround_layer_config,
    )
)
register_exporter(
    Exporter(
        "autoround-script",
        "auto-round script",
        "autoround.py",
        lambda r: autoround_script(r, _source(r.model)),
        _names_a_model,
    )
)
register_exporter(
    Exporter(
        "autoround",
        "auto-round (config, Python, CLI)",
        "autoround.json",
        lambda r: _json(to_autoround(r, _source(r.model))),
    )
)
register_exporter(
    Exporter(
        "gptqmodel",
        "GPTQModel",
        "gptqmodel.json",
        lambda r: _json(to_gptqmodel(r)),
        gptqmodel_why_not,
    )
)
register_exporter(
    Exporter(
        "llmcompressor",
        "llm-compressor",
        "llmcompressor.yaml",
        to_llmcompressor,
        llmcompressor_why_not,
    )
)
register_exporter(
    Exporter(
        "llamacpp", "llama.cpp", "llamacpp.txt", lambda r: _lines(to_llamacpp(r)), llamacpp_why_not
    )
)
register_exporter(
    Exporter(
        "llamacpp-file",
        "llama.cpp file",
        "tensor-types.txt",
        lambda r: _lines(to_llamacpp_file(r)),
        llamacpp_why_not,
    )
)

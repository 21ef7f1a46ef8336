"""``mixviz export RECIPE --to NAME`` (a recipe for auto-round, GPTQModel, llm-compressor,
llama.cpp or any exporter registered in :mod:`mixviz.report.export`) and
``mixviz import FILE --model MODEL`` (an auto-round layer_config → a recipe)."""

from __future__ import annotations

import argparse
import json
import sys

from mixviz.cli.common import add_trust_remote_code, progress, resolve, write_text
from mixviz.errors import MixvizError


def add_parser(sub) -> None:
    from mixviz.report.export import exporter_names

    exp = sub.add_parser(
        "export", help="translate a recipe for auto-round, GPTQModel, llm-compressor or llama.cpp"
    )
    exp.add_argument("recipe", help="a mixviz recipe or allocation JSON")
    exp.add_argument("--to", required=True, choices=exporter_names())
    exp.add_argument("--out", help="write to this file instead of stdout")
    exp.set_defaults(func=cmd_export)

    imp = sub.add_parser("import", help="an auto-round layer_config or recipe → mixviz recipe")
    imp.add_argument("file")
    imp.add_argument("--model", required=True)
    imp.add_argument("--out", help="write the recipe here instead of stdout")
    add_trust_remote_code(imp)
    imp.set_defaults(func=cmd_import)


def recipe_from_file(path: str):
    """A mixviz recipe, or an allocation JSON (as ``allocate --out`` writes) made into one."""
    from mixviz.report.recipe import FORMAT, Recipe, read_json

    doc = read_json(path, "recipe")
    if isinstance(doc, dict) and doc.get("format") == FORMAT:
        return Recipe.from_dict(doc)
    if isinstance(doc, dict) and isinstance(doc.get("layers"), dict) and "strategy" in doc:
        from mixviz.allocation.problem import Allocation

        fields = {k: doc[k] for k in Allocation.__dataclass_fields__ if k in doc}
        return Recipe.from_allocation(
            Allocation(**fields), doc.get("model", ""), doc.get("model_hash", "")
        )
    raise MixvizError(
        f"{path} is neither a mixviz recipe nor an allocation "
        "(use `mixviz import` for auto-round layer configs)"
    )


def cmd_export(args: argparse.Namespace) -> None:
    from mixviz.report.export import export

    write_text(export(recipe_from_file(args.recipe), args.to), args.out)


def cmd_import(args: argparse.Namespace) -> None:
    from mixviz.models.inventory import inventory
    from mixviz.models.loading import meta_model
    from mixviz.report.formats import import_recipe

    ref = resolve(args, quiet=True)
    recipe = import_recipe(args.file, ref.name, ref.hash, inventory(meta_model(ref)))
    recipe = type(recipe)(
        ref.name, ref.hash, recipe.layers, recipe.ignore_scale_bits, recipe.provenance
    )
    if args.out:
        recipe.save(args.out)
        progress(f"wrote {args.out} ({len(recipe.layers)} layers)")
    else:
        sys.stdout.write(json.dumps(recipe.to_dict(), indent=2) + "\n")

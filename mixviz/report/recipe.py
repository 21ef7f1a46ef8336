"""The Recipe: one option per layer (full module names), versioned, with its provenance.

Average bits are computed from the layers and the model's shapes, never stored.

>>> r = Recipe(model="tiny", model_hash="h", layers={"model.layers.0.mlp.down_proj": "MXFP8"})
>>> Recipe.from_dict(r.to_dict()) == r
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mixviz.errors import MixvizError
from mixviz.models.schemes import get_scheme, layer_bits
from mixviz.paths import atomic_write_json, check_header, read_json

FORMAT, VERSION = "mixviz.recipe", 1


@dataclass(frozen=True)
class Recipe:
    model: str
    model_hash: str
    layers: dict[str, str]
    ignore_scale_bits: bool = False
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.layers:
            raise MixvizError("a recipe needs at least one layer")
        for name, option in self.layers.items():
            if not isinstance(name, str) or not isinstance(option, str):
                raise MixvizError(f"recipe layer {name!r}: option must be a string")
            canonical = get_scheme(option).name  # raises on unknown options
            if canonical != option:
                raise MixvizError(f"recipe layer {name}: write {canonical}, not {option}")

    @classmethod
    def from_allocation(
        cls,
        allocation,
        model: str | None = None,
        model_hash: str | None = None,
        locks: list[str] | None = None,
    ) -> Recipe:
        """The allocation's layers as a recipe for the model it was solved for (``model`` and
        ``model_hash`` default to the allocation's own)."""
        model = allocation.model if model is None else model
        model_hash = allocation.model_hash if model_hash is None else model_hash
        prov = {
            "profile_key": allocation.profile_key,
            "metric": allocation.metric,
            "strategy": allocation.strategy,
            "budget": allocation.budget_avg_bits,
            "predicted_loss": allocation.predicted_loss,
            "pins": dict(allocation.pins),
        }
        if locks:
            prov["locks"] = list(locks)
        return cls(model, model_hash, dict(allocation.layers), allocation.ignore_scale_bits, prov)

    @classmethod
    def uniform(cls, model, option: str) -> Recipe:
        """Every block linear of ``model`` (a name or a resolved ModelRef) at one option; an
        error names a layer the option cannot serve.

        >>> len(Recipe.uniform("tiny", "MXFP4").layers)                  # doctest: +SKIP
        28
        """
        from mixviz.models.inventory import block_linears, inventory
        from mixviz.models.loading import ModelRef, meta_model, resolve_model

        ref = model if isinstance(model, ModelRef) else resolve_model(model)
        s = get_scheme(option)
        layers = block_linears(inventory(meta_model(ref)))
        bad = [x for x in layers if not s.available_for(x.in_features)]
        if bad:
            raise MixvizError(
                f"{s.name} is unavailable for {len(bad)} layers of {ref.name}, e.g. "
                f"{bad[0].name} ({s.why_unavailable(bad[0].in_features)})"
            )
        return cls(ref.name, ref.hash, {x.name: s.name for x in layers},
                   provenance={"strategy": f"uniform {s.name}"})  # fmt: skip

    def average_bits(self, layers, ignore_scale_bits: bool | None = None) -> float:
        """Parameter-weighted average bits over the recipe's layers (shapes from ``layers``)."""
        ignore = self.ignore_scale_bits if ignore_scale_bits is None else ignore_scale_bits
        shapes = {x.name: x for x in layers}
        total = numel = 0
        for name, option in self.layers.items():
            x = shapes[name]
            total += layer_bits(
                get_scheme(option), x.in_features, x.out_features, ignore_scale_bits=ignore
            )
            numel += x.numel
        return total / numel

    def validate(self, layers) -> None:
        """Refuse layers the model lacks and options a layer cannot take."""
        shapes = {x.name: x for x in layers}
        missing = [n for n in self.layers if n not in shapes]
        if missing:
            raise MixvizError(
                f"the recipe names {len(missing)} layers this model does not "
                f"have, e.g. {missing[0]}: a recipe for another model?"
            )
        for name, option in self.layers.items():
            if not get_scheme(option).available_for(shapes[name].in_features):
                raise MixvizError(
                    f"{option} cannot quantize {name}: its group size does not "
                    f"divide in_features {shapes[name].in_features}"
                )

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model,
            "model_hash": self.model_hash,
            "ignore_scale_bits": self.ignore_scale_bits,
            "provenance": self.provenance,
            "layers": dict(self.layers),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        check_header(d, FORMAT, VERSION, "recipe")
        unknown = set(d) - {
            "format",
            "version",
            "model",
            "model_hash",
            "ignore_scale_bits",
            "provenance",
            "layers",
        }
        if unknown:
            raise MixvizError(f"unknown recipe field {sorted(unknown)[0]!r}")
        if not isinstance(d.get("layers"), dict):
            raise MixvizError('a recipe needs a "layers" map of layer → option')
        return cls(
            str(d.get("model", "")),
            str(d.get("model_hash", "")),
            d["layers"],
            bool(d.get("ignore_scale_bits", False)),
            dict(d.get("provenance") or {}),
        )

    def save(self, path: str | Path) -> None:
        atomic_write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        return cls.from_dict(read_json(path, "recipe"))

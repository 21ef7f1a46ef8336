"""auto-round's AutoScheme, driven from mixviz: run its scoring, and import its score cache.

AutoScheme writes one JSON file per option under ``AR_AUTO_SCHEME_CACHE``
(``scheme_NN_<key>.json`` with ``layer_scores = {name: [bits, delta_loss]}``). Importing those
files gives a :class:`~mixviz.sensitivity.profile.Profile` so its scores can be explored and
compared.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from mixviz.errors import MixvizError
from mixviz.models.loading import ModelRef
from mixviz.models.schemes import SCHEMES, Scheme
from mixviz.sensitivity.profile import Calib, Profile, Row, library_versions

_FIELDS = ("bits", "group_size", "data_type", "act_bits")


def scheme_from_autoround(d: dict) -> Scheme:
    """Match an auto-round scheme dict to a catalogue option (by bits, group, type, act bits)."""
    from auto_round.schemes import PRESET_SCHEMES

    want = {k: d.get(k) for k in _FIELDS}
    want["act_bits"] = want["act_bits"] or 16
    for s in SCHEMES.values():
        if s.preset not in PRESET_SCHEMES:  # the i-quants: ggml's alone, no auto-round preset
            continue
        preset = PRESET_SCHEMES[s.preset].to_dict()
        have = {k: preset.get(k) for k in _FIELDS}
        have["act_bits"] = have["act_bits"] or 16
        if have == want:
            return s
    raise MixvizError(f"unknown scheme: mixviz has no option with {want}")


def import_autoscheme(folder: str | Path, model: str | ModelRef) -> Profile:
    """Read AutoScheme's per-option cache files in ``folder`` into a Profile for ``model``
    (a resolved :class:`~mixviz.models.loading.ModelRef`, or a name resolved here)."""
    from mixviz.models.inventory import inventory
    from mixviz.models.loading import meta_model, resolve_model

    files = sorted(Path(folder).glob("scheme_*.json"))
    if not files:
        raise MixvizError(f"no AutoScheme cache files (scheme_*.json) in {folder}")
    ref = model if isinstance(model, ModelRef) else resolve_model(model)
    by_name = {x.name: x for x in inventory(meta_model(ref))}
    docs = []
    for f in files:
        try:
            d = json.loads(f.read_text())
            docs.append((scheme_from_autoround(d["scheme"]), d))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise MixvizError(f"cannot read AutoScheme cache {f.name}: {e}") from None
    cfg = docs[0][1].get("cache_config", {})
    names = sorted({n for _, d in docs for n in d["layer_scores"]})
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise MixvizError(
            f"AutoScheme cache names layers {ref.name!r} does not have, "
            f"e.g. {unknown[0]}: scores of another model?"
        )
    layers = tuple(sorted((by_name[n] for n in names), key=lambda x: list(by_name).index(x.name)))
    rows = []
    for scheme, d in docs:
        for x in layers:
            if x.name not in d["layer_scores"]:
                raise MixvizError(f"AutoScheme cache for {scheme.name} lacks {x.name}")
            rows.append(Row.of(x, scheme, float(d["layer_scores"][x.name][1])))
    dataset = str(cfg.get("dataset", "unknown"))
    calib = Calib(
        Path(dataset).name,
        hashlib.sha256(dataset.encode()).hexdigest()[:16],
        int(cfg.get("nsamples", 0)),
        int(cfg.get("seqlen", 0)),
    )
    return Profile(
        ref.name,
        ref.hash,
        "autoscheme",
        tuple(s.name for s, _ in docs),
        calib,
        0.0,
        layers,
        tuple(rows),
        library_versions(),
        None,
    )


@dataclass(frozen=True)
class AutoSchemeSettings:
    """How AutoScheme allocates: ``avg_bits`` (default: the options' mean bits), counting scale
    bits or not, on ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``)."""

    avg_bits: float | None = None
    ignore_scale_bits: bool = True
    device: str = "auto"


def run_autoscheme(
    model,
    tokenizer,
    options: list[str],
    dataset: str,
    nsamples: int,
    seqlen: int,
    cache: str | Path,
    settings: AutoSchemeSettings | None = None,
    **fields,
) -> tuple[dict, float]:
    """Run AutoScheme's scoring (and DP) with local data; its caches land in ``cache``.

    ``settings`` (or its ``fields`` one by one: ``avg_bits=5, ignore_scale_bits=False``) say how.
    Returns (auto-round's layer_config, seconds). ``dataset`` is a ``.jsonl`` path.
    """
    from mixviz.models.device import autoround_amp, resolve_device

    settings = replace(settings, **fields) if settings else AutoSchemeSettings(**fields)
    avg_bits, device = settings.avg_bits, settings.device
    os.environ["AR_AUTO_SCHEME_CACHE"] = str(cache)
    from auto_round import AutoRound, AutoScheme

    bits = (
        avg_bits if avg_bits is not None else sum(SCHEMES[o].bits for o in options) / len(options)
    )
    scheme = AutoScheme(
        avg_bits=bits,
        options=",".join(options),
        ignore_scale_zp_bits=settings.ignore_scale_bits,
        nsamples=nsamples,
        seqlen=seqlen,
        dataset=str(dataset),
    )
    t0 = time.perf_counter()
    ar = AutoRound(
        model,
        tokenizer,
        scheme=scheme,
        iters=0,
        disable_opt_rtn=True,
        enable_torch_compile=False,
        device_map=str(resolve_device(device)),
        amp=autoround_amp(model),
        dataset=str(dataset),
        nsamples=nsamples,
        seqlen=seqlen,
    )
    ar.post_init()
    return dict(ar.layer_config), time.perf_counter() - t0

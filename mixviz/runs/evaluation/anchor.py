"""One measured anchor: the KLD of an allocation's model to the unquantized one, in memory, on
calibration windows — what the predicted KLD rests on before any run has finished.

Cached under ``cache/anchor/<profile key>/<digest>.json`` by everything that changes it (the
profile, the layers' options, the windows, the calibration text).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from mixviz.errors import MixvizError
from mixviz.paths import atomic_write_json, cache_dir, read_json
from mixviz.runs.evaluation.measure import MeasureSettings, calibration_measure

FORMAT = "mixviz.anchor"
VERSION = 1
QUICK = MeasureSettings(windows=8, seqlen=512, heldout=0)  # one forward pass of 4 k tokens


@dataclass(frozen=True)
class Anchor:
    """KLD (nats per token, mean over ``windows`` windows of ``seqlen`` tokens, with its
    standard error over windows) of the model quantized to ``layers``, whose profile
    prediction (Σ score) is ``predicted_loss``, at ``avg_bits``."""

    avg_bits: float
    predicted_loss: float
    kld: float
    kld_se: float
    windows: int
    seqlen: int
    layers: dict[str, str]

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> Anchor:
        if d.get("format") != FORMAT or d.get("version") != VERSION:
            raise MixvizError(f"not a {FORMAT} v{VERSION} file")
        return cls(**{k: v for k, v in d.items() if k not in ("format", "version")})


def anchor_dir(profile) -> Path:
    return cache_dir() / "anchor" / profile.key


def anchor_path(profile, layers: dict[str, str], where: MeasureSettings = QUICK) -> Path:
    """Where the anchor of ``layers`` is cached: a digest of what changes it."""
    from mixviz.models.text import calibration_text

    doc = {
        "layers": sorted(layers.items()),
        "measure": asdict(where),
        "calib_hash": calibration_text(where.calib).hash,
        "version": VERSION,
    }
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]
    return anchor_dir(profile) / f"{digest}.json"


def cached_anchors(profile) -> list[Anchor]:
    """Every anchor measured for ``profile`` (unreadable files are skipped, never trusted)."""
    folder = anchor_dir(profile)
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            out.append(Anchor.from_dict(read_json(path, "anchor")))
        except (MixvizError, TypeError):
            continue
    return out


def measure_anchor(
    profile,
    allocation,
    where: MeasureSettings = QUICK,
    progress: Callable[[str], None] | None = None,
) -> Anchor:
    """The anchor of ``allocation`` (its layers' options), measured once and cached."""
    path = anchor_path(profile, allocation.layers, where)
    if path.is_file():
        try:
            return Anchor.from_dict(read_json(path, "anchor"))
        except (MixvizError, TypeError):
            pass  # measured again below
    say = progress or (lambda msg: None)
    measure = calibration_measure(profile, where, say)[3]
    say("KLD of the allocation")
    m = measure(dict(allocation.layers))
    anchor = Anchor(
        float(allocation.avg_bits),
        float(allocation.predicted_loss),
        float(m.mean),
        float(m.se),
        where.windows,
        where.seqlen,
        dict(allocation.layers),
    )
    atomic_write_json(path, anchor.to_dict())
    return anchor

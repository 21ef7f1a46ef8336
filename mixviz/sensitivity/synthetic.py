"""Synthetic profiles: real layer shapes with random but plausible scores, for benchmarks and
tests of what comes after profiling (no model is loaded)."""

from __future__ import annotations

from mixviz.models.inventory import Layer, fused_group, kind_of
from mixviz.models.schemes import parse_options
from mixviz.sensitivity.profile import Calib, Profile, Row


def synthetic_profile(
    shapes: dict[str, tuple[int, int]],
    n_blocks: int,
    options: list[str],
    seed: int = 0,
    model: str = "synthetic",
) -> Profile:
    """A Profile with real layer shapes and random but plausible scores (for benchmarks/tests).

    ``shapes`` maps a block-relative name (``self_attn.q_proj``) to (in, out). Each layer gets a
    log-normal sensitivity; an option's score is ``sensitivity · numel · 4^-bits`` (RTN noise).

    >>> p = synthetic_profile({"mlp.down_proj": (128, 64)}, 2, ["W2A16", "W4A16"])
    >>> len(p.rows)
    4
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    schemes = parse_options(options)
    layers, rows = [], []
    for b in range(n_blocks):
        for rel, (i, o) in shapes.items():
            kind = kind_of(rel)
            x = Layer(f"model.layers.{b}.{rel}", b, kind, i, o, i * o, fused_group(kind))
            layers.append(x)
            sens = float(rng.lognormal(0.0, 1.0))
            for s in schemes:
                score = 0.0 if s.bits >= 16 else sens * x.numel * 4.0 ** (-s.bits)
                rows.append(Row.of(x, s, score if s.available_for(i) else None))
    cal = Calib("synthetic", f"seed{seed}", 0, 0)
    return Profile(
        model,
        f"synthetic-{seed}",
        "synthetic",
        tuple(s.name for s in schemes),
        cal,
        0.0,
        tuple(layers),
        tuple(rows),
        {},
        None,
    )


QWEN3_32B_SHAPES = {
    "self_attn.q_proj": (5120, 8192),
    "self_attn.k_proj": (5120, 1024),
    "self_attn.v_proj": (5120, 1024),
    "self_attn.o_proj": (8192, 5120),
    "mlp.gate_proj": (5120, 25600),
    "mlp.up_proj": (5120, 25600),
    "mlp.down_proj": (25600, 5120),
}

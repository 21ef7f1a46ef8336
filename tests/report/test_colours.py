"""One colour per series that no other shares, nor nearly: "pure MXFP4" and "optimal" were two
near-identical blues (pure had none of its own), Q4_K_M and autoscheme one pink."""

from __future__ import annotations

import itertools

from mixviz.allocation.strategies import STRATEGIES
from mixviz.report.colours import SERIES_COLOURS, strategy_colour

MIN_DISTANCE = 60  # Euclidean, in 0–255 RGB: tab10's closest pair (blue, cyan) is 76


def _rgb(hex_colour: str) -> tuple[int, ...]:
    h = hex_colour.lstrip("#")
    return tuple(int(h[i : i + 2], 16) for i in (0, 2, 4))


def test_every_series_has_a_colour_no_other_comes_near():
    names = [*STRATEGIES, *SERIES_COLOURS, "pure MXFP4"]
    colours = {n: strategy_colour(n) for n in names}
    assert all(colours.values()), [n for n, c in colours.items() if not c]
    distinct = {n: c for n, c in colours.items() if n != "pure"}  # "pure MXFP4" is pure's
    for (a, ca), (b, cb) in itertools.combinations(distinct.items(), 2):
        d = sum((x - y) ** 2 for x, y in zip(_rgb(ca), _rgb(cb), strict=True)) ** 0.5
        assert d >= MIN_DISTANCE, f"{a} {ca} and {b} {cb} are {d:.0f} apart"

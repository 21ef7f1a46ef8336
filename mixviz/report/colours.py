"""Colours shared by every chart and table: one per format (a viridis ramp by bits), one per
strategy, and the text colour that reads on each."""

from __future__ import annotations

from mixviz.allocation.strategies import STRATEGIES
from mixviz.models.schemes import SCHEMES, get_scheme


def _format_colours() -> dict[str, str]:
    """Every scheme's colour: a viridis ramp (colour-blind safe, light = more bits) over all
    schemes ordered by bits, so a format has one colour on every page and in every chart."""
    from plotly.colors import sample_colorscale

    order = sorted(SCHEMES, key=lambda o: (get_scheme(o).bits, o))
    ramp = sample_colorscale("Viridis", [i / max(len(order) - 1, 1) for i in range(len(order))])
    return dict(zip(order, ramp, strict=True))


FORMAT_COLOURS = _format_colours()


def format_colour(option: str) -> str:
    """``format_colour("MXFP4")`` → ``'rgb(…)'``, the same wherever MXFP4 is drawn."""
    return FORMAT_COLOURS.get(get_scheme(option).name, "rgb(127, 127, 127)")


def text_colour(background: str) -> str:
    """Black or white, whichever reads on ``background`` (an ``rgb(r, g, b)`` string)."""
    r, g, b = (int(float(v)) for v in background[4:-1].split(","))
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "white"


def format_legend_html(options) -> str:
    """A one-line legend of format swatches, fewest bits first (for the grid view)."""
    order = sorted(set(options), key=lambda o: (get_scheme(o).bits, o))
    chips = " ".join(
        f'<span style="background:{format_colour(o)};color:{text_colour(format_colour(o))};'
        f'padding:1px 8px;margin-right:6px;border-radius:3px;font-size:0.85em">{o}</span>'
        for o in order
    )
    return f'<div class="mixviz-legend">{chips}</div>'


SERIES_COLOURS = {  # series that are no strategy; each colour used once (tested)
    "bf16": "#000000",
    "autoscheme": "#d62728",
    "pure": "#7f7f7f",  # every layer in the cheapest format ("pure MXFP4")
    "refined (measured rounds)": "#000080",
}


def strategy_colour(name: str) -> str | None:
    """The line colour of a strategy (its :data:`~mixviz.allocation.strategies.STRATEGIES`
    entry) or of another series in :data:`SERIES_COLOURS` (``pure MXFP4`` is ``pure``'s);
    None for any other name.

    >>> strategy_colour("pure MXFP4") == SERIES_COLOURS["pure"] != strategy_colour("optimal")
    True
    """
    if name in STRATEGIES:
        return STRATEGIES[name].colour
    if name.startswith("pure "):
        return SERIES_COLOURS["pure"]
    return SERIES_COLOURS.get(name)

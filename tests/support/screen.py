"""What an AppTest page shows as text: every message, caption, metric and table cell (a styled
table's cells as displayed), for checks such as "no raw None or nan on screen"."""

from __future__ import annotations

import re

import pyarrow as pa

RAW = re.compile(r"(?<![\w.])(None|nan|NaN|<NA>|NaT)(?![\w.])")


def table_cells(element) -> list[str]:
    """A dataframe's cells as shown: the styler's display values where it has them."""
    styler = element.proto.arrow_data.styler
    if styler.display_values:
        frame = pa.ipc.open_stream(styler.display_values).read_pandas()
    else:
        frame = element.value
    return [str(v) for v in frame.astype(object).to_numpy().ravel()] + [str(c) for c in frame]


def screen_text(at) -> list[str]:
    """Every piece of text the page's elements show, one string each."""
    texts = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "text", "code"):
        texts += [e.value for e in getattr(at, kind)]
    for kind in ("error", "warning", "info", "success"):
        texts += [e.value for e in getattr(at, kind)]
    for m in at.metric:
        texts += [m.label, str(m.value), str(m.proto.delta)]
    for frame in at.dataframe:
        texts += table_cells(frame)
    return texts


def raw_values(at) -> list[str]:
    """The pieces of text that show a raw ``None`` / ``nan`` (a value never formatted)."""
    return [t for t in screen_text(at) if RAW.search(t or "")]

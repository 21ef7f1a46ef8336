"""Real English text for calibration and evaluation: Python's own ``pydoc_data.topics``.

The bundled text is split by topic into two disjoint parts, deterministically: every fourth
topic (sorted by name, starting at the second) is *evaluation*, the rest *calibration*. Some
topics quote others, so every paragraph that also appears in an evaluation topic is removed from
the calibration part. Users may bring their own text as a ``.txt`` file or a ``.jsonl`` file with
a ``text`` field, of at most ``MAX_BYTES`` (20 MB, the app's upload limit).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from mixviz.errors import MixvizError
from mixviz.paths import MAX_BYTES

BUNDLED = "pydoc"


@dataclass(frozen=True)
class Corpus:
    """A named text and its hash (the hash keys every cache that used it).

    ``records`` holds the separate texts of a ``.jsonl`` file: each is one calibration sample,
    as auto-round treats them.
    """

    source: str
    text: str
    records: tuple[str, ...] = ()

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    def __repr__(self) -> str:  # the text is long; keep reprs readable
        return f"Corpus(source={self.source!r}, chars={len(self.text)}, hash={self.hash})"


@cache
def _pydoc_split() -> tuple[tuple[str, ...], tuple[str, ...]]:
    from pydoc_data.topics import topics

    names = sorted(topics)
    evaluation = tuple(topics[n] for i, n in enumerate(names) if i % 4 == 1)
    seen = {p.strip() for doc in evaluation for p in _paragraphs(doc)}
    calibration = tuple(
        "\n\n".join(p for p in _paragraphs(topics[n]) if p.strip() not in seen)
        for i, n in enumerate(names)
        if i % 4 != 1
    )
    return calibration, evaluation


def _paragraphs(doc: str) -> list[str]:
    return [p for p in doc.split("\n\n") if p.strip()]


def calibration_text(source: str | Path = BUNDLED) -> Corpus:
    """The calibration part of the bundled text, or the user's own file.

    >>> calibration_text().source
    'pydoc'
    """
    if str(source) == BUNDLED:
        return Corpus(BUNDLED, "\n\n".join(_pydoc_split()[0]))
    return load_user_text(source)


def evaluation_text() -> Corpus:
    """The evaluation part of the bundled text: never used for calibration."""
    return Corpus(f"{BUNDLED}:eval", "\n\n".join(_pydoc_split()[1]))


def evaluation_documents() -> tuple[str, ...]:
    """The evaluation part as separate documents (one per pydoc topic)."""
    return _pydoc_split()[1]


def load_user_text(path: str | Path) -> Corpus:
    """Read a ``.txt`` file, or the ``text`` fields of a ``.jsonl`` file, with precise errors.

    Files over ``MAX_BYTES`` are refused (checked before reading, and while reading for files
    that grow or report no size)."""
    p = Path(path)
    if not p.is_file():
        raise MixvizError(f"text file not found: {p} (give 'pydoc' or a .txt / .jsonl file)")
    if p.suffix not in (".txt", ".jsonl"):
        raise MixvizError(
            f"unsupported text file {p.name}: use .txt, or .jsonl with a 'text' field"
        )
    raw = _read_capped(p)
    if p.suffix == ".jsonl":
        parts = _jsonl_texts(p.name, raw)
        if not any(t.strip() for t in parts):
            raise MixvizError(f"{p.name} holds no text")
        return Corpus(str(p), "\n\n".join(parts), tuple(parts))
    if not raw.strip():
        raise MixvizError(f"{p.name} holds no text")
    return Corpus(str(p), raw)


def _read_capped(p: Path) -> str:
    """The UTF-8 text of ``p``, refused when over ``MAX_BYTES`` (before and while reading)."""
    too_big = MixvizError(
        f"text file {p.name} is larger than the {_size(MAX_BYTES)} limit: give a smaller file"
    )
    try:
        if p.stat().st_size > MAX_BYTES:
            raise too_big
        with p.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise MixvizError(f"cannot read text file {p}: {e.strerror or e}") from None
    if len(data) > MAX_BYTES:
        raise too_big
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MixvizError(f"{p.name} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _jsonl_texts(name: str, raw: str) -> list[str]:
    """The ``text`` field of every non-blank line of a ``.jsonl`` file named ``name``."""
    parts = []
    for lineno, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise MixvizError(f"{name} line {lineno}: not JSON ({e.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise MixvizError(f"{name} line {lineno}: no string 'text' field")
        parts.append(rec["text"])
    return parts


def _size(n: int) -> str:
    """``20 MB`` for whole megabytes, else bytes (a test may lower the cap)."""
    return f"{n >> 20} MB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n} bytes"


def token_windows(tokenizer, corpus: Corpus, nsamples: int, seqlen: int):
    """``nsamples`` windows of ``seqlen`` tokens, as a LongTensor ``[nsamples, seqlen]``.

    Plain text gives contiguous, non-overlapping windows. A ``.jsonl`` corpus gives one window
    per record, as auto-round does: records shorter than ``seqlen`` are skipped, longer ones
    truncated. Raises a clear error when the text is too short (auto-round would
    ``sys.exit`` instead).
    """
    import torch

    if nsamples < 1 or seqlen < 2:
        raise MixvizError(f"need nsamples >= 1 and seqlen >= 2 (got {nsamples}, {seqlen})")
    if corpus.records:
        rows = []
        for rec in corpus.records:
            ids = tokenizer(rec, add_special_tokens=False, verbose=False)["input_ids"]
            if len(ids) >= seqlen:
                rows.append(ids[:seqlen])
            if len(rows) == nsamples:
                return torch.tensor(rows, dtype=torch.long)
        raise MixvizError(
            f"calibration file {corpus.source!r} has {len(rows)} records of at least {seqlen} "
            f"tokens, but {nsamples} are needed; give more text, fewer samples or a shorter seqlen"
        )
    ids = tokenizer(corpus.text, add_special_tokens=False, verbose=False)["input_ids"]
    have = len(ids) // seqlen
    if have < nsamples:
        raise MixvizError(
            f"calibration text {corpus.source!r} has {len(ids)} tokens: "
            f"{have} windows of {seqlen}, but {nsamples} are needed; "
            "give more text, fewer samples or a shorter seqlen"
        )
    t = torch.tensor(ids[: nsamples * seqlen], dtype=torch.long)
    return t.view(nsamples, seqlen)

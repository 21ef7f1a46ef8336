"""Calibration and evaluation text: deterministic, disjoint, real; user files with clear errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mixviz import MixvizError, calibration_text, evaluation_text, load_user_text
from mixviz.models.text import evaluation_documents, token_windows


def test_bundled_split_is_disjoint_deterministic_and_large():
    from pydoc_data.topics import topics

    cal, ev = calibration_text(), evaluation_text()
    assert len(cal.text) > 250_000 and len(ev.text) > 100_000

    # The split as documented, computed here from pydoc_data.topics: topics sorted by name,
    # every fourth starting at the second (index 1, 5, 9, …) is evaluation; the others are
    # calibration, less every paragraph that also appears in an evaluation topic.
    names = sorted(topics)
    expected_eval = [topics[n] for n in names[1::4]]
    assert len(expected_eval) == (len(names) + 2) // 4  # 79 topics on 3.11 → 20
    assert list(evaluation_documents()) == expected_eval
    assert ev.text == "\n\n".join(expected_eval)
    in_eval = {p.strip() for doc in expected_eval for p in doc.split("\n\n")}
    kept = [
        "\n\n".join(p for p in topics[n].split("\n\n") if p.strip() and p.strip() not in in_eval)
        for i, n in enumerate(names)
        if i % 4 != 1
    ]
    assert len(kept) == len(names) - len(expected_eval)
    assert cal.text == "\n\n".join(kept)
    assert "assert" in cal.text  # the first topic is calibration

    # disjoint: no evaluation document, nor any of its paragraphs, is in calibration
    cal_paragraphs = {p.strip() for p in cal.text.split("\n\n")}
    for doc in expected_eval:
        assert doc not in cal.text
        for p in doc.split("\n\n"):
            assert p.strip() not in cal_paragraphs or not p.strip()

    # deterministic across processes (another hash seed, no shared cache): same hashes
    code = (
        "from mixviz.models.text import calibration_text, evaluation_text;"
        "print(calibration_text().hash, evaluation_text().hash)"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            cwd=Path(__file__).resolve().parents[2],
        ).stdout.split()
        assert out == [cal.hash, ev.hash]
    assert cal.hash == hashlib.sha256(cal.text.encode()).hexdigest()[:16]


def test_user_text_files(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("hello world")
    assert load_user_text(txt).text == "hello world"
    jl = tmp_path / "a.jsonl"
    jl.write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
    assert load_user_text(jl).text == "one\n\ntwo"
    assert calibration_text(str(jl)).source == str(jl)


@pytest.mark.parametrize(
    "name, body, message",
    [
        ("bad.jsonl", '{"text": "ok"}\nnot json\n', "line 2: not JSON"),
        ("bad.jsonl", '{"txt": "ok"}\n', "line 1: no string 'text' field"),
        ("empty.txt", "   \n", "holds no text"),
        ("x.csv", "a,b", "unsupported text file"),
    ],
)
def test_user_text_errors(tmp_path, name, body, message):
    p = tmp_path / name
    p.write_text(body)
    with pytest.raises(MixvizError, match=message):
        load_user_text(p)


def test_missing_text_file():
    with pytest.raises(MixvizError, match="text file not found"):
        load_user_text("/nonexistent/calib.txt")


def test_token_windows_and_too_short_text(tmp_path, tiny_ref):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_ref.path)
    ids = token_windows(tok, calibration_text(), nsamples=4, seqlen=64)
    assert tuple(ids.shape) == (4, 64)
    short = tmp_path / "short.txt"
    short.write_text("a few words only")
    with pytest.raises(MixvizError, match="windows of 256, but 16 are needed"):
        token_windows(tok, load_user_text(short), nsamples=16, seqlen=256)

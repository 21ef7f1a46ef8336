"""The bundled lm-eval tasks (mixviz/tasks.py): item counts, no leak from the calibration text,
deterministic distractors, and lm-eval's numbers equal to a direct computation on ``tiny``."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mixviz.models.text import calibration_text, evaluation_documents, evaluation_text
from mixviz.runs.evaluation.tasks import (
    _content,
    _sentences,
    lastword_items,
    nextsent_items,
    ppl_items,
    prose_paragraphs,
    tasks_dir,
)

REPO = Path(__file__).resolve().parents[2]

# The bundled text is ``pydoc_data.topics`` of the running Python, so the counts belong to one
# text: Python 3.11.7's, whose evaluation part hashes to 816cd966c7fb58f6. Where they come from:
# - 79 pydoc topics; every fourth, sorted by name, from the second (indices 1, 5, …, 77) is
#   evaluation: 20 documents;
# - 207 distinct prose paragraphs in them (≥ 15 words, > 85 % letters or spaces, no code, grammar or
#   lists) → 207 ``mixviz_ppl`` items, one per paragraph;
# - 189 ``mixviz_lastword`` passages: sentences gathered until ≥ 20 words that end in an
#   alphabetic word of ≥ 3 letters (the target);
# - 240 ``mixviz_nextsent`` items: one per pair of consecutive sentences (≥ 4 words each) whose
#   second sentence, the true ending, has ≥ 5 words.
# Another Python's topics give other numbers: there the exact check is skipped, not failed.
COUNTS = {
    "816cd966c7fb58f6": {
        "documents": 20,
        "paragraphs": 207,  # 224 before repeated paragraphs were dropped
        "mixviz_ppl": 207,
        "mixviz_lastword": 244,
        "mixviz_nextsent": 240,
    }
}


def _normalised(text: str) -> str:
    return " ".join(text.split())


def _item_texts(name: str, item: dict) -> list[str]:
    """The evaluation text one item shows the model (with its true answer)."""
    if name == "mixviz_ppl":
        return [item["text"]]
    if name == "mixviz_lastword":
        return [item["context"] + " " + item["target"]]
    return [item["context"] + " " + item["choices"][item["label"]]]


def test_item_counts():
    counts = COUNTS.get(evaluation_text().hash)
    if counts is None:
        pytest.skip(f"counts known for Python 3.11.7's pydoc topics, not {sys.version.split()[0]}")
    assert len(evaluation_documents()) == counts["documents"]
    assert len(prose_paragraphs()) == counts["paragraphs"]
    assert len(ppl_items()) == counts["mixviz_ppl"]
    assert len(lastword_items()) == counts["mixviz_lastword"]
    assert len(nextsent_items()) == counts["mixviz_nextsent"]
    # what lm-eval reads: the JSONL files beside the YAML, one item a line
    folder = tasks_dir()
    for name in ("mixviz_ppl", "mixviz_lastword", "mixviz_nextsent"):
        lines = (folder / f"{name}.jsonl").read_text().splitlines()
        assert len(lines) == counts[name], name
        assert [json.loads(x) for x in lines] == _content()[name]


def test_every_item_is_absent_from_the_calibration_text():
    cal = _normalised(calibration_text().text)
    for name, items in _content().items():
        for item in items:
            for text in _item_texts(name, item):
                assert text not in cal, (name, text[:80])
    # A stronger check against leaks: no run of 24 words of any evaluation paragraph appears in
    # the calibration text. (Near-duplicates exist up to 20 words: the evaluation topic on
    # "return" and the calibration topic on "break" share "passes control out of a "try"
    # statement with a "finally" clause, that "finally" clause is executed before really
    # leaving the …".)
    n = 24
    words = calibration_text().text.split()
    runs = {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}
    for para in prose_paragraphs():
        w = para.split()
        shared = [i for i in range(len(w) - n + 1) if tuple(w[i : i + n]) in runs]
        assert not shared, " ".join(w[shared[0] : shared[0] + n]) if shared else ""


def test_items_are_the_evaluation_text():
    """Every item is cut from the evaluation part (whitespace normalised)."""
    ev = _normalised(evaluation_text().text)
    for name, items in _content().items():
        for item in items:
            for text in _item_texts(name, item):
                assert text in ev, (name, text[:80])


def _digest() -> str:
    return hashlib.sha256(json.dumps(_content(), sort_keys=True).encode()).hexdigest()


def test_generation_is_deterministic_across_processes():
    """Two generations give identical items, in this process and in a fresh one with another
    hash seed (set iteration order must not leak into the items)."""
    assert lastword_items() == lastword_items()
    assert nextsent_items() == nextsent_items()
    assert ppl_items() == ppl_items()
    code = (
        "import hashlib, json; from mixviz.runs.evaluation.tasks import _content; "
        "print(hashlib.sha256(json.dumps(_content(), sort_keys=True).encode()).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)}
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == _digest()


def _true_successors() -> dict[str, set[str]]:
    """sentence → every sentence that follows it in some evaluation paragraph."""
    out: dict[str, set[str]] = {}
    for para in prose_paragraphs():
        sents = _sentences(para)
        for a, b in zip(sents, sents[1:], strict=False):
            out.setdefault(a, set()).add(b)
    return out


def test_nextsent_distractors_are_seeded_evaluation_sentences():
    items = nextsent_items()
    follows = _true_successors()
    sentences = {s for para in prose_paragraphs() for s in _sentences(para)}
    for x in items:
        assert len(x["choices"]) == 4 and 0 <= x["label"] < 4
        assert all(c == c.strip() for c in x["choices"])  # lm-eval adds the one space
        assert x["choices"][x["label"]].strip() in follows[x["context"]]
        # every distractor is a sentence of the evaluation prose (never calibration text)
        assert all(c.strip() in sentences for c in x["choices"])
    assert {x["label"] for x in items} == {0, 1, 2, 3}
    # the seed picks the distractors and labels; the contexts stay
    other = nextsent_items(seed=7)
    assert [x["context"] for x in other] == [x["context"] for x in items]
    assert other != items
    assert nextsent_items(seed=7) == other


def test_no_distractor_equals_the_true_ending():
    bad = [
        x
        for x in nextsent_items()
        if x["choices"].count(x["choices"][x["label"]]) > 1 or len(set(x["choices"])) < 4
    ]
    assert not bad, f"{len(bad)} items, e.g. {bad[0]['context'][:80]!r}"


def test_no_item_is_repeated():
    for name, items in _content().items():
        texts = [t for x in items for t in _item_texts(name, x)]
        assert len(set(texts)) == len(texts), name


def test_nextsent_continuations_are_scored_with_one_space():
    from mixviz.runs.evaluation.tasks import task_manager

    task = task_manager(["mixviz_nextsent"]).load(["mixviz_nextsent"])["tasks"]["mixviz_nextsent"]
    doc = task.eval_docs[0]
    requests = task.construct_requests(doc, task.fewshot_context(doc, 0), metadata=("t", 0, 1))
    for r in requests:
        context, continuation = r.args
        assert re.match(r"^ \S", continuation), repr(continuation[:20])


def test_lastword_targets_end_their_passage():
    for x in lastword_items():
        assert x["target"].isalpha() and len(x["target"]) >= 3
        assert len(x["context"].split()) >= 19 and not x["context"].endswith(" ")


# --------------------------------------------------------------------------- lm-eval's numbers


def rolling_loglikelihood(model, tok, text: str) -> float:
    """log p(text) as lm-eval's ``loglikelihood_rolling`` defines it for a short text: the
    tokens (no special tokens) predicted one by one after the BOS token."""
    import torch

    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert 0 < len(ids) < 2048  # one window: the tiny model's context is 2048 tokens
    inp = torch.tensor([[tok.bos_token_id, *ids[:-1]]])
    with torch.no_grad():
        logp = torch.log_softmax(model(inp).logits[0].double(), dim=-1)
    return float(logp[torch.arange(len(ids)), torch.tensor(ids)].sum())


def lastword_direct(model, tok, items: list[dict]) -> dict[str, float]:
    """``mixviz_lastword``'s perplexity and acc computed here, as lm-eval's ``loglikelihood``
    defines them: the continuation " target" tokenised with its context (the context's own
    tokens are a prefix), log p of its tokens after the context's; acc when every one of them
    is the greedy choice; perplexity = exp(−mean log p)."""
    import torch

    lls, greedy = [], []
    for x in items:
        ctx = tok(x["context"], add_special_tokens=False)["input_ids"]
        whole = tok(x["context"] + " " + x["target"], add_special_tokens=False)["input_ids"]
        assert whole[: len(ctx)] == ctx
        cont = whole[len(ctx) :]
        with torch.no_grad():
            logits = model(torch.tensor([whole[:-1]])).logits[0, len(ctx) - 1 :].double()
        logp = torch.log_softmax(logits, dim=-1)
        lls.append(float(logp[torch.arange(len(cont)), torch.tensor(cont)].sum()))
        greedy.append(logits.argmax(-1).tolist() == cont)
    return {"perplexity": math.exp(-sum(lls) / len(lls)), "acc": sum(greedy) / len(greedy)}


def test_lm_eval_numbers_equal_a_direct_computation(tiny_ref, monkeypatch):
    """lm-eval's word_perplexity, byte_perplexity and bits_per_byte of ``mixviz_ppl``
    (exp(−Σ log p / Σ words) …) and the perplexity and acc of ``mixviz_lastword`` on the first
    items equal the same numbers computed here from the model's logits. The machine's
    environment is collected once for both tasks, and both results carry it."""
    import torch.utils.collect_env as collect_env

    from mixviz.models.loading import load_model
    from mixviz.runs.evaluation.evaluate import evaluate, result_rows
    from mixviz.runs.runspec import RunSpec

    collected: list[int] = []
    monkeypatch.setattr(
        collect_env, "get_pretty_env_info", lambda: collected.append(1) or "the machine"
    )
    limit = 3
    model, tok = load_model(tiny_ref)
    spec = RunSpec(model="tiny", recipe=None, tasks=("mixviz_ppl", "mixviz_lastword"), limit=limit)
    raw = evaluate(model, tok, spec, lambda *progress: None)
    assert len(collected) == 1
    assert [raw[t]["pretty_env_info"] for t in spec.tasks] == ["the machine"] * 2
    rows = result_rows(raw)
    got = {(t, m): v for t, m, v, _ in rows}
    texts = [x["text"] for x in ppl_items()[:limit]]
    ll = sum(rolling_loglikelihood(model, tok, t) for t in texts)
    words = sum(len(t.split()) for t in texts)
    nbytes = sum(len(t.encode()) for t in texts)
    assert got["mixviz_ppl", "word_perplexity"] == pytest.approx(math.exp(-ll / words), rel=1e-4)
    assert got["mixviz_ppl", "byte_perplexity"] == pytest.approx(math.exp(-ll / nbytes), rel=1e-4)
    assert got["mixviz_ppl", "bits_per_byte"] == pytest.approx(-ll / nbytes / math.log(2), rel=1e-4)
    direct = lastword_direct(model, tok, lastword_items()[:limit])
    assert got["mixviz_lastword", "perplexity"] == pytest.approx(direct["perplexity"], rel=1e-4)
    assert got["mixviz_lastword", "acc"] == direct["acc"]
    assert got["mixviz_lastword", "items"] == got["mixviz_ppl", "items"] == limit

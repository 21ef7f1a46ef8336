"""ScoringLM (shared contexts, covered requests, scored positions only) against lm-eval's own
HFLM on ``tiny``: the same log-likelihoods and greedy flags, request by request."""

from __future__ import annotations

import pytest

pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def lms(tiny_ref):
    from lm_eval.models.huggingface import HFLM

    from mixviz.models.loading import load_model
    from mixviz.runs.evaluation.lm import scoring_lm

    model, tok = load_model(tiny_ref, dtype="float32", device="cpu")
    plain = HFLM(pretrained=model, tokenizer=tok, batch_size=4, device="cpu")
    return plain, scoring_lm(model, tok, batch_size=4)


def _requests(tok, pairs) -> list:
    return [((c, x), tok(c)["input_ids"], tok(x)["input_ids"]) for c, x in pairs]


def _spy(monkeypatch, lm, name: str) -> list[list[int]]:
    """Record the request indices each call of ``lm.<name>`` answers."""
    calls: list[list[int]] = []
    inner = getattr(lm, name)

    def spy(requests, rows):
        out = inner(requests, rows)
        calls.append(sorted(out))
        return out

    monkeypatch.setattr(lm, name, spy)
    return calls


def _assert_same(got, want) -> None:
    assert [g for _, g in got] == [w for _, w in want]
    assert [g for g, _ in got] == pytest.approx([w for w, _ in want], rel=1e-5, abs=1e-5)


def test_covered_requests_score_as_lm_evals_own(lms, monkeypatch):
    """LAMBADA-style: every sentence end of a paragraph is a request whose input is a prefix of
    the next one's; they are read off one pass, at their own positions."""
    plain, scoring = lms
    para = "The fox ran. The dog slept all day long. Then the cat came home at last"
    ends = [i for i, ch in enumerate(para) if ch == "."] + [len(para)]
    pairs = []
    for end in ends:
        context, word = para[:end].rsplit(" ", 1)
        pairs.append((context, " " + word))
    pairs += [
        ("A", " very long continuation that takes many tokens to spell out in full"),
        ("Numbers 1 2 3 and", " 4 5 6 7"),
    ]
    reqs = _requests(scoring.tokenizer, pairs)
    # lm-eval pads with token 0: a real input ending in token 0 must read its own positions
    reqs += [(("ends in pad", " z"), [7, 9, 0], [11, 0]), (("prefix of it", " y"), [7], [9])]
    calls = _spy(monkeypatch, scoring, "_score_covered")
    got = scoring._loglikelihood_tokens(reqs, disable_tqdm=True)
    _assert_same(got, plain._loglikelihood_tokens(reqs, disable_tqdm=True))
    answered = sorted(i for call in calls for i in call)
    assert answered == list(range(len(reqs)))
    assert len(calls) < len(reqs) // 4 + 1  # fewer rows than requests: covered ones shared


def test_shared_contexts_score_as_lm_evals_own(lms, monkeypatch):
    """Multiple-choice requests (one context, continuations of different lengths) run the
    context once, from its KV cache; continuations of contexts of different lengths share a
    batch."""
    plain, scoring = lms
    items = [  # batch size 4: continuations of different contexts share a batch
        ("The cat sat on the mat and then it", [" slept", " ran away quickly"]),
        ("Why", [" not", " is the sky blue today"]),
        (
            "In a long and winding paragraph about nothing much, the author finally said",
            [" yes", " perhaps we should wait and see what happens next"],
        ),
        ("Three choices here", [" one", " two more", " three"]),
        ("A", [" b", " c"]),  # a one-token context: not shared
    ]
    reqs = _requests(scoring.tokenizer, [(c, x) for c, xs in items for x in xs])
    reqs.insert(3, _requests(scoring.tokenizer, [("solo", " one")])[0])
    calls = _spy(monkeypatch, scoring, "_score_shared")
    got = scoring._loglikelihood_tokens(reqs, disable_tqdm=True)
    _assert_same(got, plain._loglikelihood_tokens(reqs, disable_tqdm=True))
    assert calls == [[0, 1, 2, 4, 5, 6, 7, 8, 9]]  # every shared context's cache at once


def test_truncated_requests_take_lm_evals_path(lms, monkeypatch):
    plain, scoring = lms
    reqs = _requests(
        scoring.tokenizer, [("one two three four five six seven eight nine ten", " eleven")]
    )
    for lm in (plain, scoring):
        monkeypatch.setattr(lm, "_max_length", 6)
    calls = _spy(monkeypatch, scoring, "_score_covered")
    got = scoring._loglikelihood_tokens(reqs, disable_tqdm=True)
    _assert_same(got, plain._loglikelihood_tokens(reqs, disable_tqdm=True))
    assert calls == []


def test_coverings_group_prefixes_under_the_longest():
    from mixviz.runs.evaluation.lm import ScoringLM

    reqs = [(None, [1], [2, 9]), (None, [1, 2], [3, 9]), (None, [1, 2], [4, 9]), (None, [5], [6])]
    # inputs (context + continuation[:-1]): [1,2], [1,2,3], [1,2,4], [5]
    got = ScoringLM._coverings(reqs, [0, 1, 2, 3])
    assert sorted((tuple(t), sorted(m)) for t, m in got) == [
        ((1, 2, 3), [0, 1]),
        ((1, 2, 4), [2]),
        ((5,), [3]),
    ]

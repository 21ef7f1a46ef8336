"""ScoringLM (logits only at the scored positions) against lm-eval's own HFLM on ``tiny``."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def lms(tiny_ref):
    from lm_eval.models.huggingface import HFLM

    from mixviz.models.loading import load_model
    from mixviz.runs.lm import scoring_lm

    model, tok = load_model(tiny_ref, dtype="float32", device="cpu")
    plain = HFLM(pretrained=model, tokenizer=tok, batch_size=4, device="cpu")
    return plain, scoring_lm(model, tok, batch_size=4)


def _requests(tok) -> list:
    texts = [
        ("The quick brown fox jumps over the lazy", " dog"),
        ("A", " very long continuation that takes many tokens to spell out in full"),
        ("Short context.", " Two words"),
        ("One more paragraph of context that is a fair bit longer than the others here,", " x"),
        ("Numbers 1 2 3 and", " 4 5 6 7"),
    ]
    reqs = [((c, x), tok(c)["input_ids"], tok(x)["input_ids"]) for c, x in texts]
    # lm-eval pads with token 0: a real input that ends in token 0 must still be matched
    reqs.append((("ends in pad", " z"), [7, 9, 0], [11, 0]))
    return reqs


def test_scores_equal_lm_evals_own(lms):
    plain, scoring = lms
    reqs = _requests(scoring.tokenizer)
    calls: list[tuple[int, int | None]] = []
    inner = scoring.positions_to_keep

    def spy(inps):
        keep = inner(inps)
        calls.append((inps.shape[1], keep))
        return keep

    scoring.positions_to_keep = spy
    try:
        got = scoring._loglikelihood_tokens(reqs, disable_tqdm=True)
    finally:
        del scoring.positions_to_keep
    want = plain._loglikelihood_tokens(reqs, disable_tqdm=True)
    assert [g for _, g in got] == [w for _, w in want]
    assert [g for g, _ in got] == pytest.approx([w for w, _ in want], rel=1e-5, abs=1e-5)
    # it did trim: some batch returned fewer positions than it was wide
    assert any(keep is not None and keep < width for width, keep in calls), calls


def test_positions_to_keep_covers_every_rows_continuation(lms):
    _, scoring = lms
    scoring._tails = {(5, 6, 7, 8): 2, (5, 6): 1, (3, 0): 1}
    try:
        # widths 6: row 1 needs 6-4+2 = 4, row 2 needs 6-2+1 = 5, row 3 (ends in 0) 6-2+1 = 5
        batch = torch.tensor([[5, 6, 7, 8, 0, 0], [5, 6, 0, 0, 0, 0], [3, 0, 0, 0, 0, 0]])
        assert scoring.positions_to_keep(batch) == 5
        assert scoring.positions_to_keep(batch[:1]) == 4
        # a row no request explains: keep everything
        assert scoring.positions_to_keep(torch.tensor([[9, 9, 0]])) is None
    finally:
        scoring._tails = None


def test_shared_contexts_score_as_lm_evals_own(lms):
    """Multiple-choice requests (one context, several continuations of different lengths)
    run the context once; the scores are lm-eval's."""
    plain, scoring = lms
    tok = scoring.tokenizer
    items = [  # batch size 4: the first two contexts (different lengths) share a chunk
        ("The cat sat on the mat and then it", [" slept", " ran away quickly"]),
        ("Why", [" not", " is the sky blue today"]),
        (
            "In a long and winding paragraph about nothing much, the author finally said",
            [" yes", " perhaps we should wait and see what happens next"],
        ),
        ("Three choices here", [" one", " two more", " three"]),
        ("A", [" b", " c"]),  # a one-token context: lm-eval's path
    ]
    reqs = [((c, x), tok(c)["input_ids"], tok(x)["input_ids"]) for c, xs in items for x in xs]
    reqs.insert(3, (("solo", " one"), tok("solo")["input_ids"], tok(" one")["input_ids"]))
    chunks: list[int] = []
    inner = scoring._score_chunk
    scoring._score_chunk = lambda r, chunk: (chunks.append(len(chunk)), inner(r, chunk))[1]
    try:
        got = scoring._loglikelihood_tokens(reqs, disable_tqdm=True)
    finally:
        del scoring._score_chunk
    want = plain._loglikelihood_tokens(reqs, disable_tqdm=True)
    assert [g for _, g in got] == [w for _, w in want]
    assert [g for g, _ in got] == pytest.approx([w for w, _ in want], rel=1e-5, abs=1e-5)
    assert sum(chunks) == 4 and max(chunks) == 2, chunks  # 4 shared contexts, 2 in a chunk

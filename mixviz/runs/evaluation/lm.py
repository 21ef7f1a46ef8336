"""lm-eval's HFLM as the worker drives it: progress per batch, no work on what is not scored.

lm-eval's ``_loglikelihood_tokens`` runs every request as its own padded row (context +
continuation), asks for the logits at every position and log-softmaxes all of them, although
it reads only the continuation's. :class:`ScoringLM` returns the same ``(log-likelihood,
is-greedy)`` per request with less work:

- **Shared contexts.** Requests with the same context (the choices of a multiple-choice item:
  HellaSwag-style ``mixviz_nextsent`` has 4) run the context once and each continuation from
  its KV cache — on ``mixviz_nextsent`` 37 % fewer tokens through the model.
- **Covered requests.** A request whose input is a prefix of another's (LAMBADA-style
  ``mixviz_lastword`` asks for every sentence end of a paragraph) is read off the longer one's
  pass — a causal model's logits at a position do not depend on what follows: 40 % fewer
  tokens on ``mixviz_lastword``.
- **Scored positions only.** The model is asked for the logits at the batch's scored
  positions (transformers' ``logits_to_keep``): for a paragraph and one word, that skips the
  ``lm_head`` projection and a 49 K-way softmax at all but a few positions.

``tests/runs/test_lm.py`` compares every path with lm-eval's own HFLM on ``tiny``. Models whose
``forward`` takes no ``logits_to_keep`` (or no cache and positions), requests lm-eval would
truncate and requests with an empty side take lm-eval's own path.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM

Answer = tuple[float, bool]


class ScoringLM(HFLM):
    """HFLM over an in-memory model that reports progress and skips unscored work.

    ``on_fraction(f)`` is called after every batch with the share of the current request list
    done.
    """

    on_fraction: Callable[[float], None] = staticmethod(lambda f: None)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._total, self._done = 1, 0
        forward = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward else "past_key_values"
        self._fast = (
            self.backend == "causal"
            and "logits_to_keep" in forward
            and self._cache_arg in forward
            and "position_ids" in forward
        )

    # ------------------------------------------------------------------ lm-eval's entry points

    def _start(self, n: int) -> None:
        self._total, self._done = max(n, 1), 0

    def _advance(self, n: int) -> None:
        self._done += n
        self.on_fraction(min(self._done / self._total, 1.0))

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        self._start(len(requests))
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        self._start(len(requests))
        return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)

    def _model_call(self, inps, attn_mask=None, labels=None):
        out = super()._model_call(inps, attn_mask=attn_mask, labels=labels)
        self._advance(int(inps.shape[0]))
        return out

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        fits = [
            i
            for i, (_, context, continuation) in enumerate(requests)
            if self._fast
            and context
            and continuation
            and len(context) + len(continuation) <= self.max_length + 1
        ]
        shared, single = self._shared_contexts(requests, fits)
        results: dict[int, Answer] = {}
        # several contexts' caches at once: their continuations are then batched by length
        for chunk in self._chunks([len(g) for g in shared], self._rows * 4):
            results.update(self._score_shared(requests, [shared[k] for k in chunk]))
        covering = self._coverings(requests, single)
        for chunk in self._chunks([1] * len(covering), self._rows):
            results.update(self._score_covered(requests, [covering[k] for k in chunk]))
        other = [i for i in range(len(requests)) if i not in results]
        if other:
            scored = super()._loglikelihood_tokens(
                [requests[i] for i in other], disable_tqdm=disable_tqdm, override_bs=override_bs
            )
            results.update(zip(other, scored, strict=True))
        return [results[i] for i in range(len(requests))]

    # ------------------------------------------------------------------ planning

    @property
    def _rows(self) -> int:
        """Rows per model call: lm-eval's batch size (on a CPU, larger is not faster)."""
        return self.batch_size if isinstance(self.batch_size, int) else 8

    @staticmethod
    def _chunks(sizes: list[int], limit: int) -> list[list[int]]:
        """Consecutive indices whose sizes add up to at most ``limit`` (one at least)."""
        chunks: list[list[int]] = []
        total = 0
        for k, n in enumerate(sizes):
            if chunks and total + n <= limit:
                chunks[-1].append(k)
                total += n
            else:
                chunks.append([k])
                total = n
        return chunks

    @staticmethod
    def _shared_contexts(requests, idx: list[int]) -> tuple[list[list[int]], list[int]]:
        """``idx`` grouped by identical context (≥ 2 tokens) → groups of ≥ 2 (longest context
        first), and the rest."""
        by_context: dict[tuple[int, ...], list[int]] = {}
        for i in idx:
            by_context.setdefault(tuple(requests[i][1]), []).append(i)
        shared = [g for c, g in by_context.items() if len(g) > 1 and len(c) > 1]
        shared.sort(key=lambda g: -len(requests[g[0]][1]))
        grouped = {i for g in shared for i in g}
        return shared, [i for i in idx if i not in grouped]

    @staticmethod
    def _coverings(requests, idx: list[int]) -> list[tuple[list[int], list[int]]]:
        """Model inputs (``context + continuation[:-1]``) of ``idx`` that are no other's prefix,
        longest first, each with the requests it answers: ``[(tokens, [request, …]), …]``.

        Sorted lexicographically, every input that extends ``s`` directly follows ``s``, and
        the last of that run extends no other: walking backwards, ``s`` is covered by whatever
        covers its successor when the successor starts with ``s``.
        """
        inputs = sorted((tuple(requests[i][1] + requests[i][2][:-1]), i) for i in idx)
        owner: list[int] = [0] * len(inputs)
        for k in range(len(inputs) - 1, -1, -1):
            s = inputs[k][0]
            nxt = inputs[k + 1][0] if k + 1 < len(inputs) else ()
            owner[k] = owner[k + 1] if nxt[: len(s)] == s else k
        groups: dict[int, list[int]] = {}
        for k, (_, i) in enumerate(inputs):
            groups.setdefault(owner[k], []).append(i)
        out = [(list(inputs[k][0]), members) for k, members in groups.items()]
        return sorted(out, key=lambda x: -len(x[0]))

    # ------------------------------------------------------------------ model calls

    def _call(self, ids: torch.Tensor, **kwargs):
        with (
            torch.no_grad(),
            torch.autocast(
                device_type=self.device.type,
                dtype=self.mixed_precision_dtype,
                enabled=self.mixed_precision_dtype is not None,
            ),
        ):
            return self.model(ids.to(self.device), **kwargs)

    def _answer(self, request, logp: torch.Tensor) -> Answer:
        """``logp`` ``[len(continuation), vocab]``: the log-probs at the continuation's
        positions → lm-eval's ``(sum of the continuation's log-probs, all greedy)``."""
        request_str, _, continuation = request
        target = torch.tensor(continuation, device=logp.device)
        answer = (
            float(logp.gather(1, target[:, None]).sum()),
            bool((logp.argmax(-1) == target).all()),
        )
        if request_str is not None:
            self.cache_hook.add_partial("loglikelihood", request_str, answer)
        return answer

    def _score_shared(self, requests, groups: list[list[int]]) -> dict[int, Answer]:
        """Each context once, its continuations from the context's KV cache.

        The contexts but their last token run as one right-padded batch that fills the cache.
        Then the continuations, longest first (so little padding), run in batches: each row
        gets its own context's cache rows and runs ``[last context token] +
        continuation[:-1]``, with the padding masked and positions counted from its own
        context's length — the logits lm-eval's full pass gives at the continuation.
        """
        prefix_ids, prefix_mask = _right_padded([requests[g[0]][1][:-1] for g in groups])
        first = self._call(prefix_ids, attention_mask=prefix_mask, use_cache=True, logits_to_keep=1)
        cache = getattr(first, "cache", None) or first.past_key_values
        group_of = {i: r for r, g in enumerate(groups) for i in g}
        members = sorted(group_of, key=lambda i: -len(requests[i][2]))
        out = {}
        for start in range(0, len(members), self._rows):
            batch = members[start : start + self._rows]
            owner = torch.tensor([group_of[i] for i in batch])
            ids, mask = _right_padded([[requests[i][1][-1], *requests[i][2][:-1]] for i in batch])
            positions = prefix_mask.sum(1)[owner][:, None] + torch.arange(ids.shape[1])
            rows = copy.deepcopy(cache)
            rows.batch_select_indices(owner.to(self.device))
            logits = self._call(
                ids,
                attention_mask=torch.cat([prefix_mask[owner], mask], 1).to(self.device),
                position_ids=positions.to(self.device),
                use_cache=True,
                **{self._cache_arg: rows},
            ).logits
            logp = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
            for r, i in enumerate(batch):
                out[i] = self._answer(requests[i], logp[r, : len(requests[i][2])])
            self._advance(len(batch))
        return out

    def _score_covered(
        self, requests, rows: list[tuple[list[int], list[int]]]
    ) -> dict[int, Answer]:
        """One right-padded pass over the covering inputs; logits only at the positions some
        request scores (the union over the rows), each request read at its own."""
        ids, _ = _right_padded([tokens for tokens, _ in rows])
        spans = {
            i: range(len(requests[i][1]) - 1, len(requests[i][1]) + len(requests[i][2]) - 1)
            for _, members in rows
            for i in members
        }
        keep = sorted({p for span in spans.values() for p in span})
        column = {p: c for c, p in enumerate(keep)}
        logits = self._call(ids, logits_to_keep=torch.tensor(keep, device=self.device)).logits
        logp = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
        out = {}
        for r, (_, members) in enumerate(rows):
            for i in members:
                cols = torch.tensor([column[p] for p in spans[i]], device=logp.device)
                out[i] = self._answer(requests[i], logp[r, cols])
        self._advance(sum(len(m) for _, m in rows))
        return out


def _right_padded(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists → ``(ids, mask)`` ``[n, longest]``, padded with 0 on the right."""
    ids = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, : len(s)] = 1
    return ids, mask


def scoring_lm(model, tokenizer, batch_size: int) -> ScoringLM:
    """A :class:`ScoringLM` on the device the model's weights are on."""
    device = str(next(model.parameters()).device)
    return ScoringLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)

"""lm-eval's HFLM as the worker drives it: progress per batch, no work on what is not scored.

lm-eval's ``_loglikelihood_tokens`` runs every request as its own padded row (context +
continuation), asks for the logits at every position and log-softmaxes all of them, although
it reads only the continuation's. :class:`ScoringLM` returns the same scores (the same
``(log-likelihood, is-greedy)`` per request) with less work:

- **Shared contexts.** Requests with the same context (the choices of a multiple-choice item:
  HellaSwag-style ``mixviz_nextsent`` has 4) run the context once and each continuation from
  its KV cache — on ``mixviz_nextsent`` 37 % fewer tokens through the model.
- **Scored positions only.** Every other batch asks the model for its last ``K`` positions
  only (transformers' ``logits_to_keep``), with ``K`` the smallest that covers every row's
  continuation; lm-eval locates the continuation as ``inplen + (returned positions - padded
  length)``. For LAMBADA-style items (a paragraph, then one word) that skips the ``lm_head``
  projection and a 49 K-way softmax at all but 1–3 of ~60 positions.

``tests/test_lm.py`` compares both with lm-eval's own HFLM on ``tiny``. Models whose
``forward`` takes no ``logits_to_keep`` (or no cache and positions) get lm-eval's path; a
batch whose rows match no request keeps all positions.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from lm_eval.models.huggingface import HFLM


class ScoringLM(HFLM):
    """HFLM over an in-memory model that reports progress and trims logits to the scored tail.

    ``on_fraction(f)`` is called after every batch with the share of the current request list
    done.
    """

    on_fraction: Callable[[float], None] = staticmethod(lambda f: None)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._total, self._done = 1, 0
        self._tails: dict[tuple[int, ...], int] | None = None
        forward = inspect.signature(self.model.forward).parameters
        self._can_trim = self.backend == "causal" and "logits_to_keep" in forward
        self._cache_arg = "cache" if "cache" in forward else "past_key_values"
        self._can_share = (
            self._can_trim and self._cache_arg in forward and "position_ids" in forward
        )

    def _start(self, n: int) -> None:
        self._total, self._done = max(n, 1), 0

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        self._start(len(requests))
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        self._start(len(requests))
        return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        shared, rest = self._split_shared(requests)
        results: dict[int, tuple[float, bool]] = {}
        if shared:
            results.update(self._score_shared(requests, shared))
        if rest:
            # the model input lm-eval builds per request (its causal branch) → continuation length
            tails: dict[tuple[int, ...], int] = {}
            for i in rest:
                _, context, continuation = requests[i]
                inp = tuple((context + continuation)[-(self.max_length + 1) :][:-1])
                tails[inp] = max(tails.get(inp, 0), len(continuation))
            self._tails = tails
            try:
                scored = super()._loglikelihood_tokens(
                    [requests[i] for i in rest], disable_tqdm=disable_tqdm, override_bs=override_bs
                )
            finally:
                self._tails = None
            results.update(zip(rest, scored, strict=True))
        return [results[i] for i in range(len(requests))]

    # ------------------------------------------------------------------ shared contexts

    def _split_shared(self, requests) -> tuple[list[list[int]], list[int]]:
        """Requests grouped by identical context (≥ 2 continuations, no truncation, context of
        ≥ 2 tokens) → those groups, and the indices of every other request."""
        if not self._can_share:
            return [], list(range(len(requests)))
        by_context: dict[tuple[int, ...], list[int]] = {}
        for i, (_, context, _) in enumerate(requests):
            by_context.setdefault(tuple(context), []).append(i)
        shared, rest = [], []
        for context, members in by_context.items():
            fits = all(len(context) + len(requests[i][2]) <= self.max_length + 1 for i in members)
            if len(members) > 1 and len(context) > 1 and fits:
                shared.append(members)
            else:
                rest.extend(members)
        return shared, sorted(rest)

    def _score_shared(self, requests, groups: list[list[int]]) -> dict[int, tuple[float, bool]]:
        """Each context once, its continuations from the context's KV cache.

        Per chunk of groups: the contexts but their last token run as one right-padded batch
        that fills the cache; then every continuation row gets its group's cache rows and runs
        ``[last context token] + continuation[:-1]``, with the padding masked and positions
        counted from its own context's length — the logits lm-eval's full pass would give at
        the continuation's positions.
        """
        out: dict[int, tuple[float, bool]] = {}
        rows_per_call = self.batch_size if isinstance(self.batch_size, int) else 8
        groups = sorted(groups, key=lambda g: -len(requests[g[0]][1]))
        chunk: list[list[int]] = []
        for group in groups:
            if chunk and sum(map(len, chunk)) + len(group) > rows_per_call:
                out.update(self._score_chunk(requests, chunk))
                chunk = []
            chunk.append(group)
        if chunk:
            out.update(self._score_chunk(requests, chunk))
        return out

    def _score_chunk(self, requests, chunk: list[list[int]]) -> dict[int, tuple[float, bool]]:
        import torch.nn.functional as F

        dev = self.device
        prefixes = [requests[g[0]][1][:-1] for g in chunk]
        width = max(map(len, prefixes))
        prefix_ids = torch.zeros(len(chunk), width, dtype=torch.long)
        prefix_mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for r, p in enumerate(prefixes):
            prefix_ids[r, : len(p)] = torch.tensor(p)
            prefix_mask[r, : len(p)] = 1
        members = [i for g in chunk for i in g]
        owner = torch.tensor([r for r, g in enumerate(chunk) for _ in g])
        suffixes = [[requests[i][1][-1], *requests[i][2][:-1]] for i in members]
        length = max(map(len, suffixes))
        suffix_ids = torch.zeros(len(members), length, dtype=torch.long)
        suffix_mask = torch.zeros(len(members), length, dtype=torch.long)
        for r, x in enumerate(suffixes):
            suffix_ids[r, : len(x)] = torch.tensor(x)
            suffix_mask[r, : len(x)] = 1
        starts = prefix_mask.sum(1)[owner]
        positions = starts[:, None] + torch.arange(length)[None, :]
        with (
            torch.no_grad(),
            torch.autocast(
                device_type=self.device.type,
                dtype=self.mixed_precision_dtype,
                enabled=self.mixed_precision_dtype is not None,
            ),
        ):
            first = self.model(
                prefix_ids.to(dev),
                attention_mask=prefix_mask.to(dev),
                use_cache=True,
                logits_to_keep=1,
            )
            cache = getattr(first, "cache", None) or first.past_key_values
            cache.batch_select_indices(owner.to(dev))
            logits = self.model(
                suffix_ids.to(dev),
                attention_mask=torch.cat([prefix_mask[owner], suffix_mask], 1).to(dev),
                position_ids=positions.to(dev),
                **{self._cache_arg: cache},
                use_cache=True,
            ).logits
        logp = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
        out = {}
        for r, i in enumerate(members):
            request_str, _, continuation = requests[i]
            n = len(continuation)
            target = torch.tensor(continuation, device=logp.device)
            rows = logp[r, :n]
            answer = (
                float(rows.gather(1, target[:, None]).sum()),
                bool((rows.argmax(-1) == target).all()),
            )
            if request_str is not None:
                self.cache_hook.add_partial("loglikelihood", request_str, answer)
            out[i] = answer
        self._done += len(members)
        self.on_fraction(min(self._done / self._total, 1.0))
        return out

    # ------------------------------------------------------------------ trimmed logits

    def positions_to_keep(self, inps: torch.Tensor) -> int | None:
        """How many trailing positions of the right-padded batch ``inps`` hold every row's
        continuation; ``None`` when a row matches no request (then keep them all).

        lm-eval pads with token 0, which can also end a real input, so each row is matched at
        every length from its last non-zero token on, and the widest need is kept.
        """
        if not self._can_trim or not self._tails:
            return None
        width = inps.shape[1]
        keep = 0
        for row in inps.tolist():
            nonzero = [i for i, t in enumerate(row) if t != 0]
            start = nonzero[-1] + 1 if nonzero else 1
            needs = [
                width - length + self._tails[key]
                for length in range(start, width + 1)
                if (key := tuple(row[:length])) in self._tails
            ]
            if not needs:
                return None
            keep = max(keep, *needs)
        return keep if keep < width else None

    def _model_call(self, inps, attn_mask=None, labels=None):
        keep = None if attn_mask is not None or labels is not None else self.positions_to_keep(inps)
        if keep is None:
            out = super()._model_call(inps, attn_mask=attn_mask, labels=labels)
        else:
            with (
                torch.no_grad(),
                torch.autocast(
                    device_type=self.device.type,
                    dtype=self.mixed_precision_dtype,
                    enabled=self.mixed_precision_dtype is not None,
                ),
            ):
                out = self.model(inps, logits_to_keep=keep).logits
        self._done += int(inps.shape[0])
        self.on_fraction(min(self._done / self._total, 1.0))
        return out


def scoring_lm(model, tokenizer, batch_size: int) -> ScoringLM:
    """A :class:`ScoringLM` on the device the model's weights are on."""
    device = str(next(model.parameters()).device)
    return ScoringLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)

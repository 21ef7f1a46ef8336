"""Per-item scores of a run and the standard errors they give.

lm-eval logs every item's score (``log_samples``); a run keeps them reduced to numbers —
``{task: {"doc_id": [...], metric: [...]}}`` — in ``samples.json``. Standard errors:

- a mean (``acc``, ``acc_norm``): lm-eval's own ``mean_stderr`` of the items;
- ``perplexity`` (= exp(−mean log-likelihood)): the delta method, ``ppl × se(mean ll)``;
- a weighted perplexity (``word_perplexity``, ``byte_perplexity``; items are
  ``(log-likelihood, words)``) and ``bits_per_byte``: the ratio estimator's standard error of
  ``Σ −ll / Σ words``, through the delta method.

Intervals of a mean over ``n`` units (items, windows) are Student-t ones with ``df = n − 1``
(:func:`t95`, :func:`mean_interval`): 2.13 s.e. over 16 windows, not 1.96. The normal 1.96 is
what t becomes as ``n`` grows (t₄₉₉ = 1.965), so no separate z path is kept for large ``n``.

>>> item_stderrs({"t": {"doc_id": [0, 1, 2, 3], "acc": [1, 0, 1, 1]}})["t"]["acc"]
0.25
"""

from __future__ import annotations

import math

_MEAN = ("acc", "acc_norm", "exact_match")
_WEIGHTED = ("word_perplexity", "byte_perplexity", "bits_per_byte")


def t95(df: float) -> float:
    """The two-sided 95 % Student-t quantile with ``df`` degrees of freedom (NaN below 1).

    >>> round(t95(15), 3), round(t95(1), 2), round(t95(math.inf), 3)
    (2.131, 12.71, 1.96)
    """
    if not df >= 1:  # also NaN
        return float("nan")
    from scipy.stats import norm, t

    return float(norm.ppf(0.975) if math.isinf(df) else t.ppf(0.975, df))


def mean_interval(values) -> dict:
    """Mean of ``values`` (one per unit: item, window), its standard error, the t interval's
    degrees of freedom and bounds: ``{"mean", "se", "df", "lo", "hi", "n"}``; below two
    values the se and bounds are NaN (no interval from one unit).

    >>> d = mean_interval([1.0, 2.0, 3.0]); d["df"], round(d["hi"] - d["mean"], 3)
    (2, 2.484)
    """
    import numpy as np

    x = np.asarray(values, dtype=np.float64).ravel()
    n = int(x.size)
    mean = float(x.mean()) if n else float("nan")
    se = float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    half = t95(n - 1) * se
    return {"mean": mean, "se": se, "df": n - 1, "lo": mean - half, "hi": mean + half, "n": n}


def item_scores(samples: dict, group_subtasks: dict | None = None) -> dict:
    """lm-eval's ``samples`` → ``{task: {"doc_id": [...], metric: [values]}}``; a group
    (``mmlu``) gets its subtasks' items together, ids prefixed with the subtask."""
    out: dict[str, dict[str, list]] = {}
    for task, items in samples.items():
        d: dict[str, list] = {"doc_id": []}
        for item in sorted(items, key=lambda x: x["doc_id"]):
            d["doc_id"].append(item["doc_id"])
            for key, value in item.items():
                if key in _MEAN or key == "perplexity":
                    d.setdefault(key, []).append(float(value))
                elif key in _WEIGHTED and isinstance(value, (list, tuple)) and len(value) == 2:
                    d.setdefault(key, []).append([float(value[0]), float(value[1])])
        out[task] = d
    for group, subtasks in (group_subtasks or {}).items():
        parts = [(t, out[t]) for t in subtasks if t in out]
        if not parts or group in out:
            continue
        merged: dict[str, list] = {"doc_id": []}
        for t, d in parts:
            merged["doc_id"] += [f"{t}:{i}" for i in d["doc_id"]]
            for key, values in d.items():
                if key != "doc_id":
                    merged.setdefault(key, []).extend(values)
        out[group] = merged
    return out


def item_stderrs(scores: dict) -> dict[str, dict[str, float]]:
    """Standard error of each task's aggregate metric from its items (see module doc)."""
    from lm_eval.api.metrics import mean_stderr

    out: dict[str, dict[str, float]] = {}
    for task, d in scores.items():
        se: dict[str, float] = {}
        for key, values in d.items():
            if key == "doc_id" or len(values) < 2:
                continue
            if key in _MEAN:
                se[key] = float(mean_stderr(values))
            elif key == "perplexity":  # values are log-likelihoods
                se[key] = math.exp(-sum(values) / len(values)) * float(mean_stderr(values))
            elif key in _WEIGHTED:
                se[key] = _weighted_se(key, values)
        out[task] = se
    return out


def _weighted_se(metric: str, pairs: list[list[float]]) -> float:
    """Standard error of ``exp(R)`` (or ``R / ln 2`` for bits per byte), ``R = Σ −ll / Σ w``."""
    n = len(pairs)
    total_w = sum(w for _, w in pairs)
    ratio = sum(-ll for ll, _ in pairs) / total_w
    var = n / (n - 1) * sum((-ll - ratio * w) ** 2 for ll, w in pairs) / total_w**2
    se = math.sqrt(var)
    return se / math.log(2) if metric == "bits_per_byte" else math.exp(ratio) * se

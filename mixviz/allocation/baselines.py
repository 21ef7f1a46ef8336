"""The reference study's naive baselines at a budget, never above it: ``uniform`` (the largest
single option that fits), ``head``/``tail`` (whole blocks nearest lm_head / the embedding at the
highest option), and llama.cpp's Q4_K_M rule. Pins and per-layer availability are respected.

llama.cpp's own mixes (``Q3_K_M``, ``Q4_K_M``, ``Q5_K_M``) as ``llama-quantize`` writes them, in
GGML types, are :func:`llamacpp_ftype` (:func:`llamacpp_type` per tensor).
"""

from __future__ import annotations

from mixviz.allocation.problem import Problem
from mixviz.errors import MixvizError


def fits(problem: Problem, choice: dict[str, str], budget: int) -> bool:
    """Whether ``choice`` costs at most ``budget`` bits in the problem's accounting."""
    return sum(problem.cost(n, o) for n, o in choice.items()) <= budget


def pinned_layers(problem: Problem) -> dict[str, str]:
    """The option of every layer in a pinned unit."""
    return {n: u.options[0] for u in problem.units if u.pinned for n in u.names}


def available(problem: Problem, name: str, option: str) -> bool:
    """Whether the profile scored layer ``name`` at ``option``."""
    return problem.scores.get((name, option)) is not None


def fill(problem: Problem, option: str) -> dict[str, str]:
    """Every unpinned layer at ``option`` (layers it cannot serve at the nearest lower one)."""
    out = pinned_layers(problem)
    order = list(problem.options)
    for name in problem.layers:
        if name in out:
            continue
        i = order.index(option)
        while i > 0 and not available(problem, name, order[i]):
            i -= 1
        while i < len(order) - 1 and not available(problem, name, order[i]):
            i += 1
        out[name] = order[i]
    return out


def uniform(problem: Problem, budget: int) -> dict[str, str]:
    """The highest single option (:func:`fill`) that fits ``budget``."""
    for option in reversed(problem.options):
        choice = fill(problem, option)
        if fits(problem, choice, budget):
            return choice
    raise MixvizError("no single option fits this budget")


def ends(problem: Problem, budget: int, which: str) -> dict[str, str]:
    """``head``: blocks nearest lm_head high; ``tail``: blocks nearest the embedding high."""
    low, high = problem.options[0], problem.options[-1]
    blocks = sorted({b for b in problem.block.values() if b is not None})
    order = [None, *reversed(blocks)] if which == "head" else [*blocks, None]
    choice = fill(problem, low)
    spent = sum(problem.cost(n, o) for n, o in choice.items())
    if spent > budget:
        raise MixvizError(f"even {low} everywhere does not fit this budget")
    pinned = pinned_layers(problem)
    members: dict[int | None, list[str]] = {}
    for n in problem.layers:
        if n not in pinned:
            members.setdefault(problem.block[n], []).append(n)
    for b in order:  # a running total: one pass over the layers, not one per block
        up = [n for n in members.get(b, ()) if available(problem, n, high)]
        extra = sum(problem.cost(n, high) - problem.cost(n, choice[n]) for n in up)
        if spent + extra > budget:
            break
        choice.update(dict.fromkeys(up, high))
        spent += extra
    return choice


def llamacpp_more_bits(block: int, n_blocks: int) -> bool:
    """llama.cpp's ``use_more_bits``: first and last eighth of the blocks, every third between.

    >>> [b for b in range(16) if llamacpp_more_bits(b, 16)]
    [0, 1, 4, 7, 10, 13, 14, 15]
    """
    eighth = n_blocks // 8
    return block < eighth or block >= 7 * n_blocks // 8 or (block - eighth) % 3 == 2


def llamacpp(problem: Problem, budget: int) -> dict[str, str]:
    """Q4_K_M: attn_v and ffn_down at the higher option where ``use_more_bits``; rest low."""
    low, high = problem.options[0], problem.options[-1]
    n_blocks = len({b for b in problem.block.values() if b is not None})
    choice = fill(problem, low)
    pinned = pinned_layers(problem)
    for n in problem.layers:
        b = problem.block[n]
        if n in pinned or b is None or problem.kind[n] not in ("v", "down"):
            continue
        if llamacpp_more_bits(b, n_blocks) and available(problem, n, high):
            choice[n] = high
    if not fits(problem, choice, budget):
        need = sum(problem.cost(n, o) for n, o in choice.items()) / problem.total_numel
        raise MixvizError(
            f"the llama.cpp Q4_K_M rule needs {need:.4f} average bits, above this budget"
        )
    return choice


LLAMACPP_FTYPES = {"Q3_K_M": "Q3_K", "Q4_K_M": "Q4_K", "Q5_K_M": "Q5_K"}  # ftype → base type


def llamacpp_type(ftype: str, kind: str, block: int, n_blocks: int, k_ok: bool = True) -> str:
    """The GGML type ``llama-quantize`` gives a llama block linear under ``ftype``
    (``llama_tensor_get_type_impl`` in src/llama-quant.cpp, for a dense model that is not
    70B-sized or Falcon), then its fallback where a K-type's 256 does not divide the row
    (``k_ok=False``).

    >>> [llamacpp_type("Q4_K_M", k, 0, 30) for k in ("q", "v", "down", "o")]
    ['Q4_K', 'Q6_K', 'Q6_K', 'Q4_K']
    >>> llamacpp_type("Q4_K_M", "q", 3, 30, k_ok=False), llamacpp_type("Q3_K_M", "o", 9, 30)
    ('Q5_0', 'Q4_K')
    """
    from mixviz.models.schemes import GGML_FALLBACK

    base = LLAMACPP_FTYPES[ftype]
    more = llamacpp_more_bits(block, n_blocks)
    t = base
    if kind == "v":
        if ftype == "Q3_K_M":
            t = "Q5_K" if block < 2 else "Q4_K"
        elif more:
            t = "Q6_K"
    elif kind == "down":
        if ftype == "Q3_K_M":
            t = "Q5_K" if block < n_blocks // 16 else "Q4_K"
        elif more:
            t = "Q6_K"
    elif kind == "o" and ftype == "Q3_K_M":
        t = "Q4_K"
    return t if k_ok else GGML_FALLBACK[t]


def llamacpp_ftype(problem: Problem, budget: int, ftype: str) -> dict[str, str]:
    """Every block linear at the type llama.cpp's ``ftype`` mix gives it (pins kept); an error
    names the GGML types the profile lacks, or the bits the mix needs above ``budget``."""
    n_blocks = len({b for b in problem.block.values() if b is not None})
    choice = pinned_layers(problem)
    missing = set()
    for n in problem.layers:
        b = problem.block[n]
        if n in choice or b is None:
            continue
        want = llamacpp_type(ftype, problem.kind[n], b, n_blocks)
        if not available(problem, n, want):  # a K-type on a row 256 does not divide
            want = llamacpp_type(ftype, problem.kind[n], b, n_blocks, k_ok=False)
        if not available(problem, n, want):
            missing.add(want)
        choice[n] = want
    if missing:
        raise MixvizError(
            f"llama.cpp's {ftype} mix needs {', '.join(sorted(missing))} in the profile's options"
        )
    if not fits(problem, choice, budget):
        need = sum(problem.cost(n, o) for n, o in choice.items()) / problem.total_numel
        raise MixvizError(
            f"llama.cpp's {ftype} mix needs {need:.4f} average bits, above this budget"
        )
    return choice

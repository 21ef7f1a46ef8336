"""The reference study's naive baselines at a budget, never above it: ``uniform`` (the largest
single option that fits), ``head``/``tail`` (whole blocks nearest lm_head / the embedding at the
highest option), and llama.cpp's Q4_K_M rule. Pins and per-layer availability are respected.
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
    if not fits(problem, choice, budget):
        raise MixvizError(f"even {low} everywhere does not fit this budget")
    pinned = pinned_layers(problem)
    for b in order:
        members = [n for n in problem.layers if problem.block[n] == b and n not in pinned]
        if not members:
            continue
        trial = dict(choice)
        trial.update({n: high for n in members if available(problem, n, high)})
        if not fits(problem, trial, budget):
            break
        choice = trial
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

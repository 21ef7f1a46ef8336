"""Hand edits to an allocation: pick cells of the block × module grid, lock them to an option,
re-solve around the locks, see what the locks cost; undo / redo.

Locks are pins (:class:`~mixviz.allocation.problem.Problem` ``pins``): the solver keeps them
and re-optimises every other layer at the same budget.

>>> from mixviz.sensitivity.synthetic import QWEN3_32B_SHAPES, synthetic_profile
>>> from mixviz.allocation.problem import Problem
>>> prof = synthetic_profile(QWEN3_32B_SHAPES, 4, ["W2A16", "W4A16", "W8A16"])
>>> names = select(prof.layers, kinds=["down"])            # a whole column
>>> h = History().push(lock({}, names, "W8A16"))
>>> c = edit_cost(Problem.from_profile(prof), Problem.from_profile(prof, pins=h.current), 4.5)
>>> c.after.predicted_loss >= c.before.predicted_loss
True
>>> h.undo().current
{}
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from mixviz.allocation.strategies import allocate
from mixviz.errors import MixvizError
from mixviz.models.inventory import KINDS
from mixviz.models.schemes import get_scheme

Locks = dict[str, str]


def parse_kind(kind: str) -> str:
    """``down``, ``down_proj`` → ``down``; an unknown kind is an error naming the known ones."""
    k = kind.strip().removesuffix("_proj")
    if k not in KINDS:
        raise MixvizError(f"unknown module kind {kind!r}; choose from {', '.join(KINDS)}")
    return k


def select(
    layers,
    names: Iterable[str] = (),
    blocks: Iterable[int] = (),
    kinds: Iterable[str] = (),
    fused: Iterable[str] = (),
) -> list[str]:
    """Layer names picked by explicit ``names``, whole ``blocks`` (rows) and whole module
    ``kinds`` (columns), in inventory order. ``fused`` (``qkv``, ``gate_up``) widens the pick to
    the whole fused group of each picked layer in its block, so q/k/v move together.
    """
    layers = [x for x in layers if x.block is not None]
    known = {x.name for x in layers}
    names = set(names)
    unknown = sorted(names - known)
    if unknown:
        raise MixvizError(f"no block linear named {unknown[0]!r} in this model")
    blocks = set(blocks)
    have = sorted({x.block for x in layers})
    bad = sorted(b for b in blocks if b not in have)
    if bad:
        raise MixvizError(
            f"block {bad[0]} does not exist; this model has blocks {have[0]}–{have[-1]}"
            if have
            else "this model has no blocks"
        )
    kinds = {parse_kind(k) for k in kinds}
    picked = {x.name for x in layers if x.name in names or x.block in blocks or x.kind in kinds}
    fused = set(fused)
    if fused:
        groups = {(x.block, x.group) for x in layers if x.name in picked and x.group in fused}
        picked |= {x.name for x in layers if (x.block, x.group) in groups}
    return [x.name for x in layers if x.name in picked]


def lock(locks: Mapping[str, str], names: Iterable[str], option: str) -> Locks:
    """``locks`` with ``names`` set to ``option`` (canonical scheme name; BF16 allowed)."""
    option = get_scheme(option).name
    return {**locks, **dict.fromkeys(names, option)}


def unlock(locks: Mapping[str, str], names: Iterable[str]) -> Locks:
    """``locks`` without ``names``."""
    drop = set(names)
    return {k: v for k, v in locks.items() if k not in drop}


def locks_text(layers, locks: Mapping[str, str]) -> str:
    """Locks as a link carries them: ``BLOCK.KIND=OPTION`` (a layer whose block and kind name
    no other, else its full name), comma-separated, in inventory order; read back by
    :func:`parse_locks_text`.

    >>> from mixviz.sensitivity.synthetic import QWEN3_32B_SHAPES, synthetic_profile
    >>> layers = synthetic_profile(QWEN3_32B_SHAPES, 2, ["W4A16"]).layers
    >>> text = locks_text(layers, {"model.layers.1.mlp.down_proj": "BF16"})
    >>> text, parse_locks_text(layers, text)
    ('1.down=BF16', {'model.layers.1.mlp.down_proj': 'BF16'})
    """
    short = _short_names(layers)
    return ",".join(
        f"{short.get(x.name, x.name)}={locks[x.name]}" for x in layers if x.name in locks
    )


def parse_locks_text(layers, text: str) -> Locks:
    """:func:`locks_text`'s ``0.down=MXFP8,…`` back to ``{layer name: option}``; an entry
    that names no block linear, or no option, is a MixvizError naming it."""
    by_short = {v: k for k, v in _short_names(layers).items()}
    names = {x.name for x in layers if x.block is not None}
    out: Locks = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        what, sep, option = item.partition("=")
        name = by_short.get(what, what)
        if not sep or name not in names:
            raise MixvizError(f"{item!r} names no block linear as BLOCK.KIND=OPTION")
        out = lock(out, [name], option)
    return out


def _short_names(layers) -> dict[str, str]:
    """``{full name: "3.down"}`` for the block linears whose block and kind are theirs alone."""
    pairs = [(x.name, f"{x.block}.{x.kind}") for x in layers if x.block is not None]
    count: dict[str, int] = {}
    for _, short in pairs:
        count[short] = count.get(short, 0) + 1
    return {name: short for name, short in pairs if count[short] == 1}


def parse_pins(
    layers,
    pins: Iterable[str] = (),
    kinds: Iterable[str] = (),
    blocks: Iterable[str] = (),
) -> Locks:
    """CLI pins ``NAME=OPTION``, ``KIND=OPTION`` and ``N=OPTION`` → one lock per layer.

    A layer named several ways takes the most specific: ``--pin`` over ``--pin-block`` over
    ``--pin-kind``.

    >>> from mixviz.sensitivity.synthetic import QWEN3_32B_SHAPES, synthetic_profile
    >>> layers = synthetic_profile(QWEN3_32B_SHAPES, 2, ["W4A16"]).layers
    >>> p = parse_pins(layers, kinds=["down=W8A16"], blocks=["0=BF16"])
    >>> p["model.layers.0.mlp.down_proj"], p["model.layers.1.mlp.down_proj"]
    ('BF16', 'W8A16')
    """
    out: Locks = {}
    for flag, items, pick in (
        ("--pin-kind", kinds, lambda k: select(layers, kinds=[k])),
        ("--pin-block", blocks, lambda b: select(layers, blocks=[_block_number(b)])),
        ("--pin", pins, lambda n: [_named(layers, n)]),
    ):
        for item in items or ():
            what, sep, option = item.partition("=")
            if not sep or not what.strip() or not option.strip():
                raise MixvizError(f"{flag} takes {_META[flag]}=OPTION, got {item!r}")
            out = lock(out, pick(what.strip()), option.strip())
    return out


_META = {"--pin": "NAME", "--pin-kind": "KIND", "--pin-block": "N"}


def _named(layers, name: str) -> str:
    """``name`` itself; allocation checks it against the allocated layers (lm_head may be)."""
    if not any(x.name == name for x in layers):
        raise MixvizError(f"no linear layer named {name!r} in this model")
    return name


def _block_number(text: str) -> int:
    if not re.fullmatch(r"\d+", text):
        raise MixvizError(f"--pin-block takes a block number, got {text!r}")
    return int(text)


@dataclass(frozen=True)
class History:
    """Lock states, each with the budget it was made at, and a cursor: ``push`` a new state,
    ``undo`` / ``redo`` move the cursor, and :attr:`budget` says which budget goes with it.

    >>> h = History(budgets=(5.0,)).push({"a": "BF16"}, 7.5).push({}, 7.5)
    >>> h.undo().current, h.undo().undo().current, h.undo().redo().current
    ({'a': 'BF16'}, {}, {})
    >>> h.undo().undo().budget, h.undo().budget, h.undo().reset().budget
    (5.0, 7.5, 5.0)
    """

    states: tuple[tuple[tuple[str, str], ...], ...] = ((),)
    pos: int = 0
    budgets: tuple[float | None, ...] = (None,)

    @property
    def current(self) -> Locks:
        return dict(self.states[self.pos])

    @property
    def budget(self) -> float | None:
        """The budget of the current state (None: not known, keep the slider's)."""
        return self.budgets[self.pos] if self.pos < len(self.budgets) else None

    @property
    def can_undo(self) -> bool:
        return self.pos > 0

    @property
    def can_redo(self) -> bool:
        return self.pos < len(self.states) - 1

    def push(self, locks: Mapping[str, str], budget: float | None = None) -> History:
        """A new state after the cursor (dropping any redo states); no-op when unchanged."""
        state = tuple(sorted(locks.items()))
        if state == self.states[self.pos]:
            return self.at_budget(budget)
        budgets = self._budgets()[: self.pos + 1]
        return History((*self.states[: self.pos + 1], state), self.pos + 1, (*budgets, budget))

    def at_budget(self, budget: float | None) -> History:
        """The same states, the current one now at ``budget`` (the slider moved)."""
        if budget is None or budget == self.budget:
            return self
        budgets = list(self._budgets())
        budgets[self.pos] = budget
        return History(self.states, self.pos, tuple(budgets))

    def undo(self) -> History:
        return History(self.states, max(self.pos - 1, 0), self.budgets)

    def redo(self) -> History:
        return History(self.states, min(self.pos + 1, len(self.states) - 1), self.budgets)

    def reset(self) -> History:
        """Back to the solver's optimum (no locks) at the budget the last lock-free state had,
        as an undoable step."""
        budgets = self._budgets()
        free = [budgets[i] for i in range(self.pos + 1) if not self.states[i]]
        budget = next((b for b in reversed(free) if b is not None), self.budget)
        return self.push({}, budget)

    def _budgets(self) -> tuple[float | None, ...]:
        return (*self.budgets, *[None] * (len(self.states) - len(self.budgets)))


@dataclass(frozen=True)
class EditCost:
    """The optimum without locks (``before``) and around them (``after``) at one budget."""

    before: object  # Allocation
    after: object  # Allocation
    locked: tuple[str, ...]
    changed: tuple[str, ...]  # unlocked layers the re-solve moved
    gave_back: tuple[str, ...]  # ... of which moved to fewer bits

    @property
    def loss_ratio(self) -> float:
        b = self.before.predicted_loss
        return self.after.predicted_loss / b if b else float("inf")


def edit_cost(free, locked, budget: float, strategy: str = "optimal") -> EditCost:
    """Solve ``free`` (no locks) and ``locked`` (with pins) at ``budget``; name what moved.

    ``free`` and ``locked`` are :class:`~mixviz.allocation.problem.Problem` s of one profile.
    """
    lo, hi = free.feasible_range()  # BF16 locks can lift the budget above every option
    clamped = min(max(budget, lo), hi)
    before = allocate(free, clamped, strategy)
    try:
        # no locks: the same problem at the same budget, so the same answer (once per slider step)
        after = (
            before if not locked.pins and clamped == budget else allocate(locked, budget, strategy)
        )
    except MixvizError as e:
        lo, hi = locked.feasible_range()
        raise MixvizError(
            f"the locks need an average between {lo:.3f} and {hi:.3f} bits; "
            f"{budget:g} is outside it ({e})"
        ) from None
    pins = set(locked.pins)
    changed = [n for n in locked.layers if n not in pins and after.layers[n] != before.layers[n]]
    down = [
        n for n in changed if locked.bits[(n, after.layers[n])] < free.bits[(n, before.layers[n])]
    ]
    return EditCost(before, after, tuple(sorted(pins)), tuple(changed), tuple(down))

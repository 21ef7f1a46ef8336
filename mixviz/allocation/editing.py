"""Hand edits as a state machine of pure transitions: propose locks at a budget (applied, or
refused with the budget that would hold them), undo / redo / reset, apply a refused edit at
its budget; the budget slider's range; the grid's clicks gathered into one selection.

The Allocate page keeps one :class:`EditState` and redraws after each transition.

>>> state = EditState().propose({"a": "BF16"}, 5.0, "Setting 1 layer", lambda locks: (4.0, 8.0))
>>> state.locks, state.refused
({'a': 'BF16'}, None)
>>> state = state.propose({"a": "BF16"}, 5.0, "Setting 1 layer", lambda locks: (9.0, 9.0))
>>> state.refused.message
'Setting 1 layer needs an average of 9.00 bits; the budget is 5 bits. Nothing was changed.'
>>> state.apply_refused().locks, state.apply_refused().history.budget, state.undo().locks
({'a': 'BF16'}, 9.0, {})
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from mixviz.allocation.edits import History, Locks
from mixviz.errors import MixvizError

Feasible = Callable[[Mapping[str, str]], tuple[float, float]]  # locks → (lo, hi) average bits


@dataclass(frozen=True)
class BudgetRange:
    """The budgets a slider offers inside the feasible ``lo``–``hi``: its ends at 0.01 steps
    (``lo`` rounded up, ``hi`` down: both feasible, and a feasible end on the grid is itself),
    or one value when the locks leave only one average (``fixed``). ``text`` is that range as
    every message states it, so a message, the slider and its fix name the same numbers.

    >>> r = BudgetRange(4.0, 8.0)
    >>> r.ends, r.fixed, r.holds(8.0), r.nearest(8.0), r.nearest(2.5)
    ((4.0, 8.0), False, True, 8.0, 4.0)
    >>> BudgetRange(4.0, 8.004).ends, BudgetRange(16.0, 16.0).nearest(5.0)
    ((4.0, 8.0), 16.0)
    >>> BudgetRange(4.2612, 8.25).text, BudgetRange(4.25, 8.2499999999999).ends
    ('4.27–8.25', (4.25, 8.25))
    """

    lo: float
    hi: float

    @property
    def ends(self) -> tuple[float, float]:
        lo, hi = math.ceil(self.lo * 100) / 100, math.floor(self.hi * 100) / 100
        # an end on the grid but for float noise is itself: a budget within 1e-13 of it maps
        # to the same bit sum (``problem.budget_bits`` allows 1e-12)
        if self.lo - (lo - 0.01) <= 1e-13 * self.lo:
            lo = round(lo - 0.01, 2)
        if (hi + 0.01) - self.hi <= 1e-13 * self.hi:
            hi = round(hi + 0.01, 2)
        return lo, hi

    @property
    def text(self) -> str:
        """``'4.27–8.25'``: the budgets offered (the one value when ``fixed``)."""
        lo, hi = self.ends
        return f"{self.hi:.2f}" if self.fixed else f"{lo:.2f}–{hi:.2f}"

    @property
    def fixed(self) -> bool:
        lo, hi = self.ends
        return hi - lo < 0.01

    def holds(self, budget: float) -> bool:
        """``budget`` is one the slider offers."""
        lo, hi = self.ends
        return abs(budget - self.hi) < 0.005 if self.fixed else lo <= budget <= hi

    def nearest(self, budget: float) -> float:
        """The budget the slider offers nearest to ``budget`` (the one value when fixed)."""
        lo, hi = self.ends
        return self.hi if self.fixed else min(max(budget, lo), hi)


@dataclass(frozen=True)
class Refusal:
    """An edit the budget could not hold: why, and (when a budget can hold it) the locks and
    the budget that would apply it."""

    message: str
    locks: Locks | None = None
    budget: float | None = None


@dataclass(frozen=True)
class EditState:
    """The edit history, the last refused edit (until the next one goes through) and a
    counter of refusals (a widget keyed by it starts afresh: a refused lock table resets)."""

    history: History = field(default_factory=History)
    refused: Refusal | None = None
    refusals: int = 0

    @property
    def locks(self) -> Locks:
        return self.history.current

    def commit(self, history: History) -> EditState:
        """``history`` goes through; any earlier refusal is forgotten."""
        return EditState(history, None, self.refusals)

    def refuse(self, refusal: Refusal) -> EditState:
        return EditState(self.history, refusal, self.refusals + 1)

    def propose(
        self, locks: Mapping[str, str], budget: float, what: str, feasible: Feasible
    ) -> EditState:
        """``locks`` at ``budget`` if the budget can hold them; else a refusal saying which
        budgets can (and, when some can, the nearest one to apply them at). ``what`` names the
        edit in the message; ``feasible(locks)`` gives their range or raises MixvizError."""
        try:
            lo, hi = feasible(locks)
        except MixvizError as e:
            return self.refuse(Refusal(f"{what}: {e}. Nothing was changed."))
        span = BudgetRange(lo, hi)
        if span.holds(budget):
            return self.commit(self.history.push(locks, budget))
        return self.refuse(
            Refusal(
                f"{what} needs an average of {span.text} bits; the budget is "
                f"{budget:g} bits. Nothing was changed.",
                dict(locks),
                span.nearest(budget),
            )
        )

    def apply_refused(self) -> EditState:
        """The refused edit, applied at the budget that holds it."""
        why = self.refused
        if why is None or why.locks is None:
            return self
        return self.commit(self.history.push(why.locks, why.budget))

    def undo(self) -> EditState:
        return self.commit(self.history.undo())

    def redo(self) -> EditState:
        return self.commit(self.history.redo())

    def reset(self) -> EditState:
        return self.commit(self.history.reset())

    def at_budget(self, budget: float) -> EditState:
        """The same edits, the current one now at ``budget`` (the slider moved)."""
        return replace(self, history=self.history.at_budget(budget))


@dataclass(frozen=True)
class Picks:
    """What the grid's clicks picked since the last edit: each new click adds to it (the grid
    itself reports only its current selection), until cleared.

    >>> p = Picks().add(["a"], []).add(["b"], [1]).add(["b"], [1])
    >>> p.names, p.rows
    (('a', 'b'), (1,))
    """

    names: tuple[str, ...] = ()
    rows: tuple[int, ...] = ()
    last: tuple | None = None  # the grid's selection as last seen: seen again, it adds nothing

    def add(self, names: Iterable[str], rows: Iterable[int]) -> Picks:
        now = (tuple(names), tuple(rows))
        if now == self.last:
            return self
        names = tuple(dict.fromkeys([*self.names, *now[0]]))
        return Picks(names, tuple(dict.fromkeys([*self.rows, *now[1]])), now)

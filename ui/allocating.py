"""The Allocate page's state across reruns: the edit state (:class:`EditState`, in the session),
the problems it makes, and the :class:`Setting` every section of the page reads."""

from __future__ import annotations

from typing import NamedTuple

import streamlit as st

from mixviz.allocation.editing import BudgetRange, EditState
from mixviz.allocation.edits import History, locks_text, parse_locks_text
from mixviz.allocation.problem import Problem
from mixviz.errors import MixvizError
from mixviz.models.inventory import KINDS
from mixviz.sensitivity.profile import Profile
from ui.caches import problem_for
from ui.sidebar import Choice
from ui.url import url_bits, url_drop, url_text, url_write


class Setting(NamedTuple):
    """What the page's sections read, made once per full run: the sidebar's choice, the
    profile, its problem without locks (``free``) and with them, and the budgets they allow."""

    choice: Choice
    profile: Profile
    key: str  # the profile's key: computed once per run (it reads package metadata)
    edits: EditState  # as this run found it; a transition starts from current_edits()
    locks: dict[str, str]
    free: Problem
    problem: Problem
    span: BudgetRange
    blocks: list[int]  # the grid's rows and columns (the pickers offer them)
    kinds: list[str]

    @property
    def version(self) -> str:
        """Part of the keys of widgets that must start afresh after an edit."""
        return f"{self.edits.history.pos}_{len(self.edits.history.states)}"

    @property
    def problem_key(self) -> tuple:
        """What the locked problem is made of: the cache key of what is solved from it."""
        c = self.choice
        return (
            self.key,
            c.ignore_scale_bits,
            c.shared,
            tuple(sorted(self.locks.items())),
            c.target,
        )

    @property
    def bits_key(self) -> str:
        return "avg_bits_no_scale" if self.choice.ignore_scale_bits else "avg_bits"


def current_edits() -> EditState:
    """The edits as they stand now (a fragment rerun may have moved their budget)."""
    return st.session_state.get("allocate_edits", EditState())


def edits_from_link(profile: Profile) -> EditState:
    """The edits as they stand; in a session that has none yet, a link's ``?locks=`` (a
    reload, a shared link) as one undoable step."""
    if "allocate_edits" not in st.session_state:
        locks = link_locks(profile)
        st.session_state["allocate_edits"] = EditState(History().push(locks))
    return current_edits()


def link_locks(profile: Profile) -> dict[str, str]:
    """``?locks=0.down=MXFP8,…`` read against ``profile``'s layers; a value that names no
    layer or option is an error, and no locks."""
    raw = url_text("locks", "")
    try:
        return parse_locks_text(profile.layers, raw)
    except MixvizError as e:
        st.error(f"Locks {raw!r} (from the URL): {e}; using none.")
        return {}


def page_locks(profile: Profile) -> dict[str, str]:
    """The locks the Allocate page set in this session (``allocate_pins``), else a link's;
    kept in the URL, so a reload or a shared link of any page has them."""
    if "allocate_pins" not in st.session_state:
        st.session_state["allocate_pins"] = link_locks(profile)
    locks = st.session_state["allocate_pins"]
    if locks:
        url_write(locks=locks_text(profile.layers, locks))
    else:
        url_drop("locks")
    return locks


def apply_edits(new: EditState) -> None:
    """Make ``new`` the edit state and redraw the page. An edit that went through brings its
    budget to the slider and empties the block / module pickers."""
    st.session_state["allocate_edits"] = new
    if new.refused is None:
        for key in ("edit_blocks", "edit_kinds"):
            st.session_state.pop(key, None)
        if new.history.budget is not None:
            st.session_state["allocate_budget_next"] = new.history.budget
    st.rerun()


def propose(page: Setting, locks: dict[str, str], budget: float, what: str) -> None:
    """Make ``locks`` the locks if ``budget`` can hold them; else say which budgets can."""

    def feasible(new: dict[str, str]) -> tuple[float, float]:
        return problem(page.choice, page.profile, page.key, new).feasible_range()

    apply_edits(current_edits().propose(locks, budget, what, feasible))


def problem(choice: Choice, profile: Profile, key: str, locks: dict[str, str]) -> Problem:
    """The allocation problem of ``profile`` (``key``) with the sidebar's rules and ``locks``
    pinned."""
    return problem_for(
        profile,
        key,
        choice.ignore_scale_bits,
        choice.shared,
        tuple(sorted(locks.items())),
        choice.target,
    )


def setting(choice: Choice, profile: Profile, edits: EditState) -> Setting:
    """This run's :class:`Setting`; a problem the locks make impossible is an error, with the
    way back (undo, reset), and the page stops."""
    key = profile.key
    names = {x.name for x in profile.layers}
    locks = {k: v for k, v in edits.locks.items() if k in names}
    st.session_state["allocate_pins"] = locks  # what the Runs page allocates with
    page_locks(profile)  # and the URL
    try:
        free, locked = problem(choice, profile, key, {}), problem(choice, profile, key, locks)
    except MixvizError as e:
        st.error(str(e))
        if locks:  # an edit made the problem impossible: offer the way back
            c1, c2 = st.columns(2)
            undo = c1.button(
                "Undo the last edit", key="edit_undo_broken", disabled=not edits.history.can_undo
            )
            if undo:
                apply_edits(current_edits().undo())
            if c2.button("Reset to optimal", key="edit_reset_broken"):
                apply_edits(current_edits().reset())
        st.stop()
    span = BudgetRange(*locked.feasible_range())
    inside = [x for x in profile.layers if x.block is not None]
    blocks = sorted({x.block for x in inside})
    kinds = [k for k in KINDS if any(x.kind == k for x in inside)]
    return Setting(choice, profile, key, edits, locks, free, locked, span, blocks, kinds)


def budget_start(page: Setting) -> float:
    """Where the slider starts: its own value (or an edit's budget), else the link's ``?bits=``
    (an error when outside the range), else 5 bits — always a budget the range offers."""
    if "allocate_budget_next" in st.session_state:  # an edit, undo or reset brings its budget
        st.session_state["allocate_avg_bits"] = st.session_state.pop("allocate_budget_next")
    span = page.span
    held = st.session_state.get("allocate_avg_bits")
    # the link's, else the session's (the Runs page's, after a reload there), else 5
    wanted = url_bits(span.nearest(st.session_state.get("budget", 5.0))) if held is None else held
    if span.fixed or span.holds(wanted):
        return span.nearest(wanted)
    if held is None:  # a link's budget; edits that move the range are refused before this
        st.error(
            f"Average bits {wanted:g} is outside the feasible range {span.text}; "
            "using the nearest feasible value."
        )
    start = span.nearest(wanted)
    if held is not None:
        st.session_state["allocate_avg_bits"] = start
    return start

"""The profile a page needs: looked up on disk for the sidebar's choice, never computed here
(the Profile page computes it)."""

from __future__ import annotations

import dataclasses
import time

import streamlit as st

from mixviz.errors import MixvizError
from mixviz.paths import cache_dir, safe_filename
from mixviz.sensitivity.profile import Profile, profiles_dir
from mixviz.sensitivity.spec import ProfileSpec
from ui.caches import ProfileMiss, profile_on_disk
from ui.sidebar import Choice

PROFILE_FIRST = "Profile this model first (Profile page) with the sidebar's settings."


def profile_spec(choice: Choice) -> ProfileSpec:
    """The :class:`ProfileSpec` the sidebar's choice asks for (raises :class:`MixvizError` on
    a value it refuses)."""
    return ProfileSpec(
        options=tuple(choice.options),
        metric=choice.metric,
        nsamples=choice.nsamples,
        seqlen=choice.seqlen,
        calib=choice.calib,
        device=choice.device,
        dtype=choice.dtype,
        imatrix="auto" if choice.imatrix else None,
    )


def cached_profile(choice: Choice, **changes) -> Profile | None:
    """The profile for the sidebar's choices (with ``changes``, e.g. ``metric=``) if it is on
    disk, else None (never computes).

    Raises :class:`MixvizError` when it cannot be looked up (a bad model name, say)."""
    choice = dataclasses.replace(choice, **changes)
    if not choice.options:
        return None
    spec = profile_spec(choice)
    try:
        return profile_on_disk(choice.model, spec, choice.trust_remote_code, str(cache_dir()))
    except ProfileMiss:
        return None


def require_profile(choice: Choice, missing: str | None = PROFILE_FIRST) -> Profile | None:
    """The page's profile for the sidebar's choices, from disk (never computed here), or the
    page stops.

    A profile that cannot be looked up (a bad model name, an unreadable text) is shown as an
    error and stops the page; so does one not made yet, with ``missing`` as a note. With
    ``missing=None`` a profile not made yet is returned as None instead (for a page that can do
    without it or offers to make it)."""
    try:
        profile = cached_profile(choice)
    except MixvizError as e:
        st.error(str(e))
        st.stop()
    if profile is None and missing is not None:
        st.info(missing)
        st.stop()
    return profile


def forget_profiles() -> None:
    """Drop the memoised profiles (one was just recomputed and replaced on disk)."""
    profile_on_disk.clear()


def profile_time(profile: Profile) -> str:
    """When the cached ``profile`` was written, as ``2026-11-28 01:53`` (local time)."""
    path = profiles_dir() / f"{safe_filename(profile.model)}-{profile.metric}-{profile.key}.json"
    if not path.is_file():
        return "earlier"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))

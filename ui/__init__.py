"""What the app's pages share (the library has none of it): the sidebar's :class:`Choice`, the
URL's parameters, the Streamlit caches, the profile a page needs and a few tables.

``app.py`` draws the sidebar once per run; a page reads it with :func:`choice`."""

from ui.background import in_thread
from ui.caches import (
    allocation_at,
    edit_cost_at,
    file_overhead,
    frontier_for,
    model_layers,
    model_ref,
    model_report,
    problem_for,
    recipe_bits,
)
from ui.frames import (
    file_size,
    items_per_task,
    layers_frame,
    schemes_frame,
    task_metrics,
    windows_note,
)
from ui.profiles import (
    PROFILE_FIRST,
    cached_profile,
    forget_profiles,
    profile_spec,
    profile_time,
    require_profile,
)
from ui.quantize import profile_imatrix, quantize_panel
from ui.sidebar import DEFAULT_MODEL, DEFAULT_OPTIONS, SHARED_CHOICES, Choice, choice, sidebar
from ui.uploads import is_upload, save_upload, uploads_dir
from ui.url import (
    url_bits,
    url_calib,
    url_choice,
    url_drop,
    url_flag,
    url_history_per_page,
    url_int,
    url_list,
    url_text,
    url_write,
)

__all__ = [
    "allocation_at",
    "edit_cost_at",
    "DEFAULT_MODEL",
    "DEFAULT_OPTIONS",
    "PROFILE_FIRST",
    "SHARED_CHOICES",
    "Choice",
    "cached_profile",
    "choice",
    "file_size",
    "forget_profiles",
    "frontier_for",
    "in_thread",
    "is_upload",
    "items_per_task",
    "windows_note",
    "layers_frame",
    "model_layers",
    "model_ref",
    "model_report",
    "file_overhead",
    "problem_for",
    "profile_spec",
    "profile_time",
    "profile_imatrix",
    "quantize_panel",
    "recipe_bits",
    "require_profile",
    "save_upload",
    "schemes_frame",
    "sidebar",
    "task_metrics",
    "uploads_dir",
    "url_bits",
    "url_calib",
    "url_choice",
    "url_flag",
    "url_history_per_page",
    "url_int",
    "url_list",
    "url_text",
    "url_write",
    "url_drop",
]

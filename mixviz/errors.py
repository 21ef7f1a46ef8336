"""The one exception type meant for the user: its message is shown as is, never a traceback."""


class MixvizError(Exception):
    """A problem the user can fix (bad input, missing model, offline hub...).

    The CLI prints ``str(err)`` as one line on stderr and exits non-zero; the app shows it
    with ``st.error``.
    """

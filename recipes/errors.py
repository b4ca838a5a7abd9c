"""The one exception type for mistakes a user can fix (a bad recipe key, a missing folder, a wrong checkpoint),
and the "did you mean" hint its messages share."""

from __future__ import annotations

import difflib


class UsageError(Exception):
    """A failure caused by user input; its message names the key, file or value and says the fix."""


def user_message(error: UsageError) -> str:
    """The message to print: for an error raised in a DataLoader worker, only its own line, not the traceback.

    PyTorch re-raises a worker's exception in the main process with the worker's whole traceback as the message
    ("Caught BadImageError in DataLoader worker process 0. Original Traceback ..."); its last line is ours.
    """
    text = str(error)
    if "Original Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last


def suggest(name: object, known: list[str] | tuple[str, ...]) -> str:
    """A ' Did you mean X?' hint, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""

"""The two kinds of failure ingestion distinguishes.

A bad *input file* is expected (users bring anything): it becomes a skip with a reason, never a traceback.
A bad *gallery* (wrong directory, mismatched model, unreadable captions sidecar) stops the command.
"""

from __future__ import annotations


class InputSkipped(Exception):
    """One user file (or PDF page) cannot be indexed; ``str(err)`` is the reason shown in report.json."""


class GalleryError(ValueError):
    """The gallery directory, its model, or a command argument is unusable; the message names the path."""

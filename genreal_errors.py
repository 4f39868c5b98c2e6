"""The user-facing error types: a leaf module every room (kernels, models, calibration, realtime,
benchmarks) may import. It imports nothing and has no side effects.

The CLI (`realtime.cli`) turns a `UserError` into one line on stderr and its `exit_code` (2).
"""
from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix: bad option, missing file, no camera, corrupt media or model.

    The message must name the problem and, where there is one, the fix, in a single line.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class BackendUnavailable(UserError):
    """This engine cannot run here (its package is not installed, or there is no such device).

    ``--backend auto`` skips a backend only for this error; every other `UserError` (about the
    model, the style or the options) is the user's to fix and ends the run.
    """


class StreamLost(UserError):
    """A live source went away and every reconnect attempt failed. Exit code 3."""

    exit_code = 3


__all__ = ["UserError", "BackendUnavailable", "StreamLost"]

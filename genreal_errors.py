"""The user-facing error type: a leaf module every room (kernels, models, calibration, realtime,
benchmarks) may import. It imports nothing and has no side effects.

The CLI (`realtime.cli`) turns a `UserError` into one line on stderr and exit code 2.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix: bad option, missing file, no camera, corrupt media or model.

    The message must name the problem and, where there is one, the fix, in a single line.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


__all__ = ["UserError"]

"""Errors a user can cause. The CLI turns them into one line on stderr and exit code 2."""
from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix: bad option, missing file, no camera, corrupt media or model.

    The message must name the problem and, where there is one, the fix, in a single line.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def check_writable_dir(path: "os.PathLike[str] | str", what: str) -> None:
    """Raise `UserError` unless folder `path` exists writable or could be created (its nearest existing
    ancestor is a writable folder). Creates nothing."""
    import os
    from pathlib import Path

    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise UserError(f"{what} {p} is a file, not a folder: choose another path")
        if not os.access(p, os.W_OK | os.X_OK):
            raise UserError(f"cannot write to {what} {p}: permission denied (choose a writable folder)")
        return
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot create {what} {p}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot create {what} {p}: no write permission in {parent} (choose a writable folder)")


class BackendUnavailable(UserError):
    """This engine cannot run here (its package is not installed, or there is no such device).

    ``--backend auto`` skips a backend only for this error; every other `UserError` (about the
    model, the style or the options) is the user's to fix and ends the run.
    """


class StreamLost(UserError):
    """A live source went away and every reconnect attempt failed. Exit code 3."""

    exit_code = 3

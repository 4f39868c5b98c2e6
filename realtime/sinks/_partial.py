"""One output per run: a file sink writes ``<stem>.partial<ext>`` beside its target and renames it onto
the target when the run ends, holding an exclusive lock on the partial file all the while.

* The target is never half-written: it is either the earlier file, untouched, or the finished new one.
* A second run given the same target finds the partial file locked and is refused (`UserError`, exit 2).
* Whatever ends the run (the last frame, an error, Ctrl-C, SIGTERM, SIGHUP) the sink finalizes the
  partial file and renames it, so every frame written is kept. SIGKILL cannot be caught: the partial
  file stays beside the target (``out.partial.mp4`` for ``out.mp4``), playable up to its last fragment;
  the next run with that target replaces it.
* A target that exists and is not a regular file (``/dev/null``, a FIFO, ``/dev/full``) is written
  directly: there is nothing to rename over.

The lock is ``fcntl.flock`` (released by the kernel when the process dies, so a killed run never
blocks the next one); without `fcntl` (Windows) runs are not locked against each other.
"""
from __future__ import annotations

import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Optional

from genreal_errors import UserError

log = logging.getLogger(__name__)

PARTIAL_TAG = ".partial"


def partial_path(target: str | os.PathLike[str]) -> Path:
    """Where a run writes `target` until it ends: ``<dir>/<stem>.partial<ext>`` beside the real file
    (a symbolic link is followed, so the link itself is kept)."""
    real = Path(os.path.realpath(Path(target).expanduser()))
    return real.with_name(f"{real.stem}{PARTIAL_TAG}{real.suffix}")


def writes_directly(target: Path) -> bool:
    """A target that exists and is not a regular file (a device, a FIFO) is written in place."""
    try:
        return not stat.S_ISREG(os.stat(target).st_mode)
    except OSError:
        return False


def _busy(spec: str, partial: Path) -> UserError:
    return UserError(f"--sink {spec} is being written by another genreal run (it holds {partial.name}): "
                     "wait for that run to end or choose another output name")


def _flock(fd: int) -> bool:
    """Take an exclusive lock without waiting; False when another process holds one."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no locking between runs
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def check_partial(spec: str, target: Path) -> None:
    """Raise `UserError` unless a partial file can be created beside `target` and no other run holds it.

    Creates and removes a trial file (so a folder where files cannot be created, such as /proc, is
    found before the run starts), and tests the lock of an existing partial file without keeping it.
    """
    if writes_directly(target):
        return
    partial = partial_path(target)
    try:
        with tempfile.NamedTemporaryFile(dir=partial.parent, prefix=f".{partial.name}.", suffix=".check"):
            pass
    except OSError as exc:
        raise UserError(f"cannot write --sink {spec}: files cannot be created in {partial.parent} "
                        f"({exc.strerror or exc}): choose another folder") from None
    try:
        fd = os.open(partial, os.O_RDONLY)
    except OSError:
        return  # no partial file: nobody is writing this target
    try:
        if not _flock(fd):
            raise _busy(spec, partial)
    finally:
        os.close(fd)  # releases the probe's lock


class PartialFile:
    """The locked partial file of one target: `path` is where to write, `finish()` renames it."""

    def __init__(self, spec: str, target: Path) -> None:
        self.target = target
        self.direct = writes_directly(target)
        self._fd: Optional[int] = None
        if self.direct:
            self.path = target
            return
        self.path = partial_path(target)
        self.target = Path(os.path.realpath(target))  # a symbolic link's file is replaced, the link kept
        stale = self.path.exists() and self.path.stat().st_size > 0
        for _ in range(3):  # the partial file may be renamed away between our open and our lock: retry
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise UserError(f"cannot write --sink {spec}: cannot create {self.path} "
                                f"({exc.strerror or exc}): choose another folder") from None
            if not _flock(fd):
                os.close(fd)
                raise _busy(spec, self.path)
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except OSError:
                same = False
            if same:
                self._fd = fd
                break
            os.close(fd)
        else:  # pragma: no cover - three races in a row
            raise _busy(spec, self.path)
        if stale:
            log.warning("--sink %s: replacing %s, left by an earlier run that was killed (rename it to keep it)",
                        spec, self.path)

    def finish(self, keep: bool) -> None:
        """Rename the partial file onto the target (`keep`) or remove it, then release the lock. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if keep:
                try:
                    os.fsync(fd)  # the frames reach the disk before the name points at them
                except OSError:
                    pass
                os.replace(self.path, self.target)
            else:
                self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)

"""A clash between the X11 libraries bundled in the PyAV and OpenCV wheels (Linux).

Both wheels bundle ``libxcb-shape`` / ``libxcb-shm`` / ``libxcb-xfixes`` under the *same* file
name (auditwheel names a copy by a hash of the original file) but linked against different
``libxcb`` builds: PyAV's own bundled copy, OpenCV's the system one. The dynamic loader reuses
a library already loaded under that name, so when ``av`` is imported before OpenCV's Qt GUI
starts, Qt's xcb plugin calls PyAV's copies with a connection made by another libxcb and
``cv2.namedWindow`` spins forever (seen with av 18.1 + opencv-python 5.0).

`preload()` loads OpenCV's copies first (a few small ``dlopen``s, no ``import cv2``), so a later
``import av`` reuses them; PyAV needs them only for X11 screen grabbing, which genreal never
does. `import_av()` runs it before PyAV is first imported (every media source and file sink imports
PyAV through it) and the window sink runs it before it opens; nothing else pays for it.
`clash()` says whether PyAV's copies were loaded first (then a window would hang).
"""
from __future__ import annotations

import ctypes
import functools
import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

_handles: list[ctypes.CDLL] = []  # keep the preloaded libraries referenced


def _site_dir(package: str) -> Optional[Path]:
    """The directory holding `package`, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).resolve().parent.parent


@functools.lru_cache(maxsize=1)
def _shared_libs() -> tuple[Optional[Path], Optional[Path], frozenset[str]]:
    """(OpenCV's libs dir, PyAV's libs dir, xcb library file names both bundle)."""
    cv_site, av_site = _site_dir("cv2"), _site_dir("av")
    if cv_site is None or av_site is None:
        return None, None, frozenset()
    av_libs = av_site / "av.libs"
    cv_libs = next((p for p in sorted(cv_site.glob("opencv*.libs")) if p.is_dir()), None)
    if cv_libs is None or not av_libs.is_dir():
        return None, None, frozenset()
    both = {n for n in os.listdir(cv_libs) if n.startswith("libxcb")} & set(os.listdir(av_libs))
    return cv_libs, av_libs, frozenset(both)


def clash() -> bool:
    """True when PyAV's copy of an xcb library both wheels bundle is the one loaded (Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    _, av_libs, names = _shared_libs()
    if not names or av_libs is None:
        return False
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            loaded = {Path(line.split()[-1]) for line in maps if "/" in line}
    except OSError:
        return False
    return any(p.parent == av_libs and p.name in names for p in loaded)


def preload() -> None:
    """Load OpenCV's copies of the shared xcb libraries unless PyAV's are loaded already (Linux)."""
    if not sys.platform.startswith("linux") or "av" in sys.modules or _handles:
        return
    try:
        cv_libs, _, names = _shared_libs()
    except OSError:
        return
    for name in sorted(names):
        try:
            _handles.append(ctypes.CDLL(str(cv_libs / name)))
        except OSError as exc:  # e.g. no system libxcb: then OpenCV has no working GUI either
            log.debug("could not preload %s: %s", name, exc)
            return


def import_av():
    """`import av`, after `preload()`: the way every media source and file sink imports PyAV, so a window
    opened later in the same process does not hang."""
    preload()
    import av

    return av

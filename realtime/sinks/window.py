"""`--sink window`: an OpenCV window with a small HUD; keys n / p / t / q control the run.

The window is opened at the first frame. Keys are read with ``cv2.waitKey(1)`` in `write()`
and `poll_keys()`, which must be called from the thread that writes (the pipeline's main
thread). Closing the window counts as 'q'.

With `pace` (a file source; turned off by ``--as-fast-as-possible``) each frame is shown at its
presentation time relative to the first frame, so a video plays at its own frame rate; live
sources are shown as they come.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import time
from typing import Optional

import numpy as np

from genreal_errors import UserError
from realtime.frame import Item
from realtime import _xlibs
from realtime.sinks.base import Overlay, Sink

_NO_DISPLAY = "no display for --sink window: {why}; use --sink out.mp4 or --sink null"

#: key codes (after ``& 0xFF``) → the pipeline's commands
KEYMAP: dict[int, str] = {ord("n"): "n", ord("N"): "n", ord("p"): "p", ord("P"): "p",
                          ord("t"): "t", ord("T"): "t", ord("q"): "q", ord("Q"): "q", 27: "q"}


def gui_backend() -> str:
    """The GUI toolkit OpenCV was built with ('QT5', 'GTK3', 'WIN32UI', 'COCOA', ...; 'NONE' for headless)."""
    import cv2

    for line in cv2.getBuildInformation().splitlines():
        key, _, value = line.strip().partition(":")
        if key.strip() == "GUI":
            return value.strip().upper() or "NONE"
    return "NONE"


def _x_display_reachable(display: str, timeout: float = 1.0) -> bool:
    """Whether an X server answers at ``DISPLAY`` ('[host]:N[.S]'): its socket accepts a connection."""
    host, sep, rest = display.rpartition(":")
    if not sep:
        return False
    number = rest.split(".")[0]
    if not number.isdigit():
        return False
    if host.startswith("/"):  # macOS launchd style ('/private/tmp/...:0'): trust it
        return True
    if host in ("", "unix"):
        paths = [f"/tmp/.X11-unix/X{number}"]
        if sys.platform.startswith("linux"):
            paths.insert(0, f"\0/tmp/.X11-unix/X{number}")  # the abstract socket most servers also open
        for path in paths:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                try:
                    s.connect(path)
                    return True
                except OSError:
                    continue
        if host == "unix":
            return False
        host = "localhost"
    try:
        with socket.create_connection((host, 6000 + int(number)), timeout=timeout):
            return True
    except OSError:
        return False


def check_display() -> None:
    """Raise `UserError` when OpenCV cannot open a window here."""
    gui = gui_backend()
    if gui in ("NONE", "NO", ""):
        raise UserError(_NO_DISPLAY.format(why="this OpenCV has no GUI support (opencv-python-headless?)"))
    if not sys.platform.startswith("linux"):
        return  # Windows / macOS always have a desktop when a user runs this
    display, wayland = os.environ.get("DISPLAY"), os.environ.get("WAYLAND_DISPLAY")
    qt_platform = os.environ.get("QT_QPA_PLATFORM", "")
    if gui.startswith("QT") and qt_platform and not qt_platform.startswith("xcb"):
        return  # the user picked a Qt platform (wayland, offscreen, ...) explicitly
    # OpenCV's Qt build (the opencv-python wheel) only ships the X11 (xcb) plugin; GTK also speaks Wayland
    usable_wayland = bool(wayland) and not gui.startswith("QT")
    if not display and not usable_wayland:
        why = "neither DISPLAY nor WAYLAND_DISPLAY is set" if not wayland else \
            "DISPLAY is not set and OpenCV's Qt GUI needs X11 (XWayland)"
        raise UserError(_NO_DISPLAY.format(why=why))
    if display and not usable_wayland and not _x_display_reachable(display):
        raise UserError(_NO_DISPLAY.format(why=f"cannot connect to the X server at DISPLAY={display}"))
    _xlibs.preload()
    if _xlibs.clash():
        raise UserError("cannot open --sink window: PyAV was imported before realtime.sinks and its bundled X11 "
                        "libraries clash with OpenCV's (a window would hang); call realtime._xlibs.preload() (or "
                        "import PyAV through realtime._xlibs.import_av()) before av, or use --sink out.mp4 or --sink null")


class WindowSink(Sink):
    """Shows frames in an OpenCV window with a HUD (fps, latency, style, backend, temporal)."""

    name = "window"

    def __init__(self, title: str = "genreal", hud: bool = True, pace: bool = False) -> None:
        check_display()
        self.title = title
        self.hud = hud
        self.pace = pace
        self._clock: Optional[tuple[float, float]] = None  # (first pts, wall time it was shown)
        self.frames = 0
        self._keys: list[str] = []
        self._opened = False
        self._gone = False  # the user closed the window
        self._closed = False
        self._thread: Optional[int] = None  # the GUI thread (the one that opened the window)

    def write(self, item: Item, overlay: Overlay) -> None:
        import cv2

        if self._closed:
            raise RuntimeError("window sink: write() after close()")
        if self._gone:
            return
        bgr = cv2.cvtColor(item.display_image(), cv2.COLOR_RGB2BGR)  # a copy: the HUD never touches the frame
        if self.hud:
            draw_hud(bgr, overlay)
        if not self._opened:
            cv2.namedWindow(self.title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | cv2.WINDOW_GUI_NORMAL)
            cv2.resizeWindow(self.title, bgr.shape[1], bgr.shape[0])
            self._opened, self._thread = True, threading.get_ident()
        self._wait_for(item.pts)
        cv2.imshow(self.title, bgr)
        self.frames += 1
        self._pump()

    def _wait_for(self, pts: Optional[float]) -> None:
        """With `pace`: sleep until the frame's presentation time."""
        if not self.pace or pts is None:
            return
        now = time.perf_counter()
        if self._clock is None or pts < self._clock[0]:
            self._clock = (pts, now)
            return
        due = self._clock[1] + (pts - self._clock[0])
        if due < now - 0.5:  # fell behind by more than half a second: restart the clock, do not race
            self._clock = (pts, now)
            return
        while (left := due - time.perf_counter()) > 0:
            time.sleep(min(left, 0.01))

    def _pump(self) -> None:
        """Run the GUI event loop for ~1 ms; collect keys; notice a closed window."""
        import cv2

        if not self._opened or self._gone or self._closed or threading.get_ident() != self._thread:
            return
        code = cv2.waitKey(1)
        if code != -1 and (code & 0xFF) in KEYMAP:
            self._keys.append(KEYMAP[code & 0xFF])
        try:
            visible = cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE)
        except cv2.error:
            visible = 0
        if visible < 1:
            self._gone = True
            self._keys.append("q")

    def poll_keys(self) -> list[str]:
        self._pump()
        keys, self._keys = self._keys, []
        return keys

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._opened and not self._gone and threading.get_ident() == self._thread:
            import cv2

            try:
                cv2.destroyWindow(self.title)
                cv2.waitKey(1)  # let the toolkit process the close
            except cv2.error:
                pass


def draw_hud(bgr: np.ndarray, overlay: Overlay) -> None:
    """Draw the overlay's figures in the top-left corner of `bgr` (H, W, 3), in place: one line, and a
    second with the detail layer's readout when it is on."""
    import cv2

    lines = [f"{overlay.fps:.1f} fps  {overlay.latency_ms:.0f} ms  {overlay.style}  {overlay.backend}  "
             f"temporal {'on' if overlay.temporal else 'off'}"]
    if overlay.detail:
        lines.append(overlay.detail)
    h, w = bgr.shape[:2]
    scale = max(0.35, min(1.0, w / 1400))
    thickness = 1 if scale < 0.8 else 2
    sizes = [cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness) for t in lines]
    pad = max(2, int(6 * scale))
    step = max(th + base for (_, th), base in sizes) + pad
    x1, y1 = min(w, max(tw for (tw, _), _ in sizes) + 2 * pad), min(h, step * len(lines) + pad)
    roi = bgr[:y1, :x1]
    roi[:] = (roi.astype(np.uint16) * 2 // 5).astype(np.uint8)  # darken behind the text
    for i, (text, ((_, th), _)) in enumerate(zip(lines, sizes)):
        cv2.putText(bgr, text, (pad, pad + th + i * step), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                    thickness, cv2.LINE_AA)

"""A camera through OpenCV (V4L2 on Linux): MJPG, the requested size and rate, a one-frame buffer."""
from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from realtime.config import SourceConfig
from genreal_errors import UserError
from realtime.frame import Frame
from realtime.sources.common import ThreadedSource, resize_to, to_rgb8

log = logging.getLogger(__name__)

_LINUX = sys.platform.startswith("linux")


@contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's own warnings while probing a device (we raise a clear error instead)."""
    import cv2

    try:
        old = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:  # OpenCV builds without the logging utilities
        yield
        return
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(old)


class WebcamSource(ThreadedSource):
    """`webcam:N`. Live: frames carry no pts; a camera that stops delivering ends the stream."""

    live = True

    def __init__(self, cfg: SourceConfig, index: int) -> None:
        super().__init__(cfg)
        self.index = index
        self._cap: Any = None
        self._first: Optional[Any] = None  # the frame read by open() to prove the device works
        self._fps: Optional[float] = None

    @property
    def fps(self) -> Optional[float]:
        return self._fps

    def _no_camera(self, why: str) -> UserError:
        how = "'v4l2-ctl --list-devices'" if _LINUX else "your system's camera settings"
        return UserError(f"no camera at webcam:{self.index} ({why}): check the index with {how} "
                         "or use --source demo")

    def _open(self) -> None:
        import cv2

        device = f"/dev/video{self.index}"
        if _LINUX and not os.path.exists(device):
            raise self._no_camera(f"cannot open {device}")
        with _quiet_opencv():
            cap = cv2.VideoCapture(self.index, cv2.CAP_V4L2 if _LINUX else cv2.CAP_ANY)
            if not cap.isOpened():
                cap.release()
                raise self._no_camera(f"cannot open {device}" if _LINUX else "cannot open it")
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
            if self.cfg.size is not None:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.cfg.size[0])
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.cfg.size[1])
            if self.cfg.fps is not None:
                cap.set(cv2.CAP_PROP_FPS, float(self.cfg.fps))
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
            ok, first = cap.read()
        if not ok or first is None:
            cap.release()
            raise UserError(f"webcam:{self.index} opened but delivers no frames (busy, or not a capture "
                            "device): close other programs using it or try another index")
        got = cap.get(cv2.CAP_PROP_FPS)
        self._fps = float(got) if got and got > 0 else self.cfg.fps
        self._cap, self._first = cap, (first, time.monotonic_ns())
        h, w = first.shape[:2]
        log.info("webcam:%d opened at %dx%d, %s fps", self.index, w, h, f"{self._fps:g}" if self._fps else "unknown")
        if self.cfg.size is not None and (w, h) != tuple(self.cfg.size):
            log.info("webcam:%d does not offer %dx%d: frames are resized from %dx%d", self.index, *self.cfg.size, w, h)

    def _produce(self) -> Iterator[Frame]:
        cap, size = self._cap, self.cfg.size
        first, self._first = self._first, None
        if first is not None:
            yield Frame(resize_to(to_rgb8(first[0]), size), 0, first[1])
        n = 1
        while not self.closed:
            ok, bgr = cap.read()
            capture_ns = time.monotonic_ns()
            if not ok or bgr is None:
                if not self.closed:
                    log.warning("webcam:%d stopped delivering frames after %d frames", self.index, n)
                return
            yield Frame(resize_to(to_rgb8(bgr), size), n, capture_ns)
            n += 1

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

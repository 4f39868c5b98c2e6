"""`--sink vcam` (or `vcam:/dev/videoN`): a virtual camera other apps (Zoom, OBS, a browser) can pick.

Uses pyvirtualcam (the `vcam` extra): v4l2loopback on Linux, the OBS virtual camera on
Windows and macOS. The camera is opened at the first frame, at that frame's size; later
frames of another size are resized to it. Frames are sent as they come: the pipeline paces
itself, so ``sleep_until_next_frame`` is not used.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Optional

from genreal_errors import UserError
from realtime.frame import Item
from realtime.sinks._size import SizeKeeper
from realtime.sinks.base import Overlay, Sink

log = logging.getLogger(__name__)

DEFAULT_FPS = 30.0
#: where Linux lists virtual (v4l2loopback) video devices
V4L2_SYSFS = Path("/sys/devices/virtual/video4linux")
MODPROBE = "sudo modprobe v4l2loopback devices=1 exclusive_caps=1"


def _import_pyvirtualcam() -> Any:
    try:
        import pyvirtualcam
    except ImportError as exc:
        raise UserError("--sink vcam needs pyvirtualcam: pip install 'generative-reality[vcam]'") from exc
    return pyvirtualcam


def loopback_devices() -> list[str]:
    """Linux: the /dev paths of virtual video devices (v4l2loopback), from sysfs."""
    try:
        return sorted(f"/dev/{p.name}" for p in V4L2_SYSFS.iterdir() if p.name.startswith("video"))
    except OSError:
        return []


def _hint() -> str:
    if sys.platform.startswith("linux"):
        return f"load v4l2loopback with '{MODPROBE}'"
    return "install OBS Studio and start its virtual camera once"


class VcamSink(Sink):
    """Sends every frame to a virtual camera; a `StereoFrame` is sent side by side."""

    name = "vcam"

    def __init__(self, fps: Optional[float] = None, device: Optional[str] = None) -> None:
        self._pyvirtualcam = _import_pyvirtualcam()
        if sys.platform.startswith("linux"):
            devices = loopback_devices()
            if not devices:
                raise UserError(f"no virtual camera device for --sink vcam: {_hint()}")
            if device is not None and device not in devices:
                raise UserError(f"--sink vcam:{device} is not a v4l2loopback device: "
                                f"use one of {', '.join(devices)} or plain --sink vcam")
        self.fps = float(fps) if fps and fps > 0 else DEFAULT_FPS
        self.device = device
        self.frames = 0
        self._sizer = SizeKeeper("vcam")
        self._cam: Any = None
        self._closed = False

    def write(self, item: Item, overlay: Overlay) -> None:
        if self._closed:
            raise RuntimeError("vcam sink: write() after close()")
        image = self._sizer.fit(item.display_image())  # (H, W, 3) RGB
        if self._cam is None:
            self._open(image.shape[1], image.shape[0])
        self._cam.send(image)
        self.frames += 1

    def _open(self, width: int, height: int) -> None:
        pvc = self._pyvirtualcam
        try:
            self._cam = pvc.Camera(width, height, self.fps, fmt=pvc.PixelFormat.RGB, device=self.device)
        except (RuntimeError, OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot open the virtual camera for --sink vcam ({first}): {_hint()}") from exc
        log.info("virtual camera %s: %dx%d at %.3g fps", getattr(self._cam, "device", "?"), width, height, self.fps)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        cam, self._cam = self._cam, None
        if cam is not None:
            cam.close()

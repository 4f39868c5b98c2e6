"""`--sink out.mp4` (or .mov, .m4v, .mkv, .avi, .webm): encode frames into a video file with PyAV.

The output path, its directory and the encoder are checked when the sink is made; the file
is opened at the first frame (its size is not known before). Timing: a frame's `pts`
(seconds, set by file sources) is kept, else its capture time relative to the first frame;
timestamps are forced to increase strictly. `close()` flushes the encoder and writes the
container trailer, so the file is playable with every frame written so far, also after an
error; it is idempotent.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

import numpy as np

from genreal_errors import UserError
from realtime import _xlibs
from realtime.frame import Item
from realtime.sinks._size import SizeKeeper
from realtime.sinks.base import Overlay, Sink

log = logging.getLogger(__name__)

DEFAULT_FPS = 30.0


@dataclass(frozen=True)
class FileFormat:
    """How one file extension is written."""

    container: str  # FFmpeg muxer name
    codecs: tuple[str, ...]  # encoder names; the first one this PyAV build has is used
    pix_fmt: str  # the encoder's pixel format
    label: str  # for messages and --help
    time_base: Optional[Fraction] = None  # pts resolution; None = one tick per frame (1/fps)
    even: bool = False  # the pixel format needs even width and height (padded)
    options: dict[str, str] = field(default_factory=dict)


_H264 = dict(codecs=("libx264",), pix_fmt="yuv420p", label="H.264", time_base=Fraction(1, 90000), even=True,
             options={"crf": "18", "preset": "veryfast"})

#: supported extensions (lower case) → format
FORMATS: dict[str, FileFormat] = {
    ".mp4": FileFormat("mp4", **_H264),
    ".mov": FileFormat("mov", **_H264),
    ".m4v": FileFormat("ipod", **_H264),
    ".mkv": FileFormat("matroska", ("ffv1",), "bgr0", "FFV1 lossless", Fraction(1, 1000)),
    # AVI has no per-frame timestamps: one tick per frame period, gaps kept as skipped ticks
    ".avi": FileFormat("avi", ("mjpeg",), "yuvj420p", "MJPEG", None, even=True),
    ".webm": FileFormat("webm", ("libvpx-vp9",), "yuv420p", "VP9", Fraction(1, 1000),
                        options={"deadline": "realtime", "cpu-used": "8", "crf": "30", "b": "0"}),
}


def supported_extensions() -> str:
    return ", ".join(f"{ext} ({fmt.label})" for ext, fmt in FORMATS.items())


def check_output_path(path: Path) -> None:
    """Raise `UserError` unless a file can be created (or overwritten) at `path`."""
    if path.is_dir():
        raise UserError(f"--sink {path} is a directory: give a file name such as {path / 'out.mp4'}")
    parent = path.parent
    if not parent.exists():
        raise UserError(f"cannot write --sink {path}: directory {parent} does not exist (create it first)")
    if not parent.is_dir():
        raise UserError(f"cannot write --sink {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write --sink {path}: no write permission in {parent} (choose another directory)")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"cannot overwrite --sink {path}: the file is read-only (choose another name)")


def _pick_encoder(ext: str, fmt: FileFormat) -> str:
    av = _xlibs.import_av()

    if fmt.container not in av.formats_available:
        raise UserError(f"this PyAV/FFmpeg build cannot write {ext} files: use .mp4 or .mkv")
    for name in fmt.codecs:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # av raises UnknownCodecError (a ValueError) for a missing encoder
            continue
    raise UserError(f"this PyAV/FFmpeg build has no {fmt.label} encoder ({', '.join(fmt.codecs)}) "
                    f"for {ext} files: use .mp4 or .mkv")


class FileSink(Sink):
    """Encodes every frame into a video file; a `StereoFrame` is written side by side."""

    name = "file"

    def __init__(self, path: str | os.PathLike[str], fps: Optional[float] = None) -> None:
        self.path = Path(path).expanduser()
        if self.path.is_dir():
            raise UserError(f"--sink {path} is a directory: give a file name such as {self.path / 'out.mp4'}")
        ext = self.path.suffix.lower()
        if ext not in FORMATS:
            raise UserError(f"unknown output file type {ext or '(none)'!r} for --sink {path}: "
                            f"use one of {supported_extensions()}")
        check_output_path(self.path)
        self.format = FORMATS[ext]
        self.codec = _pick_encoder(ext, self.format)
        self.fps = float(fps) if fps and fps > 0 else DEFAULT_FPS
        self.rate = Fraction(self.fps).limit_denominator(1001)
        self.time_base = self.format.time_base or 1 / self.rate
        self.frames = 0  # frames written
        self.name = f"file:{self.path}"
        self._sizer = SizeKeeper(self.name)
        self._lock = threading.Lock()
        self._container: Any = None
        self._stream: Any = None
        self._closed = False
        self._last_ticks: Optional[int] = None
        self._t0_ns = 0  # first frame's capture time
        self._t0 = 0.0  # first frame's pts (seconds), 0 when it had none

    # -- writing ---------------------------------------------------------------------
    def write(self, item: Item, overlay: Overlay) -> None:
        av = _xlibs.import_av()

        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name}: write() after close()")
            image = self._sizer.fit(item.display_image())  # (H, W, 3) RGB
            if self._container is None:
                self._open(image)
            if self.format.even:
                image = _pad_even(image)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = self._ticks(item)
            frame.time_base = self.time_base
            try:
                for packet in self._stream.encode(frame):
                    self._container.mux(packet)
            except (av.FFmpegError, OSError) as exc:
                raise UserError(f"writing --sink {self.path} failed: {exc} (check free disk space)") from exc
            self.frames += 1

    def _open(self, image: np.ndarray) -> None:
        av = _xlibs.import_av()

        h, w = image.shape[:2]
        if self.format.even:
            w, h = w + w % 2, h + h % 2
        try:
            container = av.open(str(self.path), mode="w", format=self.format.container)
        except (av.FFmpegError, OSError) as exc:
            raise UserError(f"cannot create --sink {self.path}: {exc}") from exc
        try:
            stream = container.add_stream(self.codec, rate=self.rate)
            stream.width, stream.height, stream.pix_fmt = w, h, self.format.pix_fmt
            stream.codec_context.time_base = self.time_base
            if self.format.pix_fmt.startswith("yuv"):
                _tag_bt601(stream.codec_context, full_range=self.format.pix_fmt.startswith("yuvj"))
            if self.codec == "mjpeg":
                stream.bit_rate = int(w * h * self.fps * 2)  # ~2 bits / pixel: near-transparent quality
            if self.format.options:
                stream.options = dict(self.format.options)
        except BaseException:
            container.close()
            raise
        self._container, self._stream = container, stream
        log.info("writing %s: %dx%d %s, %.3g fps", self.path, w, h, self.codec, self.fps)

    def _ticks(self, item: Item) -> int:
        """The frame's pts in `time_base` ticks, strictly after the previous frame's."""
        if self._last_ticks is None:
            self._t0_ns, self._t0 = item.capture_ns, item.pts if item.pts is not None else 0.0
        seconds = item.pts if item.pts is not None else self._t0 + (item.capture_ns - self._t0_ns) / 1e9
        if self.format.time_base is None:  # AVI (frame-counted): start at 0, no leading gap
            seconds -= self._t0
        ticks = round(seconds * self.time_base.denominator / self.time_base.numerator)
        ticks = max(ticks, 0 if self._last_ticks is None else self._last_ticks + 1)
        self._last_ticks = ticks
        return ticks

    # -- closing ---------------------------------------------------------------------
    def close(self) -> None:
        av = _xlibs.import_av()

        with self._lock:
            if self._closed:
                return
            self._closed = True
            container, stream = self._container, self._stream
            self._container = self._stream = None
            if container is None:
                log.warning("%s: no frames were written; no file created", self.name)
                return
            try:
                try:
                    for packet in stream.encode(None):  # flush the encoder's delayed frames
                        container.mux(packet)
                finally:
                    container.close()  # writes the trailer (mp4 moov) even if flushing failed
            except (av.FFmpegError, OSError) as exc:
                raise UserError(f"finalizing --sink {self.path} failed: {exc} (check free disk space)") from exc
            log.info("wrote %d frames to %s", self.frames, self.path)


def _tag_bt601(codec_context: Any, full_range: bool) -> None:
    """Tag YUV output as BT.601 (what swscale's RGB→YUV conversion uses), so players decode the
    colours back right also at HD sizes, where untagged video is assumed to be BT.709."""
    try:
        codec_context.colorspace = 6  # AVCOL_SPC_SMPTE170M
        codec_context.color_primaries = 6  # AVCOL_PRI_SMPTE170M
        codec_context.color_trc = 6  # AVCOL_TRC_SMPTE170M
        codec_context.color_range = 2 if full_range else 1  # AVCOL_RANGE_JPEG / _MPEG
    except (AttributeError, TypeError, ValueError):  # older PyAV: leave untagged
        pass


def _pad_even(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) → (H + H%2, W + W%2, 3), repeating the last row / column."""
    h, w = image.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return image
    return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")

"""`--sink out.mp4` (or .mov, .m4v, .mkv, .avi, .webm): encode frames into a video file with PyAV.

The output path, its directory and the encoder are checked when the sink is made; the file
is opened at the first frame (its size is not known before). Timing: a frame's `pts`
(seconds, set by file sources) is kept relative to the first frame's, else its capture time
relative to the first frame: every recording starts at t=0; timestamps are forced to increase
strictly. `close()` flushes the encoder and writes the container trailer, so the file is playable
with every frame written so far, also after an error; it is idempotent.

One output per run (`realtime.sinks._partial`): frames go to ``<stem>.partial<ext>`` beside the target,
locked against other runs, and `close()` renames it onto the target, so the target is never half-written
and a second run writing the same target is refused.

Files stay playable even when `close()` never runs (SIGKILL, a crash; then the frames are in the
partial file, which the next run on that target replaces) or a disk fills up: MP4 / MOV /
M4V are written fragmented (``movflags=frag_keyframe+empty_moov``, a keyframe every second, so at
most about a second is lost), Matroska / WebM get a cluster every second and AVI is readable without
its index; every packet goes to the OS as it is muxed (``flush_packets``), not when a buffer fills.
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
from realtime.sinks._partial import PartialFile, check_partial
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
    container_options: dict[str, str] = field(default_factory=dict)
    keyframe_s: Optional[float] = None  # a keyframe at least this often (fragment length of fragmented MP4)


#: hand every packet to the OS at once (not after FFmpeg's 32 KB I/O buffer fills): a small or slow
#: stream killed by SIGKILL would otherwise lose many seconds that were "written"
ALWAYS_FLUSH = {"flush_packets": "1"}
#: fragmented MP4: a moov without samples up front, then one moof+mdat per keyframe interval, so a
#: file cut anywhere plays up to its last complete fragment. x264's zerolatency tune: no B-frames (without
#: an edit list, which an empty moov cannot carry, their reorder delay would shift the first frame off
#: t=0) and no lookahead, so a fragment reaches the disk as soon as its last frame was written.
FRAGMENTED_MP4 = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}
_H264 = dict(codecs=("libx264",), pix_fmt="yuv420p", label="H.264", time_base=Fraction(1, 90000), even=True,
             options={"crf": "18", "preset": "veryfast", "tune": "zerolatency"}, container_options=FRAGMENTED_MP4,
             keyframe_s=1.0)
#: Matroska / WebM: a cluster at least every second (WebM's default waits up to 5 s), so a cut file
#: loses at most about a second
_CLUSTERS = {"cluster_time_limit": "1000"}

#: supported extensions (lower case) → format
FORMATS: dict[str, FileFormat] = {
    ".mp4": FileFormat("mp4", **_H264),
    ".mov": FileFormat("mov", **_H264),
    ".m4v": FileFormat("ipod", **_H264),
    ".mkv": FileFormat("matroska", ("ffv1",), "bgr0", "FFV1 lossless", Fraction(1, 1000), container_options=_CLUSTERS),
    # AVI has no per-frame timestamps: one tick per frame period, gaps kept as skipped ticks
    ".avi": FileFormat("avi", ("mjpeg",), "yuvj420p", "MJPEG", None, even=True),
    ".webm": FileFormat("webm", ("libvpx-vp9",), "yuv420p", "VP9", Fraction(1, 1000),
                        options={"deadline": "realtime", "cpu-used": "8", "crf": "30", "b": "0", "lag-in-frames": "0"},
                        container_options=_CLUSTERS),
}


#: every kind of --sink, for messages that list them
OTHER_SINKS = "window, null, vcam (or vcam:/dev/videoN), web (or web:PORT)"


def supported_extensions() -> str:
    return ", ".join(f"{ext} ({fmt.label})" for ext, fmt in FORMATS.items())


def check_file_sink(spec: str) -> tuple[Path, FileFormat, str]:
    """Raise `UserError` unless a file sink can write `spec`; (path, format, encoder) when it can.

    Opens nothing that stays: a trial file beside the target shows the folder takes new files, and a
    partial file another run holds is refused (see `realtime.sinks._partial`).
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        raise UserError(f"--sink {spec} is a directory: give a file name such as {path / 'out.mp4'}")
    ext = path.suffix.lower()
    if not ext:
        raise UserError(f"unknown --sink {spec!r}: use {OTHER_SINKS}, or a video file path ending in "
                        f"{supported_extensions()}")
    if ext not in FORMATS:
        raise UserError(f"unknown output file type {ext!r} for --sink {spec}: a video file ends in "
                        f"{supported_extensions()}; the other sinks are {OTHER_SINKS}")
    check_output_path(path)
    fmt = FORMATS[ext]
    codec = _pick_encoder(ext, fmt)
    check_partial(spec, path)
    return path, fmt, codec


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


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name one file: the same path after resolving links, or the same inode (hard link)."""
    try:
        if os.path.realpath(a) == os.path.realpath(b):
            return True
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): then they are different files
        return False


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
        self.path, self.format, self.codec = check_file_sink(str(path))
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
        self._failed = False  # a write failed (e.g. a full disk): close() only tidies up
        self._last_ticks: Optional[int] = None
        self._t0_ns = 0  # first frame's capture time
        self._t0 = 0.0  # first frame's pts (seconds), 0 when it had none
        self._partial = PartialFile(str(path), self.path)  # locked: a second run on this target is refused

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
                self._failed = True
                raise UserError(f"writing --sink {self.path} failed at frame {self.frames}: {_reason(exc)}"
                                f"{_disk_hint(exc)}; {self._kept_hint()}") from None
            self.frames += 1

    def _open(self, image: np.ndarray) -> None:
        av = _xlibs.import_av()

        h, w = image.shape[:2]
        if self.format.even and (w % 2 or h % 2):
            log.info("%s: %dx%d padded to %dx%d (%s needs even sides; the last row/column is repeated)",
                     self.name, w, h, w + w % 2, h + h % 2, self.format.label)
            w, h = w + w % 2, h + h % 2
        try:
            container = av.open(str(self._partial.path), mode="w", format=self.format.container,
                                container_options={**ALWAYS_FLUSH, **self.format.container_options})
        except (av.FFmpegError, OSError) as exc:
            raise UserError(f"cannot create --sink {self.path}: {_reason(exc)}") from None
        try:
            stream = container.add_stream(self.codec, rate=self.rate)
            stream.width, stream.height, stream.pix_fmt = w, h, self.format.pix_fmt
            stream.codec_context.time_base = self.time_base
            if self.format.pix_fmt.startswith("yuv"):
                _tag_bt601(stream.codec_context, full_range=self.format.pix_fmt.startswith("yuvj"))
            if self.codec == "mjpeg":
                stream.bit_rate = int(w * h * self.fps * 2)  # ~2 bits / pixel: near-transparent quality
            options = dict(self.format.options)
            if self.format.keyframe_s:
                options["g"] = str(max(1, round(self.fps * self.format.keyframe_s)))
            if options:
                stream.options = options
        except BaseException:
            container.close()
            raise
        self._container, self._stream = container, stream
        log.info("writing %s: %dx%d %s, %.3g fps%s", self.path, w, h, self.codec, self.fps,
                 "" if self._partial.direct else f" (into {self._partial.path.name} until the run ends)")

    def _kept_hint(self) -> str:
        if self.format.keyframe_s:
            return f"the file plays up to its last complete fragment (about {self.format.keyframe_s:g} s before)"
        return "the file plays up to the last frame that reached the disk"

    def _ticks(self, item: Item) -> int:
        """The frame's pts in `time_base` ticks, strictly after the previous frame's."""
        if self._last_ticks is None:
            self._t0_ns, self._t0 = item.capture_ns, item.pts if item.pts is not None else 0.0
        seconds = item.pts if item.pts is not None else self._t0 + (item.capture_ns - self._t0_ns) / 1e9
        seconds -= self._t0  # every recording starts at t=0 (a stream may start at 3600 s)
        ticks = round(seconds * self.time_base.denominator / self.time_base.numerator)
        ticks = max(ticks, 0 if self._last_ticks is None else self._last_ticks + 1)
        self._last_ticks = ticks
        return ticks

    # -- closing ---------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                finalized = self._finalize()
            finally:  # the frames written so far replace the target, whatever happened while finalizing
                self._finish_partial()
            if finalized:
                log.info("wrote %d frames to %s", self.frames, self.path)

    def _finalize(self) -> bool:
        """Flush the encoder and write the trailer; True when the file is complete."""
        av = _xlibs.import_av()

        container, stream = self._container, self._stream
        self._container = self._stream = None
        if container is None:
            log.warning("%s: no frames were written; the file was not created or touched", self.name)
            return False
        try:
            try:
                if not self._failed:
                    for packet in stream.encode(None):  # flush the encoder's delayed frames
                        container.mux(packet)
            finally:
                container.close()  # writes the trailer even if flushing failed
        except (av.FFmpegError, OSError) as exc:
            if self._failed:  # the write error already said what happened
                log.debug("%s: closing after a failed write: %s", self.name, exc)
                return False
            raise UserError(f"finalizing --sink {self.path} failed after {self.frames} frames: {_reason(exc)}"
                            f"{_disk_hint(exc)}") from None
        return not self._failed

    def _finish_partial(self) -> None:
        """Rename the partial file onto the target when it holds a frame, else remove it."""
        try:
            self._partial.finish(keep=self.frames > 0)
        except OSError as exc:
            raise UserError(f"cannot rename {self._partial.path} to --sink {self.path}: {_reason(exc)} "
                            f"(the frames are in {self._partial.path})") from None


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def _disk_hint(exc: BaseException) -> str:
    import errno

    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return " (the disk is full: free space or write elsewhere)"
    if code in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT):
        return " (the folder no longer takes this file: write elsewhere)"
    return " (check free disk space)" if code in (None, errno.EIO) else ""


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

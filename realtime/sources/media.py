"""Video files and stream URLs, decoded with PyAV (FFmpeg).

A file yields every frame in order with its presentation time; a damaged file yields what
can be decoded: packets the decoder rejects are skipped and counted, a container that
cannot be read further ends the stream early, both with a warning. A URL is live.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Iterator, Optional

from realtime.config import SourceConfig
from genreal_errors import UserError
from realtime import _xlibs
from realtime.frame import Frame
from realtime.sources.common import ThreadedSource, resize_to

log = logging.getLogger(__name__)

#: URL schemes we open with FFmpeg (all live)
URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt")

#: seconds to wait for a URL to open, and for each read once open
URL_OPEN_TIMEOUT_S = 10.0
URL_READ_TIMEOUT_S = 5.0


def _reason(e: BaseException) -> str:
    """The FFmpeg message without the errno / file name decoration."""
    return getattr(e, "strerror", None) or str(e)


class MediaSource(ThreadedSource):
    """A video file (`live = False`) or a stream URL (`live = True`) decoded with PyAV."""

    def __init__(self, cfg: SourceConfig, target: str, is_url: bool = False) -> None:
        super().__init__(cfg)
        self.target = target
        self.is_url = is_url
        self.live = is_url
        self._container: Any = None
        self._stream: Any = None
        self._fps: Optional[float] = None

    @property
    def fps(self) -> Optional[float]:
        return self._fps

    def _name(self) -> str:
        return ("stream " if self.is_url else "") + self.target

    def _open(self) -> None:
        av = _xlibs.import_av()

        options: dict[str, str] = {}
        timeout: Any = None
        if self.is_url:
            timeout = (URL_OPEN_TIMEOUT_S, URL_READ_TIMEOUT_S)
            if self.target.lower().startswith(("rtsp://", "rtsps://")):
                options["rtsp_transport"] = "tcp"
        else:
            if not os.path.exists(self.target):
                hint = f" (did you mean webcam:{self.target}?)" if self.target.isdigit() else ""
                raise UserError(f"no such video file: {self.target}{hint}: check the path, or use --source demo")
            if os.path.isdir(self.target):
                raise UserError(f"{self.target} is a folder, not a video file: "
                                f"for a folder of images use --source 'images:{os.path.join(self.target, '*.png')}'")
        try:
            container = av.open(self.target, container_options=options, timeout=timeout)
        except av.FFmpegError as e:
            if self.is_url:
                raise UserError(f"cannot open {self._name()}: {_reason(e)}: "
                                "check the address and that the stream is running") from None
            hint = ("if its recording was interrupted it has no index: repair it with a tool such as untrunc, "
                    "or record to .mkv next time" if self.target.lower().endswith((".mp4", ".mov", ".m4v"))
                    else "check the file, or convert it with ffmpeg")
            raise UserError(f"cannot read {self.target}: not a readable video file ({_reason(e)}): {hint}") from None
        except OSError as e:
            raise UserError(f"cannot open {self._name()}: {e.strerror or e}") from None
        if not container.streams.video:
            container.close()
            raise UserError(f"{self._name()} has no video stream: use a file with video in it")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        self._fps = float(rate) if rate else None
        self._container, self._stream = container, stream

    def _produce(self) -> Iterator[Frame]:
        av = _xlibs.import_av()

        container, stream, size = self._container, self._stream, self.cfg.size
        step = 1.0 / (self._fps or 30.0)
        n, last_pts = 0, None
        stopped: Optional[str] = None
        try:
            for packet in container.demux(stream):
                if self.closed:
                    return
                try:
                    decoded = packet.decode()
                except av.FFmpegError as e:  # a damaged packet: skip it, keep going
                    self.skipped += 1
                    log.debug("%s: skipped an undecodable packet: %s", self.target, _reason(e))
                    continue
                for vf in decoded:
                    image = vf.to_ndarray(format="rgb24")  # (H, W, 3)
                    capture_ns = time.monotonic_ns()
                    pts = vf.time
                    if pts is None:  # no timestamp: continue from the last one
                        pts = 0.0 if last_pts is None else last_pts + step
                    last_pts = pts
                    yield Frame(resize_to(image, size), n, capture_ns, pts)
                    n += 1
        except av.FFmpegError as e:  # the container itself cannot be read further
            stopped = _reason(e)
        finally:
            if self.skipped:
                log.warning("%s: skipped %d damaged frame(s) that could not be decoded (%d frames read)",
                            self._name(), self.skipped, n)
        if stopped is not None:
            if self.is_url:
                log.warning("%s ended: %s", self._name(), stopped)
            else:
                log.warning("%s is damaged: stopped reading after %d frames (%s)", self.target, n, stopped)
        elif not self.is_url and not self.closed:
            self._check_complete(n, last_pts, step)

    def _check_complete(self, n: int, last_pts: Optional[float], step: float) -> None:
        """Warn when a file ended well before the length its header announces (a truncated file)."""
        expected = self._stream.frames or 0
        duration = (self._container.duration or 0) / 1e6  # container duration is in microseconds
        if expected > n + self.skipped + 1:
            log.warning("%s ended after %d of its %d frames: the file looks truncated", self.target, n, expected)
        elif duration and last_pts is not None and last_pts + 2 * step < duration:
            log.warning("%s ended at %.2f s of its %.2f s: the file looks truncated", self.target,
                        last_pts + step, duration)

    def _release(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

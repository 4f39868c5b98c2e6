"""Video files, standard input and stream URLs, decoded with PyAV (FFmpeg).

A file yields every frame in order with its presentation time; a damaged file yields what
can be decoded: packets the decoder rejects are skipped and counted, a container that
cannot be read further ends the stream early, both with a warning. A file that yields no
frame at all is an error (exit 2), never an empty run.

A URL is live and survives its network: no data for ``--stall-s`` seconds, a read error or
the server closing the connection count as a disconnect, and the source reconnects with
backoff (0.5 s, 1 s, 2 s, ... capped at 8 s) up to ``--reconnect`` times in a row (a frame
received resets the count). When every attempt fails, iteration raises `StreamLost` (exit 3).
A URL with a known duration (a video on a web server) that played to its end simply ends.
Timestamps of a live stream are rebased to start at 0 and stay continuous across reconnects
(the gap is kept as real time), so recordings start at t=0 whatever the server's clock says.

Opening (the first connection, or a FIFO that waits for its writer) runs in a helper thread
while the caller waits in short slices, so Ctrl-C, SIGTERM and SIGHUP are honoured within
about 0.1 s instead of after FFmpeg's own timeout.

Timing comes from the container: for AVI, whose packets carry a frame slot rather than a
presentation time (and where DivX/Xvid "packed" B-frames arrive two to a packet), each
decoded frame takes the earliest packet slot not yet used, so frames stay evenly spaced.
"""
from __future__ import annotations

import heapq
import logging
import os
import threading
import time
from typing import Any, Callable, Iterator, Optional

from realtime import _xlibs
from realtime.config import DEFAULT_RECONNECTS, SourceConfig
from genreal_errors import StreamLost, UserError
from realtime.frame import Frame
from realtime.sources.common import ThreadedSource, backoff_delay, resize_to

log = logging.getLogger(__name__)

#: URL schemes we open with FFmpeg (all live)
URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt")

#: seconds to wait for a URL to open (the read timeout is --stall-s)
URL_OPEN_TIMEOUT_S = 10.0
#: the names `--source` accepts for standard input
STDIN_SPECS = ("-", "pipe:", "pipe:0", "/dev/stdin")
#: containers that need to seek (their index may sit at the end): not readable from a pipe
_SEEKING_FORMATS = ("mov", "mp4", "m4a", "3gp", "3g2", "mj2")


def _reason(e: BaseException) -> str:
    """The FFmpeg message without the errno / file name decoration."""
    return getattr(e, "strerror", None) or str(e)


#: files whose index (moov) a cut recording lacks
_INDEXED_EXTENSIONS = (".mp4", ".mov", ".m4v")
_UNTRUNC_HINT = "repair it with a tool such as untrunc, or record to .mkv next time"
#: the box types an MP4 / MOV file can start with (ISO base media: a 4-byte size, then the type)
_ISO_FIRST_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"styp", b"moof")


def _not_iso_media(path: str) -> str:
    """Why the file at `path` cannot be MP4 / MOV data ("" when it may be, e.g. a cut recording)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return ""
    if not head:
        return "the file is empty"
    if head[4:8] in _ISO_FIRST_BOXES:
        return ""
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head)
    if printable == len(head):
        return "it holds text, not MP4/MOV data"
    return "its first bytes are not MP4/MOV data"


def open_interruptibly(opener: Callable[[], Any], closer: Callable[[Any], None], poll_s: float = 0.1) -> Any:
    """Run the blocking `opener()` in a helper thread and wait for it in `poll_s` slices, so a signal
    (KeyboardInterrupt) reaches the calling thread at once. If the caller is interrupted, whatever the
    opener returns later is passed to `closer`. Exceptions of `opener` are re-raised here."""
    done = threading.Event()
    lock = threading.Lock()
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            result = opener()
        except BaseException as exc:  # handed to the waiting caller
            with lock:
                box["error"] = exc
        else:
            with lock:
                abandoned = box.get("abandoned", False)
                box["result"] = result
            if abandoned:
                closer(result)
        finally:
            done.set()

    threading.Thread(target=work, name="genreal-open", daemon=True).start()
    try:
        while not done.wait(poll_s):
            pass
    except BaseException:
        with lock:
            box["abandoned"] = True
            result = box.pop("result", None)
        if result is not None:
            closer(result)
        raise
    if "error" in box:
        raise box["error"]
    return box["result"]


#: up to this many pixels a frame, video is decoded on the capture thread alone (see `decoder_threading`)
SERIAL_DECODE_MAX_PIXELS = 1920 * 1088


def decoder_threading(width: int, height: int) -> str:
    """FFmpeg's thread_type for a video stream of this size: "NONE" (decode on the capture thread) up to
    1080p, "AUTO" (frame + slice threads) above. Frame threads hold frames back (one per thread) and wake
    in bursts that take the cores from the model's intra-op threads: on our 2-core machine
    `python -m benchmarks.run_speed` measured our stylize stage 17.9 → 14.5 ms p50 at 640×360 with
    "NONE" (bikes.mp4, H.264 out). Above 1080p a single thread may not keep up with the source's rate."""
    return "NONE" if 0 < width * height <= SERIAL_DECODE_MAX_PIXELS else "AUTO"


class SlotClock:
    """Presentation times for containers that time packets by frame slot (AVI).

    `push(t)` records a demuxed packet's time; `take(fallback)` gives the next decoded frame the
    earliest recorded time not used yet (`fallback` when none is left). Frames therefore come out
    at the container's evenly spaced slots even when the decoder's own timestamps repeat (packed
    B-frames: two frames in one packet, then an empty placeholder packet).
    """

    def __init__(self) -> None:
        self._slots: list[float] = []
        self._last: Optional[float] = None

    def push(self, t: Optional[float]) -> None:
        if t is not None and (self._last is None or t > self._last):
            heapq.heappush(self._slots, t)

    def take(self, fallback: Optional[float]) -> Optional[float]:
        while self._slots:
            t = heapq.heappop(self._slots)
            if self._last is None or t > self._last:
                self._last = t
                return t
        if fallback is not None and (self._last is None or fallback > self._last):
            self._last = fallback
        return fallback


class MediaSource(ThreadedSource):
    """A video file or standard input (`live = False`), or a stream URL (`live = True`), via PyAV."""

    def __init__(self, cfg: SourceConfig, target: str, is_url: bool = False) -> None:
        super().__init__(cfg)
        self.stdin = target in STDIN_SPECS
        self.target = "pipe:0" if self.stdin else target
        self.is_url = is_url
        self.live = is_url
        self.max_reconnects = cfg.reconnect if cfg.reconnect is not None else (DEFAULT_RECONNECTS if is_url else 0)
        self.reconnects = 0  # successful reconnects
        self.reconnect_attempts = 0
        self._container: Any = None
        self._stream: Any = None
        self._fps: Optional[float] = None

    @property
    def fps(self) -> Optional[float]:
        return self._fps

    def input_paths(self) -> list[str]:
        return [] if self.is_url or self.stdin else [self.target]

    def _name(self) -> str:
        if self.stdin:
            return "standard input"
        return ("stream " if self.is_url else "") + self.target

    # -- opening --------------------------------------------------------------------------
    def _open(self) -> None:
        if not self.is_url and not self.stdin:
            if not os.path.exists(self.target):
                hint = f" (did you mean webcam:{self.target}?)" if self.target.isdigit() else ""
                raise UserError(f"no such video file: {self.target}{hint}: check the path, or use --source demo")
            if os.path.isdir(self.target):
                raise UserError(f"{self.target} is a folder, not a video file: "
                                f"for a folder of images use --source 'images:{os.path.join(self.target, '*.png')}'")
            if not os.access(self.target, os.R_OK):
                raise UserError(f"cannot read {self.target}: permission denied")
        container = open_interruptibly(self._open_container, lambda c: c.close())
        self._use(container)

    def _av_open(self) -> Any:
        """av.open with our options (FFmpeg's errors pass through)."""
        av = _xlibs.import_av()

        options: dict[str, str] = {}
        timeout: Any = None
        if self.is_url:
            timeout = (URL_OPEN_TIMEOUT_S, self.cfg.stall_s)
            if self.target.lower().startswith(("rtsp://", "rtsps://")):
                options["rtsp_transport"] = "tcp"
        return av.open(self.target, container_options=options, timeout=timeout)

    def _open_container(self) -> Any:
        """`_av_open` with a one-line `UserError` on failure."""
        av = _xlibs.import_av()

        try:
            return self._av_open()
        except av.FFmpegError as e:
            if self.is_url:
                raise UserError(f"cannot open {self._name()}: {_reason(e)}: "
                                "check the address and that the stream is running") from None
            if self.stdin:
                raise UserError(f"cannot read a video from standard input: {_reason(e)}: pipe in a streamable "
                                "format (MPEG-TS, Matroska, raw H.264) or pass the file path") from None
            if self.target.lower().endswith(_INDEXED_EXTENSIONS):
                not_media = _not_iso_media(self.target)
                if not_media:
                    raise UserError(f"cannot read {self.target}: not a readable video file ({not_media}, so it is "
                                    "not a video at all): check that it is the file you meant") from None
                hint = f"if its recording was interrupted it has no index: {_UNTRUNC_HINT}"
            else:
                hint = "check the file, or convert it with ffmpeg"
            raise UserError(f"cannot read {self.target}: not a readable video file ({_reason(e)}): {hint}") from None
        except OSError as e:
            raise UserError(f"cannot open {self._name()}: {e.strerror or e}") from None

    def _use(self, container: Any) -> None:
        if not container.streams.video:
            container.close()
            raise UserError(f"{self._name()} has no video stream: use a file with video in it")
        stream = container.streams.video[0]
        stream.thread_type = decoder_threading(stream.codec_context.width, stream.codec_context.height)
        rate = stream.average_rate or stream.guessed_rate
        if self._fps is None:
            self._fps = float(rate) if rate else None
        self._container, self._stream = container, stream

    # -- reading --------------------------------------------------------------------------
    def _produce(self) -> Iterator[Frame]:
        size = self.cfg.size
        step = 1.0 / (self._fps or 30.0)
        n = 0
        in_row = 0  # reconnect attempts since the last frame
        offset: Optional[float] = None  # live: added to this connection's rebased times
        last_out: Optional[float] = None  # the last pts we yielded
        last_wall = time.monotonic()
        while True:
            got_frame = False
            first: Optional[float] = None  # this connection's first frame time
            stopped: Optional[str] = None
            try:
                for pts, image in self._frames(step):
                    if self.is_url:  # rebase: the recording starts at 0 and continues across reconnects
                        if first is None:
                            first = pts
                            if offset is None:
                                offset = 0.0
                            else:  # a new connection: continue after the gap, in real time
                                offset = (last_out or 0.0) + max(step, time.monotonic() - last_wall)
                        pts = offset + (pts - first)
                        if last_out is not None and pts <= last_out:
                            pts = last_out + step
                    got_frame = True
                    in_row = 0
                    last_out, last_wall = pts, time.monotonic()
                    yield Frame(resize_to(image, size), n, time.monotonic_ns(), pts)
                    n += 1
            except _Stopped as e:
                stopped = e.reason
            finally:
                if self.skipped:
                    log.warning("%s: skipped %d damaged frame(s) that could not be decoded (%d frames read)",
                                self._name(), self.skipped, n)
            if self.closed:
                return
            if not self.is_url:
                self._finish_file(n, last_out, step, stopped)
                return
            if stopped is None and self._played_to_end(last_out, step):
                return  # a video on a web server, played to its end
            why = stopped or "the server closed the connection"
            if not got_frame and self.reconnects == 0 and n == 0:
                why = f"no frames arrived ({why})"
            self._close_container()
            attempts = self._reconnect(why, in_row)
            if attempts is None:
                return  # closed while waiting
            in_row = attempts  # reset when the new connection delivers a frame

    def _frames(self, step: float) -> Iterator[tuple[float, Any]]:
        """(pts seconds, RGB image) of the open container until it ends; `_Stopped` when it cannot be read."""
        av = _xlibs.import_av()

        container, stream = self._container, self._stream
        slots = SlotClock() if container.format.name == "avi" else None
        last: Optional[float] = None
        try:
            for packet in container.demux(stream):
                if self.closed:
                    return
                if slots is not None and packet.size > 0 and packet.pts is not None and packet.time_base is not None:
                    # an empty chunk is a dropped frame (no picture comes of it): its slot stays a gap
                    slots.push(float(packet.pts * packet.time_base))
                try:
                    decoded = packet.decode()
                except av.FFmpegError as e:  # a damaged packet: skip it, keep going
                    self.skipped += 1
                    log.debug("%s: skipped an undecodable packet: %s", self.target, _reason(e))
                    continue
                for vf in decoded:
                    image = vf.to_ndarray(format="rgb24")  # (H, W, 3)
                    pts = vf.time
                    if slots is not None:
                        pts = slots.take(pts)
                    if pts is None:  # no timestamp: continue from the last one
                        pts = 0.0 if last is None else last + step
                    last = pts
                    yield pts, image
        except av.FFmpegError as e:  # the container itself cannot be read further (or a stall timed out)
            raise _Stopped(self._stall_reason(e)) from None
        except OSError as e:
            raise _Stopped(e.strerror or str(e)) from None

    def _reconnect(self, why: str, in_row: int) -> Optional[int]:
        """Reconnect with backoff. Returns the attempts made in a row (counting this successful one), or
        None when the source was closed meanwhile; raises `StreamLost` when the attempts are exhausted."""
        av = _xlibs.import_av()

        while True:
            if in_row >= self.max_reconnects:
                tried = (f"{self.max_reconnects} reconnect attempt(s) failed" if self.max_reconnects
                         else "reconnecting is off (--reconnect 0)")
                raise StreamLost(f"{self._name()} lost: {why}; {tried}: check the stream, or allow more "
                                 "with --reconnect N / a longer --stall-s")
            delay = backoff_delay(in_row)
            log.warning("%s: %s; reconnecting in %.1f s (attempt %d of %d)", self._name(), why, delay,
                        in_row + 1, self.max_reconnects)
            if self._stop.wait(delay):
                return None
            self.reconnect_attempts += 1
            try:
                container = self._av_open()
            except (av.FFmpegError, OSError) as e:
                why = f"cannot connect ({self._stall_reason(e)})"
                in_row += 1
                continue
            in_row += 1
            if self.closed:
                container.close()
                return None
            self._use(container)
            self.reconnects += 1
            log.warning("%s: reconnected", self._name())
            return in_row

    def _stall_reason(self, e: BaseException) -> str:
        av = _xlibs.import_av()

        if self.is_url and isinstance(e, (av.ExitError, TimeoutError)):  # PyAV's read timeout fired
            return f"no data for {self.cfg.stall_s:g} s (--stall-s)"
        return _reason(e)

    def _played_to_end(self, last: Optional[float], step: float) -> bool:
        duration = (self._container.duration or 0) / 1e6 if self._container is not None else 0
        return bool(duration) and last is not None and last + 2 * step >= duration - 1.0

    def _finish_file(self, n: int, last: Optional[float], step: float, stopped: Optional[str]) -> None:
        if n == 0:
            fmt = self._container.format.name if self._container is not None else ""
            if self.stdin and any(f in fmt.split(",") for f in _SEEKING_FORMATS):
                raise UserError("an MP4/MOV cannot be read from standard input (its index needs seeking): "
                                "pass the file path, or pipe MPEG-TS or Matroska (ffmpeg -f mpegts -)")
            raise UserError(f"no video frame could be decoded from {self._name()}"
                            f"{f' ({stopped})' if stopped else ''}: check the file, or convert it with ffmpeg")
        if stopped is not None:
            log.warning("%s is damaged: stopped reading after %d frames (%s)", self._name(), n, stopped)
        elif not self.stdin:
            self._check_complete(n, last, step)

    def _check_complete(self, n: int, last: Optional[float], step: float) -> None:
        """Warn when a file ended well before the length its header announces (a truncated file).

        Both the header's frame count and its duration must say so, where known, by more than a second's
        worth. AVI headers are not trusted at all (their frame counts are often wrong: OpenCV's tree.avi
        announces 444 frames and holds 68); a damaged AVI still gets the "damaged" warning when reading
        fails."""
        stream, container = self._stream, self._container
        if container.format.name == "avi":
            return
        expected = stream.frames or 0
        duration = 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / 1e6
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None and stream.time_base else 0.0
        slack = max(1, round(1.0 / step))  # frames in a second
        short_count = expected > 0 and expected > n + self.skipped + slack
        short_time = duration > 0 and last is not None and (last - start) + step < duration - max(1.0, 2 * step)
        known = [flag for flag, has in ((short_count, expected > 0), (short_time, duration > 0)) if has]
        if known and all(known):
            if short_count:
                log.warning("%s ended after %d of its %d frames: the file looks truncated", self.target, n, expected)
            else:
                log.warning("%s ended at %.2f s of its %.2f s: the file looks truncated", self.target,
                            (last or 0.0) - start + step, duration)

    def _close_container(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - closing a broken connection must not mask the reason
                log.debug("closing %s failed", self._name(), exc_info=True)
            self._container = None

    def _release(self) -> None:
        self._close_container()


class _Stopped(Exception):
    """The container could not be read further (internal)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

"""A live MPEG-TS stream served over TCP on 127.0.0.1, for tests and the soak benchmark.

`LoopbackStream` encodes a moving test picture with PyAV (MPEG-2 video in MPEG-TS, cheap on a
CPU) in real time and sends it to whoever connects to ``tcp://127.0.0.1:PORT`` (a random free
port). It can misbehave the way real cameras and servers do:

- `stall(s)`: keep the connection open but send nothing for `s` seconds;
- `restart(down_s)`: drop the connection and stop listening, then listen again on the same port
  after `down_s` seconds (a server that restarts);
- `stop()`: go away for good.

Timestamps start at `start_s` (e.g. 3600 to mimic a camera's wall clock) on every connection.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from fractions import Fraction
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)


class _SocketWriter:
    """The file-like object PyAV writes the muxed stream into."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn

    def write(self, data: bytes) -> int:
        self.conn.sendall(data)
        return len(data)

    def flush(self) -> None:
        pass


class LoopbackStream:
    """A misbehaving live stream on 127.0.0.1 (see the module docstring). Use as a context manager."""

    def __init__(self, size: tuple[int, int] = (320, 180), fps: float = 30.0, start_s: float = 0.0) -> None:
        self.size, self.fps, self.start_s = size, fps, start_s
        self.port = 0
        self.connections = 0  # clients served so far
        self.frames_sent = 0
        self._stop = threading.Event()
        self._up = threading.Event()  # listening
        self._stall_until = 0.0
        self._down_until = 0.0
        self._generation = 0  # bumped by restart(): the current connection ends
        self._lock = threading.Lock()
        self._listener: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        w, h = size
        x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
        y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
        self._frames = [np.stack([(x + 8 * t) % 256 + 0 * y, (y + 4 * t) % 256 + 0 * x,
                                  np.full((h, w), (16 * t) % 256, np.float32)], axis=-1).astype(np.uint8)
                        for t in range(32)]

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    # -- control ---------------------------------------------------------------------------
    def start(self) -> "LoopbackStream":
        self._listen()
        self._thread = threading.Thread(target=self._serve, name="loopback-stream", daemon=True)
        self._thread.start()
        return self

    def stall(self, seconds: float) -> None:
        """Send nothing for `seconds` (the connection stays open)."""
        self._stall_until = time.monotonic() + seconds

    def restart(self, down_s: float) -> None:
        """Drop the client and stop listening; listen again on the same port after `down_s` seconds."""
        with self._lock:
            self._generation += 1
            self._down_until = time.monotonic() + down_s
            self._close_listener()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._generation += 1
            self._close_listener()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "LoopbackStream":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- serving ---------------------------------------------------------------------------
    def _listen(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(4)
        s.settimeout(0.1)
        self.port = s.getsockname()[1]
        self._listener = s

    def _close_listener(self) -> None:
        if self._listener is not None:
            try:
                self._listener.close()
            except OSError:
                pass
            self._listener = None

    def _serve(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                listener = self._listener
                if listener is None and time.monotonic() >= self._down_until and not self._stop.is_set():
                    try:
                        self._listen()
                        listener = self._listener
                    except OSError:  # the port is briefly unavailable: try again
                        listener = None
            if listener is None:
                time.sleep(0.05)
                continue
            try:
                conn, _ = listener.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            with self._lock:
                generation = self._generation
            try:
                self._send(conn, generation)
            except (BrokenPipeError, ConnectionError, OSError) as exc:
                log.debug("loopback stream: client went away: %s", exc)
            finally:
                try:
                    conn.close()
                except OSError:
                    pass

    def _send(self, conn: socket.socket, generation: int) -> None:
        import av

        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        out = av.open(_SocketWriter(conn), mode="w", format="mpegts", container_options={"flush_packets": "1"})
        try:
            rate = Fraction(self.fps).limit_denominator(1001)
            stream = out.add_stream("mpeg2video", rate=rate)
            stream.width, stream.height = self.size
            stream.pix_fmt = "yuv420p"
            stream.codec_context.time_base = 1 / rate  # MPEG-2 wants a standard frame rate as its time base
            stream.bit_rate = 1_500_000
            stream.options = {"g": str(max(1, round(self.fps / 2))), "bf": "0"}
            t0 = time.monotonic()
            i = 0
            while not self._stop.is_set() and generation == self._generation:
                now = time.monotonic()
                if now < self._stall_until:
                    time.sleep(min(0.05, self._stall_until - now))
                    t0 += min(0.05, self._stall_until - now)  # a stalled camera sends no backlog afterwards
                    continue
                due = t0 + i / self.fps
                if due > now:
                    time.sleep(due - now)
                frame = av.VideoFrame.from_ndarray(self._frames[i % len(self._frames)], format="rgb24")
                frame.pts = round(self.start_s * rate) + i
                frame.time_base = 1 / rate
                for packet in stream.encode(frame):
                    out.mux(packet)
                self.frames_sent += 1
                i += 1
        finally:
            try:
                out.close()
            except Exception:  # noqa: BLE001 - the peer may be gone
                pass

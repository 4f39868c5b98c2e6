"""The three-thread pipeline: capture → infer → output, joined by bounded queues.

- The capture thread iterates the source. Live sources never block: a newer frame replaces an
  unprocessed one (dropped as "superseded"). File sources never drop: the thread waits for room.
- The infer thread hands each frame to the `FrameDriver` (realtime/driver.py, the frame path
  `genreal serve` shares): with ``--budget-ms`` its `BudgetController` picks the backend's refine
  steps / internal scale / reuse thresholds per frame. The budget lowers quality, it never drops a
  frame: the frame the infer thread takes is the newest there is, so dropping it would show nothing
  newer. Every dropped frame is one something newer replaced, counted by reason in
  ``stats.drops`` ("superseded": a camera frame replaced before its turn; "superseded_output": a
  result replaced before the sinks showed it).
- The budget's clock: on a live source a frame's latency runs from its capture (its wait for the
  infer thread is part of what the viewer sees). A file is read ahead and every frame is kept, so
  waiting in the read-ahead queue is no frame's fault: a file frame's latency runs from when its
  turn comes (the infer thread takes it) and counts its own work and its output, not the waits
  between them; ``deadline_misses`` count that.
- The output stage runs on the calling (main) thread, so window toolkits and Ctrl-C behave:
  it writes every sink, measures capture→display latency and handles the window's keys.

`Pipeline.run()` always closes the sinks (file outputs are finalized and playable) before it
returns or raises, also on Ctrl-C or an error in any thread.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Optional, Sequence, Union

from realtime.backends.base import Backend, next_style
from realtime.budget import BudgetController
from realtime.driver import FrameDriver
from genreal_errors import UserError
from realtime.frame import Item
from realtime.sinks.base import Overlay, Sink
from realtime.sources.base import Source
from realtime.stats import RunStats

log = logging.getLogger(__name__)

_POLL_S = 0.05  # how often blocked threads look at the stop flag


class _End:
    """Sentinel: the stream ended (normally or with the error carried)."""

    def __init__(self, error: Optional[BaseException] = None) -> None:
        self.error = error


@dataclass(frozen=True)
class _Done:
    """A processed frame on its way to the sinks."""

    item: Item
    work_ms: float  # preprocess + stylize + postprocess


class LatestSlot:
    """A size-1 mailbox where a new item replaces an unread one (latest wins). `put` returns True
    when it replaced something, i.e. one item was dropped. An `_End` is kept apart and handed out
    after the pending item, so the last frame is never lost to the end-of-stream marker."""

    def __init__(self) -> None:
        self._item: object = None
        self._full = False
        self._end: Optional[_End] = None
        self._cond = threading.Condition()

    def put(self, item: object) -> bool:
        with self._cond:
            if isinstance(item, _End):
                self._end = self._end or item
                self._cond.notify()
                return False
            if self._end is not None:
                return False  # nothing follows the end
            replaced = self._full
            self._item, self._full = item, True
            self._cond.notify()
            return replaced

    def get(self, timeout: float) -> object:
        with self._cond:
            ready = lambda: self._full or self._end is not None  # noqa: E731
            if not ready() and not self._cond.wait_for(ready, timeout):
                raise queue.Empty
            if self._full:
                item, self._item, self._full = self._item, None, False
                return item
            return self._end


_Channel = Union[LatestSlot, "queue.Queue[object]"]


class Pipeline:
    """Runs one source through one backend into one or more sinks."""

    def __init__(
        self,
        source: Source,
        backend: Backend,
        sinks: Sequence[Sink],
        budget_ms: Optional[float] = None,
        queue_size: int = 2,
        strength: float = 1.0,
    ) -> None:
        self.source = source
        self.backend = backend
        self.sinks = list(sinks)
        self.budget_ms = budget_ms
        self.live = source.live
        self.stats = RunStats(backend=backend.name, device=backend.device, budget_ms=budget_ms,
                              stereo=source.stereo)
        self._stop = threading.Event()
        self._controls: "queue.SimpleQueue[str]" = queue.SimpleQueue()
        self._in: _Channel = LatestSlot() if self.live else queue.Queue(maxsize=queue_size)
        self._out: _Channel = LatestSlot() if self.live else queue.Queue(maxsize=queue_size)
        self._errors: list[BaseException] = []
        self.driver = FrameDriver(backend, budget_ms, strength)

    @property
    def budget(self) -> Optional[BudgetController]:
        return self.driver.budget

    # -- control ---------------------------------------------------------------
    def stop(self) -> None:
        """Ask every thread to finish; `run()` returns within about a second."""
        self._stop.set()

    def send_key(self, key: str) -> None:
        """'n'/'p' next/previous style, 't' temporal on/off, 'q' quit (the window sink's keys)."""
        if key == "q":
            self.stop()
        elif key in ("n", "p", "t"):
            self._controls.put(key)

    # -- threads ---------------------------------------------------------------
    def _put(self, channel: _Channel, item: object, drop_counter: str) -> bool:
        """Hand `item` on; False if the pipeline stopped while waiting for room."""
        if isinstance(channel, LatestSlot):
            if channel.put(item) and drop_counter:
                self.stats.drop(drop_counter)
            return True
        while not self._stop.is_set():
            try:
                channel.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _capture_loop(self) -> None:
        error: Optional[BaseException] = None
        try:
            frames = iter(self.source)
            while not self._stop.is_set():
                t0 = time.perf_counter()
                item = next(frames, None)
                if item is None:
                    break
                self.stats.add_stage("capture", (time.perf_counter() - t0) * 1e3)
                self.stats.count("frames_in")
                if self.stats.size is None:
                    self.stats.size = item.size
                if not self._put(self._in, item, "superseded"):
                    break
        except BaseException as exc:  # handed to the main thread, re-raised there
            error = exc
        finally:
            self.stats.skipped = getattr(self.source, "skipped", 0)
            self.stats.reconnects = getattr(self.source, "reconnects", 0)
            self.stats.reconnect_attempts = getattr(self.source, "reconnect_attempts", 0)
            self._put_end(self._in, error)

    def _put_end(self, channel: _Channel, error: Optional[BaseException]) -> None:
        end = _End(error)
        if isinstance(channel, LatestSlot):
            channel.put(end)
            return
        while True:  # the End must arrive even when the consumer is slow
            try:
                channel.put(end, timeout=_POLL_S)
                return
            except queue.Full:
                if self._stop.is_set():
                    try:  # make room: the run is being abandoned anyway
                        channel.get_nowait()
                    except queue.Empty:
                        pass

    def _apply_controls(self) -> None:
        while True:
            try:
                key = self._controls.get_nowait()
            except queue.Empty:
                return
            if key in ("n", "p"):
                name = next_style(self.backend, 1 if key == "n" else -1)
                self.backend.set_style(name)
                log.info("style: %s", name)
            elif key == "t":
                self.backend.set_temporal(not self.backend.temporal)
                log.info("temporal reuse: %s", "on" if self.backend.temporal else "off")

    def _infer_loop(self) -> None:
        error: Optional[BaseException] = None
        try:
            while True:
                try:
                    item = self._in.get(timeout=_POLL_S)
                except queue.Empty:
                    if self._stop.is_set():
                        break
                    continue
                if isinstance(item, _End):
                    error = item.error
                    break
                if self._stop.is_set():
                    break
                age_ms = (time.monotonic_ns() - item.capture_ns) / 1e6
                self.stats.add_stage("queue", age_ms)
                self._apply_controls()
                # live: the wait is part of the latency; a file's read-ahead wait is not (its turn starts now)
                driven = self.driver.process(item.images, age_ms=age_ms if self.live else 0.0)
                self.stats.add_stage("preprocess", driven.preprocess_ms)
                self.stats.add_stage("stylize", driven.stylize_ms)
                self.stats.add_stage("postprocess", driven.postprocess_ms)
                done = _Done(item.with_images(driven.images), driven.total_ms)
                if not self._put(self._out, done, "superseded_output"):
                    break
        except BaseException as exc:
            error = exc
        finally:
            self._put_end(self._out, error)

    # -- output (main thread) --------------------------------------------------------
    def _output_loop(self, t_start: float) -> Optional[BaseException]:
        while True:
            try:
                done = self._out.get(timeout=_POLL_S)
            except queue.Empty:
                if self._stop.is_set() and not self._threads_alive():
                    return None
                continue
            if isinstance(done, _End):
                return done.error
            item = done.item
            elapsed = time.perf_counter() - t_start
            lat_so_far = (time.monotonic_ns() - item.capture_ns) / 1e6
            overlay = Overlay(
                style=self.backend.style, backend=self.backend.name,
                fps=(self.stats.frames_out + 1) / elapsed if elapsed > 0 else 0.0,
                latency_ms=lat_so_far, temporal=self.backend.temporal,
                detail=self.backend.readout(),
            )
            t0 = time.perf_counter()
            for sink in self.sinks:
                sink.write(item, overlay)
            out_ms = (time.perf_counter() - t0) * 1e3
            self.stats.add_stage("output", out_ms)
            self.driver.observe_output(out_ms)
            latency_ms = (time.monotonic_ns() - item.capture_ns) / 1e6
            # the budget's latency: from capture on a live source, from the frame's turn on a file
            self.stats.add_output(latency_ms, latency_ms if self.live else done.work_ms + out_ms)
            for sink in self.sinks:
                for key in sink.poll_keys():
                    self.send_key(key)

    def _threads_alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def run(self) -> RunStats:
        """Run until the source ends, `stop()` is called, 'q' is pressed or Ctrl-C.

        Ctrl-C returns normally with ``stats.interrupted`` set. The first error of any thread
        (a `UserError` for bad media) is re-raised after the sinks were closed; `self.stats`
        is complete either way.
        """
        self._threads = [
            threading.Thread(target=self._capture_loop, name="genreal-capture", daemon=True),
            threading.Thread(target=self._infer_loop, name="genreal-infer", daemon=True),
        ]
        t_start = time.perf_counter()
        error: Optional[BaseException] = None
        try:
            for t in self._threads:
                t.start()
            error = self._output_loop(t_start)
        except KeyboardInterrupt:  # Ctrl-C: a normal way to end a live run
            self.stats.interrupted = True
            log.info("interrupted: stopping")
        except BaseException as exc:  # a sink failing
            error = exc
        finally:
            self.stop()
            self.source.close()  # unblocks a source waiting for its next frame
            for t in self._threads:
                t.join(timeout=2.0)
                if t.is_alive():
                    log.warning("thread %s did not stop within 2 s", t.name)
            self.stats.elapsed_s = time.perf_counter() - t_start
            backend_stats = dict(self.backend.stats())
            self.stats.temporal = backend_stats.pop("temporal", {}) or {}
            self.stats.extra.update(backend_stats)
            if self.budget is not None:
                self.stats.budget = self.budget.stats()
            close_error = self._close_sinks()
            error = error or close_error
        if error is not None:
            raise error
        return self.stats

    def _close_sinks(self) -> Optional[BaseException]:
        first: Optional[BaseException] = None
        for sink in self.sinks:
            try:
                sink.close()
            except BaseException as exc:  # close every sink even if one fails
                log.error("closing sink %s failed: %s", getattr(sink, "name", sink), exc)
                first = first or exc
        return first


__all__ = ["Pipeline", "LatestSlot", "UserError"]

"""Stereo sources: one frame split into two eyes (`sbs:`, `tb:`), or two sources paired (`pair:`).

Each yields `StereoFrame`s whose eyes have one size: `cfg.size` per eye when set.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from dataclasses import replace
from typing import Iterator, Literal, Optional

from realtime.config import SourceConfig
from genreal_errors import UserError
from realtime.frame import Frame, StereoFrame, split_side_by_side, split_top_bottom
from realtime.sources.base import Source
from realtime.sources.common import ThreadedSource, _End, resize_to

log = logging.getLogger(__name__)

Side = Literal["left", "right"]
_POLL_S = 0.1


def _eye(frame: Frame, image, eye: Side) -> Frame:  # noqa: ANN001 - (H, W, 3) uint8
    return replace(frame, image=image, eye=eye)


class SplitStereoSource(ThreadedSource):
    """`sbs:SRC` (left | right) or `tb:SRC` (top = left eye, bottom = right eye) over a mono source."""

    def __init__(self, cfg: SourceConfig, inner: Source, layout: Literal["sbs", "tb"]) -> None:
        if inner.stereo:
            raise UserError(f"{layout}:{cfg.spec.split(':', 1)[-1]} is already stereo: "
                            f"{layout}: splits a mono source (a file, URL or webcam)")
        self.inner = inner
        super().__init__(cfg)
        self.layout = layout
        self.live = inner.live
        self.stereo = True

    @property
    def skipped(self) -> int:  # type: ignore[override]
        return self._skipped + self.inner.skipped

    @skipped.setter
    def skipped(self, value: int) -> None:
        self._skipped = value

    @property
    def fps(self) -> Optional[float]:
        return self.inner.fps

    def _open(self) -> None:
        self.inner.open()

    def _produce(self) -> Iterator[StereoFrame]:
        split = split_side_by_side if self.layout == "sbs" else split_top_bottom
        size = self.cfg.size
        for item in self.inner:
            assert isinstance(item, Frame)
            try:
                left, right = split(item.image)
            except ValueError as e:
                raise UserError(f"cannot split {self.cfg.spec} into two eyes: {e}") from None
            yield StereoFrame(_eye(item, resize_to(left, size), "left"), _eye(item, resize_to(right, size), "right"))

    def _interrupt(self) -> None:
        self.inner.close()

    def _release(self) -> None:
        self.inner.close()


class NearestPairer:
    """Pairs frames of two live streams by nearest capture time.

    Frames arrive one at a time per side (`push`). The older of the two oldest waiting frames
    is dropped (counted in `unmatched`) when a newer frame of its side is closer to the other
    side's frame; it is paired at once when within `tolerance_ns` (half a frame period: no later
    frame can be closer), and otherwise waits for its side's next frame to decide.
    """

    def __init__(self, tolerance_ns: int, max_buffer: int = 8) -> None:
        self.tolerance_ns = int(tolerance_ns)
        self.max_buffer = max_buffer
        self.buffers: dict[str, deque[Frame]] = {"left": deque(), "right": deque()}
        self.ended: dict[str, bool] = {"left": False, "right": False}
        self.unmatched = 0

    def push(self, side: Side, frame: Frame) -> list[tuple[Frame, Frame]]:
        """Add one frame; return the (left, right) pairs this completes, oldest first."""
        buf = self.buffers[side]
        buf.append(frame)
        if len(buf) > self.max_buffer:  # the other side stalled: forget the oldest
            buf.popleft()
            self.unmatched += 1
        return self._match()

    def end(self, side: Side) -> list[tuple[Frame, Frame]]:
        """`side` has no more frames: its waiting frames pair with their nearest partners."""
        self.ended[side] = True
        return self._match()

    def done(self) -> bool:
        """Nothing more can be paired."""
        return any(self.ended[s] and not self.buffers[s] for s in ("left", "right"))

    def _match(self) -> list[tuple[Frame, Frame]]:
        out: list[tuple[Frame, Frame]] = []
        lbuf, rbuf = self.buffers["left"], self.buffers["right"]
        while lbuf and rbuf:
            older_left = lbuf[0].capture_ns <= rbuf[0].capture_ns
            old, new = (lbuf, rbuf) if older_left else (rbuf, lbuf)
            a, b = old[0], new[0]  # a.capture_ns <= b.capture_ns
            if len(old) > 1:
                a2 = old[1]
                if a2.capture_ns <= b.capture_ns or abs(a2.capture_ns - b.capture_ns) < b.capture_ns - a.capture_ns:
                    old.popleft()  # a's successor is the better partner for b
                    self.unmatched += 1
                    continue
            elif b.capture_ns - a.capture_ns > self.tolerance_ns and not self.ended["left" if older_left else "right"]:
                break  # a's successor may still be closer to b: wait for it
            old.popleft()
            new.popleft()
            out.append((a, b) if older_left else (b, a))
        return out

    def pending(self) -> int:
        return len(self.buffers["left"]) + len(self.buffers["right"])


class PairSource(ThreadedSource):
    """`pair:SRC_L,SRC_R`: two mono sources as the two eyes, each read in its own thread.

    Live sources are paired by nearest capture time (`NearestPairer`; frames left without a
    partner are counted in `unpaired`); file sources are paired by index and end with the
    shorter one.
    """

    #: frames a file eye may run ahead of the other
    file_buffer = 8

    def __init__(self, cfg: SourceConfig, left: Source, right: Source) -> None:
        for name, src in (("left", left), ("right", right)):
            if src.stereo:
                raise UserError(f"pair: the {name} eye source is already stereo: give two mono sources, "
                                "e.g. pair:webcam:0,webcam:1")
        if left.live != right.live:
            raise UserError("pair: cannot pair a live source with a file: give two cameras/streams or two files")
        self.left, self.right = left, right
        super().__init__(cfg)
        self.live = left.live
        self.stereo = True
        self.unpaired = 0
        self._resize_warned = False

    @property
    def skipped(self) -> int:  # type: ignore[override]
        return self._skipped + self.left.skipped + self.right.skipped

    @skipped.setter
    def skipped(self, value: int) -> None:
        self._skipped = value

    @property
    def fps(self) -> Optional[float]:
        rates = [r for r in (self.left.fps, self.right.fps) if r]
        return min(rates) if rates else None

    def _open(self) -> None:
        self.left.open()
        try:
            self.right.open()
        except BaseException:
            self.left.close()
            raise

    def _pump_eye(self, side: Side, src: Source, q: queue.Queue, slots: Optional[threading.Semaphore]) -> None:
        """Reads one eye into the shared queue; `slots` bounds how far a file eye runs ahead."""
        end = _End()
        try:
            for item in src:
                while slots is not None and not slots.acquire(timeout=_POLL_S):
                    if self.closed:
                        return
                if self.closed:
                    return
                q.put((side, item))
        except BaseException as e:
            end = _End(e)
        finally:
            q.put((side, end))

    def _produce(self) -> Iterator[StereoFrame]:
        q: queue.Queue = queue.Queue()
        slots = {s: None if self.live else threading.Semaphore(self.file_buffer) for s in ("left", "right")}
        for side, src in (("left", self.left), ("right", self.right)):
            threading.Thread(target=self._pump_eye, args=(side, src, q, slots[side]), daemon=True,
                             name=f"source-pair-{side}").start()
        rate = self.fps or 30.0
        pairer = NearestPairer(tolerance_ns=int(0.5e9 / rate))
        waiting: dict[str, deque[Frame]] = {"left": deque(), "right": deque()}  # files: by index
        ended: dict[str, bool] = {"left": False, "right": False}
        try:
            while not self.closed:
                try:
                    side, msg = q.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                if isinstance(msg, _End):
                    if msg.error is not None:
                        raise msg.error
                    ended[side] = True
                    if self.live:  # one eye is gone: pair what is left, then the stream is over
                        for left, right in pairer.end(side):
                            yield self._stereo(left, right)
                else:
                    assert isinstance(msg, Frame)
                    if self.live:
                        pairs = pairer.push(side, msg)
                    else:
                        waiting[side].append(msg)
                        pairs = []
                        while waiting["left"] and waiting["right"]:
                            pairs.append((waiting["left"].popleft(), waiting["right"].popleft()))
                            for s in ("left", "right"):
                                slots[s].release()  # type: ignore[union-attr]
                    for left, right in pairs:
                        yield self._stereo(left, right)
                if self.live and pairer.done():
                    break
                if not self.live and any(ended[s] and not waiting[s] for s in ("left", "right")):
                    longer = [s for s in ("left", "right") if waiting[s]]
                    if longer:
                        log.warning("pair: the %s eye has more frames than the other: the extra ones are not used",
                                    longer[0])
                    break
        finally:
            self.unpaired = pairer.unmatched + (pairer.pending() if self.live else 0)
            if self.unpaired:
                log.info("pair: %d frame(s) had no partner close enough in time and were dropped", self.unpaired)
            self._interrupt()

    def _stereo(self, left: Frame, right: Frame) -> StereoFrame:
        li, ri = left.image, right.image
        if li.shape != ri.shape:  # only when cfg.size is None
            if not self._resize_warned:
                log.warning("pair: the eyes differ in size (%dx%d vs %dx%d): the right eye is resized; "
                            "use --size to choose", li.shape[1], li.shape[0], ri.shape[1], ri.shape[0])
                self._resize_warned = True
            ri = resize_to(ri, (li.shape[1], li.shape[0]))
        return StereoFrame(_eye(left, li, "left"), _eye(right, ri, "right"))

    def _interrupt(self) -> None:
        self.left.close()
        self.right.close()

    def _release(self) -> None:
        self._interrupt()

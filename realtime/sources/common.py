"""Shared machinery of the built-in sources: a reader thread, renumbering, resizing.

Every built-in source subclasses `ThreadedSource`: its `_produce()` generator runs in a
reader thread and hands frames to `__iter__` over a small queue. That gives every source
the same guarantees without each one re-implementing them:

- frames are numbered 0, 1, 2, ... in the order they are yielded;
- iteration stops after `SourceConfig.max_frames` frames;
- `close()` from another thread makes a blocked `__iter__` return within ~0.1 s, even when
  the reader itself is stuck in a blocking call (a camera or network read): the reader
  releases the device when that call returns;
- a file source never loses a frame (the reader waits for room); a live source keeps only
  the newest frames when its consumer falls behind (the pipeline's latest-frame-wins).
"""
from __future__ import annotations

import logging
import queue
import threading
from abc import abstractmethod
from dataclasses import replace
from typing import Iterator, Optional

import numpy as np

from realtime.config import Size, SourceConfig
from genreal_errors import UserError
from realtime.frame import Item, StereoFrame
from realtime.sources.base import Source

log = logging.getLogger(__name__)

_POLL_S = 0.1  # how often a waiting consumer or reader checks for close()


def resize_to(image: np.ndarray, size: Optional[Size]) -> np.ndarray:
    """Resize an (H, W, C) image to `size` = (width, height); INTER_AREA shrinking, INTER_LINEAR enlarging."""
    if size is None or (image.shape[1], image.shape[0]) == tuple(size):
        return image
    import cv2

    w, h = size
    shrink = w <= image.shape[1] and h <= image.shape[0]
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """An image as OpenCV decodes it (grey, BGR or BGRA; 8 or 16 bit) → uint8 (H, W, 3) RGB."""
    import cv2

    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def renumber(item: Item, index: int) -> Item:
    """The same frame (or stereo pair) with a new index."""
    if isinstance(item, StereoFrame):
        return StereoFrame(replace(item.left, index=index), replace(item.right, index=index))
    return replace(item, index=index)


class _End:
    """Queue sentinel: the reader finished (`error` set when it failed)."""

    def __init__(self, error: Optional[BaseException] = None) -> None:
        self.error = error


class ThreadedSource(Source):
    """A source whose frames come from `_produce()`, run in a reader thread.

    Subclasses implement `_open()` (raise `UserError` on failure), `_produce()` (yield
    finished `Frame`s / `StereoFrame`s: RGB, resized, `capture_ns` set; their index is
    ignored) and `_release()` (free the device or file; called exactly once).
    A source is iterated once.
    """

    #: frames the reader may run ahead of the consumer (a live source keeps fewer)
    queue_size: int = 4
    live_queue_size: int = 2

    def __init__(self, cfg: SourceConfig) -> None:
        super().__init__()
        if cfg.max_frames is not None and cfg.max_frames < 0:
            raise UserError(f"bad max_frames {cfg.max_frames}: use a positive number of frames")
        self.cfg = cfg
        self.dropped = 0  # live only: frames replaced by newer ones before the consumer took them
        self._stop = threading.Event()
        self._state_lock = threading.Lock()
        self._opened = False
        self._released = False
        self._iterated = False
        self._reader: Optional[threading.Thread] = None

    # -- subclass hooks -------------------------------------------------------------------
    @abstractmethod
    def _open(self) -> None: ...

    @abstractmethod
    def _produce(self) -> Iterator[Item]: ...

    def _release(self) -> None:
        """Free the device / file. Runs once, in the reader thread or in `close()`."""

    def _interrupt(self) -> None:
        """Called by `close()` before it waits for the reader: unblock what the reader waits on
        (a wrapper closes the sources it reads). Must be thread-safe and idempotent."""

    # -- Source API -------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def open(self) -> None:
        if self._opened:
            return
        if self._stop.is_set():
            raise RuntimeError("a closed source cannot be reopened")
        self._open()
        self._opened = True

    def close(self) -> None:
        self._stop.set()
        self._interrupt()
        with self._state_lock:
            reader = self._reader
        if reader is None:
            self._release_once()  # never iterated: nobody else will
        elif reader is not threading.current_thread():
            # the reader releases on its way out; a reader stuck in a blocking read does so
            # when the read returns, which we do not wait for beyond a second
            reader.join(timeout=1.0)

    def __iter__(self) -> Iterator[Item]:
        if not self._opened:
            raise RuntimeError("open() the source before iterating it")
        with self._state_lock:
            if self._iterated:
                raise RuntimeError("a source can be iterated only once")
            self._iterated = True
            if self._stop.is_set():
                return
            q: queue.Queue = queue.Queue(maxsize=self.live_queue_size if self.live else self.queue_size)
            self._reader = threading.Thread(target=self._pump, args=(q,), daemon=True,
                                            name=f"source-reader-{type(self).__name__}")
            self._reader.start()
        limit = self.cfg.max_frames
        index = 0
        try:
            while limit is None or index < limit:
                try:
                    msg = q.get(timeout=_POLL_S)
                except queue.Empty:
                    if self._stop.is_set():
                        return
                    continue
                if self._stop.is_set():
                    return
                if isinstance(msg, _End):
                    if msg.error is not None:
                        raise msg.error
                    return
                yield renumber(msg, index)
                index += 1
        finally:
            self._stop.set()  # ended, closed or abandoned: let the reader go

    # -- reader thread ----------------------------------------------------------------------
    def _pump(self, q: queue.Queue) -> None:
        end = _End()
        try:
            for item in self._produce():
                if not self._put(q, item):
                    break
        except BaseException as e:  # handed to the consumer, which raises it
            end = _End(e)
        finally:
            self._release_once()
            while not self._stop.is_set():
                try:
                    q.put(end, timeout=_POLL_S)
                    break
                except queue.Full:
                    pass

    def _put(self, q: queue.Queue, item: Item) -> bool:
        """Queue one frame; False when the source was closed meanwhile.

        A file source waits for room; a live source drops its oldest queued frame instead.
        """
        while not self._stop.is_set():
            try:
                if self.live:
                    q.put_nowait(item)
                else:
                    q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                if self.live:
                    try:
                        q.get_nowait()
                        self.dropped += 1
                    except queue.Empty:
                        pass
        return False

    def _release_once(self) -> None:
        with self._state_lock:
            if self._released:
                return
            self._released = True
        try:
            self._release()
        except Exception:  # releasing must never mask the real outcome
            log.debug("error while releasing %s", type(self).__name__, exc_info=True)

"""`demo` and `demo:stereo`: the built-in clips of `synthetic.py` as sources (no camera needed)."""
from __future__ import annotations

import time
from typing import Iterator, Optional

from realtime.config import SourceConfig
from realtime.frame import Frame, StereoFrame
from realtime.sources.common import ThreadedSource
from realtime.sources.synthetic import DEMO_FPS, DEMO_FRAMES, DEMO_SIZE, DemoClip, StereoDemoClip


class DemoSource(ThreadedSource):
    """The mono demo clip: 150 frames, 640×360 (or `cfg.size`) at 30 fps (or `cfg.fps`).

    With `live` (``demo:live``) it behaves like a camera: frames are produced in real time at the
    clip's rate and a newer frame replaces one the pipeline has not taken yet (counted as dropped),
    so capture→display latency means what it means for a webcam; like a camera it never ends by
    itself (the clip loops) until it is closed or `max_frames` is reached.
    """

    live = False

    def __init__(self, cfg: SourceConfig, live: bool = False) -> None:
        super().__init__(cfg)
        self.live = live
        self.clip: Optional[DemoClip] = None

    @property
    def fps(self) -> float:
        return float(self.cfg.fps or DEMO_FPS)

    def _open(self) -> None:
        self.clip = DemoClip(size=self.cfg.size or DEMO_SIZE, fps=self.fps, n_frames=DEMO_FRAMES)

    def _produce(self) -> Iterator[Frame]:
        assert self.clip is not None
        start = time.monotonic()
        n = len(self.clip)
        t = 0
        while self.live or t < n:
            if self.closed:
                return
            if self.live:  # a camera delivers frame t at start + t / fps, not earlier
                delay = start + t / self.fps - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                    if self.closed:
                        return
            image = self.clip.frame(t % n)
            yield Frame(image, t, time.monotonic_ns(), t / self.fps)
            t += 1


class StereoDemoSource(ThreadedSource):
    """The stereo demo clip (`demo:stereo`): `StereoFrame`s, `cfg.size` per eye."""

    live = False
    stereo = True

    def __init__(self, cfg: SourceConfig) -> None:
        super().__init__(cfg)
        self.clip: Optional[StereoDemoClip] = None

    @property
    def fps(self) -> float:
        return float(self.cfg.fps or DEMO_FPS)

    def _open(self) -> None:
        self.clip = StereoDemoClip(size=self.cfg.size or DEMO_SIZE, fps=self.fps, n_frames=DEMO_FRAMES)

    def _produce(self) -> Iterator[StereoFrame]:
        assert self.clip is not None
        for t in range(len(self.clip)):
            if self.closed:
                return
            left, right = self.clip.frame(t)
            now, pts = time.monotonic_ns(), t / self.fps
            yield StereoFrame(Frame(left, t, now, pts, "left"), Frame(right, t, now, pts, "right"))

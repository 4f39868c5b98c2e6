"""Capture→display latency measured from the pixels: a timestamp pattern drawn into each frame.

`PatternSource` is a live, camera-like source: it renders a moving view over real photographs
(`realtime.sources.synthetic.DemoClip`) at a fixed frame rate, draws a binary code of the frame
index into the top-left corner (`draw_index`), and remembers when each index was "captured".
`DecodingSink` reads the index back from the *stylized* image the moment the sink receives it
(`decode_index`); the latency of that frame is receive time − capture time of the decoded index.

Because the index comes from the pixels, not from the `Frame` metadata, the figure also catches
a stylizer that shows stale content (e.g. temporal reuse keeping an older frame's look):
``stale_frames`` counts outputs whose pixels show an older index than the frame they came with.

The code: a 3 × 8 grid of square cells (big, black or white): one white and one black reference
cell (the threshold is their midpoint, so global brightness / contrast shifts of a style do not
matter), 16 data bits (index mod 65536) and a CRC-6 over them (a wrong read is rejected, not
misread). A style that blurs or recolours the corner too much makes decoding fail; failures are
counted and reported, never guessed.
"""
from __future__ import annotations

import threading
import time
from typing import Iterator, Optional

import numpy as np

from realtime.config import Size
from realtime.frame import Frame, Item, StereoFrame
from realtime.sinks.base import Overlay, Sink
from realtime.sources.base import Source

ROWS, COLS = 3, 8
DATA_BITS, CRC_BITS = 16, 6
MIN_CONTRAST = 40.0  # white reference − black reference, in 8-bit luminance levels


def cell_size(height: int, width: int) -> int:
    """Cell side in pixels for a frame: about 1/16 of the short side, at least 8, at most 48."""
    return int(min(48, max(8, min(height, width) // 16)))


def _crc6(value: int) -> int:
    """CRC-6-ITU (x^6 + x + 1) of the 16 data bits: catches every single-bit error and short bursts."""
    reg = 0
    for i in reversed(range(DATA_BITS)):
        top = ((reg >> 5) & 1) ^ ((value >> i) & 1)
        reg = (reg << 1) & 0x3F
        if top:
            reg ^= 0x03
    return reg


def _cells(index: int) -> list[int]:
    """The 24 cell values (1 = white) in row-major order: refs, data bits (MSB first), CRC bits."""
    data = index & 0xFFFF
    crc = _crc6(data)
    bits = [(data >> i) & 1 for i in reversed(range(DATA_BITS))] + [(crc >> i) & 1 for i in reversed(range(CRC_BITS))]
    return [1, 0] + bits


def _origin(c: int) -> int:
    return c // 2  # margin from the frame's corner (borders suffer from padding / reflection)


def pattern_fits(height: int, width: int) -> bool:
    c = cell_size(height, width)
    return _origin(c) + ROWS * c <= height and _origin(c) + COLS * c <= width


def draw_index(image: np.ndarray, index: int) -> np.ndarray:
    """Draw the code of `index` into the top-left corner of `image` (uint8 H×W×3, in place); returns it."""
    h, w = image.shape[:2]
    if not pattern_fits(h, w):
        raise ValueError(f"frame {w}x{h} is too small for the timestamp pattern")
    c = cell_size(h, w)
    o = _origin(c)
    for k, v in enumerate(_cells(index)):
        r, col = divmod(k, COLS)
        image[o + r * c: o + (r + 1) * c, o + col * c: o + (col + 1) * c] = 255 if v else 0
    return image


def decode_index(image: np.ndarray) -> Optional[int]:
    """The index (mod 65536) drawn by `draw_index`, or None if the corner cannot be read reliably."""
    h, w = image.shape[:2]
    if not pattern_fits(h, w):
        return None
    c = cell_size(h, w)
    o, q = _origin(c), c // 4  # sample the central half of each cell
    region = image[o: o + ROWS * c, o: o + COLS * c].astype(np.float32).mean(axis=2)  # (3c, 8c) luminance
    means = [float(region[r * c + q: (r + 1) * c - q, col * c + q: (col + 1) * c - q].mean())
             for r in range(ROWS) for col in range(COLS)]
    white, black = means[0], means[1]
    if white - black < MIN_CONTRAST:
        return None
    thr = 0.5 * (white + black)
    bits = [1 if m > thr else 0 for m in means[2:]]
    data = int("".join(map(str, bits[:DATA_BITS])), 2)
    crc = int("".join(map(str, bits[DATA_BITS:])), 2)
    return data if _crc6(data) == crc else None


class PatternSource(Source):
    """A live, paced source over real photos with the frame index drawn into every frame.

    `size` is per eye; `stereo` yields `StereoFrame`s (pattern in both eyes). It stops after
    `duration_s` seconds (or `max_frames` frames). ``capture_ns[i]`` is frame i's capture time.
    """

    live = True

    def __init__(self, size: Size, fps: float = 30.0, duration_s: float = 3.0, stereo: bool = False,
                 max_frames: Optional[int] = None) -> None:
        super().__init__()
        from realtime.sources.synthetic import DemoClip, StereoDemoClip

        self.size = (int(size[0]), int(size[1]))
        if not pattern_fits(self.size[1], self.size[0]):
            raise ValueError(f"size {self.size} is too small for the timestamp pattern")
        self._fps = float(fps)
        self.stereo = stereo
        self.n_frames = max_frames if max_frames is not None else max(1, int(round(duration_s * fps)))
        n_clip = min(self.n_frames, 90)  # render a short clip and loop it: the pattern carries the index
        self.clip = StereoDemoClip(self.size, fps, n_clip) if stereo else DemoClip(self.size, fps, n_clip)
        self.capture_ns: dict[int, int] = {}
        self._closed = threading.Event()

    @property
    def fps(self) -> Optional[float]:
        return self._fps

    def open(self) -> None:
        self._closed.clear()

    def close(self) -> None:
        self._closed.set()

    def __iter__(self) -> Iterator[Item]:
        period_ns = int(1e9 / self._fps)
        t0 = time.monotonic_ns()
        for i in range(self.n_frames):
            wait_s = (t0 + i * period_ns - time.monotonic_ns()) / 1e9
            if wait_s > 0 and self._closed.wait(wait_s):
                return
            if self._closed.is_set():
                return
            t = i % len(self.clip)
            if self.stereo:
                left, right = (draw_index(np.array(img), i) for img in self.clip.frame(t))
                now = time.monotonic_ns()
                self.capture_ns[i] = now
                yield StereoFrame(Frame(left, i, now, None, "left"), Frame(right, i, now, None, "right"))
            else:
                image = draw_index(np.array(self.clip.frame(t)), i)
                now = time.monotonic_ns()
                self.capture_ns[i] = now
                yield Frame(image, i, now)


class DecodingSink(Sink):
    """Decodes the index from each received (stylized) image at once and records the latency."""

    name = "pattern-decoder"

    def __init__(self, source: PatternSource) -> None:
        self.source = source
        self.received = 0
        self.decoded = 0
        self.stale_frames = 0  # the pixels show an older frame than the one the item carries
        self.latencies_ms: list[float] = []

    def write(self, item: Item, overlay: Overlay) -> None:
        now = time.monotonic_ns()
        self.received += 1
        image = item.images[0]
        code = decode_index(image)
        if code is None:
            return
        # the code is the index mod 65536: take the candidate nearest the item's own index
        base = item.index - (item.index & 0xFFFF)
        idx = min((base + code + k * 0x10000 for k in (-1, 0, 1)), key=lambda v: abs(v - item.index))
        captured = self.source.capture_ns.get(idx)
        if captured is None:
            return
        self.decoded += 1
        if idx < item.index:
            self.stale_frames += 1
        self.latencies_ms.append((now - captured) / 1e6)

    def summary(self) -> dict:
        from models.metrics import percentiles

        rate = self.decoded / self.received if self.received else 0.0
        return {"frames_received": self.received, "frames_decoded": self.decoded,
                "decode_rate": round(rate, 4), "stale_frames": self.stale_frames,
                "latency": percentiles(self.latencies_ms)}

"""Synthetic sources and sinks for pipeline tests, a small video writer / reader, and a WebRTC
frame collector for the serve tests."""
from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from genreal_errors import UserError
from realtime.frame import Frame, Item, StereoFrame
from realtime.sinks.base import Overlay, Sink
from realtime.sources.base import Source


def make_image(i: int, w: int = 32, h: int = 24) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = i % 256
    img[..., 1] = (i * 7) % 256
    return img


class FakeSource(Source):
    """`n` frames (None = endless), one every `period_s`; optionally fails after `fail_after` frames."""

    def __init__(self, n: Optional[int] = 10, period_s: float = 0.0, live: bool = False,
                 stereo: bool = False, fail_after: Optional[int] = None, age_ms: float = 0.0) -> None:
        super().__init__()
        self.n, self.period_s, self.live, self.stereo = n, period_s, live, stereo
        self.fail_after, self.age_ms = fail_after, age_ms
        self._closed = threading.Event()
        self.opened = False

    @property
    def fps(self) -> Optional[float]:
        return 30.0

    def open(self) -> None:
        self.opened = True

    def close(self) -> None:
        self._closed.set()

    def __iter__(self) -> Iterator[Item]:
        i = 0
        while (self.n is None or i < self.n) and not self._closed.is_set():
            if self.fail_after is not None and i == self.fail_after:
                raise UserError("corrupt input at frame %d" % i)
            if self.period_s:
                time.sleep(self.period_s)
            t = time.monotonic_ns() - int(self.age_ms * 1e6)
            if self.stereo:
                yield StereoFrame(Frame(make_image(i), i, t, i / 30, "left"),
                                  Frame(make_image(i + 100), i, t, i / 30, "right"))
            else:
                yield Frame(make_image(i), i, t, i / 30)
            i += 1


class RecordingSink(Sink):
    name = "recording"

    def __init__(self, keys: Optional[dict[int, str]] = None, interrupt_at: Optional[int] = None,
                 delay_s: float = 0.0) -> None:
        self.items: list[Item] = []
        self.overlays: list[Overlay] = []
        self.keys = dict(keys or {})
        self.interrupt_at = interrupt_at
        self.delay_s = delay_s
        self.closed = 0
        self._pending: list[str] = []

    def write(self, item: Item, overlay: Overlay) -> None:
        if self.interrupt_at is not None and len(self.items) == self.interrupt_at:
            raise KeyboardInterrupt
        if self.delay_s:
            time.sleep(self.delay_s)
        self.items.append(item)
        self.overlays.append(overlay)
        if len(self.items) in self.keys:
            self._pending.append(self.keys[len(self.items)])

    def poll_keys(self) -> list[str]:
        keys, self._pending = self._pending, []
        return keys

    def close(self) -> None:
        self.closed += 1


def assert_one_line_error(capsys, code: int, *words: str) -> None:
    """The CLI failed as a user error: exit 2, one line on stderr naming the problem, no traceback."""
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("genreal: error:") and "\n" not in err and "Traceback" not in err, err
    for word in words:
        assert word.lower() in err.lower(), err


#: a child interpreter's first lines that make every `import torch` fail (the runtime path must not need it)
NO_TORCH_PRELUDE = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, NoTorch())
"""


def encode_video(path: Any, images: Iterable[np.ndarray], fps: int = 10, codec: str = "ffv1",
                 pix_fmt: str = "yuv420p", fmt: Optional[str] = None) -> Any:
    """Write uint8 RGB `images` (all one size) to `path` (a file path, or a binary file object with
    `fmt`, e.g. "mpegts") with PyAV, frame i at pts i / `fps`."""
    import av

    with av.open(path if fmt else str(path), "w", format=fmt) as container:
        stream = None
        for i, img in enumerate(images):
            if stream is None:
                stream = container.add_stream(codec, rate=fps)
                stream.height, stream.width = img.shape[:2]
                stream.pix_fmt = pix_fmt
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    return path


def decode_video(path: Path) -> tuple[list[np.ndarray], list[float]]:
    """Every frame of `path` as uint8 RGB, and its presentation time in seconds."""
    import av

    with av.open(str(path)) as inp:
        frames = list(inp.decode(video=0))
    return [f.to_ndarray(format="rgb24") for f in frames], [float(f.time) for f in frames]


def save_one_style_model(model: Any, folder: Path) -> Path:
    """Save a torch model as a one-style model folder (style "a", teacher builtin:1): a `--init` source."""
    from models.build import save_model

    save_model(model, folder, {"format": "genreal-model/1", "styles": [{"name": "a", "teacher": "builtin:1"}],
                               "default_style": "a"})
    return folder


#: `models.distill.LossWeights` with the pixel terms only: the shipped recipe's first stage (models/recipes/
#: cpu.toml, "third"), the defaults before they became its last stage's. Tests of the core terms pass it, so
#: no feature network is built and the optional terms stay out of their figures. (A function: importing
#: tests.fakes must not need torch.)
def pixel_terms(**overrides: Any) -> Any:
    from models.distill import LossWeights

    return LossWeights(**{**dict(temporal=0.3, texture=0.0, pixel_blur=0.0, warm_temporal=0.0, lattice=0.0,
                                 temporal_noise=0.0, lattice_flat=0.0), **overrides})


def collect_track_frames(pc: Any) -> list:
    """A list that every frame of every track the aiortc `pc` receives is appended to, as it arrives."""
    frames: list = []

    @pc.on("track")
    def on_track(track: Any) -> None:
        async def pull() -> None:
            while True:
                frames.append(await track.recv())
        asyncio.ensure_future(pull())

    return frames


def load_triton_interpreted(path: Path, name: str) -> Any:
    """A private copy of the module at `path`, decorated under TRITON_INTERPRET=1 (Triton picks interpreter
    vs compiler per @triton.jit at decoration time), so its kernels run on CPU tensors. The environment is
    restored after."""
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old
    return module

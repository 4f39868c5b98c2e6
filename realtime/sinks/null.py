"""`--sink null`: discards frames (benchmarks, dry runs)."""
from __future__ import annotations

from realtime.frame import Item
from realtime.sinks.base import Overlay, Sink


class NullSink(Sink):
    """Discards every frame and counts them in `frames`."""

    name = "null"

    def __init__(self) -> None:
        self.frames = 0

    def write(self, item: Item, overlay: Overlay) -> None:
        self.frames += 1

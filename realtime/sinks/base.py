"""The sink contract: validate on construction, open lazily on the first frame, write, close.

`close()` must always leave a file output finalized (playable) with every frame written so
far, also after an error or Ctrl-C, and must be idempotent.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Optional

from realtime.frame import Item


@dataclass(frozen=True)
class Overlay:
    """What a sink with a HUD may show next to the frame."""

    style: str
    backend: str
    fps: float  # output frames per second, measured
    latency_ms: float  # capture→display of this frame, so far
    temporal: bool = True
    detail: str = ""  # the keyframe detail layer's readout (realtime/detail.py), "" when it is off


class Sink(ABC):
    """Consumes processed frames. A `StereoFrame` is shown side by side (`item.display_image()`)."""

    name: str = "sink"

    @abstractmethod
    def write(self, item: Item, overlay: Overlay) -> None:
        """Show / encode one frame. The first call opens the device or file at the frame's size."""

    def poll_keys(self) -> list[str]:
        """Keys the user pressed since the last call (window sink only): 'n', 'p', 't', 'q'."""
        return []

    def close(self) -> None:
        """Flush and finalize. Idempotent; safe after an error."""

    def __enter__(self) -> "Sink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

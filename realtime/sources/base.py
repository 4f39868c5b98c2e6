"""The source contract: open, iterate frames (blocking), close.

The pipeline's capture thread iterates a source. For a *live* source (camera, stream URL)
it keeps only the newest unprocessed frame (latest-frame-wins); for a *file* source it
forwards every frame in order and never drops.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterator, Optional

from realtime.frame import Item


class Source(ABC):
    """A stream of `Frame`s (or `StereoFrame`s) numbered 0, 1, 2, ... in capture order."""

    #: True for cameras and live URLs (latest frame wins), False for files (every frame).
    live: bool = False
    #: True when the source yields `StereoFrame`s.
    stereo: bool = False

    def __init__(self) -> None:
        self.skipped = 0  # frames that could not be decoded and were skipped

    @property
    def fps(self) -> Optional[float]:
        """Nominal frame rate, when known (file sinks use it)."""
        return None

    @abstractmethod
    def open(self) -> None:
        """Open the device / file. Raises `UserError` with a one-line reason on failure."""

    @abstractmethod
    def __iter__(self) -> Iterator[Item]:
        """Yield frames until the input ends. Blocks for the next frame.

        Must return within about a second of `close()` being called from another thread.
        """

    def input_paths(self) -> list[str]:
        """The local files this source reads (so no output may overwrite them); [] for devices and URLs."""
        return []

    def close(self) -> None:
        """Release the device / file. Idempotent."""

    def __enter__(self) -> "Source":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

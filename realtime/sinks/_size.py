"""Keeping a sink's output at one frame size."""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)


class SizeKeeper:
    """Remembers the first frame's size and resizes any later frame of another size to it.

    Encoders and virtual cameras are opened at one size; a source that changes resolution
    mid-stream must not crash them. The first mismatch is logged once.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.size: Optional[tuple[int, int]] = None  # (width, height)
        self.resized = 0  # frames that had to be resized

    def fit(self, image: np.ndarray) -> np.ndarray:
        """`image` (H, W, 3) → (H0, W0, 3), the first image's size. Sets the size on the first call."""
        h, w = image.shape[:2]
        if self.size is None:
            self.size = (w, h)
            return image
        if (w, h) == self.size:
            return image
        if self.resized == 0:
            log.warning("%s: frame size %dx%d differs from the first frame's %dx%d; resizing to %dx%d",
                        self.what, w, h, *self.size, *self.size)
        self.resized += 1
        import cv2

        return np.ascontiguousarray(cv2.resize(image, self.size, interpolation=cv2.INTER_AREA))

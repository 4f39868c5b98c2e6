"""The frame contract every source produces and every sink consumes (DESIGN.md §4).

A `Frame` is one image from one camera: uint8 H×W×3 RGB, C-contiguous, with its index,
capture time (``time.monotonic_ns()``), presentation time in seconds (``pts``; None for
live sources that have none) and eye (None, "left" or "right").

A `StereoFrame` carries both eyes of one moment; sinks show them side by side.
The pipeline moves `Item`s, i.e. either kind.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Optional, Union

import numpy as np

Eye = Literal["left", "right"]


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate the image contract; return the image (made C-contiguous if it was not)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = getattr(image, "shape", type(image).__name__), getattr(image, "dtype", "")
        raise ValueError(f"a frame image must be uint8 H×W×3 RGB, got {got}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"a frame image must not be empty, got {image.shape}")
    return np.ascontiguousarray(image)


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # (H, W, 3) uint8 RGB, C-contiguous
    index: int
    capture_ns: int  # time.monotonic_ns() when the frame was captured / decoded
    pts: Optional[float] = None  # presentation time in seconds (file sources), else None
    eye: Optional[Eye] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "image", check_image(self.image))
        if self.eye not in (None, "left", "right"):
            raise ValueError(f"eye must be None, 'left' or 'right', got {self.eye!r}")

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.image.shape[1], self.image.shape[0]

    @property
    def images(self) -> list[np.ndarray]:
        return [self.image]

    def with_images(self, images: list[np.ndarray]) -> "Frame":
        """The same frame (index, times, eye) carrying a new image."""
        (image,) = images
        return replace(self, image=image)

    def display_image(self) -> np.ndarray:
        return self.image


@dataclass(frozen=True)
class StereoFrame:
    left: Frame
    right: Frame

    def __post_init__(self) -> None:
        if self.left.eye != "left" or self.right.eye != "right":
            raise ValueError("a StereoFrame needs a left-eye and a right-eye Frame")

    @property
    def index(self) -> int:
        return self.left.index

    @property
    def capture_ns(self) -> int:
        # the older of the two: latency is counted from the first photon
        return min(self.left.capture_ns, self.right.capture_ns)

    @property
    def pts(self) -> Optional[float]:
        return self.left.pts

    @property
    def eye(self) -> None:
        return None

    @property
    def size(self) -> tuple[int, int]:
        """Per-eye (width, height)."""
        return self.left.size

    @property
    def images(self) -> list[np.ndarray]:
        return [self.left.image, self.right.image]

    def with_images(self, images: list[np.ndarray]) -> "StereoFrame":
        left, right = images
        return StereoFrame(replace(self.left, image=left), replace(self.right, image=right))

    def display_image(self) -> np.ndarray:
        """Both eyes side by side (left | right), as every sink shows a stereo frame."""
        return pack_side_by_side(self.left.image, self.right.image)


Item = Union[Frame, StereoFrame]


def pack_side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    if left.shape != right.shape:
        raise ValueError(f"stereo eyes differ in shape: {left.shape} vs {right.shape}")
    return np.ascontiguousarray(np.concatenate([left, right], axis=1))


def split_side_by_side(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left and right halves of a side-by-side image (an odd last column is dropped)."""
    half = image.shape[1] // 2
    if half < 1:
        raise ValueError(f"image too narrow to split side by side: {image.shape}")
    return np.ascontiguousarray(image[:, :half]), np.ascontiguousarray(image[:, half : 2 * half])


def split_top_bottom(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top (left eye) and bottom (right eye) halves (an odd last row is dropped)."""
    half = image.shape[0] // 2
    if half < 1:
        raise ValueError(f"image too short to split top/bottom: {image.shape}")
    return np.ascontiguousarray(image[:half]), np.ascontiguousarray(image[half : 2 * half])

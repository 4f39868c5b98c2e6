"""`images:GLOB`: a sorted sequence of still images played as a video."""
from __future__ import annotations

import glob
import logging
import os
import time
from typing import Iterator, Optional

import numpy as np

from realtime.config import Size, SourceConfig
from genreal_errors import UserError
from realtime.frame import Frame
from realtime.sources.common import ThreadedSource, resize_to, to_rgb8

log = logging.getLogger(__name__)

DEFAULT_FPS = 30.0


def read_image(path: str) -> Optional[np.ndarray]:
    """Any image OpenCV can decode as uint8 (H, W, 3) RGB (grey and RGBA converted); None if unreadable."""
    import cv2

    try:
        data = np.fromfile(path, dtype=np.uint8)  # also works for non-ASCII paths
    except OSError:
        return None
    if data.size == 0:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        return None
    return to_rgb8(image)


class ImageSequenceSource(ThreadedSource):
    """Every readable file matching the glob, sorted by name, at `cfg.fps` (30 by default).

    All frames have one size (a video needs one): `cfg.size`, or else the first image's.
    Unreadable files are skipped and counted in `skipped`.
    """

    live = False

    def __init__(self, cfg: SourceConfig, pattern: str) -> None:
        super().__init__(cfg)
        self.pattern = pattern
        self.paths: list[str] = []
        self._size: Optional[Size] = cfg.size
        self._first: Optional[tuple[int, np.ndarray]] = None  # (position in paths, image)

    @property
    def fps(self) -> float:
        return float(self.cfg.fps or DEFAULT_FPS)

    def _open(self) -> None:
        pattern = os.path.expanduser(self.pattern)
        self.paths = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        if not self.paths:
            raise UserError(f"no files match images:{self.pattern}: check the pattern "
                            "(quote it so the shell does not expand it, e.g. 'images:frames/*.png')")
        for i, path in enumerate(self.paths):  # the first readable image fixes the size
            image = read_image(path)
            if image is not None:
                self._first = (i, image)
                break
            self._skip(path)
        if self._first is None:
            raise UserError(f"none of the {len(self.paths)} files matching images:{self.pattern} "
                            "is a readable image: use PNG, JPEG, BMP, TIFF or WebP files")
        if self._size is None:
            first = self._first[1]
            self._size = (first.shape[1], first.shape[0])

    def _skip(self, path: str) -> None:
        self.skipped += 1
        log.warning("skipped %s: not a readable image", path)

    def _produce(self) -> Iterator[Frame]:
        assert self._first is not None
        start, first = self._first
        self._first = None
        n = 0
        for path in self.paths[start:]:
            if self.closed:
                return
            image = first if n == 0 else read_image(path)
            if image is None:
                self._skip(path)
                continue
            capture_ns = time.monotonic_ns()
            yield Frame(resize_to(image, self._size), n, capture_ns, n / self.fps)
            n += 1
        if self.skipped:
            log.warning("images:%s: skipped %d of %d files that could not be read",
                        self.pattern, self.skipped, len(self.paths))

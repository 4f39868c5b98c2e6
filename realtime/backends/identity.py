"""`identity` backend: returns the input unchanged (optionally after a delay). For tests and
for measuring the pipeline's own overhead."""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from realtime.backends.base import Backend
from realtime.config import BackendConfig
from genreal_errors import UserError

STYLES = ("identity", "invert", "gray")


class IdentityBackend(Backend):
    name = "identity"

    def __init__(self, config: BackendConfig, delay_s: float = 0.0) -> None:
        super().__init__()
        self.delay_s = delay_s  # tests use it to make a deliberately slow stylizer
        self._style = STYLES[0]
        self.set_style(config.style if config.style in STYLES else STYLES[0])
        self.calls = 0

    def styles(self) -> Sequence[str]:
        return STYLES

    @property
    def style(self) -> str:
        return self._style

    def set_style(self, name: str) -> None:
        if name not in STYLES:
            raise UserError(f"unknown style {name!r} for the identity backend: use one of {', '.join(STYLES)}")
        self._style = name

    def preprocess(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        return list(images)

    def infer(self, x: list[np.ndarray]) -> list[np.ndarray]:
        self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        if self._style == "invert":
            return [255 - img for img in x]
        if self._style == "gray":
            return [np.repeat(img.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2) for img in x]
        return x

    def postprocess(self, y: Any, like: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [np.ascontiguousarray(img) for img in y]

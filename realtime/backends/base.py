"""The one call contract every stylizer backend shares, so the pipeline never knows which runs.

A backend turns a batch of uint8 RGB images (one per eye) into restyled images of the same
sizes, in three timed steps: `preprocess` (host work: resize, normalize, layout),
`infer` (the model) and `postprocess` (back to uint8 HWC at the input size). What one step hands
the next is the backend's own value (our model: the frozen dataclasses `Prepared` and `Inferred` in
realtime/backends/model_backend.py); the pipeline passes it on without looking inside.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np

from genreal_errors import UserError


class Backend(ABC):
    #: registry name, e.g. "teacher", "onnxruntime"
    name: str = "backend"

    def __init__(self) -> None:
        self.device = "cpu"
        self.temporal = True  # backends without temporal state ignore it

    # -- styles --------------------------------------------------------------
    @abstractmethod
    def styles(self) -> Sequence[str]:
        """Style names this backend can apply, in a stable order (the window's n/p keys cycle them)."""

    @property
    @abstractmethod
    def style(self) -> str:
        """The active style name."""

    @abstractmethod
    def set_style(self, name: str) -> None:
        """Switch style without reloading anything. Raises `UserError` for an unknown name."""

    # -- the three timed steps -------------------------------------------------
    @abstractmethod
    def preprocess(self, images: Sequence[np.ndarray]) -> Any:
        """uint8 (H, W, 3) RGB images (1, or 2 for stereo) → the model's input."""

    @abstractmethod
    def infer(self, x: Any) -> Any:
        """Run the model."""

    @abstractmethod
    def postprocess(self, y: Any, like: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Model output → uint8 (H, W, 3) RGB images, each the size of its `like` input."""

    def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Untimed convenience: all three steps."""
        return self.postprocess(self.infer(self.preprocess(images)), images)

    # -- temporal state ----------------------------------------------------------
    def set_temporal(self, on: bool) -> None:
        self.temporal = bool(on)
        self.reset()

    def reset(self) -> None:
        """Forget temporal state (scene cut, style switch, seek)."""

    # -- latency budget (realtime/budget.py) -------------------------------------------
    #: whether `apply_choice` changes anything (our model: steps K, internal scale, reuse thresholds)
    supports_choices: bool = False

    def budget_steps(self) -> int:
        """The refine steps the budget controller starts from (its best rung)."""
        return 1

    def apply_choice(self, choice: Any) -> None:
        """Take the budget controller's per-frame `realtime.budget.Choice`; backends without such
        knobs ignore it."""

    def stats(self) -> dict[str, Any]:
        """Backend-specific counters for the run summary (e.g. tokens recomputed)."""
        return {}

    def readout(self) -> str:
        """An extra line for the window's HUD (the keyframe detail layer's figures); "" for none."""
        return ""

    def close(self) -> None:
        """Release sessions / device memory. Idempotent."""


def next_style(backend: Backend, step: int) -> str:
    """The style `step` places after (or before, for negative steps) the active one, cycling."""
    names = list(backend.styles())
    if not names:
        raise UserError(f"backend {backend.name} has no styles")
    try:
        i = names.index(backend.style)
    except ValueError:
        i = -1 if step > 0 else 0
    return names[(i + step) % len(names)]

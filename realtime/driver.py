"""One frame through a backend: the one path `genreal run` (realtime/pipeline.py) and `genreal serve`
(realtime/serve/session.py) share.

`FrameDriver.process` takes a frame's images (one per eye) and returns them restyled:

    budget choice → preprocess → infer → postprocess → strength → budget record

- With a latency budget, a `BudgetController` picks the backend's steps / internal scale / reuse per
  frame (`Backend.apply_choice`) and learns from the frame's latency: its age when its turn came
  (`age_ms`) + the work + the output stage's expected cost (`observe_output`). The driver never drops a
  frame: the budget lowers quality instead; only a newer frame replaces an older one (the caller's
  latest-wins mailbox), so every dropped frame is one that something newer superseded.
- ``strength`` < 1 blends the restyled image with the input (0 = the input unchanged) on every
  backend, after postprocess: ``floor(s · styled + (1 − s) · input + 0.5)`` on the uint8 images.
"""
from __future__ import annotations

from dataclasses import dataclass
import time
from typing import Optional, Sequence

import numpy as np

from realtime.backends.base import Backend
from realtime.budget import SCALES, BudgetController, Choice


@dataclass(frozen=True)
class Driven:
    """What `FrameDriver.process` hands back: the restyled images and the time each step took."""

    images: list[np.ndarray]  # uint8 (H, W, 3) RGB, one per eye, each the size of its input
    preprocess_ms: float
    stylize_ms: float  # the backend's `infer`
    postprocess_ms: float  # the backend's `postprocess` and the strength blend
    choice: Optional[Choice] = None  # the budget's choice for this frame (None: no budget)

    @property
    def total_ms(self) -> float:
        return self.preprocess_ms + self.stylize_ms + self.postprocess_ms


def check_strength(strength: float) -> float:
    """`strength` as a float in [0, 1]; `ValueError` otherwise (the callers word the user's error)."""
    s = float(strength)
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"strength must be from 0 to 1, got {strength!r}")
    return s


def blend_strength(out: Sequence[np.ndarray], images: Sequence[np.ndarray], strength: float) -> list[np.ndarray]:
    """Restyled images blended with their inputs: `strength` of the restyled, the rest of the input."""
    s = check_strength(strength)
    if s >= 1.0:
        return list(out)
    return [(o.astype(np.float32) * s + i.astype(np.float32) * (1.0 - s) + 0.5).astype(np.uint8)
            for o, i in zip(out, images)]


def make_budget(backend: Backend, budget_ms: Optional[float]) -> Optional[BudgetController]:
    """The budget controller for `backend` (None without a budget): its quality ladder walks the steps down
    from the backend's own, then the internal scale where the backend can change it."""
    if budget_ms is None:
        return None
    return BudgetController(budget_ms, backend.budget_steps(), scales=SCALES if backend.supports_choices else (1.0,))


class FrameDriver:
    """Drives frames through one backend, with an optional latency budget and a strength."""

    def __init__(self, backend: Backend, budget_ms: Optional[float] = None, strength: float = 1.0) -> None:
        self.backend = backend
        self.budget = make_budget(backend, budget_ms)
        self.strength = check_strength(strength)

    def set_budget(self, budget_ms: Optional[float]) -> None:
        """A new budget (None: none); the controller starts afresh."""
        self.budget = make_budget(self.backend, budget_ms)

    def set_strength(self, strength: float) -> None:
        self.strength = check_strength(strength)

    def observe_output(self, ms: float) -> None:
        """The cost of showing a frame (the sinks), a part of every later frame's predicted latency."""
        if self.budget is not None:
            self.budget.observe_stage("output", ms)

    def process(self, images: Sequence[np.ndarray], age_ms: float = 0.0) -> Driven:
        """Restyle one frame's images. `age_ms`: how long the frame waited before its turn came (the
        budget counts it; 0 where the wait is not the frame's own, e.g. a read-ahead file queue)."""
        choice = None
        if self.budget is not None:
            choice = self.budget.start_frame()
            self.backend.apply_choice(choice)
        t0 = time.perf_counter()
        x = self.backend.preprocess(images)
        t1 = time.perf_counter()
        y = self.backend.infer(x)
        t2 = time.perf_counter()
        out = blend_strength(self.backend.postprocess(y, images), images, self.strength)
        t3 = time.perf_counter()
        if self.budget is not None:  # age + work + the output stage's expected cost
            self.budget.end_frame(extra_ms=age_ms + self.budget.stage_ema.get("output", 0.0))
        return Driven(out, (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3, choice)


__all__ = ["FrameDriver", "Driven", "blend_strength", "check_strength", "make_budget"]

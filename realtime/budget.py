"""The latency-budget controller: per frame, pick refine steps K, internal resolution scale and
reuse thresholds so that capture→display stays within ``--budget-ms`` (DESIGN.md §1).

It walks a quality ladder, best first::

    (K=default, scale 1) … (K=1, scale 1) → (K=1, scale 0.75, reuse ×1.5) → (K=1, scale 0.5, reuse ×2)

from the moving average of the measured frame latency: above ``headroom × budget`` (or on a deadline
miss) it steps one rung cheaper at once; below ``raise_below × budget`` for ``patience`` frames in a
row, and when the rung above is predicted to fit, it steps one rung better. The prediction scales the
current rung's cost by the cost ratio of the two rungs measured when the controller last crossed
between them (load slows every rung alike, so ratios outlive absolute costs). After a move the new
rung's average starts afresh from its first frame. Per-stage costs are kept as moving averages too,
so the pipeline can predict whether a live frame can still make its deadline (`should_drop`).

The clock is injectable (`clock=`) so tests drive it with a fake one.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)

#: --budget-ms presets (ms): 30 fps video and VR refresh rates
BUDGET_PRESETS: dict[str, float] = {"30fps": 33.3, "vr72": 13.9, "vr90": 11.1, "vr120": 8.3}


@dataclass(frozen=True)
class Choice:
    """What the backend runs for one frame."""

    steps: int  # refine steps K
    scale: float = 1.0  # internal resolution, relative to the input
    reuse: float = 1.0  # temporal change-threshold multiplier (> 1 reuses more)

    @property
    def label(self) -> str:
        return f"K={self.steps},scale={self.scale:g}"


def ladder(default_steps: int, scales: tuple[float, ...] = (1.0, 0.75, 0.5)) -> list[Choice]:
    """The quality ladder, best first."""
    rungs = [Choice(k, scales[0], 1.0) for k in range(max(1, default_steps), 0, -1)]
    rungs += [Choice(1, s, 1.0 + 2.0 * (1.0 - s)) for s in scales[1:]]
    return rungs


class BudgetController:
    """Chooses a `Choice` per frame from measured latencies.

    Use::

        choice = ctl.start_frame()        # before preprocess; apply it to the backend
        ...                               # run the frame
        ctl.end_frame(extra_ms=age_ms)    # after it was shown: clock time since start + extra
    """

    def __init__(self, budget_ms: float, default_steps: int, scales: tuple[float, ...] = (1.0, 0.75, 0.5),
                 alpha: float = 0.2, headroom: float = 0.85, raise_below: float = 0.6, patience: int = 15,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if not budget_ms > 0:
            raise ValueError(f"budget_ms must be positive, got {budget_ms}")
        self.budget_ms = float(budget_ms)
        self.rungs = ladder(default_steps, scales)
        self.level = 0  # index into rungs
        self.alpha, self.headroom, self.raise_below, self.patience = alpha, headroom, raise_below, patience
        self.clock = clock
        self.frame_ema: Optional[float] = None  # ms, whole frame at the current rung
        self.rung_ema: dict[int, float] = {}  # ms of work per rung, since the controller last moved there
        self.ratio: dict[int, float] = {}  # rung i's work / rung i+1's, measured across the last crossing
        self.stage_ema: dict[str, float] = {}  # ms per stage
        self.misses = 0
        self.frames = 0
        self.changes = 0
        self.choices: Counter[str] = Counter()
        self._calm = 0
        self._t0: Optional[float] = None
        self._last_level: Optional[int] = None  # the rung of the previous frame

    @property
    def choice(self) -> Choice:
        return self.rungs[self.level]

    def start_frame(self) -> Choice:
        self._t0 = self.clock()
        self.choices[self.choice.label] += 1
        return self.choice

    def observe_stage(self, stage: str, ms: float) -> None:
        """The cost of a stage outside the start/end span (the output stage): part of every prediction."""
        old = self.stage_ema.get(stage)
        self.stage_ema[stage] = ms if old is None else old + self.alpha * (ms - old)

    def predicted_ms(self) -> float:
        """Expected work of one frame at the current rung, from start to display (0 until measured)."""
        return self.rung_ema.get(self.level, 0.0)

    def should_drop(self, age_ms: float) -> bool:
        """Live input: drop a frame already `age_ms` old that cannot make the budget but a fresher one
        could. When even a fresh frame cannot (the cheapest rung costs more than the budget), only frames
        already older than the budget are dropped: showing late frames beats showing none."""
        cost = self.predicted_ms() + sum(self.stage_ema.values())
        return age_ms > self.budget_ms or (cost <= self.budget_ms and age_ms + cost > self.budget_ms)

    def end_frame(self, extra_ms: float = 0.0) -> float:
        """Record the frame started by `start_frame`; `extra_ms` is time outside the clock span (the
        frame's age when it started). Returns the latency and adapts the rung."""
        if self._t0 is None:
            raise RuntimeError("end_frame without start_frame")
        work = (self.clock() - self._t0) * 1e3
        self._t0 = None
        latency = work + extra_ms
        self.frames += 1
        old = self.rung_ema.get(self.level)
        self.rung_ema[self.level] = work if old is None else old + self.alpha * (work - old)
        prev, self._last_level = self._last_level, self.level
        if prev is not None and abs(prev - self.level) == 1:  # just crossed: both costs are fresh
            better = min(prev, self.level)
            self.ratio[better] = self.rung_ema[better] / max(self.rung_ema[better + 1], 1e-6)
        self.frame_ema = latency if self.frame_ema is None else self.frame_ema + self.alpha * (latency - self.frame_ema)
        missed = latency > self.budget_ms
        self.misses += missed
        self._adapt(missed)
        return latency

    def _adapt(self, missed: bool) -> None:
        assert self.frame_ema is not None
        if (missed or self.frame_ema > self.headroom * self.budget_ms) and self.level < len(self.rungs) - 1:
            self._move(+1)
            return
        if self.frame_ema < self.raise_below * self.budget_ms and self.level > 0:
            self._calm += 1
            better = self.predicted_better_ms()
            fits = better is None or better < self.headroom * self.budget_ms
            if self._calm >= self.patience and fits:
                self._move(-1)
        else:
            self._calm = 0

    def predicted_better_ms(self) -> Optional[float]:
        """Expected frame latency one rung better (None: never measured, worth a try)."""
        cur = self.rung_ema.get(self.level)
        ratio = self.ratio.get(self.level - 1)
        if cur is None or ratio is None or self.frame_ema is None:
            return None
        return cur * ratio + max(0.0, self.frame_ema - cur)  # work scaled, the rest (age, output) as now

    def _move(self, step: int) -> None:
        self.level += step
        self.changes += 1
        self._calm = 0
        # the new rung's cost is its own and what was seen there before may be stale: measure afresh
        self.rung_ema.pop(self.level, None)
        self.frame_ema = None
        log.debug("budget: now %s (budget %.1f ms)", self.choice.label, self.budget_ms)

    def stats(self) -> dict[str, Any]:
        return {"budget_ms": self.budget_ms, "frames": self.frames, "misses": self.misses,
                "changes": self.changes, "choices": dict(self.choices), "final": self.choice.label,
                "stage_ema_ms": {k: round(v, 3) for k, v in self.stage_ema.items()}}


__all__ = ["BudgetController", "Choice", "ladder", "BUDGET_PRESETS"]

"""The latency-budget controller: per frame, pick refine steps K, internal resolution scale and
reuse thresholds so that capture→display stays within ``--budget-ms`` (DESIGN.md §1).

It walks a quality ladder, best first::

    (K=default, scale 1) … (K=1, scale 1) → (K=1, scale 0.75, reuse ×1.5) → (K=1, scale 0.5, reuse ×2)
    → (K=1, scale 0.35, reuse ×2.3) → (K=1, scale 0.25, reuse ×2.5)

(the last two rungs: on a busy machine a blurrier frame beats a dropped one, issue 29)

from the moving average of the measured frame latency: above ``headroom × budget`` (or on a deadline
miss) it steps one rung cheaper at once; below ``raise_below × budget`` for ``patience`` frames in a
row, and when the rung above is predicted to fit, it steps one rung better. The prediction scales the
current rung's peak cost (a slowly decaying maximum: with temporal reuse, p99 is made by the full
frames among cheap ones) by the cost ratio of the two rungs measured when the controller last crossed
between them: the average of the rung it left against the first `ratio_frames` frames of the rung
it moved to (load slows every rung alike, so ratios outlive absolute costs; averages, because with
temporal reuse single frames vary several-fold). After a move the new rung's average starts afresh;
the first frame at a rung (and of a run) is not part of it, nor can it move the controller: it
restarts the temporal cache with a full frame and may meet new tensor shapes. The cost of the output
stage (outside the start/end span) is kept as a moving average and counted in every frame's latency.
The controller lowers quality; it never drops a frame (realtime/driver.py). A climb that has to step back down within ``2 × patience`` frames doubles
the patience before that rung is tried again (up to 16×), so a rung that fits on average but not in
its peaks (full frames among cheap temporal ones) is not probed over and over.

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

#: the internal resolution scales the ladder walks through after the steps (backends that can change it)
SCALES: tuple[float, ...] = (1.0, 0.75, 0.5, 0.35, 0.25)


@dataclass(frozen=True)
class Choice:
    """What the backend runs for one frame."""

    steps: int  # refine steps K
    scale: float = 1.0  # internal resolution, relative to the input
    reuse: float = 1.0  # temporal change-threshold multiplier (> 1 reuses more)

    @property
    def label(self) -> str:
        return f"K={self.steps},scale={self.scale:g}"


def ladder(default_steps: int, scales: tuple[float, ...] = SCALES) -> list[Choice]:
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

    def __init__(self, budget_ms: float, default_steps: int, scales: tuple[float, ...] = SCALES,
                 alpha: float = 0.2, headroom: float = 0.85, raise_below: float = 0.6, patience: int = 15,
                 ratio_frames: int = 5, clock: Callable[[], float] = time.perf_counter) -> None:
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
        self.ratio_frames = ratio_frames
        self._crossing: Optional[tuple[int, float]] = None  # (rung left, its average) until the new one is measured
        self._at_rung = 0  # frames at the current rung since the last move
        self.probe_frames, self.max_backoff = 2 * patience, 16
        self.backoff: dict[int, int] = {}  # rung → patience multiplier, doubled each time a climb there fails
        self.peak_decay = 0.98  # per frame
        self.peak_ms = 0.0  # work of the dearest recent frame at this rung (full frames among temporal ones)
        self._climbed = False  # the last move was a climb

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

    def end_frame(self, extra_ms: float = 0.0) -> float:
        """Record the frame started by `start_frame`; `extra_ms` is time outside the clock span (the
        frame's age when it started). Returns the latency and adapts the rung."""
        if self._t0 is None:
            raise RuntimeError("end_frame without start_frame")
        work = (self.clock() - self._t0) * 1e3
        self._t0 = None
        latency = work + extra_ms
        self.frames += 1
        self._at_rung += 1
        missed = latency > self.budget_ms
        self.misses += missed
        if self._at_rung == 1:
            # the first frame of a run or after a move restarts the temporal cache (a full frame) and may
            # meet new tensor shapes: it counts as a miss if it is one, but says nothing about the rung
            return latency
        old = self.rung_ema.get(self.level)
        self.rung_ema[self.level] = work if old is None else old + self.alpha * (work - old)
        self.peak_ms = max(work, self.peak_ms * self.peak_decay)
        if self._crossing is not None and self._at_rung > self.ratio_frames:  # both sides measured
            left, left_ms = self._crossing
            self._crossing = None
            better, worse = sorted((left, self.level))
            costs = {left: left_ms, self.level: self.rung_ema[self.level]}
            self.ratio[better] = costs[better] / max(costs[worse], 1e-6)
        self.frame_ema = latency if self.frame_ema is None else self.frame_ema + self.alpha * (latency - self.frame_ema)
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
            if self._calm >= self.patience * self.backoff.get(self.level - 1, 1) and fits:
                self._move(-1)
        else:
            self._calm = 0

    def predicted_better_ms(self) -> Optional[float]:
        """Expected latency of the dearest frames one rung better (None: never measured, worth a try):
        p99 is made by the full frames among cheap temporal ones, not by the average."""
        cur = self.rung_ema.get(self.level)
        ratio = self.ratio.get(self.level - 1)
        if cur is None or ratio is None or self.frame_ema is None:
            return None
        return self.peak_ms * ratio + max(0.0, self.frame_ema - cur)  # work scaled, the rest (age, output) as now

    def _move(self, step: int) -> None:
        left = self.level
        if step > 0 and self._climbed and self._at_rung <= self.probe_frames:
            # a climb that did not hold: wait twice as long before trying this rung again
            self.backoff[left] = min(self.max_backoff, 2 * self.backoff.get(left, 1))
        self._climbed = step < 0
        self._crossing = (left, self.rung_ema[left]) if left in self.rung_ema else None
        self._at_rung = 0
        self.level += step
        self.changes += 1
        self._calm = 0
        # the new rung's cost is its own and what was seen there before may be stale: measure afresh
        self.rung_ema.pop(self.level, None)
        self.frame_ema = None
        self.peak_ms = 0.0
        log.debug("budget: now %s (budget %.1f ms)", self.choice.label, self.budget_ms)

    def stats(self) -> dict[str, Any]:
        return {"budget_ms": self.budget_ms, "frames": self.frames, "misses": self.misses,
                "changes": self.changes, "choices": dict(self.choices), "final": self.choice.label,
                "backoff": {self.rungs[k].label: v for k, v in self.backoff.items()},
                "stage_ema_ms": {k: round(v, 3) for k, v in self.stage_ema.items()}}


__all__ = ["BudgetController", "Choice", "ladder", "BUDGET_PRESETS", "SCALES"]

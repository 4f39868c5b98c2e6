"""Per-frame timing records and the run summary (`--stats-json`).

Stages (milliseconds per frame):
- ``capture``: the source's read/decode call (for a live camera this includes waiting for the sensor);
- ``queue``: from the frame's capture time until inference picked it up;
- ``preprocess``, ``stylize``, ``postprocess``: the backend's three steps;
- ``output``: writing the frame to every sink.
``end_to_end`` is capture→display: from the frame's capture time until the last sink returned.
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from genreal_errors import UserError
from models.metrics import percentiles

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("capture", "queue", "preprocess", "stylize", "postprocess", "output")


@dataclass
class RunStats:
    """Counters and per-stage samples of one pipeline run. Thread-safe for the pipeline's writers."""

    backend: str = ""
    device: str = ""
    size: Optional[tuple[int, int]] = None  # per-eye (width, height) of the processed frames
    stereo: bool = False
    budget_ms: Optional[float] = None
    frames_in: int = 0  # frames the source delivered
    frames_out: int = 0  # frames every sink received
    dropped_replaced: int = 0  # live input: a newer frame replaced an unprocessed one
    dropped_late: int = 0  # live input: already older than the budget when inference would start
    dropped_output: int = 0  # live input: a newer result replaced one the sinks had not shown yet
    skipped: int = 0  # frames the source could not decode
    deadline_misses: int = 0
    elapsed_s: float = 0.0
    interrupted: bool = False  # ended by Ctrl-C
    stages: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    end_to_end: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    temporal: dict[str, Any] = field(default_factory=dict)  # the temporal cache's counters (our model)
    budget: dict[str, Any] = field(default_factory=dict)  # the budget controller's choices and misses
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def dropped(self) -> int:
        return self.dropped_replaced + self.dropped_late + self.dropped_output

    def add_stage(self, stage: str, ms: float) -> None:
        with self._lock:
            self.stages[stage].append(ms)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def add_output(self, latency_ms: float) -> None:
        with self._lock:
            self.frames_out += 1
            self.end_to_end.append(latency_ms)
            if self.budget_ms is not None and latency_ms > self.budget_ms:
                self.deadline_misses += 1

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            fps = self.frames_out / self.elapsed_s if self.elapsed_s > 0 else 0.0
            return {
                "frames_in": self.frames_in,
                "frames_out": self.frames_out,
                "dropped": self.dropped,
                "deadline_misses": self.deadline_misses,
                "backend": self.backend,
                "device": self.device,
                "size": f"{self.size[0]}x{self.size[1]}" if self.size else None,
                "stereo": self.stereo,
                "budget_ms": self.budget_ms,
                "stages": {name: percentiles(v) for name, v in self.stages.items()},
                "end_to_end": percentiles(self.end_to_end),
                "dropped_detail": {"replaced": self.dropped_replaced, "late": self.dropped_late,
                                   "output": self.dropped_output},
                "skipped": self.skipped,
                "elapsed_s": round(self.elapsed_s, 3),
                "interrupted": self.interrupted,
                "fps": round(fps, 2),
                **({"backend_stats": self.extra} if self.extra else {}),
                **({"temporal": self.temporal} if self.temporal else {}),
                **({"budget": self.budget} if self.budget else {}),
            }

    def summary(self) -> str:
        """The one-screen summary printed at the end of a run."""
        d = self.to_dict()
        lines = [
            f"backend {d['backend']} on {d['device']}, {d['size'] or '?'}{' per eye (stereo)' if d['stereo'] else ''}",
            f"frames: {d['frames_in']} in, {d['frames_out']} out, {d['dropped']} dropped, "
            f"{d['skipped']} undecodable skipped, {d['fps']:.1f} fps over {d['elapsed_s']:.1f} s",
        ]
        if self.budget_ms is not None:
            lines.append(f"budget {self.budget_ms:g} ms: {d['deadline_misses']} deadline misses")
        lines.append(f"{'stage':<16}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
        rows = list(d["stages"].items()) + [("capture→display", d["end_to_end"])]
        for name, p in rows:
            lines.append(f"{name:<16}{p['p50_ms']:>10.1f}{p['p95_ms']:>10.1f}{p['p99_ms']:>10.1f}{p['mean_ms']:>10.1f}")
        for key, value in self.extra.items():
            lines.append(f"{key}: {value}")
        if self.temporal:
            t = self.temporal
            lines.append(f"temporal: {100 * t.get('tokens_recomputed_frac', 0):.1f}% of tokens recomputed, "
                         f"previous output reused for {t.get('skips', 0)} of {t.get('frames', 0)} frames, "
                         f"scene resets: {t.get('resets', 0)}")
        if self.budget:
            b = self.budget
            lines.append(f"budget choices: {', '.join(f'{k} ×{v}' for k, v in b.get('choices', {}).items())}; "
                         f"{b.get('misses', 0)} misses")
        return "\n".join(lines)

    def write_json(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        except OSError as exc:
            raise UserError(f"cannot write --stats-json {path}: {exc.strerror or exc}") from None

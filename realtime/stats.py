"""Per-frame timing records and the run summary (`--stats-json`).

Stages (milliseconds per frame):
- ``capture``: the source's read/decode call (for a live camera this includes waiting for the sensor);
- ``queue``: from the frame's capture time until inference picked it up;
- ``preprocess``, ``stylize``, ``postprocess``: the backend's three steps;
- ``output``: writing the frame to every sink.
``end_to_end`` is capture→display: from the frame's capture time until the last sink returned.
``deadline_misses`` count frames over ``--budget-ms`` by the budget's clock (realtime/pipeline.py: from
capture on a live source, from the frame's turn on a file). ``drops`` counts every dropped frame by its
reason (`DROP_REASONS`).

Stages are kept as fixed-size histograms (`realtime.histogram`), not per-frame lists, so a run of
any length uses the same memory; the JSON keys are those of `models.metrics.percentiles` (p50_ms,
p95_ms, p99_ms, mean_ms, min_ms, n).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from genreal_errors import UserError
from realtime.histogram import LatencyHistogram

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("capture", "queue", "preprocess", "stylize", "postprocess", "output")

#: why a frame was dropped (live input only; a file keeps every frame)
DROP_REASONS: dict[str, str] = {
    "superseded": "a newer camera frame replaced it before its turn came",
    "superseded_output": "a newer result replaced it before the sinks showed it",
}


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
    drops: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))  # reason → frames
    skipped: int = 0  # frames the source could not decode
    deadline_misses: int = 0
    elapsed_s: float = 0.0
    interrupted: bool = False  # ended by Ctrl-C, SIGTERM or SIGHUP
    reconnects: int = 0  # live streams: successful reconnects after a stall or a disconnect
    reconnect_attempts: int = 0  # live streams: reconnect attempts (successful or not)
    stages: dict[str, LatencyHistogram] = field(default_factory=lambda: {s: LatencyHistogram() for s in STAGES})
    end_to_end: LatencyHistogram = field(default_factory=LatencyHistogram)
    extra: dict[str, Any] = field(default_factory=dict)
    temporal: dict[str, Any] = field(default_factory=dict)  # the temporal cache's counters (our model)
    budget: dict[str, Any] = field(default_factory=dict)  # the budget controller's choices and misses
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())

    def add_stage(self, stage: str, ms: float) -> None:
        with self._lock:
            self.stages[stage].add(ms)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def drop(self, reason: str) -> None:
        """Count one dropped frame; `reason` is one of `DROP_REASONS`."""
        if reason not in DROP_REASONS:
            raise ValueError(f"unknown drop reason {reason!r}")
        with self._lock:
            self.drops[reason] += 1

    def add_output(self, latency_ms: float, budget_latency_ms: Optional[float] = None) -> None:
        """A shown frame: its capture→display latency and its latency by the budget's clock (default the same)."""
        with self._lock:
            self.frames_out += 1
            self.end_to_end.add(latency_ms)
            deadline = latency_ms if budget_latency_ms is None else budget_latency_ms
            if self.budget_ms is not None and deadline > self.budget_ms:
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
                "stages": {name: h.summary() for name, h in self.stages.items()},
                "end_to_end": self.end_to_end.summary(),
                "drops": dict(self.drops),
                "skipped": self.skipped,
                "elapsed_s": round(self.elapsed_s, 3),
                "interrupted": self.interrupted,
                "reconnects": self.reconnects,
                "reconnect_attempts": self.reconnect_attempts,
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
            f"frames: {d['frames_in']} in, {d['frames_out']} out, {d['dropped']} dropped{_reasons(self.drops)}, "
            f"{d['skipped']} undecodable skipped, {d['fps']:.1f} fps over {d['elapsed_s']:.1f} s",
        ]
        if self.reconnect_attempts:
            lines.append(f"stream: {self.reconnects} reconnect(s) in {self.reconnect_attempts} attempt(s)")
        if self.budget_ms is not None:
            lines.append(f"budget {self.budget_ms:g} ms: {d['deadline_misses']} deadline misses (quality is lowered "
                         "first; no frame is dropped for being late)")
        lines.append(f"{'stage':<16}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
        rows = list(d["stages"].items()) + [("capture→display", d["end_to_end"])]
        for name, p in rows:
            lines.append(f"{name:<16}{p['p50_ms']:>10.1f}{p['p95_ms']:>10.1f}{p['p99_ms']:>10.1f}{p['mean_ms']:>10.1f}")
        for key, value in self.extra.items():
            lines.append(f"{key}: {value}")
        if self.temporal:
            t = self.temporal
            lines.append(f"temporal: {100 * t.get('tokens_recomputed_frac', 0):.1f}% of tokens recomputed; of "
                         f"{t.get('frames', 0)} frames {t.get('skips', 0)} reused, {t.get('crop_frames', 0)} crops "
                         f"({t.get('large_crop_frames', 0)} computed whole, pasted where they changed), "
                         f"{t.get('motion_frames', 0)} camera motion, {t.get('full_frames', 0)} full "
                         f"({t.get('resets', 0)} scene resets)")
        if self.budget:
            b = self.budget
            lines.append(f"budget choices: {', '.join(f'{k} ×{v}' for k, v in b.get('choices', {}).items())}")
        return "\n".join(lines)

    def write_json(self, path: Path, status: Optional[str] = None) -> None:
        """Write the stats atomically (a temporary file beside `path`, then a rename): a reader never
        sees half a file, and a failed write leaves the previous one. `status` replaces the figures
        with ``{"status": status}`` (the placeholder written before a run, to check the path)."""
        data: dict[str, Any] = {"status": status} if status is not None else self.to_dict()
        path = Path(path)
        tmp: Optional[str] = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.chmod(tmp, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(data, indent=2) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            tmp = None
        except OSError as exc:
            raise UserError(f"cannot write --stats-json {path}: {exc.strerror or exc}") from None
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass


def _reasons(drops: dict[str, int]) -> str:
    """' (superseded 3, superseded_output 1)' for the drops that happened; '' for none."""
    counted = [f"{reason} {n}" for reason, n in drops.items() if n]
    return f" ({', '.join(counted)})" if counted else ""

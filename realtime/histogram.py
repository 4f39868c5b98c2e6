"""A fixed-size latency histogram: percentiles in bounded memory, however long a run lasts.

Bins are logarithmic, 1 % wide, from 1 µs to 1000 s (about 2,100 counters, 17 KB), so a
percentile is within 0.5 % of the exact sample percentile (for samples in that range); count,
mean, min and max are exact. Recording is O(1). A day of frames costs the same memory as a second.
"""
from __future__ import annotations

import math

import numpy as np

LOW_MS = 1e-3  # values below land in the first bin
HIGH_MS = 1e6  # values above land in the last bin
GROWTH = 1.01  # each bin is 1 % wider than the one before

_LOG_GROWTH = math.log(GROWTH)
N_BINS = int(math.ceil(math.log(HIGH_MS / LOW_MS) / _LOG_GROWTH)) + 1


class LatencyHistogram:
    """Milliseconds in; out the key schema of `models.metrics.percentiles` (``p50_ms``, ``p95_ms``,
    ``p99_ms``, ``mean_ms``, ``min_ms``, ``n``). Not thread-safe by itself."""

    __slots__ = ("counts", "n", "total", "min", "max")

    def __init__(self) -> None:
        self.counts = np.zeros(N_BINS, dtype=np.int64)
        self.n = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    def __len__(self) -> int:
        return self.n

    def add(self, ms: float) -> None:
        ms = float(ms)
        if not math.isfinite(ms):
            return
        self.counts[_bin(ms)] += 1
        self.n += 1
        self.total += ms
        self.min = min(self.min, ms)
        self.max = max(self.max, ms)

    def percentile(self, q: float) -> float:
        """The q-th percentile (0–100): the centre of the bin holding it, clamped to [min, max]."""
        if self.n == 0:
            return 0.0
        rank = max(1, int(math.ceil(q / 100.0 * self.n)))
        i = int(np.searchsorted(np.cumsum(self.counts), rank))
        centre = LOW_MS * GROWTH ** (i - 0.5) if i > 0 else LOW_MS
        return min(max(centre, self.min), self.max)

    def summary(self) -> dict[str, float]:
        if self.n == 0:
            return {"p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0, "mean_ms": 0.0, "min_ms": 0.0, "n": 0}
        return {"p50_ms": round(self.percentile(50), 3), "p95_ms": round(self.percentile(95), 3),
                "p99_ms": round(self.percentile(99), 3), "mean_ms": round(self.total / self.n, 3),
                "min_ms": round(self.min, 3), "n": self.n}


def _bin(ms: float) -> int:
    if ms <= LOW_MS:
        return 0
    return min(N_BINS - 1, 1 + int(math.log(ms / LOW_MS) / _LOG_GROWTH))

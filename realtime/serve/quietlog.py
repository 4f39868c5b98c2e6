"""Log lines that an attacker can trigger at will (refusals, event-loop errors), at most one per kind per
interval: the next line says how many were left out. A flood costs the log a line every few seconds,
never a line (or a traceback) per attempt."""
from __future__ import annotations

import logging
import threading
import time
from typing import Any


class Throttle:
    """``throttle.warning(logger, kind, msg, *args)``: logged unless a line of the same `kind` was logged
    through this throttle less than `interval_s` ago (thread-safe). One per server."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}
        self._lock = threading.Lock()

    def log(self, logger: logging.Logger, level: int, kind: str, msg: str, *args: Any) -> bool:
        """Log (True) or count as left out (False)."""
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(kind, -float("inf")) < self.interval_s:
                self._skipped[kind] = self._skipped.get(kind, 0) + 1
                return False
            self._last[kind] = now
            skipped = self._skipped.pop(kind, 0)
        if skipped:
            msg += f" ({skipped} more like it in the last {self.interval_s:g} s)"
        logger.log(level, msg, *args)
        return True

    def warning(self, logger: logging.Logger, kind: str, msg: str, *args: Any) -> bool:
        return self.log(logger, logging.WARNING, kind, msg, *args)

    def error(self, logger: logging.Logger, kind: str, msg: str, *args: Any) -> bool:
        return self.log(logger, logging.ERROR, kind, msg, *args)

"""One connection's state: its own backend instance (temporal cache, style), settings and stats.

Two tabs never share a `Session`, so they never see each other's frames or temporal state.
`Session.process` is synchronous (it runs in a worker thread) and serialized per session.
"""
from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from realtime.backends.base import Backend
from realtime.budget import BUDGET_PRESETS, Choice
from realtime.config import BackendConfig
from realtime.driver import FrameDriver
from genreal_errors import UserError
from realtime.frame import pack_side_by_side, split_side_by_side
from models.metrics import percentiles

_WINDOW = 600  # latency samples kept per session (the last ~20 s at 30 fps)
_ids = itertools.count(1)


def offered_steps(backend: Any) -> list[int]:
    """The refine steps K a client may pick for this backend: 1 to the model's useful steps
    (`ModelInfo.offered_steps`); none for backends without refine steps (the teacher, identity)."""
    info = getattr(backend, "info", None)
    return list(range(1, info.offered_steps + 1)) if info is not None else []


@dataclass(frozen=True)
class Settings:
    """What a page may change at run time (a `config` control message)."""

    style: Optional[str] = None  # None = the backend's default
    strength: float = 1.0  # 0 = the input, 1 = fully restyled (a blend of the two images)
    steps: Optional[int] = None  # refine steps K (our model); None = the model's default
    temporal: bool = True
    budget: Optional[str] = None  # a --budget-ms preset name, or None (no budget)

    def updated(self, msg: dict[str, Any]) -> "Settings":
        """These settings with the keys of `msg` applied. Raises `UserError` for a bad value."""
        changes: dict[str, Any] = {}
        if "style" in msg:
            if not isinstance(msg["style"], str) or not msg["style"]:
                raise UserError("style must be a non-empty string")
            changes["style"] = msg["style"]
        if "strength" in msg:
            s = msg["strength"]
            if not isinstance(s, (int, float)) or isinstance(s, bool) or not 0.0 <= s <= 1.0:
                raise UserError(f"strength must be a number from 0 to 1, got {s!r}")
            changes["strength"] = float(s)
        if "steps" in msg:
            k = msg["steps"]
            if k is not None and (not isinstance(k, int) or isinstance(k, bool)):
                raise UserError(f"steps must be a whole number or null, got {k!r}")  # its range: the model's
            changes["steps"] = k
        if "temporal" in msg:
            if not isinstance(msg["temporal"], bool):
                raise UserError("temporal must be true or false")
            changes["temporal"] = msg["temporal"]
        if "budget" in msg:
            b = msg["budget"]
            if b not in (None, "off") and b not in BUDGET_PRESETS:
                raise UserError(f"budget must be off or one of {', '.join(BUDGET_PRESETS)}, got {b!r}")
            changes["budget"] = None if b in (None, "off") else b
        return dataclasses.replace(self, **changes)


class Session:
    """A connected page: `process` restyles its frames with its own backend."""

    def __init__(self, transport: str, backend: Backend, peer: str = "") -> None:
        self.id = next(_ids)
        self.transport = transport
        self.peer = peer
        self.backend = backend
        self.settings = Settings(style=backend.style, temporal=backend.temporal)
        self.frames_in = 0
        self.frames_out = 0
        self.dropped = 0
        self.started = time.time()
        self._server_ms: list[float] = []
        self._page_rtt_ms: list[float] = []
        self._driver = FrameDriver(backend)  # the frame path `genreal run` uses too
        self._lock = threading.Lock()

    # -- settings -----------------------------------------------------------------------
    def configure(self, msg: dict[str, Any]) -> Settings:
        """Apply a page's `config` message. Raises `UserError` (the page is told, not closed)."""
        with self._lock:
            new = self.settings.updated(msg)
            old = self.settings
            info = getattr(self.backend, "info", None)  # a model's refine steps; other backends have none
            if new.steps is not None and info is not None:
                info.check_steps(new.steps, option="steps")
            if new.style != old.style and new.style is not None:
                self.backend.set_style(new.style)  # raises UserError for an unknown style
            if new.temporal != old.temporal:
                self.backend.set_temporal(new.temporal)
            if new.budget != old.budget:
                self._driver.set_budget(None if new.budget is None else BUDGET_PRESETS[new.budget])
            self._driver.set_strength(new.strength)
            if new.steps != old.steps or new.budget != old.budget:
                self.backend.apply_choice(Choice(steps=new.steps or self.backend.budget_steps()))
            self.settings = new
            return new

    # -- frames -------------------------------------------------------------------------
    def process(self, image: np.ndarray, stereo: bool = False) -> np.ndarray:
        """Restyle one frame (a side-by-side pair when `stereo`: both eyes in one backend call,
        so they share one temporal decision). Returns an image of the same size."""
        with self._lock:
            images = list(split_side_by_side(image)) if stereo else [image]
            out = self._driver.process(images).images
            return pack_side_by_side(*out) if stereo else out[0]

    def record(self, server_ms: float) -> None:
        self.frames_out += 1
        self._server_ms.append(server_ms)
        del self._server_ms[:-_WINDOW]

    def record_page_rtt(self, ms: Any) -> None:
        """The page's measured round trips (one number or a list); implausible values are ignored."""
        for v in (ms if isinstance(ms, list) else [ms])[:_WINDOW]:
            if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 60_000:
                self._page_rtt_ms.append(float(v))
        del self._page_rtt_ms[:-_WINDOW]

    def stats(self) -> dict[str, Any]:
        """The `/api/stats` entry of this session."""
        st = self.settings
        return {
            "id": self.id, "transport": self.transport, "peer": self.peer,
            "backend": self.backend.name, "device": self.backend.device,
            "style": self.backend.style, "strength": st.strength, "steps": st.steps, "temporal": st.temporal,
            "budget": st.budget, "frames_in": self.frames_in, "frames_out": self.frames_out,
            "dropped": self.dropped, "uptime_s": round(time.time() - self.started, 1),
            "latency": percentiles(self._server_ms),  # the server's receive → send time
            "page_rtt": percentiles(self._page_rtt_ms) if self._page_rtt_ms else None,
        }

    def close(self) -> None:
        self.backend.close()


class Sessions:
    """The connected sessions, with a limit on how many there may be."""

    def __init__(self, make_backend: Callable[[], Backend], max_clients: int) -> None:
        self.make_backend = make_backend
        self.max_clients = max_clients
        self._sessions: dict[int, Session] = {}
        self.ended: list[dict[str, Any]] = []  # final stats of sessions that closed (the last 100)
        self._pending = 0
        self._lock = threading.Lock()

    def reserve(self) -> bool:
        """Claim a client slot before building a backend; False when the server is full."""
        with self._lock:
            if len(self._sessions) + self._pending >= self.max_clients:
                return False
            self._pending += 1
            return True

    def release(self) -> None:
        """Give back a reserved slot that will not be opened (the client left before its handshake)."""
        with self._lock:
            self._pending -= 1

    def open(self, transport: str, peer: str) -> Session:
        """Build a session for a reserved slot (blocking: loads a backend)."""
        try:
            session = self.new_session(transport, peer)
        finally:
            with self._lock:
                self._pending -= 1
        with self._lock:
            self._sessions[session.id] = session
        return session

    def new_session(self, transport: str, peer: str) -> Session:
        """A session with its own backend here (`cluster.ClusterSessions`: in a Ray actor)."""
        return Session(transport, self.make_backend(), peer)

    def close(self, session: Session) -> None:
        with self._lock:
            if self._sessions.pop(session.id, None) is not None:
                self.ended = [*self.ended[-99:], session.stats()]
        session.close()

    def stats(self) -> list[dict[str, Any]]:
        with self._lock:
            sessions = list(self._sessions.values())
        return [s.stats() for s in sessions]

    def __len__(self) -> int:
        return len(self._sessions)


def backend_factory(config: BackendConfig) -> Callable[[], Backend]:
    """A function that builds a fresh backend for each session."""
    from realtime.backends import create_backend

    return lambda: create_backend(config)

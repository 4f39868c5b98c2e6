"""`genreal serve --cluster`: each camera session's backend in a Ray actor (the `cluster` extra).

The aiohttp front end keeps the connections; a `RemoteSession` stands in for the in-process `Session`
and relays each frame, still encoded (the page's GRF1 message as it came; WebRTC frames as JPEG), to
its `SessionWorker` actor, which holds an ordinary in-process `Session` (backend, temporal state,
settings) and answers with the encoded reply. The transports keep latest-wins and one frame in flight
per session, so the relay never queues.

Faults: a call that finds the actor dead (its worker or node lost) or that does not answer within
``--session-timeout-s`` gets the session a new actor, with the page's settings replayed and a fresh
temporal state; the next reply's header carries ``notice`` ("restarted on another worker") for the
page to show. Other sessions never wait on it. A cluster with no room refuses a new session with
`NoFreeWorker` ("no free worker: N sessions, M CPUs free") instead of a hang.

Ray is imported only inside the functions here, so nothing imports it without ``--cluster``.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from genreal_errors import UserError
from models.metrics import percentiles
from realtime.config import BackendConfig
from realtime.serve.protocol import FrameError, Limits, decode_frame, encode_frame, pack, parse_header
from realtime.serve.session import Session, Sessions, Settings, backend_factory

log = logging.getLogger(__name__)

HOW_TO_GET = 'genreal serve --cluster needs Ray: pip install "generative-reality[cluster]"'
NOTICE = "restarted on another worker"
_WINDOW = 600  # relay / frame time samples kept per session
_AUTO_OBJECT_STORE = 256 << 20  # --cluster auto: frames are small and travel inline, so a small store will do
#: how long Ray's raylet waits for a worker to exit on its own before it kills it (its own default is 5 s here);
#: until then a frozen session's CPU stays taken, so its replacement waits. `--cluster auto` sets it; for a cluster
#: of your own, start each node with RAY_kill_worker_timeout_milliseconds=500 in its environment.
KILL_GRACE_MS = 500
#: Ray runs its workers at nice 15, so on a shared machine a session's model gets the CPU last (half the frame
#: rate measured here); a session actor serves a live viewer, so `--cluster auto` runs workers at nice 0.
#: For a cluster of your own: RAY_worker_niceness=0 in each node's environment.
SYSTEM_CONFIG = {"kill_worker_timeout_milliseconds": KILL_GRACE_MS, "worker_niceness": 0}
_RESTART_WAIT_S = 6.0  # on top of --session-timeout-s: a replacement waits for Ray to free the frozen one's CPUs
_ADDRESS = re.compile(r"^(ray://)?(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):(\d{1,5})$")


class NoFreeWorker(UserError):
    """The cluster has no room for one more session (the page gets this as its close reason)."""


@dataclass(frozen=True)
class ClusterConfig:
    """Where the sessions' actors run and what each one asks of the cluster."""

    address: str = "auto"  # auto (a local Ray started here) | ray://HOST:PORT (Ray Client) | HOST:PORT (the GCS)
    session_cpus: float = 1.0
    session_gpus: float = 0.0
    session_timeout_s: float = 5.0  # an actor silent this long on a call is replaced
    spares: int = 1  # actors started ahead of need: a new or restarted session takes one that is ready

    def __post_init__(self) -> None:
        if self.address != "auto" and not _ADDRESS.match(self.address):
            raise UserError(f"bad --cluster {self.address!r}: use auto, ray://HOST:PORT or HOST:PORT")
        if self.address != "auto" and not 1 <= int(self.address.rsplit(":", 1)[1]) <= 65535:
            raise UserError(f"bad --cluster {self.address!r}: the port must be 1-65535")
        if not 0 <= self.session_cpus <= 1024:
            raise UserError(f"bad --session-cpus {self.session_cpus:g}: use 0 to 1024 (fractions allowed)")
        if not 0 <= self.session_gpus <= 64:
            raise UserError(f"bad --session-gpus {self.session_gpus:g}: use 0 to 64 (fractions share a GPU)")
        if not 0.1 <= self.session_timeout_s <= 3600:
            raise UserError(f"bad --session-timeout-s {self.session_timeout_s:g}: use 0.1 to 3600 seconds")
        if not 0 <= self.spares <= 64:
            raise UserError(f"bad --spare-sessions {self.spares}: use 0 to 64")


def connect(config: ClusterConfig) -> bool:
    """Join (or start, for ``auto``) the Ray cluster; True when this process started it."""
    if importlib.util.find_spec("ray") is None:
        raise UserError(HOW_TO_GET)
    import ray

    if ray.is_initialized():
        return False
    try:
        if config.address == "auto":
            ray.init(address="local", include_dashboard=False, object_store_memory=_AUTO_OBJECT_STORE,
                     logging_level=logging.WARNING, _system_config=SYSTEM_CONFIG)
            return True
        ray.init(address=config.address, logging_level=logging.WARNING)
    except (ConnectionError, TimeoutError, ValueError, RuntimeError) as exc:
        raise UserError(f"cannot join the Ray cluster at {config.address}: {str(exc).splitlines()[0]}; "
                        f"start it with `ray start --head` or use --cluster auto") from None
    return False


class SessionWorker:
    """The actor: one in-process `Session` and the frame codec around it. Built by Ray on a worker."""

    def __init__(self, backend: BackendConfig, transport: str, limits: Limits) -> None:
        from realtime.backends import create_backend

        self.session = Session(transport, create_backend(backend))
        self.limits = limits

    def info(self) -> dict[str, Any]:
        import ray

        b = self.session.backend
        return {"node_ip": ray.util.get_node_ip_address(), "node_id": ray.get_runtime_context().get_node_id(),
                "pid": os.getpid(), "name": b.name, "device": b.device, "styles": list(b.styles()),
                "style": b.style, "temporal": b.temporal}

    def configure(self, msg: dict[str, Any]) -> tuple[Optional[str], dict[str, Any]]:
        """(error or None, the settings now and the backend's style)."""
        try:
            self.session.configure(msg)
            error = None
        except UserError as exc:
            error = str(exc)
        return error, {"settings": dataclasses.asdict(self.session.settings), "style": self.session.backend.style}

    def restyle(self, data: bytes) -> tuple[Optional[str], bytes, float]:
        """A page's GRF1 message → (error or None, the GRF1 reply, this worker's ms)."""
        t0 = time.perf_counter()
        try:
            up = decode_frame(data, self.limits)
        except FrameError as exc:
            return str(exc), b"", 0.0
        out = self.session.process(up.image, stereo=up.stereo)
        reply = encode_frame(up.header, out, up.fmt, 0.0)
        return None, reply, (time.perf_counter() - t0) * 1e3


class _BackendView:
    """What the transports read of a session's backend (name, device, styles, style), as its actor said."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.name: str = info["name"]
        self.device: str = info["device"]
        self.style: Optional[str] = info["style"]
        self.temporal: bool = info["temporal"]
        self._styles: list[str] = info["styles"]

    def styles(self) -> list[str]:
        return self._styles

    def close(self) -> None:
        pass


class RemoteSession(Session):
    """A session whose backend is a Ray actor: frames and settings are relayed to it, faults mended here."""

    def __init__(self, transport: str, peer: str, pool: "ClusterSessions") -> None:
        self._pool = pool
        self.transport = transport
        self._call_lock = threading.Lock()
        self._actor: Any = None
        self.node = self.node_id = ""
        self.pid = 0
        self.actor_state = "starting"
        self.restarts = 0
        self.restart_s: list[float] = []  # failure seen → the new actor answering, each restart
        self._notice: Optional[str] = None
        self._relay_ms: list[float] = []
        self._frame_ms: list[float] = []
        info = self._start()
        super().__init__(transport, _BackendView(info), peer)  # type: ignore[arg-type]

    # -- the actor ------------------------------------------------------------------------
    def _start(self, extra_wait_s: float = 0.0) -> dict[str, Any]:
        """A spare actor, or a new one, answering (raises `NoFreeWorker` when the cluster has no room for it)."""
        import ray

        actor, ready = self._pool.take() or self._pool.spawn()
        try:
            try:
                info = ray.get(ready, timeout=self._pool.cluster.session_timeout_s + extra_wait_s)
            except ray.exceptions.RayActorError:  # a spare lost with its worker or node: one more try
                actor, ready = self._pool.spawn()
                info = ray.get(ready, timeout=self._pool.cluster.session_timeout_s + extra_wait_s)
        except ray.exceptions.GetTimeoutError:
            ray.kill(actor)
            raise self._pool.no_room() from None
        except ray.exceptions.RayTaskError as exc:  # the backend did not build there (a bad model, no GPU)
            ray.kill(actor)
            raise UserError(f"the session's worker could not start its backend: {str(exc).splitlines()[-1]}") from None
        self._actor, self.node, self.pid, self.actor_state = actor, info["node_ip"], info["pid"], "alive"
        self.node_id = info["node_id"]
        return info

    def _restart(self, why: str) -> None:
        import ray

        t0 = time.perf_counter()  # the failure is seen now
        self.actor_state = "restarting"
        log.warning("session %d: its worker %s (pid %d on %s); starting a new one", self.id, why, self.pid, self.node)
        ray.kill(self._actor, no_restart=True)
        self._start(extra_wait_s=_RESTART_WAIT_S)
        replay = {k: v for k, v in dataclasses.asdict(self.settings).items() if v is not None}
        error, _ = self._call_once("configure", {"type": "config", **replay})
        if error:  # pragma: no cover - these settings were accepted by the last actor
            log.warning("session %d: settings not restored: %s", self.id, error)
        self.restarts += 1
        self.restart_s = [*self.restart_s[-99:], time.perf_counter() - t0]
        self._notice = NOTICE if why == "was lost" else f"{NOTICE} (the last one {why})"

    def _call_once(self, method: str, *args: Any) -> Any:
        import ray

        return ray.get(getattr(self._actor, method).remote(*args), timeout=self._pool.cluster.session_timeout_s)

    def _call(self, method: str, *args: Any) -> Any:
        """One call on this session's actor; a lost or silent actor is replaced and the call made again."""
        import ray

        for attempt in range(2):
            try:
                return self._call_once(method, *args)
            except ray.exceptions.GetTimeoutError:
                why = f"did not answer for {self._pool.cluster.session_timeout_s:g} s"
            except ray.exceptions.RayActorError:
                why = "was lost"
            if attempt:
                self.actor_state = "lost"
                raise RuntimeError(f"the session's worker {why} twice in a row")
            self._restart(why)
        raise AssertionError("unreachable")

    # -- what the transports call -----------------------------------------------------------
    def configure(self, msg: dict[str, Any]) -> Settings:
        """Relayed: the actor's `Session.configure` checks and applies it (its error comes back as `UserError`)."""
        with self._call_lock:
            error, now = self._call("configure", msg)
            self.settings = Settings(**now["settings"])
            self.backend.style = now["style"]
            if error:
                raise UserError(error)
            return self.settings

    def relay_message(self, data: bytes, t_in: int) -> bytes:
        """The WebSocket path: the page's GRF1 message to the actor as it came; its reply to the page."""
        with self._call_lock:
            t0 = time.perf_counter()
            error, reply, frame_ms = self._call("restyle", data)
            if error:
                raise FrameError(error)
            self._timed(t0, frame_ms)
            header, payload = parse_header(reply, self._pool.limits)
            header["server_ms"] = round((time.monotonic_ns() - t_in) / 1e6, 3)
            if self._notice:
                header["notice"], self._notice = self._notice, None
            self.record(header["server_ms"])
            return pack(header, bytes(payload))

    def process(self, image: np.ndarray, stereo: bool = False) -> np.ndarray:
        """The WebRTC path (a decoded frame): relayed as a GRF1 JPEG message, like a page's."""
        with self._call_lock:
            t0 = time.perf_counter()
            up = encode_frame({"stereo": True} if stereo else {}, image, "jpeg", 0.0, quality=90)
            error, reply, frame_ms = self._call("restyle", up)
            if error:  # pragma: no cover - we encoded it
                raise FrameError(error)
            self._timed(t0, frame_ms)
            self._notice = None  # WebRTC frames carry no header: the restart shows in the session's stats
            return decode_frame(reply, self._pool.limits).image

    def _timed(self, t0: float, frame_ms: float) -> None:
        self._frame_ms.append(frame_ms)
        self._relay_ms.append((time.perf_counter() - t0) * 1e3 - frame_ms)
        del self._frame_ms[:-_WINDOW], self._relay_ms[:-_WINDOW]

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "node": self.node, "node_id": self.node_id, "pid": self.pid,
                "actor": self.actor_state, "restarts": self.restarts,
                "restart_s": round(self.restart_s[-1], 3) if self.restart_s else None,
                "relay_ms": percentiles(self._relay_ms) if self._relay_ms else None,
                "frame_ms": percentiles(self._frame_ms) if self._frame_ms else None}

    def close(self) -> None:
        import ray

        self.actor_state = "closed"
        try:
            ray.kill(self._actor, no_restart=True)
        except Exception:  # pragma: no cover - Ray already gone (shutting down)
            log.debug("session %d: could not kill its actor", self.id, exc_info=True)


class ClusterSessions(Sessions):
    """`Sessions` whose sessions live in Ray actors."""

    def __init__(self, backend: BackendConfig, max_clients: int, cluster: ClusterConfig, limits: Limits) -> None:
        super().__init__(backend_factory(backend), max_clients)  # the front end's own builds: the styles probe
        self.backend_config, self.cluster, self.limits = backend, cluster, limits
        self.started_ray = connect(cluster)
        import ray

        self.actor_class = ray.remote(SessionWorker).options(
            num_cpus=cluster.session_cpus, num_gpus=cluster.session_gpus, max_restarts=0)
        self._spares: list[tuple[Any, Any]] = []  # (actor, its info() ref): started ahead, Ray places them
        self._spare_lock = threading.Lock()
        with self._spare_lock:
            self._top_up()

    def new_session(self, transport: str, peer: str) -> Session:
        if not self.spare_ready(wait_s=min(2.0, self.cluster.session_timeout_s)):  # it may be starting up
            free = self.free()
            if (free.get("CPU", 0.0) < self.cluster.session_cpus - 1e-9
                    or free.get("GPU", 0.0) < self.cluster.session_gpus - 1e-9):
                raise self.no_room(free)
        return RemoteSession(transport, peer, self)

    # -- spare actors: a session that needs one takes it, and another is started in its place --------
    def spawn(self) -> tuple[Any, Any]:
        """A new actor and the ref of its `info()` (ready once it has built its backend)."""
        actor = self.actor_class.remote(self.backend_config, "websocket", self.limits)
        return actor, actor.info.remote()

    def take(self) -> Optional[tuple[Any, Any]]:
        """The oldest spare (ready or still starting: it is the one Ray gives the next free CPUs), or None."""
        with self._spare_lock:
            got = self._spares.pop(0) if self._spares else None
            self._top_up()
        return got

    def spare_ready(self, wait_s: float = 0.0) -> bool:
        """Whether the next spare has built its backend (waiting up to `wait_s` for it)."""
        import ray

        with self._spare_lock:
            ref = self._spares[0][1] if self._spares else None
        return ref is not None and bool(ray.wait([ref], timeout=wait_s)[0])

    def _top_up(self) -> None:
        while len(self._spares) < self.cluster.spares:
            self._spares.append(self.spawn())

    def no_room(self, free: Optional[dict[str, float]] = None) -> NoFreeWorker:
        free = self.free() if free is None else free
        gpus = f", {free.get('GPU', 0.0):g} GPUs free" if self.cluster.session_gpus else ""
        return NoFreeWorker(f"no free worker: {len(self)} sessions, {free.get('CPU', 0.0):g} CPUs free{gpus} "
                            f"(each session asks for {self.cluster.session_cpus:g} CPU{'' if self.cluster.session_cpus == 1 else 's'})")

    @staticmethod
    def free() -> dict[str, float]:
        import ray

        return ray.available_resources()

    def cluster_stats(self) -> dict[str, Any]:
        """The `/api/stats` ``cluster`` entry: the cluster's free and total resources, alive nodes."""
        import ray

        free, total = ray.available_resources(), ray.cluster_resources()

        def pick(r: dict[str, float]) -> dict[str, float]:
            out = {k: round(r.get(k, 0.0), 3) for k in ("CPU", "GPU") if k in total}
            out["object_store_mb"] = round(r.get("object_store_memory", 0.0) / (1 << 20), 1)
            return out

        return {"address": self.cluster.address, "nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
                "free": pick(free), "total": pick(total),
                "session_cpus": self.cluster.session_cpus, "session_gpus": self.cluster.session_gpus,
                "spares": len(self._spares), "spare_ready": self.spare_ready()}

    def shutdown(self) -> None:
        """Stop the local Ray of ``--cluster auto`` (a joined cluster is left running)."""
        import ray

        with self._spare_lock:
            spares, self._spares = self._spares, []
        for actor, _ in spares:
            ray.kill(actor, no_restart=True)
        if self.started_ray and ray.is_initialized():
            ray.shutdown()

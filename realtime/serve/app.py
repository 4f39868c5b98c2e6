"""The aiohttp application: routes, the access middleware, and starting / stopping the server.

Routes (every one behind the access check): ``/`` preview page, ``/xr`` headset page,
``/static/*`` their scripts, ``/ws`` WebSocket frames, ``/api/offer`` WebRTC, ``/api/styles``,
``/api/stats``, ``/api/info``.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional

from aiohttp import web

from realtime.budget import BUDGET_PRESETS
from realtime.config import BackendConfig
from genreal_errors import UserError
from realtime.serve import security
from realtime.serve.broadcast import Broadcast
from realtime.serve.cluster import ClusterConfig, ClusterSessions
from realtime.serve.protocol import Limits
from realtime.serve.keys import STATE_KEY
from realtime.serve.quietlog import Throttle
from realtime.serve.session import Sessions, backend_factory, offered_steps

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
_PAGES = {"/": "index.html", "/xr": "xr.html"}


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    tls: bool = False
    cert: Optional[Path] = None
    key: Optional[Path] = None
    token: Optional[str] = None  # None = no token (loopback only)
    backend: BackendConfig = field(default_factory=BackendConfig)
    limits: Limits = field(default_factory=Limits)
    camera_sessions: bool = True  # pages may send their own camera (False: watch the server source only)
    webrtc_loopback: bool = True  # offer a 127.0.0.1 ICE candidate when bound to loopback
    cluster: Optional[ClusterConfig] = None  # --cluster: each camera session's backend in a Ray actor

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise UserError(f"bad --port {self.port}: use 1-65535 (0 picks a free one)")
        if (self.cert is None) != (self.key is None):
            raise UserError("--cert and --key go together: give both, or --tls alone for a self-signed pair")
        security.check_exposure(self.host, self.tls or self.cert is not None, self.token is not None)

    @property
    def secure(self) -> bool:
        return self.tls or self.cert is not None


class State:
    """What the handlers share (stored as ``app[STATE_KEY]``)."""

    def __init__(self, config: ServeConfig, broadcast: Broadcast) -> None:
        self.config = config
        self.limits = config.limits
        self.sessions = Sessions(backend_factory(config.backend), config.limits.max_clients) if config.cluster is None \
            else ClusterSessions(config.backend, config.limits.max_clients, config.cluster, config.limits)
        self.executor = ThreadPoolExecutor(max_workers=config.limits.max_clients + 2, thread_name_prefix="serve")
        self.broadcast = broadcast
        self.peers: set[Any] = set()  # WebRTC peer connections
        lim = config.limits
        self.offers = security.PerAddress(lim.offers_per_minute / 60.0, lim.offers_per_minute)
        self.all_offers = security.TokenBucket(lim.all_offers_per_minute / 60.0,
                                               min(lim.all_offer_burst, lim.all_offers_per_minute))
        self.session_opens = security.PerAddress(lim.sessions_per_minute / 60.0, lim.session_burst)
        self.all_session_opens = security.TokenBucket(lim.all_sessions_per_minute / 60.0, lim.all_session_burst)
        self.first_frames = threading.Lock()  # a session's first frame builds its backend's graphs: one at a time
        self.refusals = Throttle()  # refusal lines (an attacker triggers them at will): one per kind per interval
        self.sockets: set[web.WebSocketResponse] = set()  # open camera WebSockets
        self.styles: Optional[list[str]] = None
        self.steps: list[int] = []  # the refine steps the page offers (the model's useful ones)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
    state: State = request.app[STATE_KEY]
    cfg = state.config
    if not security.host_ok(cfg.host, request.headers.get("Host", "")):
        raise web.HTTPForbidden(text="this server answers loopback names only")
    if not security.token_ok(cfg.token, request.query, request.headers, request.cookies):
        raise web.HTTPUnauthorized(text="missing or wrong access token: open the URL genreal serve printed")
    websocket = request.headers.get("Upgrade", "").lower() == "websocket" or request.path == "/ws"
    if (websocket or request.method != "GET") and not security.origin_ok(
            request.headers.get("Origin"), request.headers.get("Host", ""), cfg.secure):
        state.refusals.warning(log, "origin", "refused a %s from origin %s",
                               "WebSocket" if websocket else request.method, request.headers.get("Origin"))
        raise web.HTTPForbidden(text="request from another origin")
    response = await handler(request)
    if cfg.token is not None and request.query.get("token") == cfg.token and not response.prepared:
        response.set_cookie(security.COOKIE, cfg.token, httponly=True, samesite="Strict", secure=cfg.secure)
    return response


def _page(name: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})
    return handler


async def _styles(request: web.Request) -> web.Response:
    state: State = request.app[STATE_KEY]
    if state.styles is None:
        loop = asyncio.get_running_loop()

        def probe() -> tuple[list[str], list[int]]:
            backend = state.sessions.make_backend()
            try:
                return [*backend.styles()], offered_steps(backend)
            finally:
                backend.close()

        state.styles, state.steps = await loop.run_in_executor(state.executor, probe)
    return web.json_response({"styles": state.styles, "steps": state.steps, "backend": state.config.backend.name})


async def _stats(request: web.Request) -> web.Response:
    state: State = request.app[STATE_KEY]
    b = state.broadcast
    cluster = None
    if isinstance(state.sessions, ClusterSessions):  # --cluster: free resources (a call to Ray, off the loop)
        cluster = await asyncio.get_running_loop().run_in_executor(state.executor, state.sessions.cluster_stats)
    return web.json_response({
        "sessions": state.sessions.stats(), "clients": len(state.sessions),
        "max_clients": state.sessions.max_clients,
        "source": {"active": b.active, "spec": b.label, "frames": b.frames, "watchers": b.watchers},
        "cluster": cluster,
    })


async def _info(request: web.Request) -> web.Response:
    state: State = request.app[STATE_KEY]
    from realtime.serve.transports import webrtc

    return web.json_response({"camera": state.config.camera_sessions, "source": state.broadcast.active,
                              "source_spec": state.broadcast.label,
                              "webrtc": webrtc.available(), "webrtc_help": webrtc.HOW_TO_GET,
                              "budgets": ["off", *BUDGET_PRESETS]})


def build_app(config: ServeConfig, broadcast: Optional[Broadcast] = None) -> web.Application:
    from realtime.serve.transports import webrtc, ws

    app = web.Application(middlewares=[access], client_max_size=config.limits.max_bytes)
    state = State(config, broadcast or Broadcast())
    app[STATE_KEY] = state
    for path, name in _PAGES.items():
        app.router.add_get(path, _page(name))
    app.router.add_static("/static/", STATIC, show_index=False)
    app.router.add_get("/ws", ws.websocket_handler)
    app.router.add_post("/api/offer", webrtc.offer_handler)
    app.router.add_get("/api/styles", _styles)
    app.router.add_get("/api/stats", _stats)
    app.router.add_get("/api/info", _info)

    async def on_startup(app: web.Application) -> None:
        state.broadcast.loop = asyncio.get_running_loop()

    async def on_shutdown(app: web.Application) -> None:
        await webrtc.close_all(state)
        await state.broadcast.close_all()
        await asyncio.gather(*(ws.close(code=1001, message=b"server stopping") for ws in list(state.sockets)),
                             return_exceptions=True)

    async def on_cleanup(app: web.Application) -> None:
        state.executor.shutdown(wait=False, cancel_futures=True)
        if isinstance(state.sessions, ClusterSessions):
            state.sessions.shutdown()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


def ssl_context(config: ServeConfig) -> Optional[ssl.SSLContext]:
    if not config.secure:
        return None
    if config.cert is not None and config.key is not None:
        cert, key = config.cert, config.key
    else:
        cert, key = security.ensure_certificate(security.default_cert_dir(), security.advertised_host(config.host))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise UserError(f"cannot use the TLS certificate {cert} / key {key}: {exc}") from None
    return ctx


def page_url(config: ServeConfig, port: int, path: str = "/") -> str:
    host = "localhost" if security.is_loopback(config.host) else security.advertised_host(config.host)
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    query = f"?token={config.token}" if config.token else ""
    return f"{'https' if config.secure else 'http'}://{host}:{port}{path}{query}"


class QuietLoopErrors:
    """An event-loop exception handler that logs one line per kind of error per `interval_s` (with how
    many were left out), never a traceback: out of file descriptors, asyncio's accept loop would
    otherwise log a traceback for every connection it cannot take."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self._throttle = Throttle(interval_s)

    @property
    def interval_s(self) -> float:
        return self._throttle.interval_s

    @interval_s.setter
    def interval_s(self, value: float) -> None:
        self._throttle.interval_s = value

    def __call__(self, loop: Optional[asyncio.AbstractEventLoop], context: dict[str, Any]) -> None:
        exc = context.get("exception")
        kind = f"{context.get('message', 'event loop error')}" + (f": {type(exc).__name__}" if exc else "")
        self._throttle.error(log, kind, "%s%s", kind, f" ({exc})" if exc else "")


class ServerThread:
    """The server on its own event loop in a background thread (`--sink web`, tests, benchmarks)."""

    def __init__(self, config: ServeConfig, broadcast: Optional[Broadcast] = None) -> None:
        self.config = config
        self.app = build_app(config, broadcast)
        self.port: int = config.port
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(QuietLoopErrors())
        self._runner: Optional[web.AppRunner] = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="genreal-serve", daemon=True)

    @property
    def state(self) -> State:
        return self.app[STATE_KEY]

    def start(self) -> "ServerThread":
        ctx = ssl_context(self.config)

        async def up() -> int:
            self._runner = web.AppRunner(self.app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.config.host, self.config.port, ssl_context=ctx)
            await site.start()
            return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        self._thread.start()
        try:
            self.port = asyncio.run_coroutine_threadsafe(up(), self._loop).result(timeout=30)
        except OSError as exc:
            self.stop()
            raise UserError(f"cannot listen on {self.config.host}:{self.config.port}: {exc.strerror}; "
                            f"pick another --port") from None
        return self

    def url(self, path: str = "/") -> str:
        return page_url(self.config, self.port, path)

    def ws_url(self, query: str = "") -> str:
        """The WebSocket URL (``query`` like ``mode=watch``), with the token when there is one."""
        url = page_url(self.config, self.port, "/ws").replace("http", "ws", 1)
        return f"{url}{'&' if '?' in url else '?'}{query}" if query else url

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
            self._runner = None
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

"""The WebSocket transport: binary GRF1 frames up and down (`realtime.serve.protocol`), JSON text
messages for control. Latest frame wins: a frame that arrives while one is being restyled replaces
any frame still waiting (counted as dropped), so the server never works on stale frames.

A client that breaks the protocol (bad JSON, an oversized, undecodable or impossibly sized frame,
a flood of messages) is closed with code 1008 and the reason, and one log line; nobody else is
touched. A bad *setting* (an unknown style) is answered with an ``error`` message instead.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Optional

from aiohttp import WSCloseCode, WSMsgType, web

from genreal_errors import UserError
from realtime.serve.cluster import NoFreeWorker, RemoteSession
from realtime.serve.keys import STATE_KEY
from realtime.serve.protocol import FrameError, decode_frame, encode_frame, parse_control, parse_header
from realtime.serve.session import Session

log = logging.getLogger(__name__)


class RateLimit:
    """Messages per second over a sliding one-second window."""

    def __init__(self, max_rate: float) -> None:
        self.max_rate = max_rate
        self._window_start = time.monotonic()
        self._count = 0

    def hit(self) -> bool:
        now = time.monotonic()
        if now - self._window_start >= 1.0:
            self._window_start, self._count = now, 0
        self._count += 1
        return self._count <= self.max_rate


def hello(session: Session) -> dict[str, Any]:
    return {"type": "hello", "session": session.id, "transport": session.transport,
            "backend": session.backend.name, "device": session.backend.device,
            "styles": list(session.backend.styles()), "style": session.backend.style}


async def handle_control(session: Session, msg: dict[str, Any], send: Any) -> None:
    """A page's control message (both transports): config, rtt report, stats request."""
    kind = msg["type"]
    if kind == "config":
        try:
            settings = session.configure(msg)
        except UserError as exc:
            await send({"type": "error", "message": str(exc)})
            return
        await send({"type": "config", "style": session.backend.style, "strength": settings.strength,
                    "steps": settings.steps, "temporal": settings.temporal, "budget": settings.budget})
    elif kind == "rtt":
        session.record_page_rtt(msg.get("ms"))
    elif kind == "stats":
        await send({"type": "stats", **session.stats()})
    else:
        raise FrameError(f"unknown control message type {kind!r}")


class WsClient:
    """One page on a WebSocket: a reader (this coroutine) and a worker task that restyles."""

    def __init__(self, ws: web.WebSocketResponse, session: Session, state: Any) -> None:
        self.ws, self.session, self.state = ws, session, state
        self._pending: Optional[tuple[bytes, int]] = None  # (message, receive time ns)
        self._wake = asyncio.Event()
        self.close_reason: Optional[str] = None

    async def reject(self, reason: str, code: int = WSCloseCode.POLICY_VIOLATION) -> None:
        if self.close_reason is None:
            self.close_reason = reason
            log.warning("session %d (%s) closed: %s", self.session.id, self.session.peer, reason)
        await self.ws.close(code=code, message=reason[:120].encode())

    async def run(self) -> None:
        worker = asyncio.create_task(self._work())
        limits = self.state.limits
        rate = RateLimit(limits.max_rate)
        try:
            await self.ws.send_json(hello(self.session))
            async for msg in self.ws:
                if not rate.hit():
                    await self.reject(f"flood: more than {limits.max_rate:g} messages a second")
                    break
                if msg.type == WSMsgType.BINARY:
                    parse_header(msg.data, limits)  # cheap checks now; the image is decoded by the worker
                    self.session.frames_in += 1
                    if self._pending is not None:
                        self.session.dropped += 1
                    self._pending = (msg.data, time.monotonic_ns())
                    self._wake.set()
                elif msg.type == WSMsgType.TEXT:
                    if len(msg.data) > 65536:
                        raise FrameError("control message over 64 KiB")
                    await handle_control(self.session, parse_control(msg.data), self.ws.send_json)
                elif msg.type == WSMsgType.ERROR:
                    exc = self.ws.exception()
                    await self.reject(f"bad message: {exc}", WSCloseCode.MESSAGE_TOO_BIG)
                    break
        except FrameError as exc:
            await self.reject(str(exc))
        except ConnectionResetError:
            pass
        finally:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.ws.closed:
            await self._wake.wait()
            self._wake.clear()
            if self._pending is None:
                continue
            data, t_in = self._pending
            self._pending = None
            try:
                reply = await loop.run_in_executor(self.state.executor, self._restyle, data, t_in)
            except FrameError as exc:
                await self.reject(str(exc))
                return
            except Exception as exc:  # the backend failed on this client's frame: end this client only
                log.debug("session %d: restyling failed", self.session.id, exc_info=True)
                await self.reject(f"server error: {type(exc).__name__}: {exc}", WSCloseCode.INTERNAL_ERROR)
                return
            if self.ws.closed:
                return
            try:
                await self.ws.send_bytes(reply)
            except ConnectionResetError:
                return

    def _restyle(self, data: bytes, t_in: int) -> bytes:
        if isinstance(self.session, RemoteSession):  # --cluster: the message goes to its Ray actor as it came
            return self.session.relay_message(data, t_in)
        up = decode_frame(data, self.state.limits)
        out = self.session.process(up.image, stereo=up.stereo)
        server_ms = (time.monotonic_ns() - t_in) / 1e6
        reply = encode_frame(up.header, out, up.fmt, server_ms)
        self.session.record((time.monotonic_ns() - t_in) / 1e6)
        return reply


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    """`GET /ws`: a page's camera session (``?mode=watch``: the server-side source instead)."""
    state = request.app[STATE_KEY]
    if request.query.get("mode") == "watch":
        return await state.broadcast.watch(request)
    if not state.sessions.reserve():
        log.warning("refused a client from %s: %d clients is the limit", request.remote, state.sessions.max_clients)
        raise web.HTTPServiceUnavailable(text=f"the server already has {state.sessions.max_clients} clients")
    loop = asyncio.get_running_loop()
    try:
        session = await loop.run_in_executor(state.executor, state.sessions.open, "websocket",
                                             request.remote or "")
    except NoFreeWorker as exc:  # --cluster is full: the page reads this as the socket's close reason
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        log.warning("refused a client from %s: %s", request.remote, exc)
        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=str(exc)[:120].encode())
        return ws
    except UserError as exc:
        raise web.HTTPInternalServerError(text=f"cannot start a backend: {exc}") from None
    # no permessage-deflate: JPEG does not shrink, and deflating raw frames costs more than sending them
    ws = web.WebSocketResponse(max_msg_size=state.limits.max_bytes + 1024, heartbeat=20.0, compress=False)
    state.sockets.add(ws)
    try:
        await ws.prepare(request)
        log.info("session %d: WebSocket from %s", session.id, request.remote)
        await WsClient(ws, session, state).run()
    finally:
        state.sockets.discard(ws)
        state.sessions.close(session)  # quick: drops the backend's sessions
        log.info("session %d ended: %d frames in, %d out, %d dropped", session.id, session.frames_in,
                 session.frames_out, session.dropped)
    return ws

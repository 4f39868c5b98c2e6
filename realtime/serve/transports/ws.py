"""The WebSocket transport: binary GRF1 frames up and down (`realtime.serve.protocol`), JSON text
messages for control. Latest frame wins: a frame that arrives while one is being restyled replaces
any frame still waiting (counted as dropped), so the server never works on stale frames.

A client that breaks the protocol (bad JSON, an oversized, undecodable or impossibly sized frame,
a flood of messages) is closed with code 1008 and a short reason (no paths), and one log line, no
traceback; nobody else is touched. A bad *setting* (an unknown style) is answered with an ``error``
message instead. Nothing is allocated for a request that is not a WebSocket handshake, and a session's
backend is built only after its handshake succeeded.
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
from realtime.serve.protocol import FrameError, decode_frame, encode_frame, parse_control, parse_header, short_reason
from realtime.serve.security import TokenBucket
from realtime.serve.session import Session

log = logging.getLogger(__name__)


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

    async def reject(self, reason: str, code: int = WSCloseCode.POLICY_VIOLATION, detail: str = "") -> None:
        """Close with a short `reason` (what the page sees); the log line also gets `detail`."""
        reason = short_reason(reason)
        if self.close_reason is None:
            self.close_reason = reason
            log.warning("session %d (%s) closed: %s", self.session.id, self.session.peer, detail or reason)
        await self.ws.close(code=code, message=reason.encode())

    async def run(self) -> None:
        worker = asyncio.create_task(self._work())
        limits = self.state.limits
        rate = TokenBucket(limits.max_rate)
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
                    control = parse_control(msg.data)
                    if control["type"] == "bye":
                        await self.ws.close()
                        break
                    await handle_control(self.session, control, self.ws.send_json)
                elif msg.type == WSMsgType.ERROR:
                    exc = self.ws.exception()
                    await self.reject(f"bad message: {exc}", WSCloseCode.MESSAGE_TOO_BIG)
                    break
        except FrameError as exc:
            await self.reject(str(exc))
        except ConnectionResetError:
            pass
        except Exception as exc:  # a bug, not the client's fault: one line, this client only
            log.debug("session %d: control message failed", self.session.id, exc_info=True)
            await self.reject(f"server error: {type(exc).__name__}", WSCloseCode.INTERNAL_ERROR,
                              f"server error: {type(exc).__name__}: {exc}")
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
            except UserError as exc:  # the backend cannot take this frame (e.g. a size no graph covers)
                await self.reject(f"frame refused: {exc}", detail=f"frame refused: {exc}")
                return
            except Exception as exc:  # the backend failed on this client's frame: end this client only
                log.debug("session %d: restyling failed", self.session.id, exc_info=True)
                await self.reject(f"server error: {type(exc).__name__}: {exc}", WSCloseCode.INTERNAL_ERROR,
                                  f"server error: {type(exc).__name__}: {exc}")
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
        out = restyle(self.state, self.session, up.image, up.stereo)
        server_ms = (time.monotonic_ns() - t_in) / 1e6
        reply = encode_frame(up.header, out, up.fmt, server_ms)
        self.session.record((time.monotonic_ns() - t_in) / 1e6)
        return reply


def admit(state: Any, address: str, what: str) -> None:
    """Reserve a slot for a new camera session, or raise 429 (too many new sessions a minute from this
    address, or from all together: each builds a backend) or 503 (the server is full). Nothing is built."""
    lim = state.limits
    if not state.session_opens.hit(address):
        state.refusals.warning(log, "session rate", "refused a %s from %s: more than %g new sessions a minute "
                               "from one address", what, address, lim.sessions_per_minute)
        raise web.HTTPTooManyRequests(text=f"more than {lim.sessions_per_minute:g} new sessions a minute: wait")
    if not state.all_session_opens.hit():
        state.refusals.warning(log, "all session rate", "refused a %s from %s: more than %g new sessions a "
                               "minute", what, address, lim.all_sessions_per_minute)
        raise web.HTTPTooManyRequests(text="the server is taking new sessions slowly: try again in a few seconds")
    if not state.sessions.reserve():
        state.refusals.warning(log, "clients", "refused a %s from %s: %d clients is the limit", what, address,
                               state.sessions.max_clients)
        raise web.HTTPServiceUnavailable(text=f"the server already has {state.sessions.max_clients} clients")


def restyle(state: Any, session: Session, image: Any, stereo: bool = False) -> Any:
    """`session.process`, with a session's first frame (its backend builds its graphs then: CPU and memory
    for a second) one at a time across sessions, so a burst of new sessions cannot starve the others."""
    if session.frames_out:
        return session.process(image, stereo=stereo)
    with state.first_frames:
        return session.process(image, stereo=stereo)


async def open_session(state: Any, transport: str, peer: str) -> Session:
    """Build the session of a reserved slot in a worker thread (loading a backend blocks). Should the
    waiting handler be cancelled, the session is closed once built, so its slot is not lost."""
    future = asyncio.get_running_loop().run_in_executor(state.executor, state.sessions.open, transport, peer)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(lambda f: None if f.cancelled() or f.exception() is not None
                                 else state.sessions.close(f.result()))
        raise


async def close_session(state: Any, session: Session) -> None:
    """Close a session off the event loop: a backend's close may wait (the detail layer finishes a keyframe
    being painted, up to a few seconds), and every other page would stall meanwhile. Shielded: should the
    handler be cancelled, the close still runs to the end in its thread."""
    await asyncio.shield(asyncio.to_thread(state.sessions.close, session))


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    """`GET /ws`: a page's camera session (``?mode=watch``: the server-side source instead). The Origin
    was checked by the access middleware; a request that is no WebSocket handshake is answered 400
    before anything is reserved, and the backend is built once the handshake has succeeded."""
    state = request.app[STATE_KEY]
    # no permessage-deflate: JPEG does not shrink, and deflating raw frames costs more than sending them
    ws = web.WebSocketResponse(max_msg_size=state.limits.max_bytes + 1024, heartbeat=20.0, compress=False)
    if not ws.can_prepare(request).ok:
        raise web.HTTPBadRequest(text="/ws takes WebSocket connections only")
    if request.query.get("mode") == "watch":
        return await state.broadcast.watch(request, state.limits)
    admit(state, request.remote or "", "client")
    try:
        await ws.prepare(request)
    except BaseException:
        state.sessions.release()
        raise
    state.sockets.add(ws)
    try:
        try:
            session = await open_session(state, "websocket", request.remote or "")
        except NoFreeWorker as exc:  # --cluster is full: the page reads this as the socket's close reason
            state.refusals.warning(log, "no free worker", "refused a client from %s: %s", request.remote, exc)
            await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=short_reason(str(exc)).encode())
            return ws
        except Exception as exc:
            log.warning("refused a client from %s: cannot start a backend: %s", request.remote, exc)
            await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"cannot start a backend (see the server log)")
            return ws
        try:
            log.info("session %d: WebSocket from %s", session.id, request.remote)
            await WsClient(ws, session, state).run()
        finally:
            await close_session(state, session)
            log.info("session %d ended: %d frames in, %d out, %d dropped", session.id, session.frames_in,
                     session.frames_out, session.dropped)
    finally:
        state.sockets.discard(ws)
    return ws

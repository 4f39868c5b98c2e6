"""A server-side source shown on every page: `genreal serve --source SRC` or `genreal run --sink web`.

The pipeline (its own threads, one backend) restyles the source once; `HubSink` encodes each
output frame to JPEG once and `Broadcast` hands it to every watching page (``/ws?mode=watch``).
Each watcher has a one-frame slot: a slow page skips frames (latest wins), it never slows the
pipeline or another page. Watchers are limited (`Limits.max_watchers`, and per client address): one
more is refused with 503 before its handshake.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Optional

from aiohttp import WSMsgType, web

from realtime.frame import Item, StereoFrame
from realtime.serve.protocol import Limits, encode_frame
from realtime.serve.quietlog import Throttle
from realtime.sinks.base import Overlay, Sink

log = logging.getLogger(__name__)


class _Watcher:
    def __init__(self, ws: web.WebSocketResponse, address: str) -> None:
        self.ws = ws
        self.address = address
        self.pending: Optional[bytes] = None
        self.wake = asyncio.Event()
        self.sent = 0
        self.skipped = 0

    def offer(self, payload: bytes) -> None:
        if self.pending is not None:
            self.skipped += 1
        self.pending = payload
        self.wake.set()

    async def send_loop(self) -> None:
        while not self.ws.closed:
            await self.wake.wait()
            self.wake.clear()
            payload, self.pending = self.pending, None
            if payload is not None and not self.ws.closed:
                await self.ws.send_bytes(payload)
                self.sent += 1


class Broadcast:
    """Fans one stream of encoded frames out to the watching pages (thread-safe `publish`)."""

    def __init__(self) -> None:
        self.loop: Optional[asyncio.AbstractEventLoop] = None  # set when the server starts
        self.active = False  # a source is feeding it
        self.frames = 0
        self.label = ""
        self._watchers: set[_Watcher] = set()
        self.refusals = Throttle()  # refusal lines: one per kind per interval

    def publish(self, payload: bytes) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._deliver, payload)

    def _deliver(self, payload: bytes) -> None:
        self.frames += 1
        for w in self._watchers:
            w.offer(payload)

    async def close_all(self) -> None:
        """Close every watcher (server shutdown)."""
        await asyncio.gather(*(w.ws.close(code=1001, message=b"server stopping") for w in list(self._watchers)),
                             return_exceptions=True)

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    def _admit(self, address: str, limits: Limits) -> None:
        """Raise 503 when the watcher limits are reached (nothing is allocated yet)."""
        if len(self._watchers) >= limits.max_watchers:
            self.refusals.warning(log, "watchers", "refused a watcher from %s: %d watchers is the limit",
                                  address, limits.max_watchers)
            raise web.HTTPServiceUnavailable(text=f"the server already has {limits.max_watchers} watchers")
        if sum(w.address == address for w in self._watchers) >= limits.max_watchers_per_address:
            self.refusals.warning(log, "watchers per address", "refused a watcher from %s: %d watchers from "
                                  "one address is the limit", address, limits.max_watchers_per_address)
            raise web.HTTPServiceUnavailable(
                text=f"this address already has {limits.max_watchers_per_address} watchers")

    async def watch(self, request: web.Request, limits: Limits = Limits()) -> web.WebSocketResponse:
        address = request.remote or ""
        self._admit(address, limits)
        ws = web.WebSocketResponse(max_msg_size=65536, heartbeat=20.0, compress=False)
        watcher = _Watcher(ws, address)
        self._watchers.add(watcher)  # counted from before the handshake, so a burst cannot overshoot
        sender: Optional[asyncio.Task[None]] = None
        try:
            await ws.prepare(request)
            await ws.send_json({"type": "hello", "mode": "watch", "active": self.active, "source": self.label})
            sender = asyncio.create_task(watcher.send_loop())
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:  # watchers only listen
                    log.warning("watcher from %s closed: sent a frame to a watch-only socket", request.remote)
                    await ws.close(code=1008, message=b"watch sockets take no frames")
                    break
        except ConnectionResetError:
            pass
        finally:
            self._watchers.discard(watcher)
            if sender is not None:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
        return ws


class HubSink(Sink):
    """The pipeline's sink for a `Broadcast`: every output frame, JPEG-encoded once."""

    name = "web"

    def __init__(self, hub: Broadcast, quality: int = 85) -> None:
        self.hub = hub
        self.quality = quality

    def write(self, item: Item, overlay: Overlay) -> None:
        header = {"id": item.index, "stereo": isinstance(item, StereoFrame), "style": overlay.style}
        self.hub.publish(encode_frame(header, item.display_image(), "jpeg", overlay.latency_ms, self.quality))

    def close(self) -> None:
        self.hub.active = False

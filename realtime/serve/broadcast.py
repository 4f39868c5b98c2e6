"""A server-side source shown on every page: `genreal serve --source SRC` or `genreal run --sink web`.

The pipeline (its own threads, one backend) restyles the source once; `HubSink` encodes each
output frame to JPEG once and `Broadcast` hands it to every watching page (``/ws?mode=watch``).
Each watcher has a one-frame slot: a slow page skips frames (latest wins), it never slows the
pipeline or another page.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Optional

from aiohttp import WSMsgType, web

from realtime.frame import Item, StereoFrame
from realtime.serve.protocol import encode_frame
from realtime.sinks.base import Overlay, Sink

log = logging.getLogger(__name__)


class _Watcher:
    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
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

    async def watch(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=65536, heartbeat=20.0, compress=False)
        await ws.prepare(request)
        await ws.send_json({"type": "hello", "mode": "watch", "active": self.active, "source": self.label})
        watcher = _Watcher(ws)
        self._watchers.add(watcher)
        sender = asyncio.create_task(watcher.send_loop())
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:  # watchers only listen
                    log.warning("watcher from %s closed: sent a frame to a watch-only socket", request.remote)
                    await ws.close(code=1008, message=b"watch sockets take no frames")
                    break
        finally:
            self._watchers.discard(watcher)
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

"""The WebRTC transport (aiortc): the page's camera track in, a restyled track out, a data channel
(``control``) for settings and per-frame server times. H.264 is preferred, VP8 the fallback (a page
that lists VP8 first in its offer gets VP8).

Latest frame wins: a reader task keeps only the newest decoded camera frame; the outgoing track
restyles whichever is newest when the encoder asks for the next one (older ones count as dropped).

aiortc is a dependency, imported only when a page asks for WebRTC; should it be missing, the page is
told how to get it and the WebSocket transport still works. aioice never offers 127.0.0.1 as a host candidate, so
a server bound to loopback adds it (`allow_loopback_candidates`) — without it a browser on the
same machine with no other shared interface cannot connect.

A slot is taken only for an offer aiortc parses that carries a video m-line with ICE credentials and a
DTLS fingerprint; offers are limited per client address (`Limits.offers_per_minute`). A session that
gets no camera frame within `Limits.first_frame_s` of its offer, whose frames stop for `Limits.idle_s`,
or whose ICE fails, ends at once and frees its slot.
"""
from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import time
from typing import Any, Optional

from aiohttp import web

from genreal_errors import UserError
from realtime.serve.cluster import NoFreeWorker
from realtime.serve.keys import STATE_KEY
from realtime.serve.protocol import FrameError, parse_control, short_reason
from realtime.serve.security import TokenBucket, is_loopback
from realtime.serve.transports.ws import admit, close_session, handle_control, open_session, restyle

log = logging.getLogger(__name__)

HOW_TO_GET = "WebRTC needs aiortc (a dependency of genreal): pip install aiortc; the WebSocket transport works without it"
PREFERRED_CODECS = ("video/H264", "video/VP8")
_MAX_SDP = 64 * 1024


def available() -> bool:
    return importlib.util.find_spec("aiortc") is not None


def allow_loopback_candidates() -> None:
    """Make aioice gather a 127.0.0.1 host candidate too (process-wide; idempotent)."""
    import aioice.ice as ice

    if getattr(ice.get_host_addresses, "_genreal_loopback", False):
        return
    original = ice.get_host_addresses

    def with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        found = original(use_ipv4, use_ipv6)
        return ["127.0.0.1", *found] if use_ipv4 else found

    with_loopback._genreal_loopback = True  # type: ignore[attr-defined]
    ice.get_host_addresses = with_loopback


def _restyled_track_class() -> Any:
    from aiortc import MediaStreamTrack
    from av import VideoFrame

    class RestyledTrack(MediaStreamTrack):
        kind = "video"

        def __init__(self, source: Any, session: Any, state: Any, channel: "list[Any]") -> None:
            super().__init__()
            self.source, self.session, self.state, self.channel = source, session, state, channel
            self._pending: Optional[tuple[Any, int]] = None
            self._wake = asyncio.Event()
            self._ended = False
            self._reader: Optional[asyncio.Task[None]] = None

        async def _read(self) -> None:
            try:
                while True:
                    frame = await self.source.recv()
                    self.session.frames_in += 1
                    if self._pending is not None:
                        self.session.dropped += 1
                    self._pending = (frame, time.monotonic_ns())
                    self._wake.set()
            except Exception:  # MediaStreamError: the page's track ended
                self._ended = True
                self._wake.set()

        def _restyle(self, frame: Any, t_in: int) -> Any:
            self.state.limits.check_size(frame.width, frame.height)
            image = frame.to_ndarray(format="rgb24")
            out = VideoFrame.from_ndarray(restyle(self.state, self.session, image), format="rgb24")
            out.pts, out.time_base = frame.pts, frame.time_base
            return out

        async def recv(self) -> Any:
            from aiortc.mediastreams import MediaStreamError

            if self._reader is None:
                self._reader = asyncio.create_task(self._read())
            while self._pending is None:
                if self._ended:
                    self.stop()
                    raise MediaStreamError
                await self._wake.wait()
                self._wake.clear()
            frame, t_in = self._pending
            self._pending = None
            loop = asyncio.get_running_loop()
            try:
                out = await loop.run_in_executor(self.state.executor, self._restyle, frame, t_in)
            except (FrameError, UserError) as exc:  # a frame this server or its backend cannot take
                log.warning("session %d closed: frame refused: %s", self.session.id, exc)
                self.stop()
                raise MediaStreamError from None
            except Exception as exc:  # the backend failed on this peer's frame: end this track only
                log.error("session %d closed: server error: %s: %s", self.session.id, type(exc).__name__, exc)
                log.debug("session %d: restyling failed", self.session.id, exc_info=True)
                self.stop()
                raise MediaStreamError from None
            ms = (time.monotonic_ns() - t_in) / 1e6
            self.session.record(ms)
            for ch in self.channel:
                if ch.readyState == "open":
                    ch.send(json.dumps({"type": "frame", "server_ms": round(ms, 3), "pts": frame.pts}))
            return out

        def stop(self) -> None:
            if self._reader is not None:
                self._reader.cancel()
            super().stop()

    return RestyledTrack


def offered_order(sdp: str) -> tuple[str, ...]:
    """`PREFERRED_CODECS` reordered as the page's offer lists them (its first choice wins)."""
    names: dict[str, str] = {}
    order: list[str] = []
    for line in sdp.splitlines():
        if line.startswith("m=video"):
            order = line.split()[3:]
        elif line.startswith("a=rtpmap:"):
            pt, _, rest = line[len("a=rtpmap:"):].partition(" ")
            names[pt] = "video/" + rest.split("/")[0]
    seen = [names.get(pt) for pt in order]
    ranked = [m for m in dict.fromkeys(seen) if m in PREFERRED_CODECS]
    return tuple(ranked + [m for m in PREFERRED_CODECS if m not in ranked])


def _prefer_codecs(pc: Any, preferred: tuple[str, ...] = PREFERRED_CODECS) -> None:
    from aiortc.rtcrtpsender import RTCRtpSender

    codecs = RTCRtpSender.getCapabilities("video").codecs
    ordered = [c for mime in preferred for c in codecs if c.mimeType == mime]
    ordered += [c for c in codecs if c.mimeType == "video/rtx"]
    for t in pc.getTransceivers():
        if t.kind == "video":
            t.setCodecPreferences(ordered)


def check_offer(sdp: str) -> None:
    """Raise `ValueError` unless aiortc parses `sdp` into an offer a camera session can use."""
    from aiortc.sdp import SessionDescription

    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:  # the parser raises anything from ValueError to IndexError
        raise ValueError(f"the SDP does not parse ({type(exc).__name__})") from None
    video = [m for m in parsed.media if m.kind == "video" and m.port != 0 and m.rtp.codecs]
    if not video:
        raise ValueError("the SDP has no video m-line with a codec (send the camera track)")
    m = video[0]
    if m.ice is None or not m.ice.usernameFragment or not m.ice.password:
        raise ValueError("the SDP's video has no ICE username fragment and password")
    if m.dtls is None or not m.dtls.fingerprints:
        raise ValueError("the SDP's video has no DTLS fingerprint")


async def close_all(state: Any) -> None:
    peers = list(state.peers)
    await asyncio.gather(*(pc.close() for pc in peers), return_exceptions=True)


async def offer_handler(request: web.Request) -> web.Response:
    """`POST /api/offer` {sdp, type: "offer"} → {sdp, type: "answer", session}."""
    state = request.app[STATE_KEY]
    if not available():
        raise web.HTTPNotImplemented(text=HOW_TO_GET)
    if not state.config.camera_sessions:
        raise web.HTTPForbidden(text="this server only shows its own source (open the page's watch view)")
    address = request.remote or ""
    if not state.offers.hit(address):
        state.refusals.warning(log, "offer rate", "refused a WebRTC offer from %s: more than %g offers a minute",
                               address, state.limits.offers_per_minute)
        raise web.HTTPTooManyRequests(text=f"more than {state.limits.offers_per_minute:g} offers a minute: wait")
    if not state.all_offers.hit():
        state.refusals.warning(log, "all offer rate", "refused a WebRTC offer from %s: more than %g offers a "
                               "minute from all addresses", address, state.limits.all_offers_per_minute)
        raise web.HTTPTooManyRequests(text="the server is taking offers slowly: try again in a few seconds")
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="the offer is not JSON") from None
    if (not isinstance(body, dict) or body.get("type") != "offer" or not isinstance(body.get("sdp"), str)
            or len(body["sdp"]) > _MAX_SDP):
        raise web.HTTPBadRequest(text="expected {\"type\": \"offer\", \"sdp\": \"...\"}")
    try:
        check_offer(body["sdp"])
    except ValueError as exc:
        state.refusals.warning(log, "bad offer", "WebRTC offer from %s closed: bad WebRTC offer: %s", address, exc)
        raise web.HTTPBadRequest(text=f"bad WebRTC offer: {exc}") from None
    from aiortc import RTCPeerConnection, RTCSessionDescription

    if state.config.webrtc_loopback and is_loopback(state.config.host):
        allow_loopback_candidates()
    admit(state, address, "WebRTC client")
    try:
        session = await open_session(state, "webrtc", address)
    except NoFreeWorker as exc:  # --cluster is full: told as the WebSocket's close reason is, throttled alike
        state.refusals.warning(log, "no free worker", "refused a WebRTC client from %s: %s", address, exc)
        raise web.HTTPServiceUnavailable(text=short_reason(str(exc))) from None
    except Exception as exc:
        log.warning("refused a WebRTC client from %s: cannot start a backend: %s", address, exc)
        raise web.HTTPInternalServerError(text="cannot start a backend (see the server log)") from None
    pc = RTCPeerConnection()
    state.peers.add(pc)
    channels: list[Any] = []
    closed = False
    tasks: set[asyncio.Task[None]] = set()

    async def finish(reason: Optional[str] = None) -> None:
        nonlocal closed
        if closed:
            return
        closed = True
        if reason:
            log.warning("session %d (%s) closed: %s", session.id, session.peer, reason)
        current = asyncio.current_task()
        for task in tasks:
            if task is not current:
                task.cancel()
        state.peers.discard(pc)
        await pc.close()
        await close_session(state, session)
        log.info("session %d ended: %d frames in, %d out, %d dropped", session.id, session.frames_in,
                 session.frames_out, session.dropped)

    async def watchdog() -> None:
        """End a session whose camera frames never came (`first_frame_s`) or stopped (`idle_s`)."""
        limits = state.limits
        await asyncio.sleep(limits.first_frame_s)
        if session.frames_in == 0:
            await finish(f"no video frame within {limits.first_frame_s:g} s of the offer")
            return
        seen, since = session.frames_in, time.monotonic()
        while not closed:
            await asyncio.sleep(min(1.0, limits.idle_s / 4))
            if session.frames_in != seen:
                seen, since = session.frames_in, time.monotonic()
            elif time.monotonic() - since >= limits.idle_s:
                await finish(f"no video frame for {limits.idle_s:g} s")
                return

    rate = TokenBucket(state.limits.max_rate)

    @pc.on("datachannel")
    def on_datachannel(channel: Any) -> None:
        channels.append(channel)

        async def send(msg: dict[str, Any]) -> None:
            if channel.readyState == "open":
                channel.send(json.dumps(msg))

        @channel.on("message")
        async def on_message(message: Any) -> None:
            try:
                if not rate.hit():
                    raise FrameError(f"flood: more than {state.limits.max_rate:g} messages a second")
                if not isinstance(message, str) or len(message) > 65536:
                    raise FrameError("control messages are JSON text under 64 KiB")
                msg = parse_control(message)
                if msg["type"] == "bye":
                    await finish()
                    return
                await handle_control(session, msg, send)
            except FrameError as exc:
                await finish(str(exc))

    @pc.on("track")
    def on_track(track: Any) -> None:
        if track.kind == "video":
            pc.addTrack(_restyled_track_class()(track, session, state, channels))

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        if pc.connectionState in ("failed", "closed"):
            await finish(None if pc.connectionState == "closed" else "the WebRTC connection failed")

    @pc.on("iceconnectionstatechange")
    async def on_ice() -> None:
        if pc.iceConnectionState == "failed":
            await finish("ICE failed")

    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="offer"))
        _prefer_codecs(pc, offered_order(body["sdp"]))
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as exc:  # a malformed SDP raises anything from ValueError to KeyError
        reason = short_reason(f"bad WebRTC offer: {type(exc).__name__}: {exc}")
        await finish(reason)
        raise web.HTTPBadRequest(text=reason) from None
    if closed:  # ICE failed while the answer was made
        raise web.HTTPServiceUnavailable(text="the WebRTC connection failed")
    task = asyncio.create_task(watchdog())
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    log.info("session %d: WebRTC from %s", session.id, address)
    return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type,
                              "session": session.id, "backend": session.backend.name,
                              "styles": list(session.backend.styles()), "style": session.backend.style})

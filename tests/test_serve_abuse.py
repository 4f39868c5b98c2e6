"""`genreal serve` under attack (issue 28), loopback only: each break a security probe found, replayed,
and the probes that held, kept holding.

Breaks: decompression bombs (a PNG or a huge JPEG sent as a small ``jpeg``), WebRTC slots held by
garbage offers, plain ``GET /ws`` building backends, unlimited watch sockets, uncaught errors (deep
JSON, wrong types, NaN, an empty payload, a frame size the model has no graph for), the flood limit's
fixed window, the ``adb reverse`` line without the token. Held: traversal, malformed and mutated
messages (server up, file descriptors back to where they were), Host / Origin / token.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import struct
import subprocess
import sys
from typing import Any, Optional

import aiohttp
import numpy as np
import pytest

from benchmarks.bench_pattern import decode_index, draw_index, pattern_fits
from benchmarks.serve_abuse import jpeg_claiming, mutate, png_bomb
from realtime.config import BackendConfig
from realtime.serve.app import ServeConfig, ServerThread
from realtime.serve.protocol import FrameError, Limits, decode_frame, pack, parse_control
from tests.fakes import collect_track_frames

LOGGER = "realtime.serve"


# -- helpers --------------------------------------------------------------------------------------------
def _image(i: int, w: int = 160, h: int = 96) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([60 + 120 * xx / w, 60 + 100 * yy / h, np.full((h, w), 110.0)], axis=2).astype(np.uint8)
    return draw_index(img, i) if pattern_fits(h, w) else img


def _jpeg(img: np.ndarray, progressive: bool = False) -> bytes:
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)]
    return cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params)[1].tobytes()


def _frame(i: int, img: Optional[np.ndarray] = None, **extra: Any) -> bytes:
    img = _image(i) if img is None else img
    h, w = img.shape[:2]
    return pack({"id": i, "t": 1000.0 + i, "fmt": "jpeg", "w": w, "h": h, **extra}, _jpeg(img))


def _server(**limits: Any) -> ServerThread:
    return ServerThread(ServeConfig(port=0, backend=BackendConfig(name="identity"), limits=Limits(**limits))).start()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def _run_then_stop(srv: ServerThread, coro: Any, caplog: Optional[pytest.LogCaptureFixture] = None) -> Any:
    """`run(coro)`, with the server's warnings captured into `caplog` when given; the server stops after."""
    try:
        with caplog.at_level("WARNING", logger=LOGGER) if caplog is not None else contextlib.nullcontext():
            return run(coro)
    finally:
        srv.stop()


async def _hello(ws: Any) -> dict:
    msg = await ws.receive_json(timeout=30)
    assert msg["type"] == "hello"
    return msg


async def _roundtrip(ws: Any, i: int) -> tuple[dict, np.ndarray]:
    await ws.send_bytes(_frame(i))
    while True:
        msg = await ws.receive(timeout=30)
        if msg.type == aiohttp.WSMsgType.BINARY:
            up = decode_frame(msg.data, Limits())
            return up.header, up.image
        assert msg.type == aiohttp.WSMsgType.TEXT, msg


async def _closed(ws: Any) -> tuple[Optional[int], str]:
    """Read until the server closes; (close code, reason)."""
    while True:
        msg = await ws.receive(timeout=30)
        if msg.type == aiohttp.WSMsgType.CLOSE:
            return ws.close_code, msg.extra or ""
        if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            return ws.close_code, ""


async def _clients(http: Any, srv: ServerThread) -> int:
    async with http.get(srv.url("/api/stats")) as r:
        return (await r.json())["clients"]


async def _wait_for_clients(http: Any, srv: ServerThread, n: int, tries: int, every_s: float) -> None:
    """Poll /api/stats until the server counts `n` clients, at most `tries` times `every_s` apart
    (the caller asserts the count it needs)."""
    for _ in range(tries):
        if await _clients(http, srv) == n:
            return
        await asyncio.sleep(every_s)


def _count_backends(srv: ServerThread) -> list:
    """A list that grows by one each time the server builds a session's backend."""
    made: list = []
    make = srv.state.sessions.make_backend
    srv.state.sessions.make_backend = lambda: made.append(1) or make()
    return made


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]
    assert "Traceback" not in caplog.text


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- 1. decompression bombs -------------------------------------------------------------------------------
def test_jpeg_size_is_read_from_the_header_bytes():
    from realtime.serve import probe

    for w, h, progressive in ((64, 48, False), (333, 17, True), (1920, 1080, True)):
        data = _jpeg(np.zeros((h, w, 3), np.uint8), progressive)
        assert probe.jpeg_size(data) == (w, h)
        assert 1 <= probe.jpeg_scans(data) <= 12
    assert probe.jpeg_size(jpeg_claiming(30000, 30000)) == (30000, 30000)
    assert probe.sniff(png_bomb(rows=64)) == "PNG" and probe.sniff(b"BM" + b"\0" * 60) == "BMP"
    for bad in (b"", b"\xff\xd8\xff", png_bomb(rows=64), b"\xff\xd8\xff\xda\0\x02"):
        with pytest.raises(probe.ProbeError):
            probe.jpeg_size(bad)


@pytest.mark.parametrize("name", ["png 30000x30000", "bmp", "progressive jpeg 30000x30000", "jpeg 5000x5000",
                                  "empty", "1000 scans"])
def test_bombs_are_refused_before_decoding(name, monkeypatch):
    import cv2

    small = {"id": 1, "t": 0, "fmt": "jpeg", "w": 640, "h": 360}
    bmp = b"BM" + struct.pack("<IHHI", 54 + 640 * 360 * 3, 0, 0, 54) + b"\0" * 64
    scans = _jpeg(_image(0, 640, 360))
    scans = scans[:-2] + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" * 1000 + b"\xff\xd9"
    payload = {"png 30000x30000": png_bomb(rows=64), "bmp": bmp,
               "progressive jpeg 30000x30000": jpeg_claiming(30000, 30000),
               "jpeg 5000x5000": jpeg_claiming(5000, 5000, progressive=False), "empty": b"",
               "1000 scans": scans}[name]
    decoded = []
    monkeypatch.setattr(cv2, "imdecode", lambda *a: decoded.append(1))  # a decode would be the bomb going off
    with pytest.raises(FrameError) as info:
        decode_frame(pack(small, payload), Limits())
    assert not decoded, "the payload was handed to the decoder"
    says = {"png 30000x30000": "a PNG", "bmp": "a BMP", "progressive jpeg 30000x30000": "JPEG is 30000x30000",
            "jpeg 5000x5000": "JPEG is 5000x5000", "empty": "empty", "1000 scans": "scans"}[name]
    assert says in str(info.value), str(info.value)


def test_the_pixel_limit_is_checked_from_the_header_too():
    with pytest.raises(FrameError, match="pixels"):
        decode_frame(pack({"fmt": "jpeg", "w": 4096, "h": 4096}, jpeg_claiming(4096, 4096)), Limits())
    frame = _frame(3, _image(3, 320, 180))
    assert decode_frame(frame, Limits()).image.shape == (180, 320, 3)  # a good frame still decodes
    up = decode_frame(pack({"w": 96, "h": 64, "fmt": "jpeg"}, _jpeg(_image(5, 96, 64), progressive=True)), Limits())
    assert decode_index(up.image) == 5


def test_a_bomb_closes_only_its_sender_and_the_server_stays_small(caplog):
    srv = _server()

    def rss_mb() -> float:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

    async def go():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(srv.url("/ws")) as good:
                await _hello(good)
                await _roundtrip(good, 1)
                before = rss_mb()
                codes = []
                for payload in (png_bomb(rows=64), jpeg_claiming(30000, 30000)):
                    async with http.ws_connect(srv.url("/ws")) as bad:
                        await _hello(bad)
                        await bad.send_bytes(pack({"id": 1, "t": 0, "fmt": "jpeg", "w": 640, "h": 360}, payload))
                        codes.append(await _closed(bad))
                grew = rss_mb() - before
                hdr, img = await _roundtrip(good, 2)
                assert hdr["id"] == 2 and decode_index(img) == 2
                return codes, grew

    codes, grew = _run_then_stop(srv, go(), caplog)
    assert [c for c, _ in codes] == [1008, 1008] and "PNG" in codes[0][1] and "30000x30000" in codes[1][1], codes
    assert grew < 100, f"RSS grew {grew:.0f} MB"
    _no_tracebacks(caplog)


# -- 2. WebRTC slots ----------------------------------------------------------------------------------
GARBAGE_OFFERS = ["garbage", "", "v=0 garbage", "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n",
                  "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n"]  # no ICE, no DTLS


def test_garbage_offers_take_no_slot(caplog):
    srv = _server(max_clients=2)
    made = _count_backends(srv)

    async def go():
        async with aiohttp.ClientSession() as http:
            for sdp in GARBAGE_OFFERS:
                async with http.post(srv.url("/api/offer"), json={"type": "offer", "sdp": sdp}) as r:
                    assert r.status == 400, (sdp, r.status)
                    assert "bad WebRTC offer" in await r.text()
            assert await _clients(http, srv) == 0
            async with http.ws_connect(srv.url("/ws")) as a, http.ws_connect(srv.url("/ws")) as b:
                await _hello(a), await _hello(b)  # both camera slots are still free

    _run_then_stop(srv, go(), caplog)
    assert len(made) == 2  # the two WebSocket clients' backends, none for the offers
    bad = [r.getMessage() for r in caplog.records if "bad WebRTC offer" in r.getMessage()]
    assert len(bad) == 1, bad  # then one line per 10 s, with how many were left out
    _no_tracebacks(caplog)


def test_offers_are_capped_per_address_and_in_all():
    srv = _server(offers_per_minute=5, all_offers_per_minute=7)

    async def go():
        statuses = []
        async with aiohttp.ClientSession() as http:
            for _ in range(8):
                async with http.post(srv.url("/api/offer"), json={"type": "offer", "sdp": "garbage"}) as r:
                    statuses.append(r.status)
        return statuses

    async def from_others():
        statuses = []
        for last in (2, 3, 4):  # other addresses: the server-wide cap has 2 offers left
            conn = aiohttp.TCPConnector(local_addr=(f"127.0.0.{last}", 0))
            async with aiohttp.ClientSession(connector=conn) as http:
                async with http.post(srv.url("/api/offer"), json={"type": "offer", "sdp": "garbage"}) as r:
                    statuses.append(r.status)
        return statuses

    try:
        statuses = run(go())
        others = run(from_others())
    finally:
        srv.stop()
    assert statuses == [400] * 5 + [429] * 3
    assert others == [400, 400, 429]


async def _client_offer() -> tuple[Any, str]:
    """A real offer from an aiortc client with a camera track (the client is never connected)."""
    from aiortc import RTCPeerConnection, VideoStreamTrack

    pc = RTCPeerConnection()
    pc.createDataChannel("control")
    pc.addTrack(VideoStreamTrack())
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


def test_a_webrtc_session_without_frames_frees_its_slot(caplog):
    srv = _server(max_clients=1, first_frame_s=1.0)

    async def go():
        pc, sdp = await _client_offer()
        try:
            async with aiohttp.ClientSession() as http:
                async with http.post(srv.url("/api/offer"), json={"type": "offer", "sdp": sdp}) as r:
                    assert r.status == 200, await r.text()  # answered, but the client never connects
                assert await _clients(http, srv) == 1
                await _wait_for_clients(http, srv, 0, 60, 0.1)
                assert await _clients(http, srv) == 0
                async with http.ws_connect(srv.url("/ws")) as ws:  # the one slot is free again
                    await _hello(ws)
        finally:
            await pc.close()

    _run_then_stop(srv, go(), caplog)
    assert any("no video frame within 1 s" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_a_webrtc_peer_whose_camera_stops_frees_its_slot(caplog):
    """A connected peer that goes away without closing (its frames stop) ends after `idle_s`, not after
    ICE consent expires (about a minute)."""
    import fractions

    from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
    from av import VideoFrame

    from realtime.serve.transports.webrtc import allow_loopback_candidates

    allow_loopback_candidates()
    srv = _server(max_clients=1, idle_s=1.5)
    stop = asyncio.Event()

    class Camera(VideoStreamTrack):
        async def recv(self):
            if stop.is_set():
                await asyncio.Event().wait()  # frozen: the page's tab was killed, the socket still up
            pts, time_base = await self.next_timestamp()
            frame = VideoFrame.from_ndarray(_image(int(pts) % 50, 320, 180), format="rgb24")
            frame.pts, frame.time_base = pts, time_base or fractions.Fraction(1, 90000)
            return frame

    async def go():
        pc = RTCPeerConnection()
        pc.addTrack(Camera())
        got = collect_track_frames(pc)
        await pc.setLocalDescription(await pc.createOffer())
        try:
            async with aiohttp.ClientSession() as http:
                async with http.post(srv.url("/api/offer"), json={"type": "offer", "sdp": pc.localDescription.sdp}) as r:
                    answer = await r.json()
                await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
                for _ in range(300):
                    if len(got) >= 3:
                        break
                    await asyncio.sleep(0.1)
                assert len(got) >= 3
                stop.set()
                await _wait_for_clients(http, srv, 0, 100, 0.1)
                assert await _clients(http, srv) == 0
        finally:
            await pc.close()

    _run_then_stop(srv, go(), caplog)
    assert any("no video frame for 1.5 s" in r.getMessage() for r in caplog.records)


# -- 3. plain GET /ws ---------------------------------------------------------------------------------
def test_plain_get_ws_allocates_nothing():
    srv = _server(max_clients=1)
    made = _count_backends(srv)

    async def go():
        async with aiohttp.ClientSession() as http:
            for headers in ({}, {"Origin": "http://evil.example"}, {"Connection": "Upgrade"},
                            {"Upgrade": "websocket"}):  # the last: no Connection: Upgrade, no key
                for _ in range(5):
                    async with http.get(srv.url("/ws"), headers=headers) as r:
                        assert r.status in (400, 403), (headers, r.status)
            async with http.get(srv.url("/ws"), headers={"Origin": "http://evil.example"}) as r:
                assert r.status == 403
            assert await _clients(http, srv) == 0 and not made
            async with http.ws_connect(srv.url("/ws")) as ws:
                await _hello(ws)
                assert await _clients(http, srv) == 1
            await _wait_for_clients(http, srv, 0, 50, 0.05)
            async with http.ws_connect(srv.url("/ws")) as ws:  # the slot came back
                await _hello(ws)

    _run_then_stop(srv, go())
    assert len(made) == 2


def test_new_sessions_are_capped_per_address():
    """Each camera session builds a backend (a graph build on its first frame): a client that reconnects
    in a loop is refused (429) after the burst, the sessions already open go on."""
    srv = _server(sessions_per_minute=60, session_burst=3)

    async def go():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(srv.url("/ws")) as keep:
                await _hello(keep)
                for _ in range(2):
                    async with http.ws_connect(srv.url("/ws")) as ws:
                        await _hello(ws)
                with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                    await http.ws_connect(srv.url("/ws"))
                assert info.value.status == 429
                hdr, _ = await _roundtrip(keep, 5)
                assert hdr["id"] == 5
            await asyncio.sleep(1.1)  # a token a second
            async with http.ws_connect(srv.url("/ws")) as ws:
                await _hello(ws)

    _run_then_stop(srv, go())


def test_new_sessions_from_all_addresses_are_capped_too():
    """An attacker with many addresses (here 127.0.0.2-4) meets the server-wide cap on new sessions."""
    srv = _server(all_sessions_per_minute=60, all_session_burst=2)

    async def connect(last: int) -> int:
        conn = aiohttp.TCPConnector(local_addr=(f"127.0.0.{last}", 0))
        async with aiohttp.ClientSession(connector=conn) as http:
            try:
                async with http.ws_connect(srv.url("/ws")) as ws:
                    await _hello(ws)
                    return 101
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status

    async def go():
        return [await connect(last) for last in (2, 3, 4)]

    assert _run_then_stop(srv, go()) == [101, 101, 429]


def test_first_frames_that_build_a_backend_run_one_at_a_time():
    from realtime.backends.identity import IdentityBackend

    srv = _server()
    busy, most = [0], [0]

    class Building(IdentityBackend):  # the first frame is slow, like a graph build
        def infer(self, x):
            if self.calls == 0:
                busy[0] += 1
                most[0] = max(most[0], busy[0])
                try:
                    import time as _time
                    _time.sleep(0.2)
                finally:
                    busy[0] -= 1
            return super().infer(x)

    srv.state.sessions.make_backend = lambda: Building(BackendConfig(name="identity"))

    async def go():
        async with aiohttp.ClientSession() as http:
            sockets = [await http.ws_connect(srv.url("/ws")) for _ in range(3)]
            for ws in sockets:
                await _hello(ws)
            results = await asyncio.gather(*(_roundtrip(ws, 10 + k) for k, ws in enumerate(sockets)))
            for ws in sockets:
                await ws.close()
            return [hdr["id"] for hdr, _ in results]

    assert _run_then_stop(srv, go()) == [10, 11, 12]
    assert most[0] == 1


def test_a_slow_backend_close_does_not_stall_other_pages():
    """A backend whose close waits (the detail layer finishing a keyframe) is closed off the event loop:
    another page's round trips go on meanwhile."""
    import time

    from realtime.backends.identity import IdentityBackend

    srv = _server()

    class SlowClose(IdentityBackend):
        def close(self):
            time.sleep(1.5)
            super().close()

    srv.state.sessions.make_backend = lambda: SlowClose(BackendConfig(name="identity"))

    async def go():
        async with aiohttp.ClientSession() as http:
            a = await http.ws_connect(srv.url("/ws"))
            b = await http.ws_connect(srv.url("/ws"))
            await _hello(a), await _hello(b)
            await _roundtrip(a, 1), await _roundtrip(b, 2)
            await a.close()  # the server starts closing a's backend (1.5 s)
            await asyncio.sleep(0.1)
            t0 = time.perf_counter()
            hdr, _ = await _roundtrip(b, 3)
            waited = time.perf_counter() - t0
            await b.close()
            return hdr["id"], waited

    ident, waited = _run_then_stop(srv, go())
    assert ident == 3
    assert waited < 1.0, f"page b waited {waited:.2f} s while page a's backend closed"


# -- 4. watchers --------------------------------------------------------------------------------------
@pytest.mark.parametrize("limits, admitted", [({"max_watchers": 3, "max_watchers_per_address": 16}, 3),
                                              ({"max_watchers": 10, "max_watchers_per_address": 2}, 2)])
def test_watchers_are_limited(limits, admitted, caplog):
    srv = _server(**limits)

    async def go():
        async with aiohttp.ClientSession() as http:
            open_ = []
            for _ in range(admitted):
                ws = await http.ws_connect(srv.ws_url("mode=watch"))
                assert (await ws.receive_json())["mode"] == "watch"
                open_.append(ws)
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await http.ws_connect(srv.ws_url("mode=watch"))
            assert info.value.status == 503
            async with http.ws_connect(srv.url("/ws")) as cam:  # camera sessions are not watchers
                await _hello(cam)
                await _roundtrip(cam, 1)
            await open_.pop().close()
            for _ in range(50):
                if srv.state.broadcast.watchers < admitted:
                    break
                await asyncio.sleep(0.05)
            ws = await http.ws_connect(srv.ws_url("mode=watch"))  # a freed place is taken again
            open_.append(ws)
            for ws in open_:
                await ws.close()

    _run_then_stop(srv, go(), caplog)
    assert sum("refused a watcher" in r.getMessage() for r in caplog.records) == 1


def test_max_watchers_option_is_checked(capsys):
    from realtime.cli import main
    from realtime.commands.serve import add_parser, serve_config
    import argparse

    assert main(["serve", "--max-watchers", "0"]) == 2
    assert "--max-watchers" in capsys.readouterr().err
    sub = argparse.ArgumentParser().add_subparsers()
    args = add_parser(sub).parse_args(["--max-watchers", "5", "--backend", "identity"])
    limits = serve_config(args).limits
    assert (limits.max_watchers, limits.max_watchers_per_address) == (5, 3)


def test_loop_errors_are_logged_once_per_interval(caplog):
    from realtime.serve.app import QuietLoopErrors

    handler = QuietLoopErrors(interval_s=60)
    exc = OSError(24, "Too many open files")
    with caplog.at_level("ERROR"):
        for _ in range(500):
            handler(None, {"message": "socket.accept() out of system resource", "exception": exc})
        handler(None, {"message": "something else"})
    assert len(caplog.records) == 2 and not any(r.exc_info for r in caplog.records)
    assert "Too many open files" in caplog.records[0].getMessage()
    handler.interval_s = 0  # the next one says how many were left out
    with caplog.at_level("ERROR"):
        handler(None, {"message": "socket.accept() out of system resource", "exception": exc})
    assert "499 more" in caplog.records[-1].getMessage()


@pytest.mark.slow
def test_out_of_fds_the_server_logs_a_line_a_while_not_a_traceback_per_attempt(tmp_path):
    """A server under a 64-fd limit flooded with connections: a few log lines, no traceback, and a good
    client served once the flood ends."""
    import resource
    import socket

    code = ("import logging, resource, sys, threading\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n"
            "logging.basicConfig(level=logging.WARNING)\n"
            "from realtime.config import BackendConfig\n"
            "from realtime.serve.app import ServeConfig, ServerThread\n"
            "srv = ServerThread(ServeConfig(port=0, backend=BackendConfig(name='identity'))).start()\n"
            "print(srv.port, flush=True)\n"
            "sys.stdin.read()\n")
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=log_file, text=True)
        try:
            port = int(proc.stdout.readline())
            socks = []
            for _ in range(150):
                try:
                    socks.append(socket.create_connection(("127.0.0.1", port), timeout=2))
                except OSError:
                    break
            import time as _time
            _time.sleep(2.5)
            for s in socks:
                s.close()
            _time.sleep(1.5)

            async def good():
                async with aiohttp.ClientSession() as http:
                    async with http.ws_connect(f"ws://127.0.0.1:{port}/ws") as ws:
                        await _hello(ws)
                        hdr, _ = await _roundtrip(ws, 4)
                        return hdr["id"]

            assert run(good()) == 4
        finally:
            proc.stdin.close()
            proc.wait(timeout=30)
    text = log_path.read_text()
    assert "Traceback" not in text and len(text.splitlines()) <= 10, text[-3000:]
    assert resource.getrlimit(resource.RLIMIT_NOFILE)  # (the limit applied to the child only)


# -- 5. uncaught errors -------------------------------------------------------------------------------
def _header_with(raw: str) -> bytes:
    head = raw.encode()
    return b"GRF1" + struct.pack(">I", len(head)) + head + _jpeg(_image(0))


DEEP = "[" * 2040 + "]" * 2040
BAD = {
    "deep header": ("bytes", _header_with('{"w":160,"h":96,"pose":' + "[" * 2020 + "]" * 2020 + "}"), "deeper"),
    "deep header, not an object": ("bytes", _header_with(DEEP), "deeper"),
    "deep text": ("str", '{"type":"config","style":' + "[" * 20000 + "]" * 20000 + "}", "deeper"),
    "budget []": ("str", '{"type":"config","budget":[]}', "budget"),
    "budget {}": ("str", '{"type":"config","budget":{}}', "budget"),
    "empty object": ("str", "{}", "type"),
    "strength string": ("str", '{"type":"config","strength":"1"}', "strength"),
    "unknown type": ("str", '{"type":"' + "x" * 300 + '"}', "unknown"),
    "rtt object": ("str", '{"type":"rtt","ms":{"a":1}}', "ms"),
    "empty payload": ("bytes", pack({"id": 1, "t": 0, "fmt": "jpeg", "w": 160, "h": 96}, b""), "empty"),
    "NaN in header": ("bytes", _header_with('{"id":1,"t":NaN,"fmt":"jpeg","w":160,"h":96}'), "NaN"),
    "Infinity in header": ("bytes", _header_with('{"id":1,"t":Infinity,"fmt":"jpeg","w":160,"h":96}'), "Infinity"),
    "1e999 in header": ("bytes", _header_with('{"id":1,"t":1e999,"fmt":"jpeg","w":160,"h":96}'), "range"),
    "NaN in text": ("str", '{"type":"config","strength":NaN}', "NaN"),
    "stereo string": ("bytes", _header_with('{"id":1,"fmt":"jpeg","w":160,"h":96,"stereo":"yes"}'), "stereo"),
    "w float": ("bytes", _header_with('{"id":1,"fmt":"jpeg","w":160.0,"h":96}'), "'w'"),
    "no w": ("bytes", _header_with('{"id":1,"fmt":"jpeg","h":96}'), "'w'"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_every_bad_message_closes_1008_with_one_line_and_no_traceback(kind, caplog):
    srv = _server()
    how, data, says = BAD[kind]

    async def go():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(srv.url("/ws")) as good, http.ws_connect(srv.url("/ws")) as bad:
                await _hello(good), await _hello(bad)
                await (bad.send_str(data) if how == "str" else bad.send_bytes(data))
                got = []
                while True:  # nothing non-finite is echoed before the close
                    msg = await bad.receive(timeout=30)
                    if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                        got.append(msg.data)
                        continue
                    break
                code, reason = bad.close_code, msg.extra or ""
                hdr, img = await _roundtrip(good, 3)
                assert decode_index(img) == 3
                return code, reason, got

    code, reason, got = _run_then_stop(srv, go(), caplog)
    assert code == 1008 and says in reason and len(reason.encode()) <= 123, (code, reason)
    assert not got, got
    closed = [r.getMessage() for r in caplog.records if "closed:" in r.getMessage()]
    assert len(closed) == 1, closed
    _no_tracebacks(caplog)


def test_the_schema_keeps_what_the_pages_send():
    pose = {"views": [{"eye": "left", "transform": [0.5] * 16, "projection": [1.0] * 16}]}
    data = pack({"id": 9, "t": 12.25, "fmt": "jpeg", "w": 160, "h": 96, "stereo": False, "pose": pose},
                _jpeg(_image(9)))
    assert decode_frame(data, Limits()).header["pose"] == pose
    for msg in ({"type": "config", "style": "cel:0.5,frost:0.5", "strength": 0.5, "steps": None, "temporal": True,
                 "budget": "off"}, {"type": "rtt", "ms": [12.5, 14]}, {"type": "rtt", "ms": 3}, {"type": "stats"},
                {"type": "bye"}):
        assert parse_control(json.dumps(msg)) == msg


def test_a_frame_size_the_model_cannot_take_closes_1008_without_paths(caplog):
    srv = ServerThread(ServeConfig(port=0, backend=BackendConfig(name="onnxruntime"))).start()

    async def go():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(srv.url("/ws")) as ws:
                await _hello(ws)
                await ws.send_bytes(_frame(1, _image(1, 64, 48)))
                return await _closed(ws)

    code, reason = _run_then_stop(srv, go(), caplog)
    assert code == 1008 and "64x48" in reason, (code, reason)
    assert "/" not in reason.replace("<path>", ""), reason
    _no_tracebacks(caplog)


def test_a_style_blend_of_huge_weights_is_refused_and_the_session_keeps_its_look():
    """`cel:1e308,frost:1e308` turned a session white (the weights' sum overflowed); it is a bad setting now,
    answered with an error, and the next frame is restyled as before."""
    srv = ServerThread(ServeConfig(port=0, backend=BackendConfig(name="onnxruntime"))).start()
    img = _image(2, 640, 360)

    async def go():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(srv.url("/ws")) as ws:
                await _hello(ws)
                await ws.send_bytes(_frame(1, img))
                before = await _next_image(ws)
                await ws.send_str(json.dumps({"type": "config", "style": "cel:1e308,frost:1e308"}))
                answer = await ws.receive_json(timeout=30)
                await ws.send_bytes(_frame(2, img))
                after = await _next_image(ws)
                return answer, before, after

    answer, before, after = _run_then_stop(srv, go())
    assert answer["type"] == "error", answer
    assert after.mean() < 250 and np.abs(after.astype(int) - before.astype(int)).mean() < 12


async def _next_image(ws: Any) -> np.ndarray:
    while True:
        msg = await ws.receive(timeout=60)
        if msg.type == aiohttp.WSMsgType.BINARY:
            return decode_frame(msg.data, Limits()).image
        assert msg.type == aiohttp.WSMsgType.TEXT, msg


# -- the flood limit and the adb line ----------------------------------------------------------------
def test_the_flood_limit_is_a_token_bucket_at_the_documented_rate():
    """230 messages a second on average, bunched within a second (1, then 110 at 0.95 s and 130 at 0.99 s:
    241 in the first second), then steady: a fixed one-second window closed such a client."""
    from realtime.serve.security import TokenBucket

    now = [0.0]
    bucket = TokenBucket(Limits().max_rate, clock=lambda: now[0])
    times = [0.0] + [0.95] * 110 + [0.99] * 130 + [1.0 + k / 230 for k in range(1, 3 * 230)]
    refused = 0
    for t in times:
        now[0] = t
        refused += not bucket.hit()
    assert refused == 0
    now[0] = 10.0
    assert sum(not bucket.hit() for _ in range(400)) == 400 - 240  # a real flood is still cut after a second's worth


def test_a_bunched_but_average_client_is_not_closed():
    srv = _server(max_rate=40)

    async def go():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(srv.url("/ws")) as ws:
                await _hello(ws)
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                plan = [0.0] + [0.9] * 18 + [0.98] * 22 + [1.0 + k / 35 for k in range(1, 70)]  # 41 in second one
                for t in plan:
                    await asyncio.sleep(max(0.0, t0 + t - loop.time()))
                    await ws.send_str('{"type": "rtt", "ms": 1}')
                await ws.send_str('{"type": "stats"}')
                msg = await ws.receive(timeout=30)
                return msg.type, ws.close_code

    kind, code = _run_then_stop(srv, go())
    assert kind == aiohttp.WSMsgType.TEXT and code is None, (kind, code)


@pytest.mark.slow
def test_the_adb_line_carries_the_token(tmp_path):
    env = dict(os.environ, GENREAL_CACHE=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "realtime.cli", "serve", "--port", "0", "--backend", "identity",
                             "--token"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    adb = next(line for line in lines if "adb reverse" in line)
    token = lines[0].split("token=")[1].strip()
    assert f"/xr?token={token}" in adb, lines


# -- probes that held ---------------------------------------------------------------------------------
TRAVERSALS = ["/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py", "/static/%2e%2e%2fsecurity.py",
              "/static/....//app.py", "/static//etc/passwd", "/static/%2fetc%2fpasswd", "/static/..\\app.py",
              "/static/%5c..%5capp.py", "/..%2f..%2fetc/passwd", "/static/.%00./app.py", "/static/"]


def test_static_paths_do_not_leave_the_static_folder():
    srv = ServerThread(ServeConfig(port=0, backend=BackendConfig(name="identity"), token="tok")).start()

    async def go():
        async with aiohttp.ClientSession() as http:
            for path in TRAVERSALS:
                for auth in ("", "?token=tok"):
                    async with http.get(f"http://127.0.0.1:{srv.port}{path}{auth}") as r:
                        body = await r.text(errors="replace")
                        assert r.status in (400, 401, 403, 404), (path, r.status)
                        assert "import" not in body and "root:" not in body, path

    _run_then_stop(srv, go())


def test_mutated_messages_leave_the_server_up_and_no_fds_behind(caplog):
    rng = random.Random(28)
    good = [_frame(i) for i in range(4)] + [json.dumps({"type": "config", "style": "invert"}).encode()]
    srv = _server(max_bytes=1 << 20, sessions_per_minute=1e6, session_burst=10**6, all_sessions_per_minute=1e6,
                  all_session_burst=10**6)
    fds = _fds()

    async def go():
        closes = 0
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(srv.url("/ws"))
            await _hello(ws)
            for n in range(300):
                base = rng.choice(good)
                data = mutate(rng, base)
                try:
                    if base[:4] == b"GRF1":
                        await ws.send_bytes(data)
                    else:
                        await ws.send_str(data.decode(errors="replace"))
                except ConnectionError:
                    pass
                try:
                    msg = await ws.receive(timeout=0.2 if n % 10 else 2)
                except asyncio.TimeoutError:
                    continue
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    closes += 1
                    assert ws.close_code in (1000, 1008, 1009), ws.close_code
                    await ws.close()
                    ws = await http.ws_connect(srv.url("/ws"))
                    await _hello(ws)
            await ws.close()
            async with http.ws_connect(srv.url("/ws")) as ws:
                await _hello(ws)
                hdr, img = await _roundtrip(ws, 7)
                assert decode_index(img) == 7
            await _wait_for_clients(http, srv, 0, 100, 0.05)
        return closes

    closes = _run_then_stop(srv, go(), caplog)
    assert closes > 20  # most mutations are caught
    _no_tracebacks(caplog)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text[-2000:]
    assert _fds() <= fds + 2  # the server's own sockets are gone; nothing leaked per client

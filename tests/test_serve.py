"""`genreal serve` without a browser: the WebSocket protocol, sessions, bad clients, security, the web sink.

Everything binds 127.0.0.1 on a free port. Browser tests (Chromium, fake camera, WebXR emulator)
are in test_serve_browser.py.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import aiohttp
import numpy as np
import pytest


from benchmarks.bench_pattern import decode_index, draw_index
from genreal_errors import UserError
from realtime.cli import main
from realtime.config import BackendConfig
from realtime.serve.app import ServeConfig, ServerThread
from realtime.serve.protocol import FrameError, Limits, decode_frame, pack
from tests.fakes import collect_track_frames


def _image(i: int, w: int = 320, h: int = 180) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([90 + 80 * xx / w, 90 + 60 * yy / h, np.full((h, w), 120.0 + i % 50)], axis=2).astype(np.uint8)
    img[:, : w // 2, 0] = 200  # a warm left half
    return draw_index(img, i)


def _jpeg(img: np.ndarray) -> bytes:
    import cv2

    return cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()


def _frame(i: int, img: np.ndarray | None = None, **extra: Any) -> bytes:
    img = _image(i) if img is None else img
    h, w = img.shape[:2]
    return pack({"id": i, "t": 1000.0 + i, "fmt": "jpeg", "w": w, "h": h, **extra}, _jpeg(img))


def _unpack(data: bytes) -> tuple[dict, np.ndarray]:
    up = decode_frame(data, Limits())
    return up.header, up.image


@pytest.fixture
def server():
    srv = ServerThread(ServeConfig(port=0, backend=BackendConfig(name="identity"))).start()
    yield srv
    srv.stop()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def _hello(ws) -> dict:
    msg = await ws.receive_json(timeout=30)
    assert msg["type"] == "hello"
    return msg


async def _roundtrip(ws, i: int, **extra: Any) -> tuple[dict, np.ndarray]:
    await ws.send_bytes(_frame(i, **extra))
    while True:
        msg = await ws.receive(timeout=30)
        if msg.type == aiohttp.WSMsgType.BINARY:
            return _unpack(msg.data)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg


def test_protocol_rejects_malformed_frames():
    lim = Limits(max_bytes=1 << 20, max_side=1024)
    good = _frame(3)
    assert decode_frame(good, lim).header["id"] == 3
    bad = [b"nonsense", b"GRF1" + (10 ** 6).to_bytes(4, "big") + b"{}",
           pack({"fmt": "jpeg", "w": 320, "h": 180}, b"not a jpeg"),
           pack({"fmt": "jpeg", "w": 100000, "h": 2}, b""),
           pack({"fmt": "jpeg", "w": 640, "h": 360}, _jpeg(_image(1))),  # the header lies about the size
           pack({"fmt": "rgba", "w": 8, "h": 8}, b"\0" * 10),
           pack({"fmt": "gif", "w": 8, "h": 8}, b""),
           b"GRF1" + (4).to_bytes(4, "big") + b"{no}",
           b"x" * (2 << 20)]
    for data in bad:
        with pytest.raises(FrameError):
            decode_frame(data, lim)


def test_roundtrip_echoes_tag_and_image(server):
    async def go():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(server.url("/ws")) as ws:
                hello = await _hello(ws)
                assert hello["backend"] == "identity" and "invert" in hello["styles"]
                pose = {"views": [{"eye": "left", "transform": list(range(16))}]}
                header, img = await _roundtrip(ws, 7, pose=pose)
                assert header["id"] == 7 and header["t"] == 1007.0 and header["pose"] == pose
                assert header["server_ms"] > 0
                assert decode_index(img) == 7
                assert np.abs(img.astype(int) - _image(7).astype(int)).mean() < 6  # identity, JPEG twice
                await ws.send_str(json.dumps({"type": "config", "style": "invert"}))
                assert (await ws.receive_json())["style"] == "invert"
                _, inv = await _roundtrip(ws, 8)
                assert np.abs(inv.astype(int) - (255 - _image(8)).astype(int)).mean() < 6
                await ws.send_str(json.dumps({"type": "config", "style": "no-such-style"}))
                err = await ws.receive_json()
                assert err["type"] == "error" and "no-such-style" in err["message"]
                await ws.send_str(json.dumps({"type": "rtt", "ms": [12.5, 14.0]}))
                await ws.send_str(json.dumps({"type": "stats"}))
                st = await ws.receive_json()
                assert st["type"] == "stats" and st["frames_out"] == 2
            for _ in range(100):  # the closed session leaves the list
                async with http.get(server.url("/api/stats")) as r:
                    assert r.status == 200
                    body = await r.json()
                if body["clients"] == 0:
                    break
                await asyncio.sleep(0.05)
            async with http.get(server.url("/api/styles")) as r:
                styles = await r.json()
        assert styles["styles"] == ["identity", "invert", "gray"] and styles["steps"] == []  # no refine steps
        return body

    body = run(go())
    assert body["clients"] == 0 and body["max_clients"] == 4


def test_stats_report_live_sessions(server):
    async def go():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(server.url("/ws")) as ws:
                await _hello(ws)
                for i in range(5):
                    await _roundtrip(ws, i)
                await ws.send_str(json.dumps({"type": "rtt", "ms": [10.0, 20.0, 30.0]}))
                await ws.send_str(json.dumps({"type": "stats"}))
                await ws.receive_json()
                async with http.get(server.url("/api/stats")) as r:
                    return await r.json()

    body = run(go())
    (s,) = body["sessions"]
    assert s["transport"] == "websocket" and s["frames_in"] == 5 and s["frames_out"] == 5 and s["dropped"] == 0
    assert set(s["latency"]) >= {"p50_ms", "p95_ms", "p99_ms"} and s["latency"]["p50_ms"] > 0
    assert s["page_rtt"]["p50_ms"] == 20.0


def test_two_clients_are_isolated(server):
    async def go():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(server.url("/ws")) as a, http.ws_connect(server.url("/ws")) as b:
                ha, hb = await _hello(a), await _hello(b)
                assert ha["session"] != hb["session"]
                await a.send_str(json.dumps({"type": "config", "style": "invert"}))
                await a.receive_json()
                for i in range(4):
                    (hdr_a, img_a), (hdr_b, img_b) = await asyncio.gather(_roundtrip(a, 100 + i), _roundtrip(b, 200 + i))
                    assert hdr_a["id"] == 100 + i and hdr_b["id"] == 200 + i
                    assert decode_index(img_b) == 200 + i  # b sees its own frames, not restyled by a's style
                    assert np.abs(img_a.astype(int) - (255 - _image(100 + i)).astype(int)).mean() < 6
                    assert np.abs(img_b.astype(int) - _image(200 + i).astype(int)).mean() < 6

    run(go())


BAD_MESSAGES = {
    "bad JSON": ("str", "{not json"),
    "no type": ("str", "[1, 2]"),
    "undecodable frame": ("bytes", pack({"id": 1, "t": 0, "fmt": "jpeg", "w": 320, "h": 180}, b"\xff\xd8garbage")),
    "impossible size": ("bytes", pack({"id": 1, "t": 0, "fmt": "rgba", "w": 99999, "h": 99999}, b"")),
    "oversized": ("bytes", b"GRF1" + b"\0" * (2 << 20)),
    "not a frame": ("bytes", b"hello"),
}


@pytest.mark.parametrize("kind", list(BAD_MESSAGES))
def test_bad_client_is_closed_alone(kind, caplog):
    srv = ServerThread(ServeConfig(port=0, backend=BackendConfig(name="identity"),
                                   limits=Limits(max_bytes=1 << 20))).start()
    how, data = BAD_MESSAGES[kind]

    async def go():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(srv.url("/ws")) as good, http.ws_connect(srv.url("/ws")) as bad:
                await _hello(good), await _hello(bad)
                try:
                    await (bad.send_str(data) if how == "str" else bad.send_bytes(data))
                    cut = False
                except ConnectionError:  # the server may close while a 2 MB message is still going out
                    cut = True
                msg = await bad.receive(timeout=30)
                while msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    msg = await bad.receive(timeout=30)
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING,
                                    aiohttp.WSMsgType.ERROR)
                # an oversized upload may be cut off mid-send (a reset, no close frame): the log line tells
                assert bad.close_code in (1008, 1009) or kind == "oversized", (bad.close_code, cut)
                for i in range(3):  # the other client goes on as if nothing happened
                    hdr, img = await _roundtrip(good, i)
                    assert hdr["id"] == i and decode_index(img) == i

    try:
        with caplog.at_level("WARNING", logger="realtime.serve"):
            run(go())
    finally:
        srv.stop()
    closed = [r.getMessage() for r in caplog.records if "closed:" in r.getMessage()]
    assert len(closed) == 1, [r.getMessage() for r in caplog.records]
    if kind == "oversized":
        assert "exceeds" in closed[0] or "over the limit" in closed[0], closed


def test_flood_closes_the_flooder_only(caplog):
    srv = ServerThread(ServeConfig(port=0, backend=BackendConfig(name="identity"),
                                   limits=Limits(max_rate=50))).start()

    async def go():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(srv.url("/ws")) as good, http.ws_connect(srv.url("/ws")) as bad:
                await _hello(good), await _hello(bad)
                for _ in range(200):
                    if bad.closed:
                        break
                    await bad.send_str('{"type": "rtt", "ms": 1}')
                msg = await bad.receive(timeout=30)
                while msg.type == aiohttp.WSMsgType.TEXT:
                    msg = await bad.receive(timeout=30)
                assert bad.close_code == 1008
                hdr, img = await _roundtrip(good, 5)
                assert decode_index(img) == 5

    try:
        with caplog.at_level("WARNING", logger="realtime.serve"):
            run(go())
    finally:
        srv.stop()
    assert any("flood" in r.getMessage() for r in caplog.records)


def test_latest_frame_wins_under_load():
    from realtime.backends.identity import IdentityBackend

    srv = ServerThread(ServeConfig(port=0, backend=BackendConfig(name="identity"))).start()
    srv.state.sessions.make_backend = lambda: IdentityBackend(BackendConfig(name="identity"), delay_s=0.2)

    async def go():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(srv.url("/ws")) as ws:
                await _hello(ws)
                for i in range(10):  # a burst much faster than the 200 ms stylizer
                    await ws.send_bytes(_frame(i))
                got = []
                while not got or got[-1] != 9:
                    msg = await ws.receive(timeout=30)
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        got.append(_unpack(msg.data)[0]["id"])
                async with http.get(srv.url("/api/stats")) as r:
                    return got, (await r.json())["sessions"][0]

    try:
        got, stats = run(go())
    finally:
        srv.stop()
    assert got == sorted(got) and got[-1] == 9 and len(got) < 10  # stale frames skipped, the newest kept
    assert stats["dropped"] == 10 - len(got) and stats["frames_in"] == 10


def test_client_limit():
    srv = ServerThread(ServeConfig(port=0, backend=BackendConfig(name="identity"),
                                   limits=Limits(max_clients=1))).start()

    async def go():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(srv.url("/ws")) as a:
                await _hello(a)
                with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                    await http.ws_connect(srv.url("/ws"))
                assert info.value.status == 503
                hdr, _ = await _roundtrip(a, 1)
                assert hdr["id"] == 1

    try:
        run(go())
    finally:
        srv.stop()


def test_token_origin_and_host_checks():
    srv = ServerThread(ServeConfig(port=0, backend=BackendConfig(name="identity"), token="s3cret")).start()
    base = f"http://127.0.0.1:{srv.port}"

    async def go():
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:  # unsafe: IP hosts
            for path in ("/", "/xr", "/static/preview.js", "/api/stats", "/api/styles"):
                async with http.get(base + path) as r:
                    assert r.status == 401, path
                async with http.get(base + path + "?token=wrong") as r:
                    assert r.status == 401, path
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await http.ws_connect(base + "/ws")
            assert info.value.status == 401
            async with http.get(base + "/api/stats", headers={"Authorization": "Bearer s3cret"}) as r:
                assert r.status == 200
            async with http.get(base + "/?token=s3cret") as r:  # the page sets a cookie for its scripts
                assert r.status == 200 and "genreal_token" in r.cookies
            async with http.get(base + "/static/preview.js") as r:  # now by cookie
                assert r.status == 200
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await http.ws_connect(base + "/ws?token=s3cret", headers={"Origin": "http://evil.example"})
            assert info.value.status == 403
            async with http.ws_connect(base + "/ws?token=s3cret", headers={"Origin": base}) as ws:
                await _hello(ws)
            async with http.post(base + "/api/offer?token=s3cret", data="{}",
                                 headers={"Origin": "http://evil.example"}) as r:
                assert r.status == 403  # another site cannot start a WebRTC session either
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/?token=s3cret", headers={"Host": "evil.example:80"}) as r:
                assert r.status == 403  # DNS rebinding onto loopback

    try:
        run(go())
    finally:
        srv.stop()


def test_non_loopback_needs_tls_and_token(capsys):
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert main(["serve", "--host", "192.0.2.10", "--tls", "--no-token"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("genreal: error: --host") for line in err)
    assert main(["serve", "--token", "--no-token"]) == 2
    assert main(["serve", "--port", "70000"]) == 2


def test_tls_self_signed_certificate(tmp_path, monkeypatch):
    import ssl

    monkeypatch.setenv("GENREAL_CACHE", str(tmp_path))
    srv = ServerThread(ServeConfig(port=0, tls=True, token="tok", backend=BackendConfig(name="identity"))).start()
    assert list((tmp_path / "serve").glob("cert-*.pem"))
    assert srv.url("/").startswith("https://localhost:") and srv.url("/").endswith("?token=tok")

    async def go():
        ctx = ssl.create_default_context(cafile=str(next((tmp_path / "serve").glob("cert-*.pem"))))
        async with aiohttp.ClientSession() as http:
            async with http.get(f"https://localhost:{srv.port}/api/info", ssl=ctx) as r:
                assert r.status == 401
            async with http.get(f"https://localhost:{srv.port}/api/info?token=tok", ssl=ctx) as r:
                assert r.status == 200
            async with http.ws_connect(f"wss://localhost:{srv.port}/ws?token=tok", ssl=ctx,
                                       headers={"Origin": f"https://localhost:{srv.port}"}) as ws:
                await _hello(ws)
                hdr, _ = await _roundtrip(ws, 3)
                assert hdr["id"] == 3

    try:
        run(go())
    finally:
        srv.stop()


def test_web_sink_streams_a_run_to_watchers():
    from realtime.frame import Frame
    from realtime.sinks import make_sink
    from realtime.sinks.base import Overlay

    sink = make_sink("web:0")
    try:
        async def go():
            async with aiohttp.ClientSession() as http:
                async with http.ws_connect(sink.server.ws_url("mode=watch")) as ws:
                    hello = await ws.receive_json()
                    assert hello["mode"] == "watch" and hello["active"]
                    got = []
                    for i in range(40):
                        sink.write(Frame(_image(i), i, time.monotonic_ns()), Overlay("s", "b", 30.0, 5.0))
                        await asyncio.sleep(0.01)
                        try:
                            msg = await ws.receive(timeout=0.05)
                        except asyncio.TimeoutError:
                            continue
                        if msg.type == aiohttp.WSMsgType.BINARY:
                            got.append(decode_index(_unpack(msg.data)[1]))
                    await ws.send_bytes(b"frames are refused here")
                    msg = await ws.receive(timeout=10)
                    while msg.type == aiohttp.WSMsgType.BINARY:
                        msg = await ws.receive(timeout=10)
                    return got, ws.close_code

        got, code = run(go())
    finally:
        sink.close()
    assert len(got) >= 5 and got == sorted(got) and all(g is not None for g in got)
    assert code == 1008


def test_serve_answers_its_styles_from_the_start_up_check():
    """`genreal serve` builds one backend at start to check it; /api/styles answers from it (no second build)."""
    from realtime.backends.identity import STYLES
    from realtime.commands.serve import start_server

    srv = start_server(ServeConfig(port=0, backend=BackendConfig(name="identity")))
    built: list[int] = []
    make = srv.state.sessions.make_backend
    srv.state.sessions.make_backend = lambda: built.append(1) or make()
    try:
        async def go():
            async with aiohttp.ClientSession() as http:
                async with http.get(srv.url("/api/styles")) as r:
                    return r.status, await r.json()

        status, body = run(go())
    finally:
        srv.stop()
    assert status == 200 and body["styles"] == list(STYLES) and body["steps"] == [] and built == []


@pytest.mark.slow
def test_serve_command_streams_its_source(tmp_path):
    env = dict(os.environ, GENREAL_CACHE=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "realtime.cli", "serve", "--port", "0", "--backend", "identity",
                             "--source", "demo:live", "--size", "320x180", "--stats-json", str(tmp_path / "st.json")],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "preview" in line, line + proc.stderr.read()
        url = line.split()[-1]

        async def go():
            async with aiohttp.ClientSession() as http:
                ws_url = url.replace("http://", "ws://").rstrip("/") + "/ws?mode=watch"
                async with http.ws_connect(ws_url) as ws:
                    await ws.receive_json()
                    msg = await ws.receive(timeout=60)
                    while msg.type != aiohttp.WSMsgType.BINARY:
                        msg = await ws.receive(timeout=60)
                    hdr, img = _unpack(msg.data)
                async with http.ws_connect(url.replace("http://", "ws://").rstrip("/") + "/ws") as cam:
                    await _hello(cam)
                    for i in range(2):
                        await _roundtrip(cam, i)
                for _ in range(100):  # until the camera session has ended
                    async with http.get(url.rstrip("/") + "/api/stats") as r:
                        body = await r.json()
                    if body["clients"] == 0:
                        return hdr, img, body
                    await asyncio.sleep(0.05)
                raise AssertionError("the camera session did not end")

        hdr, img, stats = run(go())
        assert img.shape == (180, 320, 3) and stats["source"]["active"] and stats["source"]["frames"] >= 1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
        final = json.loads((tmp_path / "st.json").read_text())
        assert final["source"] == "demo:live" and [s["frames_out"] for s in final["ended"]] == [2]
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


def test_webrtc_codec_order_follows_the_offer():
    from realtime.serve.transports.webrtc import offered_order

    sdp = ("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 97 102\r\na=rtpmap:96 VP8/90000\r\n"
           "a=rtpmap:97 rtx/90000\r\na=rtpmap:102 H264/90000\r\n")
    assert offered_order(sdp) == ("video/VP8", "video/H264")
    assert offered_order(sdp.replace("96 97 102", "102 96 97")) == ("video/H264", "video/VP8")
    assert offered_order("m=audio 9 x 0\r\n") == ("video/H264", "video/VP8")


def test_a_full_cluster_refuses_a_webrtc_offer_like_a_websocket(server, caplog):
    """--cluster without a free worker: a WebRTC offer gets 503 and the refusal's reason (as a WebSocket gets
    it as its close reason), one throttled log line; its slot is given back."""
    from realtime.serve.cluster import NoFreeWorker

    def full(transport: str, peer: str) -> Any:
        raise NoFreeWorker("no free worker: 2 sessions, 0 CPUs free (each session asks for 1 CPU)")

    server.state.sessions.new_session = full

    async def go():
        pc, _ = _aiortc_client_offer()
        await pc.setLocalDescription(await pc.createOffer())
        try:
            async with aiohttp.ClientSession() as http:
                replies = []
                for _ in range(2):
                    async with http.post(server.url("/api/offer"),
                                         json={"type": "offer", "sdp": pc.localDescription.sdp}) as r:
                        replies.append((r.status, await r.text()))
                return replies
        finally:
            await pc.close()

    with caplog.at_level("WARNING", logger="realtime.serve"):
        replies = run(go())
    assert replies == [(503, "no free worker: 2 sessions, 0 CPUs free (each session asks for 1 CPU)")] * 2
    assert len([r for r in caplog.records if "no free worker" in r.getMessage()]) == 1
    assert len(server.state.sessions) == 0 and server.state.sessions.reserve()
    server.state.sessions.release()


def _aiortc_client_offer(track_size=(320, 180)):
    """A Python WebRTC client (aiortc) with a synthetic camera track and a control channel."""
    import fractions

    from aiortc import RTCPeerConnection, VideoStreamTrack
    from av import VideoFrame

    class Camera(VideoStreamTrack):
        def __init__(self) -> None:
            super().__init__()
            self.n = 0

        async def recv(self):
            pts, time_base = await self.next_timestamp()
            img = _image(self.n, *track_size)
            self.n += 1
            frame = VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = pts, time_base or fractions.Fraction(1, 90000)
            return frame

    pc = RTCPeerConnection()
    channel = pc.createDataChannel("control")
    pc.addTrack(Camera())
    return pc, channel


@pytest.mark.slow
def test_webrtc_bad_control_message_closes_only_that_client(server, caplog):
    from aiortc import RTCSessionDescription

    from realtime.serve.transports.webrtc import allow_loopback_candidates

    allow_loopback_candidates()

    async def go():
        pc, channel = _aiortc_client_offer()
        received = collect_track_frames(pc)
        opened = asyncio.Event()
        channel.on("open", opened.set)
        await pc.setLocalDescription(await pc.createOffer())
        async with aiohttp.ClientSession() as http:
            async with http.post(server.url("/api/offer"), json={"type": "offer", "sdp": "v=0 garbage"}) as r:
                assert r.status == 400
            async with http.post(server.url("/api/offer"), data=b"{nope") as r:
                assert r.status == 400
            async with http.post(server.url("/api/offer"),
                                 json={"type": "offer", "sdp": pc.localDescription.sdp}) as r:
                assert r.status == 200, await r.text()
                answer = await r.json()
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
            await asyncio.wait_for(opened.wait(), 30)
            async with http.ws_connect(server.url("/ws")) as ws:  # a bystander on the other transport
                await _hello(ws)
                for _ in range(300):  # restyled frames come back over WebRTC
                    if len(received) >= 5:
                        break
                    await asyncio.sleep(0.1)
                assert len(received) >= 5
                async with http.get(server.url("/api/stats")) as r:
                    sessions = (await r.json())["sessions"]
                assert sorted(s["transport"] for s in sessions) == ["webrtc", "websocket"]
                rtc = next(s for s in sessions if s["transport"] == "webrtc")
                assert rtc["frames_out"] >= 5 and rtc["latency"]["p50_ms"] > 0
                channel.send("{this is not json")
                for _ in range(100):
                    async with http.get(server.url("/api/stats")) as r:
                        sessions = (await r.json())["sessions"]
                    if [s["transport"] for s in sessions] == ["websocket"]:
                        break
                    await asyncio.sleep(0.1)
                assert [s["transport"] for s in sessions] == ["websocket"]
                hdr, img = await _roundtrip(ws, 42)
                assert hdr["id"] == 42 and decode_index(img) == 42
        await pc.close()

    with caplog.at_level("WARNING", logger="realtime.serve"):
        run(go())
    closed = [r.getMessage() for r in caplog.records if "closed:" in r.getMessage()]
    assert len(closed) == 2 and "bad WebRTC offer" in closed[0] and "not JSON" in closed[1], closed  # one line each


def test_a_backend_failure_ends_only_that_client(caplog):
    from realtime.backends.identity import IdentityBackend

    class Broken(IdentityBackend):
        def infer(self, x):
            raise RuntimeError("kaboom")

    srv = ServerThread(ServeConfig(port=0, backend=BackendConfig(name="identity"))).start()
    made = []

    def make():
        made.append(1)
        return Broken(BackendConfig(name="identity")) if len(made) == 1 else IdentityBackend(BackendConfig(name="identity"))

    srv.state.sessions.make_backend = make

    async def go():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(srv.url("/ws")) as bad:
                await _hello(bad)
                async with http.ws_connect(srv.url("/ws")) as good:
                    await _hello(good)
                    await bad.send_bytes(_frame(1))
                    msg = await bad.receive(timeout=30)
                    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) and bad.close_code == 1011
                    hdr, _ = await _roundtrip(good, 2)
                    assert hdr["id"] == 2

    try:
        with caplog.at_level("WARNING", logger="realtime.serve"):
            run(go())
    finally:
        srv.stop()
    assert any("kaboom" in r.getMessage() for r in caplog.records)


def test_a_taken_port_is_a_user_error(server):
    from genreal_errors import UserError

    with pytest.raises(UserError, match="cannot listen"):
        ServerThread(ServeConfig(port=server.port, backend=BackendConfig(name="identity"))).start()


def test_urls_name_an_address_a_headset_can_open():
    from realtime.serve.app import page_url
    from realtime.serve.security import advertised_host

    assert page_url(ServeConfig(), 8765, "/xr") == "http://localhost:8765/xr"
    lan = page_url(ServeConfig(host="0.0.0.0", tls=True, token="t"), 8765, "/xr")
    assert lan.startswith("https://") and lan.endswith(":8765/xr?token=t") and "0.0.0.0" not in lan
    assert advertised_host("192.0.2.5") == "192.0.2.5"
    assert page_url(ServeConfig(host="fd00::5", tls=True, token="t"), 1, "/") == "https://[fd00::5]:1/?token=t"


def test_serve_help_explains_the_headset_set_up(capsys):
    with pytest.raises(SystemExit) as info:
        main(["serve", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "adb reverse tcp:8765 tcp:8765" in text and "--tls" in text and "/xr" in text and "token" in text


def test_serve_fails_fast_on_a_bad_source_or_style(capsys, tmp_path):
    assert main(["serve", "--port", "0", "--backend", "identity", "--source", str(tmp_path / "none.mp4")]) == 2
    assert main(["serve", "--port", "0", "--backend", "onnxruntime", "--style", "no-such-style"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "none.mp4" in err[0] and "no-such-style" in err[1]


def test_the_latency_benchmark_imports_and_tabulates():
    from benchmarks import web_latency

    row = {"backend": "identity", "transport": "webrtc", "codec": "video/VP8", "fps": 20.0, "pattern_samples": 3,
           "pattern_rtt": {"p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0}, "tag_rtt": None,
           "server": {"p50_ms": 0.5}}
    text = web_latency.table([row, {**row, "transport": "ws-jpeg", "codec": None, "tag_rtt": {"p50_ms": 1.1}}])
    assert "| identity | webrtc (VP8) | 1.0 / 2.0 / 3.0 | – | 0.5 | 20.0 | 3 |" in text
    assert "| identity | ws-jpeg | 1.0 / 2.0 / 3.0 | 1.1 | 0.5 | 20.0 | 3 |" in text
    from benchmarks.web_browser import latencies_by_pattern

    local = [[1, 0.0], [2, 33.0], [1, 2000.0]]  # frame 1 again one loop later
    remote = [[1, 20.0], [1, 25.0], [2, 60.0], [1, 2030.0]]  # the repeat of frame 1 counts once
    assert latencies_by_pattern(local, remote, loop_frames=60) == [20.0, 27.0, 30.0]


def test_a_page_is_offered_only_the_refine_steps_the_model_measured_as_helping(model_copy):
    from models.manifest import update_manifest
    from realtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from realtime.config import BackendConfig
    from realtime.serve.session import Session, offered_steps

    update_manifest(model_copy, **{"evaluation.steps": {"useful": 2, "evidence": "K=1 → K=4: ..."}})
    session = Session("websocket", OnnxRuntimeBackend(BackendConfig(name="onnxruntime", model_dir=model_copy)))
    try:
        assert offered_steps(session.backend) == [1, 2]
        assert session.configure({"steps": 2}).steps == 2
        with pytest.raises(UserError, match="offers 1 to 2"):
            session.configure({"steps": 3, "style": "cel"})
        assert session.settings.steps == 2 and session.backend.style != "cel"  # the bad message changed nothing
    finally:
        session.close()
    from realtime.backends.identity import IdentityBackend

    assert offered_steps(IdentityBackend(BackendConfig(name="identity"))) == []  # no refine steps to offer

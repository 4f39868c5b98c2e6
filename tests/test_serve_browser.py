"""The served pages in a real headless Chromium (Debian's package, driven by playwright) with a fake
camera playing a Y4M whose frames carry the bench_pattern index code.

CI installs Chromium and playwright (.ci/run) and sets GENREAL_REQUIRE_BROWSER=1: there a missing
browser fails; elsewhere these tests skip, with the reason printed, only where no Chromium binary or
playwright exists at all.
"""
from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from benchmarks import web_browser as wb
from benchmarks.bench_pattern import decode_index
from realtime.config import BackendConfig
from realtime.serve.app import ServeConfig, ServerThread


def _need(ok: bool, why: str) -> None:
    """Skip (with the reason) where the browser truly cannot be had; fail instead in CI (.ci/run sets
    GENREAL_REQUIRE_BROWSER=1)."""
    if not ok:
        if os.environ.get("GENREAL_REQUIRE_BROWSER"):
            pytest.fail(f"{why} (GENREAL_REQUIRE_BROWSER is set)", pytrace=False)
        pytest.skip(why, allow_module_level=True)


try:
    from playwright import sync_api
except ImportError:
    sync_api = None
_need(sync_api is not None, "playwright is not installed: pip install '.[dev]'")
_need(wb.find_chromium() is not None, "no Chromium binary: apt-get install chromium (.ci/run does)")

#: every browser test takes several seconds (they run in CI all the same)
pytestmark = pytest.mark.slow

LOOP = 60  # frames in the fake camera's file (it loops)

HOOKS_JS = """
() => {
  window.__sent = {}; window.__out = [];
  window.__sentBlocks = {};
  genreal.hooks.onSend = (id, canvas) => {
    window.__sent[id] = __probe.decode(canvas); window.__sentBlocks[id] = __probe.blocks(canvas, 0, 90, 640, 270, 4);
  };
  genreal.hooks.onOutput = (hdr, el) => {
    window.__out.push({ id: hdr.id, code: __probe.decode(el), rtt: hdr.t !== undefined ? performance.now() - hdr.t : null,
                        mean: __probe.blocks(el, 0, 90, 640, 270, 4) });
  };
}
"""


@pytest.fixture(scope="module")
def playwright():
    with sync_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def moving_y4m(tmp_path_factory) -> Path:
    return wb.write_y4m(tmp_path_factory.mktemp("cam") / "moving.y4m", wb.pattern_frames((640, 360), LOOP))


@pytest.fixture(scope="module")
def browser(playwright, moving_y4m):
    b = wb.launch(playwright, moving_y4m, webgl=False)  # the preview page draws in 2-D: keep canvases in software
    yield b
    b.close()


def _server(backend: str = "identity", **kw) -> ServerThread:
    return ServerThread(ServeConfig(port=0, backend=BackendConfig(name=backend), **kw)).start()


def _open(browser, url: str, transport: str):
    page = browser.new_page()
    logs: list[str] = []
    page.on("console", lambda m: logs.append(m.text))
    page.on("pageerror", lambda e: logs.append(f"pageerror: {e}"))
    page.requested = []  # every URL the page asks for
    page.on("request", lambda r: page.requested.append(r.url))
    wb.install_probe(page)
    page.goto(url)
    page.evaluate(HOOKS_JS)
    # the style picker lists the server's styles before any camera starts (from /api/styles)
    page.wait_for_function("() => document.getElementById('style').options.length > 0", timeout=30000)
    page.select_option("#transport", transport)
    page.click("#start")
    return page, logs


def _wait_outputs(page, n: int, logs: list[str], timeout_s: float = 60.0) -> list[dict]:
    try:
        page.wait_for_function(f"() => window.__out.length >= {n}", timeout=timeout_s * 1000)
    except Exception:
        raise AssertionError(f"fewer than {n} outputs; status {page.inner_text('#status')!r}, "
                             f"error {page.inner_text('#error')!r}, console {logs[-10:]}") from None
    return page.evaluate("() => window.__out")


def _grab(page, element_id: str) -> np.ndarray:
    """The picture an element shows now, as uint8 RGB."""
    import base64

    import cv2

    url = page.evaluate("""(id) => { const el = document.getElementById(id), c = document.createElement('canvas');
        c.width = el.videoWidth || el.width; c.height = el.videoHeight || el.height;
        c.getContext('2d').drawImage(el, 0, 0); return c.toDataURL('image/png'); }""", element_id)
    bgr = cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _stats(server: ServerThread) -> dict:
    with urllib.request.urlopen(server.url("/api/stats"), timeout=10) as r:
        return json.load(r)


@pytest.mark.parametrize("transport", ["ws-jpeg", "ws-rgba"])
def test_preview_websocket_frames_come_back_tagged(browser, transport):
    server = _server()
    try:
        page, logs = _open(browser, server.url("/"), transport)
        outs = _wait_outputs(page, 30, logs)
        assert page.evaluate("() => document.getElementById('steps').disabled")  # identity: no steps to pick
        sent = page.evaluate("() => window.__sent")
        codes = [o["code"] for o in outs]
        assert sum(c is not None for c in codes) >= 0.9 * len(codes), codes
        # the pixels of every output show the very input frame its tag names
        for o in outs:
            if o["code"] is not None:
                assert sent[str(o["id"])] == o["code"], (o, sent.get(str(o["id"])))
        assert len({c for c in codes if c is not None}) >= 5  # the fake camera's frames move on
        rtts = [o["rtt"] for o in outs]
        assert all(0 < r < 5000 for r in rtts)
        # a style switch from the page changes the output (identity backend: invert)
        blocks = page.evaluate("() => window.__sentBlocks")
        before, cam_before = np.array(outs[-1]["mean"]), np.array(blocks[str(outs[-1]["id"])])
        page.select_option("#style", "invert")
        page.wait_for_function("() => window.__out.length >= %d" % (len(outs) + 15), timeout=60000)
        last = page.evaluate("() => window.__out")[-1]
        after, cam = np.array(last["mean"]), np.array(page.evaluate("() => window.__sentBlocks")[str(last["id"])])
        assert np.abs(cam - 127.5).mean() > 20  # the picture is far enough from grey to tell the two apart
        assert np.abs(before - cam_before).mean() < 8  # identity: the camera's picture
        assert np.abs(after - (255 - cam)).mean() < 8  # invert
        page.wait_for_timeout(700)  # the page reports its round trips twice a second
        (s,) = _stats(server)["sessions"]
        assert s["transport"] == "websocket" and s["style"] == "invert" and s["frames_out"] >= 45
        assert s["latency"]["p50_ms"] > 0 and s["page_rtt"]["p50_ms"] > 0
        panel = page.inner_text("#rtt50")
        assert panel.endswith("ms"), panel
        origin = f"http://localhost:{server.port}/"
        assert page.requested and all(u.startswith((origin, origin.replace("http", "ws", 1))) for u in page.requested), \
            page.requested  # the page fetches nothing from anywhere else
        page.close()
    finally:
        server.stop()


@pytest.mark.parametrize("transport,codec", [("webrtc", "video/H264"), ("webrtc-vp8", "video/VP8")])
def test_preview_webrtc_frames_come_back(browser, transport, codec):
    server = _server()
    try:
        page, logs = _open(browser, server.url("/"), transport)
        page.evaluate("() => { window.__local = []; __probe.watch(document.getElementById('local'), window.__local); }")
        outs = _wait_outputs(page, 30, logs, timeout_s=120)
        local = page.evaluate("() => window.__local")
        local_codes = {c for c, _ in local if c is not None}
        codes = [o["code"] for o in outs if o["code"] is not None]
        assert len(codes) >= 0.8 * len(outs), [o["code"] for o in outs]
        # the restyled track shows this page's camera frames (a valid CRC-checked index of the file, most of
        # them also seen on the local preview, which skips frames when the machine is busy), moving on
        assert all(0 <= c < LOOP for c in codes) and len(set(codes)) >= 5
        assert len(set(codes) & local_codes) >= 0.5 * len(set(codes)), (sorted(set(codes)), sorted(local_codes))
        got = page.evaluate("""async () => {
          const st = await genreal.state.pc.getStats(); let id = null, mime = null;
          st.forEach((r) => { if (r.type === 'inbound-rtp' && r.kind === 'video') id = r.codecId; });
          st.forEach((r) => { if (r.id === id) mime = r.mimeType; });
          return mime; }""")
        # H.264 where both ends have it (Debian's Chromium does), VP8 when the page asks for it first
        assert got == codec, got
        page.select_option("#style", "invert")
        page.wait_for_timeout(1500)
        s = [s for s in _stats(server)["sessions"] if s["transport"] == "webrtc"]
        assert s and s[0]["frames_out"] >= 30 and s[0]["style"] == "invert" and s[0]["latency"]["p50_ms"] > 0
        # the restyled track now shows the inverse of the camera frame whose index it carries
        frames = wb.pattern_frames((640, 360), LOOP)
        for _ in range(10):
            out = _grab(page, "remote")
            idx = decode_index(255 - out)  # the code is inverted too
            if idx is not None:
                break
        assert idx is not None
        import cv2

        out = cv2.resize(out, (640, 360), interpolation=cv2.INTER_AREA)  # WebRTC may have scaled it down
        diff = np.abs(out[90:].astype(np.float32) - (255 - frames[idx][90:].astype(np.float32)))
        assert diff.mean() < 20, diff.mean()  # H.264/VP8 at loopback bitrates, twice
        page.click("#stop")
        page.close()
    finally:
        server.stop()


def test_two_pages_do_not_see_each_other(browser):
    server = _server()
    try:
        a, logs_a = _open(browser, server.url("/"), "ws-jpeg")
        b, logs_b = _open(browser, server.url("/"), "ws-jpeg")
        _wait_outputs(a, 5, logs_a), _wait_outputs(b, 5, logs_b)
        a.select_option("#style", "invert")
        n_a = a.evaluate("() => window.__out.length")
        a.wait_for_function(f"() => window.__out.length >= {n_a + 15}", timeout=60000)
        n_b = b.evaluate("() => window.__out.length")
        b.wait_for_function(f"() => window.__out.length >= {n_b + 15}", timeout=60000)
        for page, inverted in ((a, True), (b, False)):
            last = page.evaluate("() => window.__out")[-1]
            out = np.array(last["mean"])
            cam = np.array(page.evaluate("() => window.__sentBlocks")[str(last["id"])])
            assert np.abs(out - ((255 - cam) if inverted else cam)).mean() < 8, (inverted, out, cam)
            sent = page.evaluate("() => window.__sent")
            for o in page.evaluate("() => window.__out"):
                assert str(o["id"]) in sent  # every output answers one of this page's own frames
        sessions = _stats(server)["sessions"]
        assert sorted(s["style"] for s in sessions) == ["identity", "invert"]
    finally:
        server.stop()


@pytest.mark.slow
def test_preview_restyles_with_our_model_and_switches_style(playwright, tmp_path):
    y4m = wb.write_y4m(tmp_path / "still.y4m", wb.pattern_frames((640, 360), 30, still=True))  # a still camera
    browser = wb.launch(playwright, y4m, webgl=False)
    server = _server("onnxruntime")
    try:
        page, logs = _open(browser, server.url("/"), "ws-jpeg")
        outs = _wait_outputs(page, 8, logs, timeout_s=120)
        def image() -> np.ndarray:
            return _grab(page, "out").astype(np.float32)

        first = image()
        page.wait_for_function(f"() => window.__out.length >= {len(outs) + 4}", timeout=60000)
        steady = image()
        styles = page.evaluate("() => genreal.state.styles")
        assert "starry" in styles and page.input_value("#style") != "starry"
        from models.manifest import read_manifest

        useful = (read_manifest(None).get("evaluation", {}).get("steps") or {}).get("useful", 4)
        steps = page.evaluate("() => [...document.getElementById('steps').options].map((o) => o.value)")
        assert steps == [""] + [str(k) for k in range(1, useful + 1)]  # only the steps that help
        page.select_option("#style", "starry")
        n = page.evaluate("() => window.__out.length")
        page.wait_for_function(f"() => window.__out.length >= {n + 6}", timeout=60000)
        switched = image()
        region = (slice(100, 360), slice(0, 640))  # below the index code, which changes every frame
        same = np.abs(steady[region] - first[region]).mean()
        changed = np.abs(switched[region] - steady[region]).mean()
        assert changed > 4 * max(same, 1.0), (same, changed)
        camera = wb.pattern_frames((640, 360), 1, still=True)[0].astype(np.float32)
        assert np.abs(first[region] - camera[region]).mean() > 8  # restyled, not passed through
        (s,) = _stats(server)["sessions"]
        assert s["backend"] == "onnxruntime" and s["style"] == "starry"
    finally:
        server.stop()
        browser.close()


@pytest.mark.parametrize("transport", ["ws-jpeg", "webrtc"])
def test_preview_keeps_the_style_chosen_before_start(browser, transport):
    """Issue 29: a style picked before "Start camera" is the one the session runs, and the picker keeps it."""
    server = _server()
    try:
        page = browser.new_page()
        page.goto(server.url("/"))
        page.wait_for_function("() => document.getElementById('style').options.length > 1", timeout=30000)
        assert page.input_value("#style") == "identity"
        page.select_option("#style", "invert")
        page.select_option("#transport", transport)
        page.click("#start")
        page.wait_for_function("() => genreal.state.rate.fps > 0", timeout=60000)
        page.wait_for_timeout(500)
        assert page.input_value("#style") == "invert"
        (s,) = _stats(server)["sessions"]
        assert s["style"] == "invert", s
        page.close()
    finally:
        server.stop()


@pytest.mark.parametrize("path", ["/", "/xr"])
def test_pages_have_an_icon_and_no_request_fails(browser, path):
    """Issue 29: no favicon 404 on every load: the pages link a small icon the server serves."""
    server = _server()
    try:
        page = browser.new_page()
        failed: list[str] = []
        page.on("response", lambda r: r.status >= 400 and failed.append(f"{r.status} {r.url}"))
        page.goto(server.url(path))
        page.wait_for_load_state("networkidle")
        icon = page.evaluate("() => document.querySelector('link[rel=icon]').href")
        with urllib.request.urlopen(icon, timeout=10) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("image/svg+xml")
            assert b"<svg" in r.read()
        assert not failed, failed
        page.close()
    finally:
        server.stop()


def test_preview_shows_the_server_source(browser):
    """`genreal serve --source` / `genreal run --sink web`: the pipeline's frames reach every page."""
    import threading

    from benchmarks.bench_pattern import PatternSource
    from realtime.backends import create_backend
    from realtime.pipeline import Pipeline
    from realtime.serve.broadcast import HubSink

    server = _server()
    hub = server.state.broadcast
    hub.active, hub.label = True, "pattern"
    source = PatternSource((320, 180), fps=30, duration_s=30)
    pipeline = Pipeline(source, create_backend(BackendConfig(name="identity")), [HubSink(hub)])
    thread = threading.Thread(target=pipeline.run, daemon=True)
    thread.start()
    try:
        pages = []
        for _ in range(2):
            page = browser.new_page()
            wb.install_probe(page)
            page.goto(server.url("/"))
            page.evaluate("() => { window.__src = []; genreal.hooks.onSource = (h, c) => window.__src.push([h.id, __probe.decode(c)]); }")
            pages.append(page)
        for page in pages:
            page.wait_for_function("() => window.__src.length >= 10", timeout=60000)
            got = page.evaluate("() => window.__src")
            assert all(code == idx % 65536 for idx, code in got if code is not None)
            assert sum(code is not None for _, code in got) >= 0.9 * len(got)
            assert not page.is_hidden("#source-fig")
        stats = _stats(server)["source"]
        assert stats["active"] and stats["watchers"] == 2 and stats["frames"] >= 10
        for page in pages:
            page.close()
    finally:
        pipeline.stop()
        thread.join(timeout=10)
        server.stop()


def test_preview_with_an_access_token(browser):
    """With a token (required off loopback; `--token` on loopback) the page, its scripts, its API calls and
    its sockets all get through with the printed URL, and nothing does without it."""
    server = _server(token="t0ken-abc")
    try:
        page, logs = _open(browser, server.url("/"), "ws-jpeg")
        outs = _wait_outputs(page, 5, logs)
        assert outs and server.url("/").endswith("?token=t0ken-abc")
        other = browser.new_context().new_page()  # no cookie, no token
        response = other.goto(f"http://localhost:{server.port}/")
        assert response.status == 401
        other.close()
        page.close()
    finally:
        server.stop()

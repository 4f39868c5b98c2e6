"""The headset page (/xr) in headless Chromium under the IWER WebXR emulator (npm, test-only: injected
into the page by this test, never served by genreal), with the fake camera from a Y4M file.

- immersive-vr + getUserMedia with a side-by-side stereo camera: each eye is drawn from its own half
  (pixel readback at the centre of each eye's viewport), and the head pose sent with a frame comes back
  with it, also while the head moves.
- immersive-ar + Raw Camera Access: a small test double (view.camera and XRWebGLBinding.getCameraImage
  fed from the fake camera) stands in for Quest Browser's camera-access feature.

`.ci/run` installs tests/web (npm ci) and Chromium and sets GENREAL_REQUIRE_BROWSER=1, so in CI a missing
piece fails instead of skipping.
"""
from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import pytest

from benchmarks import web_browser as wb
from realtime.config import BackendConfig
from realtime.serve.app import ServeConfig, ServerThread

#: every browser test takes several seconds (they run in CI all the same)
pytestmark = pytest.mark.slow

IWER = Path(__file__).parent / "web" / "node_modules" / "iwer" / "build" / "iwer.min.js"


def _need(ok: bool, why: str) -> None:
    if not ok:
        if os.environ.get("GENREAL_REQUIRE_BROWSER"):
            pytest.fail(f"{why} (GENREAL_REQUIRE_BROWSER is set)")
        pytest.skip(why)


try:
    from playwright import sync_api
except ImportError:
    sync_api = None

INSTALL_IWER = """
window.__xrDevice = new IWER.XRDevice(IWER.metaQuest3);
__xrDevice.installRuntime({ forceInstall: true });  // Chromium has its own navigator.xr
__xrDevice.stereoEnabled = true;                     // else the right eye is zero-width
"""

# Raw Camera Access double: every view has a camera, and getCameraImage returns a texture of the fake camera.
CAMERA_ACCESS_DOUBLE = """
(() => {
  const video = document.createElement('video');
  video.muted = true; video.playsInline = true;
  navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 360 } })
    .then((s) => { video.srcObject = s; return video.play(); });
  window.__cameraImages = 0;
  Object.defineProperty(XRView.prototype, 'camera', { configurable: true,
    get() { return { width: 640, height: 360 }; } });
  const Base = XRWebGLBinding;
  window.XRWebGLBinding = class extends Base {
    constructor(session, gl) { super(session, gl); this._gl = gl; this._tex = null; }
    getCameraImage(camera) {
      const gl = this._gl;
      if (!this._tex) {
        this._tex = gl.createTexture(); gl.bindTexture(gl.TEXTURE_2D, this._tex);
        gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.LINEAR);
        gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
        gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
      }
      gl.bindTexture(gl.TEXTURE_2D, this._tex);
      gl.pixelStorei(gl.UNPACK_FLIP_Y_WEBGL, true);  // GL convention: the image's bottom row first
      if (video.readyState >= 2) gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, gl.RGBA, gl.UNSIGNED_BYTE, video);
      gl.pixelStorei(gl.UNPACK_FLIP_Y_WEBGL, false);
      window.__cameraImages++;
      return this._tex;
    }
  };
})();
"""


@pytest.fixture(scope="module")
def playwright():
    _need(sync_api is not None, "playwright is not installed: pip install '.[dev]'")
    _need(wb.find_chromium() is not None, "no Chromium binary: apt-get install chromium")
    _need(IWER.exists(), f"the IWER emulator is not installed: (cd {IWER.parents[3]} && npm ci)")
    with sync_api.sync_playwright() as p:
        yield p


def _xr_page(playwright, y4m: Path, url: str, extra_js: str = ""):
    browser = wb.launch(playwright, y4m)
    page = browser.new_page()
    logs: list[str] = []
    page.on("console", lambda m: logs.append(m.text))
    page.on("pageerror", lambda e: logs.append(f"pageerror: {e}"))
    wb.install_probe(page)
    page.add_init_script(path=str(IWER))
    page.add_init_script(INSTALL_IWER + extra_js)
    page.goto(url)
    return browser, page, logs


def _wait(page, expr: str, logs: list[str], timeout_s: float = 90) -> None:
    try:
        page.wait_for_function(expr, timeout=timeout_s * 1000)
    except Exception:
        raise AssertionError(f"timed out on {expr}; status {page.inner_text('#status')!r}, "
                             f"error {page.inner_text('#error')!r}, console {logs[-10:]}") from None


def _stats(server: ServerThread) -> dict:
    with urllib.request.urlopen(server.url("/api/stats"), timeout=10) as r:
        return json.load(r)


def _close(a, b, tol=1e-5) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol * max(1.0, abs(x)) for x, y in zip(a, b))


def test_xr_vr_session_draws_each_eye_from_its_half_and_echoes_the_pose(playwright, tmp_path):
    y4m = wb.write_y4m(tmp_path / "sbs.y4m", wb.sbs_frames((640, 360), 30))
    server = ServerThread(ServeConfig(port=0, backend=BackendConfig(name="identity"))).start()
    browser, page, logs = _xr_page(playwright, y4m, server.url("/xr") + "?stereo=sbs")
    try:
        _wait(page, "() => !document.getElementById('enter-vr').disabled", logs, 30)
        page.click("#enter-vr")
        page.evaluate("() => { genrealXR.probe = true; }")
        _wait(page, "() => genrealXR.frame && genrealXR.readback && genrealXR.readback.left", logs)
        n0 = page.evaluate("() => genrealXR.xrFrames")
        _wait(page, f"() => genrealXR.xrFrames >= {n0 + 2}", logs)  # drawn with the frame
        rb = page.evaluate("() => genrealXR.readback")
        assert set(rb) == {"left", "right", "left_top", "right_top"}, rb
        left, right = rb["left"], rb["right"]
        assert left[0] > 150 and left[2] < 110, rb  # the red left half in the left eye
        assert right[2] > 150 and right[0] < 110, rb  # the blue right half in the right eye
        for eye in ("left_top", "right_top"):  # upright: the card's green top band at the top of each eye
            assert rb[eye][1] > 150 and rb[eye][0] < 110 and rb[eye][2] < 110, rb
        # the picture stays where it was captured: with no new frames, turn the head 70 degrees away and the
        # quad leaves the centre of both eyes (the clear colour shows); turn back and it is there again
        def next_xr_frames(k: int = 3) -> None:  # the emulated headset draws a few frames (slow on a busy CPU)
            n = page.evaluate("() => genrealXR.xrFrames")
            _wait(page, f"() => genrealXR.xrFrames >= {n + k}", logs)

        page.evaluate("() => { genrealXR.inFlight = 1e9; }")  # stop sending
        page.wait_for_timeout(500)
        page.evaluate("() => { __xrDevice.quaternion.set(0, Math.sin(35 * Math.PI / 180), 0, Math.cos(35 * Math.PI / 180)); }")
        next_xr_frames()
        turned = page.evaluate("() => genrealXR.readback")
        assert all(sum(turned[eye][:3]) < 30 for eye in ("left", "right")), turned
        page.evaluate("() => { __xrDevice.quaternion.set(0, 0, 0, 1); }")
        next_xr_frames()
        back = page.evaluate("() => genrealXR.readback")
        assert back["left"][0] > 150 and back["right"][2] > 150, back
        page.evaluate("() => { genrealXR.inFlight = 0; }")
        # the head moves: every frame comes back with the pose it was captured at
        x0 = page.evaluate("() => genrealXR.lastEcho.pose.views[0].transform[12]")  # the left eye's x at rest
        for k in range(1, 4):
            page.evaluate(f"() => {{ __xrDevice.position.set({0.05 * k}, 1.6, 0); }}")
            want = x0 + 0.05 * k
            _wait(page, f"() => Math.abs(genrealXR.lastEcho.pose.views[0].transform[12] - {want}) < 1e-3", logs)
            echo, sent = page.evaluate("() => [genrealXR.lastEcho, genrealXR.sentPoses[genrealXR.lastEcho.id]]")
            assert [v["eye"] for v in echo["pose"]["views"]] == ["left", "right"]
            for ev, sv in zip(echo["pose"]["views"], sent["views"]):
                assert ev["eye"] == sv["eye"] and _close(ev["transform"], sv["transform"])
                assert _close(ev["projection"], sv["projection"])
        (s,) = _stats(server)["sessions"]
        assert s["transport"] == "websocket" and s["frames_out"] >= 8
    finally:
        browser.close()
        server.stop()


def test_xr_ar_session_sends_the_headset_cameras(playwright, tmp_path):
    y4m = wb.write_y4m(tmp_path / "moving.y4m", wb.pattern_frames((640, 360), 60))
    server = ServerThread(ServeConfig(port=0, backend=BackendConfig(name="identity"))).start()
    browser, page, logs = _xr_page(playwright, y4m, server.url("/xr"), CAMERA_ACCESS_DOUBLE)
    try:
        _wait(page, "() => !document.getElementById('enter-ar').disabled", logs, 30)
        page.click("#enter-ar")
        _wait(page, "() => genrealXR.lastEcho && genrealXR.lastEcho.id >= 3", logs)
        echo = page.evaluate("() => genrealXR.lastEcho")
        assert page.evaluate("() => genrealXR.mode") == "ar-camera"
        assert page.evaluate("() => window.__cameraImages") >= 2
        assert echo["stereo"] and echo["w"] == 1280 and echo["h"] == 360  # both eyes' cameras, side by side
        assert [v["eye"] for v in echo["pose"]["views"]] == ["left", "right"]
        (s,) = _stats(server)["sessions"]
        assert s["frames_out"] >= 3
        # the camera images went up the right way round: the index code reads in each eye's half of what came back
        page.evaluate("""() => { window.__codes = []; const orig = GR.decodeImage;
            GR.decodeImage = async (h, p) => { const b = await orig(h, p);
              window.__codes.push([__probe.decode(b, 0), __probe.decode(b, h.w / 2)]); return b; }; }""")
        _wait(page, "() => window.__codes.length >= 5", logs)
        codes = page.evaluate("() => window.__codes")
        good = [(l, r) for l, r in codes if l is not None and l == r]
        assert len(good) >= 0.8 * len(codes), codes
        assert all(0 <= l < 60 for l, _ in good)
    finally:
        browser.close()
        server.stop()


def test_xr_shows_the_server_stereo_source_per_eye(playwright, tmp_path):
    """No camera on the page: the server's stereo source (genreal serve --source sbs:...) in the headset."""
    import threading

    from realtime.serve.protocol import encode_frame

    y4m = wb.write_y4m(tmp_path / "cam.y4m", wb.pattern_frames((320, 180), 10))
    server = ServerThread(ServeConfig(port=0, backend=BackendConfig(name="identity"))).start()
    hub = server.state.broadcast
    hub.active, hub.label = True, "sbs:test"
    card = wb.sbs_frames((640, 360), 1)[0]
    stop = threading.Event()

    def feed() -> None:
        i = 0
        while not stop.wait(1 / 30):
            hub.publish(encode_frame({"id": i, "stereo": True}, card, "jpeg", 1.0))
            i += 1

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    browser, page, logs = _xr_page(playwright, y4m, server.url("/xr"))
    try:
        _wait(page, "() => !document.getElementById('enter-watch').disabled", logs, 30)
        page.click("#enter-watch")
        page.evaluate("() => { genrealXR.probe = true; }")
        _wait(page, "() => genrealXR.frame && genrealXR.readback && genrealXR.readback.right", logs)
        n0 = page.evaluate("() => genrealXR.xrFrames")
        _wait(page, f"() => genrealXR.xrFrames >= {n0 + 2}", logs)
        rb = page.evaluate("() => genrealXR.readback")
        assert page.evaluate("() => genrealXR.mode") == "watch"
        assert rb["left_top"][1] > 150 and rb["right_top"][1] > 150, rb  # upright
        assert rb["left"][0] > 150 and rb["left"][2] < 110, rb
        assert rb["right"][2] > 150 and rb["right"][0] < 110, rb
        assert _stats(server)["source"]["watchers"] == 1
    finally:
        stop.set()
        browser.close()
        server.stop()


def test_xr_ar_session_without_camera_images_uses_the_media_camera(playwright, tmp_path):
    """immersive-ar where the views carry no camera (no Raw Camera Access): the page falls back to
    getUserMedia, the way Quest Browser also offers its headset cameras."""
    y4m = wb.write_y4m(tmp_path / "moving.y4m", wb.pattern_frames((640, 360), 60))
    server = ServerThread(ServeConfig(port=0, backend=BackendConfig(name="identity"))).start()
    browser, page, logs = _xr_page(playwright, y4m, server.url("/xr"))
    try:
        _wait(page, "() => !document.getElementById('enter-ar').disabled", logs, 30)
        page.click("#enter-ar")
        _wait(page, "() => genrealXR.lastEcho && genrealXR.lastEcho.id >= 3", logs)
        echo = page.evaluate("() => genrealXR.lastEcho")
        assert page.evaluate("() => [genrealXR.mode, genrealXR.cameraFrames]") == ["ar-camera", 0]
        assert not echo["stereo"] and (echo["w"], echo["h"]) == (640, 360) and echo["pose"]["views"]
    finally:
        browser.close()
        server.stop()


def test_xr_without_webxr_offers_the_browser_camera_flat(playwright, tmp_path):
    """Issue 29: a desktop browser (no WebXR) on /xr of a server without --source is offered the browser
    camera, restyled flat on the page, not told to watch a server source there is none of."""
    y4m = wb.write_y4m(tmp_path / "cam.y4m", wb.pattern_frames((320, 180), 10))
    server = ServerThread(ServeConfig(port=0, backend=BackendConfig(name="identity"))).start()
    browser = wb.launch(playwright, y4m)
    page = browser.new_page()  # no WebXR emulator: Chromium offers no immersive session
    logs: list[str] = []
    page.on("console", lambda m: logs.append(m.text))
    page.on("pageerror", lambda e: logs.append(f"pageerror: {e}"))
    try:
        page.goto(server.url("/xr"))
        _wait(page, "() => !document.getElementById('enter-vr').disabled", logs, 30)
        status = page.inner_text("#status")
        assert "no WebXR" in status and "browser camera" in status and "server source" not in status, status
        assert page.evaluate("() => document.getElementById('enter-watch').disabled")  # no --source
        page.click("#enter-vr")
        _wait(page, "() => genrealXR.rtt.values.length >= 5", logs, 60)
        assert page.evaluate("() => genrealXR.mode") == "camera-flat"
        assert not page.is_hidden("#flat")
        (s,) = _stats(server)["sessions"]
        assert s["transport"] == "websocket" and s["frames_out"] >= 5
    finally:
        browser.close()
        server.stop()

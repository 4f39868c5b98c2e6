"""Headless Chromium for the served pages: Debian's `chromium` driven by playwright, with a fake
camera playing a Y4M file whose frames carry the `bench_pattern` frame-index code.

Shared by tests/test_serve_browser.py and benchmarks/web_latency.py. `PROBE_JS` is the JavaScript
port of `bench_pattern.decode_index` (same cells, reference cells and CRC-6), installed into a
page with `install_probe`: it reads the index back from any canvas or video the page shows, so a
test can tell which input frame each output belongs to, and a benchmark can time page → server →
page for either transport by the pixels alone.

Playwright's own browser download is not used (it is not reachable from our machines): the
browser is the binary of Debian's `chromium` package (`find_chromium`; the `chromium` wrapper
script misbehaves under playwright).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from benchmarks.bench_pattern import draw_index

CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/lib/chromium-browser/chromium-browser")


def find_chromium() -> Optional[str]:
    """The real Chromium binary ($GENREAL_CHROMIUM, Debian's package, or None)."""
    env = os.environ.get("GENREAL_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    for path in CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    if shutil.which("dpkg"):
        out = subprocess.run(["dpkg", "-L", "chromium"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.endswith("/chromium") and "/lib/" in line and os.access(line, os.X_OK):
                return line
    return None


def write_y4m(path: Path, frames: Iterable[np.ndarray], fps: int = 30) -> Path:
    """Write uint8 RGB frames (all one even size) as a 4:2:0 Y4M file for Chromium's fake camera."""
    import cv2

    it = iter(frames)
    first = next(it)
    h, w = first.shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for img in (first, *it):
            f.write(b"FRAME\n" + cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2YUV_I420).tobytes())
    return path


def pattern_frames(size: tuple[int, int] = (640, 360), n: int = 60, still: bool = False) -> list[np.ndarray]:
    """`n` frames of the built-in demo clip (or its first frame held, `still`), index code drawn in."""
    from realtime.sources.synthetic import DemoClip

    clip = DemoClip(size, 30.0, 1 if still else n)
    return [draw_index(np.array(clip.frame(0 if still else i)), i) for i in range(n)]


def sbs_frames(size: tuple[int, int] = (640, 360), n: int = 30) -> list[np.ndarray]:
    """A side-by-side stereo test card: a red left eye and a blue right eye, each with a green band over
    its top 30 % (which way up it is)."""
    w, h = size
    out = []
    for i in range(n):
        img = np.zeros((h, w, 3), np.uint8)
        img[:, : w // 2] = (220, 40, 40)
        img[:, w // 2:] = (40, 60, 220)
        img[: int(0.3 * h)] = (40, 200, 40)
        out.append(img)
    return out


def chromium_args(y4m: Path, webgl: bool = True) -> list[str]:
    """Flags for a fake camera from `y4m`. `webgl`: SwiftShader WebGL (the /xr page); without it the GPU
    is off and 2-D canvases stay in software, where reading pixels back is much cheaper."""
    gl = (["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"] if webgl
          else ["--disable-gpu"])
    return [*gl,
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={y4m}",
        "--allow-loopback-in-peer-connection",  # WebRTC host candidates on 127.0.0.1
        "--disable-features=WebRtcHideLocalIpsWithMdns",
        "--autoplay-policy=no-user-gesture-required",
        "--no-sandbox", "--disable-dev-shm-usage",  # root in CI containers; a small /dev/shm
    ]


def launch(playwright: Any, y4m: Path, executable: Optional[str] = None, webgl: bool = True) -> Any:
    exe = executable or find_chromium()
    if exe is None:
        raise RuntimeError("no Chromium binary: apt-get install chromium (or set GENREAL_CHROMIUM)")
    return playwright.chromium.launch(executable_path=exe, headless=True, args=chromium_args(y4m, webgl))


#: window.__probe: decode(source) → index or null; watch(video, list) records [index, time] per frame
PROBE_JS = r"""
(() => {
  const DATA = 16, CRC = 6, ROWS = 3, COLS = 8, MIN_CONTRAST = 40;
  const crc6 = (v) => { let reg = 0; for (let i = DATA - 1; i >= 0; i--) { const top = ((reg >> 5) & 1) ^ ((v >> i) & 1); reg = (reg << 1) & 0x3f; if (top) reg ^= 0x03; } return reg; };
  const canvas = document.createElement("canvas");
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  function decode(src, x0 = 0) {
    const w = src.videoWidth || src.width, h = src.videoHeight || src.height;
    if (!w || !h) return null;
    const c = Math.min(48, Math.max(8, Math.floor(Math.min(h, w) / 16))), o = Math.floor(c / 2), q = Math.floor(c / 4);
    canvas.width = COLS * c; canvas.height = ROWS * c;
    ctx.drawImage(src, x0 + o, o, COLS * c, ROWS * c, 0, 0, COLS * c, ROWS * c);
    const px = ctx.getImageData(0, 0, COLS * c, ROWS * c).data, means = [];
    for (let r = 0; r < ROWS; r++) for (let col = 0; col < COLS; col++) {
      let s = 0, n = 0;
      for (let y = r * c + q; y < (r + 1) * c - q; y++) for (let x = col * c + q; x < (col + 1) * c - q; x++) {
        const i = (y * COLS * c + x) * 4; s += (px[i] + px[i + 1] + px[i + 2]) / 3; n++;
      }
      means.push(s / n);
    }
    const white = means[0], black = means[1];
    if (white - black < MIN_CONTRAST) return null;
    const thr = (white + black) / 2, bits = means.slice(2).map((m) => (m > thr ? 1 : 0));
    const data = parseInt(bits.slice(0, DATA).join(""), 2), crc = parseInt(bits.slice(DATA).join(""), 2);
    return crc6(data) === crc ? data : null;
  }
  function watch(video, out) {  // every frame the video presents: [index or null, time]
    const tick = (now) => { out.push([decode(video), performance.now()]); video.requestVideoFrameCallback(tick); };
    video.requestVideoFrameCallback(tick);
  }
  function mean(src, x, y, w, h) {  // mean RGB of a rectangle
    canvas.width = w; canvas.height = h;
    ctx.drawImage(src, x, y, w, h, 0, 0, w, h);
    const px = ctx.getImageData(0, 0, w, h).data; const m = [0, 0, 0];
    for (let i = 0; i < px.length; i += 4) { m[0] += px[i]; m[1] += px[i + 1]; m[2] += px[i + 2]; }
    return m.map((v) => v / (px.length / 4));
  }
  function blocks(src, x, y, w, h, n) {  // mean RGB of each cell of an n×n grid over a rectangle, flattened
    const out = [];
    for (let r = 0; r < n; r++) for (let c = 0; c < n; c++) out.push(...mean(src, x + c * w / n, y + r * h / n, w / n, h / n));
    return out;
  }
  window.__probe = { decode, watch, mean, blocks };
})();
"""


def install_probe(page: Any) -> None:
    page.add_init_script(PROBE_JS)


def latencies_by_pattern(local: list[list[Any]], remote: list[list[Any]], loop_frames: int,
                         fps: float = 30.0) -> list[float]:
    """Page round trips from two [index, time_ms] logs: each output frame's first showing minus the first
    showing of the same input frame (the fake camera loops every `loop_frames` frames, so an index
    only matches a local showing less than half a loop earlier)."""
    half_loop_ms = 1000.0 * loop_frames / fps / 2
    first_local: dict[int, float] = {}
    counted: set[tuple[int, float]] = set()
    out = []
    events = sorted([(t, 0, i) for i, t in local if i is not None] + [(t, 1, i) for i, t in remote if i is not None])
    for t, kind, idx in events:
        if kind == 0:
            if idx not in first_local or t - first_local[idx] > half_loop_ms:
                first_local[idx] = t  # a new showing of this frame
        elif idx in first_local and 0 <= t - first_local[idx] < half_loop_ms:
            key = (idx, first_local[idx])
            if key not in counted:
                counted.add(key)
                out.append(t - first_local[idx])
    return out

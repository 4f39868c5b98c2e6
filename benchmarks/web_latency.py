"""Round trip through the browser: page → genreal serve → page, at 640×360, for both transports, with
the identity backend (what the transport costs) and with our model (the shipped one, ONNX Runtime).

Headless Chromium (Debian's package, `benchmarks.web_browser`) opens the preview page with a fake camera
playing a Y4M whose frames carry the `bench_pattern` index code. Two clocks are read, both on the page:

- ``pattern``: the time an output frame is first shown minus the time the same input frame (same code,
  read from the pixels) was first shown by the page's own camera preview. Same method for both transports.
- ``tag`` (WebSocket only): the page's capture time echoed back in the frame header, at draw time.

The server's own receive → send time per frame comes from /api/stats. Everything runs on one machine over
loopback, so the browser, its codecs and the server share the CPU (the figures name the machine).

    python -m benchmarks.web_latency --seconds 10 --json benchmarks/results/web_latency.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks import web_browser as wb
from models.metrics import describe_machine
from realtime.config import BackendConfig
from realtime.serve.app import ServeConfig, ServerThread
from models.metrics import percentiles

LOOP = 90  # frames in the fake camera file (3 s at 30 fps; it loops)

HOOKS = """
() => {
  window.__local = []; window.__remote = []; window.__tag = [];
  __probe.watch(document.getElementById('local'), window.__local);
  genreal.hooks.onOutput = (hdr, el) => {
    window.__remote.push([__probe.decode(el), performance.now()]);
    if (hdr.t !== undefined) window.__tag.push(performance.now() - hdr.t);
  };
}
"""


def _stats(server: ServerThread) -> dict[str, Any]:
    with urllib.request.urlopen(server.url("/api/stats"), timeout=10) as r:
        return json.load(r)


def measure(browser: Any, backend: str, transport: str, seconds: float, warmup: float,
            shot: Path | None = None) -> dict[str, Any]:
    server = ServerThread(ServeConfig(port=0, backend=BackendConfig(name=backend))).start()
    try:
        page = browser.new_page()
        wb.install_probe(page)
        page.goto(server.url("/"))
        page.select_option("#transport", transport)
        page.select_option("#size", "640x360")
        page.click("#start")
        page.wait_for_function("() => genreal.state.rate.fps > 0", timeout=120_000)
        page.wait_for_timeout(int(warmup * 1000))
        page.evaluate(HOOKS)
        page.wait_for_timeout(int(seconds * 1000))
        local, remote, tag = page.evaluate("() => [window.__local, window.__remote, window.__tag]")
        codec, rtc = None, None
        if transport.startswith("webrtc"):
            # where the time goes on the page's side: Chromium's own encode, decode and jitter-buffer averages
            codec, rtc = page.evaluate("""async () => {
              const st = await genreal.state.pc.getStats(); let id = null, mime = null, inb = null, out = null;
              st.forEach((r) => { if (r.type === 'inbound-rtp' && r.kind === 'video') { id = r.codecId; inb = r; }
                                  if (r.type === 'outbound-rtp' && r.kind === 'video') out = r; });
              st.forEach((r) => { if (r.id === id) mime = r.mimeType; });
              const per = (t, n) => (n ? +(1000 * t / n).toFixed(2) : null);
              return [mime, { page_encode_ms: out ? per(out.totalEncodeTime, out.framesEncoded) : null,
                              page_decode_ms: inb ? per(inb.totalDecodeTime, inb.framesDecoded) : null,
                              page_jitter_buffer_ms: inb ? per(inb.jitterBufferDelay, inb.jitterBufferEmittedCount) : null,
                              sent_size: out ? `${out.frameWidth}x${out.frameHeight}` : null }]; }""")
        sessions = _stats(server)["sessions"]
        if shot is not None:
            page.set_viewport_size({"width": 1400, "height": 560})
            page.screenshot(path=str(shot))
        page.click("#stop")
        page.close()
    finally:
        server.stop()
    pattern = wb.latencies_by_pattern(local, remote, LOOP)
    decoded = sum(1 for c, _ in remote if c is not None)
    s = sessions[0] if sessions else {}
    return {
        "backend": backend, "transport": transport, "codec": codec, "seconds": seconds,
        "outputs": len(remote), "fps": round(len(remote) / seconds, 1), "decoded": decoded,
        "pattern_rtt": percentiles(pattern), "pattern_samples": len(pattern),
        "tag_rtt": percentiles(tag) if tag else None,
        "server": s.get("latency"), "dropped": s.get("dropped"), "frames_in": s.get("frames_in"),
        "webrtc_page": rtc,
    }


def table(results: list[dict[str, Any]]) -> str:
    rows = ["| backend | transport | round trip p50 / p95 / p99 ms (pattern) | tag p50 ms | server p50 ms | fps | samples |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        p, t, s = r["pattern_rtt"], r["tag_rtt"], r["server"] or {}
        name = r["transport"] + (f" ({r['codec'].split('/')[-1]})" if r["codec"] else "")
        rows.append(f"| {r['backend']} | {name} | {p['p50_ms']:.1f} / {p['p95_ms']:.1f} / {p['p99_ms']:.1f} | "
                    f"{t['p50_ms']:.1f} | " if t else
                    f"| {r['backend']} | {name} | {p['p50_ms']:.1f} / {p['p95_ms']:.1f} / {p['p99_ms']:.1f} | – | ")
        rows[-1] += f"{s.get('p50_ms', 0):.1f} | {r['fps']} | {r['pattern_samples']} |"
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per case (default 10)")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring (default 3)")
    ap.add_argument("--backends", default="identity,onnxruntime")
    ap.add_argument("--transports", default="ws-jpeg,ws-rgba,webrtc")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    y4m_dir = Path("benchmarks/results")
    y4m_dir.mkdir(parents=True, exist_ok=True)
    y4m = wb.write_y4m(y4m_dir / "web_latency_camera.y4m", wb.pattern_frames((640, 360), LOOP))
    results = []
    with sync_playwright() as p:
        browser = wb.launch(p, y4m, webgl=False)
        try:
            for backend in args.backends.split(","):
                for transport in args.transports.split(","):
                    t0 = time.perf_counter()
                    shot = (args.json.parent / f"web_preview_{backend}_{transport}.png"
                            if args.json and transport == "ws-jpeg" else None)
                    r = measure(browser, backend, transport, args.seconds, args.warmup, shot)
                    print(f"{backend:12s} {transport:8s} pattern p50 {r['pattern_rtt']['p50_ms']:6.1f} ms "
                          f"({r['pattern_samples']} samples, {r['fps']} fps, {time.perf_counter() - t0:.0f} s)"
                          + (f" page-side {r['webrtc_page']}" if r["webrtc_page"] else ""),
                          file=sys.stderr, flush=True)
                    results.append(r)
        finally:
            browser.close()
    y4m.unlink(missing_ok=True)
    out = {"machine": describe_machine(), "size": "640x360", "results": results, "table": table(results)}
    print(out["table"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

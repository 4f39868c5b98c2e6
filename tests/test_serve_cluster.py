"""`genreal serve --cluster`: camera sessions in Ray actors (realtime/serve/cluster.py).

The quick tests need no Ray. The Ray ones are the `case_*` functions: `test_cluster_cases` and
`test_browser_against_cluster_auto` re-run this file's cases with pytest inside a network namespace that
holds only loopback (`benchmarks.cluster_netns`: Ray would otherwise advertise the machine's interface
address), so no Ray traffic reaches any address but 127.0.0.1. The cases share one two-node
`ray.cluster_utils.Cluster` (1 CPU per node, an 80 MB object store each) and one front end.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from benchmarks import cluster_netns
from realtime.cli import main
from realtime.serve.protocol import Limits, decode_frame

HERE = Path(__file__)


# -- no Ray needed --------------------------------------------------------------------------------
def test_nothing_imports_ray_without_the_cluster_flag():
    code = ("import sys, realtime.cli, realtime.serve.cluster, realtime.serve.transports.ws\n"
            "from realtime.serve.app import ServeConfig, ServerThread\n"
            "from realtime.config import BackendConfig\n"
            "s = ServerThread(ServeConfig(port=0, backend=BackendConfig(name='identity'))).start(); s.stop()\n"
            "assert 'ray' not in sys.modules, 'ray was imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.parametrize("argv, words", [
    (["--cluster", "bogus"], "bad --cluster 'bogus'"),
    (["--cluster", "ray://head:99999"], "the port must be 1-65535"),
    (["--cluster", "auto", "--session-cpus", "-1"], "bad --session-cpus -1"),
    (["--cluster", "auto", "--session-gpus", "-0.5"], "bad --session-gpus -0.5"),
    (["--cluster", "auto", "--session-timeout-s", "0"], "bad --session-timeout-s 0"),
])
def test_bad_cluster_options_are_one_line_errors(argv, words, capsys):
    assert main(["serve", "--port", "0", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_front_ends_behind_a_balancer_share_one_token(monkeypatch, capsys):
    from realtime.cli import build_parser
    from realtime.commands.serve import serve_config

    argv = ["serve", "--host", "0.0.0.0", "--tls", "--cluster", "auto"]
    monkeypatch.setenv("GENREAL_SERVE_TOKEN", "venue-token-0123456789")
    assert serve_config(build_parser().parse_args(argv)).token == "venue-token-0123456789"
    monkeypatch.setenv("GENREAL_SERVE_TOKEN", "short")
    assert main([*argv, "--port", "0"]) == 2
    assert "GENREAL_SERVE_TOKEN must be at least 16" in capsys.readouterr().err
    monkeypatch.delenv("GENREAL_SERVE_TOKEN")
    assert len(serve_config(build_parser().parse_args(argv)).token) >= 16


def test_serve_help_lists_the_cluster_options(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for opt in ("--cluster", "--session-cpus", "--session-gpus", "--session-timeout-s"):
        assert opt in out


# -- the Ray cases, run inside the loopback-only namespace -------------------------------------------
def _run_cases(select: str, timeout: float) -> None:
    pytest.importorskip("ray", reason='the cluster extra is not installed: pip install -e ".[cluster]"')
    why = cluster_netns.problem()
    if why:
        pytest.skip(f"Ray runs only in a loopback-only network namespace, and {why}")
    r = cluster_netns.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-o",
                           "python_functions=case_*", "-k", select, str(HERE)],
                          timeout=timeout, capture_output=True, text=True, cwd=HERE.parent.parent)
    tail = (r.stdout + r.stderr)[-6000:]
    assert r.returncode == 0, tail
    assert " passed" in r.stdout and "skipped" not in r.stdout.splitlines()[-1], tail


@pytest.mark.slow
def test_cluster_cases():
    """Isolation on two nodes, a killed and a frozen worker, a full cluster (the case_* below)."""
    _run_cases("not browser", timeout=420)


@pytest.mark.slow
def test_browser_against_cluster_auto():
    _run_cases("browser", timeout=300)


def _inside() -> None:
    if not cluster_netns.inside():
        pytest.fail("the case_* functions run only inside the loopback namespace (test_cluster_cases)")


@pytest.fixture(scope="module")
def ray_cluster():
    _inside()
    with cluster_netns.two_node_cluster(cpus_per_node=1, object_store_mb=80) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def front(ray_cluster):
    from realtime.config import BackendConfig
    from realtime.serve.app import ServeConfig, ServerThread
    from realtime.serve.cluster import ClusterConfig

    srv = ServerThread(ServeConfig(port=0, backend=BackendConfig(), limits=Limits(max_clients=4),
                                   cluster=ClusterConfig(address=ray_cluster.address, session_cpus=1,
                                                         session_timeout_s=3.0))).start()
    yield srv
    srv.stop()


def _image(w: int = 320, h: int = 180) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([60 + 150 * xx / w, 60 + 120 * yy / h, 200 - 100 * xx / w], axis=2).astype(np.uint8)


def _frame(i: int, img: np.ndarray) -> bytes:
    import cv2

    from realtime.serve.protocol import pack

    jpeg = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
    return pack({"id": i, "t": float(i), "fmt": "jpeg", "w": img.shape[1], "h": img.shape[0]}, jpeg)


class Viewer:
    """One WebSocket camera session: its hello, a style, and a loop of frames with their reply times."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, hello: dict[str, Any]) -> None:
        self.ws, self.hello = ws, hello
        self.replies: list[tuple[float, dict[str, Any], np.ndarray]] = []  # (time, header, image)

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, srv: Any) -> "Viewer":
        ws = await http.ws_connect(srv.ws_url())
        msg = await ws.receive_json(timeout=60)
        assert msg["type"] == "hello", msg
        return cls(ws, msg)

    async def style(self, name: str) -> None:
        await self.ws.send_str(json.dumps({"type": "config", "style": name}))
        msg = await self.ws.receive_json(timeout=30)
        assert msg["type"] == "config" and msg["style"] == name, msg

    async def roundtrip(self, i: int, img: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
        await self.ws.send_bytes(_frame(i, img))
        while True:
            msg = await self.ws.receive(timeout=30)
            if msg.type == aiohttp.WSMsgType.BINARY:
                up = decode_frame(msg.data, Limits())
                self.replies.append((time.monotonic(), up.header, up.image))
                return up.header, up.image
            assert msg.type == aiohttp.WSMsgType.TEXT, msg

    async def stream(self, img: np.ndarray, until: asyncio.Event) -> None:
        i = 0
        while not until.is_set():  # a 60 fps camera at most (the server closes a flood of 240 a second)
            t0 = time.monotonic()
            await self.roundtrip(i, img)
            i += 1
            await asyncio.sleep(max(0.0, 1 / 60 - (time.monotonic() - t0)))


async def _until(cond: Any, tasks: list[asyncio.Task], timeout_s: float = 60.0) -> None:
    """Wait for `cond()`; fail at once if a viewer's stream ended (its error), or after `timeout_s`."""
    t0 = time.monotonic()
    while not cond():
        for t in tasks:
            if t.done():
                t.result()  # raises the stream's error
                raise AssertionError("a viewer's stream ended early")
        assert time.monotonic() - t0 < timeout_s, "timed out"
        await asyncio.sleep(0.05)


def _settled(front: Any, timeout_s: float = 60.0) -> None:
    """Wait until the last case's actors are gone and the spare is up: 1 of the 2 CPUs free, the spare on the other."""
    import ray

    end = time.monotonic() + timeout_s
    while not (front.state.sessions.spare_ready() and ray.available_resources().get("CPU", 0.0) >= 1.0):
        assert time.monotonic() < end, f"the cluster did not settle: {ray.available_resources()}"
        time.sleep(0.1)


def _session(srv: Any, hello: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in srv.state.sessions.stats() if s["id"] == hello["session"])


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 240))


def case_two_sessions_on_two_nodes_keep_their_own_styles(front):
    _settled(front)
    from realtime.backends import create_backend
    from realtime.config import BackendConfig

    img = _image()

    async def go() -> tuple[dict, dict, np.ndarray, np.ndarray]:
        async with aiohttp.ClientSession() as http:
            a, b = await Viewer.open(http, front), await Viewer.open(http, front)
            styles = a.hello["styles"]
            await a.style(styles[0])
            await b.style(styles[1])
            (_, out_a), (_, out_b) = await a.roundtrip(0, img), await b.roundtrip(0, img)
            # the WebRTC path (a decoded frame, relayed as a JPEG message) of the same session
            remote = next(s for s in front.state.sessions._sessions.values() if s.id == a.hello["session"])
            again = await asyncio.get_running_loop().run_in_executor(None, remote.process, sent)
            return _session(front, a.hello), _session(front, b.hello), out_a, out_b, again

    sent = decode_frame(_frame(0, img), Limits()).image
    sa, sb, out_a, out_b, again = _run(go())
    assert again.shape == sent.shape and np.abs(again.astype(np.float32) - out_a).mean() < 6.0
    assert sa["node_id"] != sb["node_id"], "two 1-CPU sessions on two 1-CPU nodes must land on different nodes"
    assert sa["style"] != sb["style"] and sa["actor"] == sb["actor"] == "alive"
    # each output is what an in-process backend of its own style makes of the (JPEG-decoded) input
    for style, out in ((sa["style"], out_a), (sb["style"], out_b)):
        backend = create_backend(BackendConfig(style=style))
        ref = backend([sent])[0]
        backend.close()
        assert np.abs(out.astype(np.float32) - ref).mean() < 4.0, style  # our JPEG round trip only
    assert np.abs(out_a.astype(np.float32) - out_b).mean() > 8.0, "the two styles gave the same picture"


def case_a_killed_or_frozen_worker_is_replaced_and_the_other_session_goes_on(front):
    _settled(front)
    img = _image()

    async def go() -> dict[str, Any]:
        async with aiohttp.ClientSession() as http:
            a, b = await Viewer.open(http, front), await Viewer.open(http, front)
            style = a.hello["styles"][2]
            await a.style(style)
            stop = asyncio.Event()
            streams = [asyncio.create_task(v.stream(img, stop)) for v in (a, b)]
            await asyncio.sleep(1.5)
            pid0, pid_b = _session(front, a.hello)["pid"], _session(front, b.hello)["pid"]
            t_kill = time.monotonic()
            os.kill(pid0, signal.SIGKILL)
            await _until(lambda: any(h.get("notice") for _, h, _ in a.replies), streams)
            after_kill = _session(front, a.hello)
            pid1 = after_kill["pid"]
            t_stop = time.monotonic()
            os.kill(pid1, signal.SIGSTOP)  # a worker that stops answering: replaced after --session-timeout-s
            await _until(lambda: sum(1 for _, h, _ in a.replies if h.get("notice")) >= 2, streams)
            await asyncio.sleep(1.0)
            stop.set()
            await asyncio.gather(*streams)
            return {"a": a, "b": b, "t_kill": t_kill, "t_stop": t_stop, "pid0": pid0, "pid1": pid1, "pid_b": pid_b,
                    "after_kill": after_kill, "final_a": _session(front, a.hello),
                    "final_b": _session(front, b.hello)}

    r = _run(go())
    a, b, final_a, final_b = r["a"], r["b"], r["final_a"], r["final_b"]
    notices = [(t, h["notice"]) for t, h, _ in a.replies if h.get("notice")]
    assert len(notices) == 2 and notices[0][1] == "restarted on another worker", notices
    assert notices[1][1].startswith("restarted on another worker") and "did not answer for 3 s" in notices[1][1]
    # the killed worker: the session had a new actor within the 2 s the issue allows of the failure being seen
    assert r["after_kill"]["restarts"] == 1 and r["after_kill"]["restart_s"] <= 2.0, r["after_kill"]
    assert r["pid1"] != r["pid0"] and final_a["pid"] not in (r["pid0"], r["pid1"])
    # the frozen worker: replaced once the timeout ran out, not before
    assert 3.0 <= notices[1][0] - r["t_stop"], notices[1][0] - r["t_stop"]
    assert final_a["restarts"] == 2 and final_a["actor"] == "alive" and final_a["style"] == a.hello["styles"][2]
    # the other session never stopped: no restart, and frames all along
    assert final_b["restarts"] == 0 and final_b["pid"] == r["pid_b"]
    times = [t for t, _, _ in b.replies]
    gaps = np.diff([t for t in times if t >= r["t_kill"] - 0.5])
    assert len(gaps) > 20 and gaps.max() < 1.0, f"session b stalled {gaps.max():.2f} s while a's worker was replaced"


def case_a_full_cluster_refuses_with_the_reason(front):
    _settled(front)
    async def go() -> tuple[int, str, dict[str, Any]]:
        async with aiohttp.ClientSession() as http:
            a, b = await Viewer.open(http, front), await Viewer.open(http, front)
            ws = await http.ws_connect(front.ws_url())
            msg = await ws.receive(timeout=30)
            stats = await (await http.get(front.url("/api/stats"))).json()
            await asyncio.gather(a.ws.close(), b.ws.close())
            return msg.data, msg.extra, stats

    code, reason, stats = _run(go())
    assert code == 1013 and reason.startswith("no free worker: 2 sessions, 0 CPUs free"), (code, reason)
    assert stats["cluster"]["nodes"] == 2 and stats["cluster"]["total"]["CPU"] == 2.0
    assert stats["cluster"]["free"]["CPU"] == 0.0 and len(stats["sessions"]) == 2
    for s in stats["sessions"]:
        assert s["node"] == "127.0.0.1" and s["actor"] == "alive" and "relay_ms" in s and "frame_ms" in s


def case_browser_preview_against_cluster_auto(tmp_path):
    """Run alone (`-k browser`, as test_browser_against_cluster_auto does): `auto` starts its own local Ray."""
    _inside()
    from benchmarks import web_browser as wb

    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install '.[dev]'")
    if wb.find_chromium() is None:
        pytest.skip("no Chromium binary: apt-get install chromium")
    from realtime.config import BackendConfig
    from realtime.serve.app import ServeConfig, ServerThread
    from realtime.serve.cluster import ClusterConfig

    y4m = wb.write_y4m(tmp_path / "cam.y4m", wb.pattern_frames((640, 360), 30))
    srv = ServerThread(ServeConfig(port=0, backend=BackendConfig(name="identity"),
                                   cluster=ClusterConfig(address="auto", session_cpus=0.5))).start()
    try:
        with sync_api.sync_playwright() as p:
            browser = wb.launch(p, y4m, webgl=False)
            page = browser.new_page()
            wb.install_probe(page)
            page.goto(srv.url("/"))
            page.evaluate("() => { window.__out = []; genreal.hooks.onOutput = (h, el) => "
                          "window.__out.push({ id: h.id, code: __probe.decode(el) }); }")
            page.wait_for_function("() => document.getElementById('style').options.length > 0", timeout=60000)
            page.select_option("#transport", "ws-jpeg")
            page.click("#start")
            page.wait_for_function("() => window.__out.length >= 20", timeout=90000)
            out = page.evaluate("() => window.__out")
            stats = json.loads(page.evaluate("() => fetch('/api/stats').then(r => r.text())"))
            error = page.inner_text("#error")
            started_here = srv.state.sessions.started_ray
            browser.close()
    finally:
        srv.stop()
    assert sum(o["code"] is not None for o in out) >= 15, out  # the identity backend's frames carry their index
    (s,) = stats["sessions"]
    assert s["actor"] == "alive" and s["node"] == "127.0.0.1" and s["frames_out"] >= 20
    assert started_here and stats["cluster"]["address"] == "auto" and stats["cluster"]["nodes"] == 1
    assert error == ""

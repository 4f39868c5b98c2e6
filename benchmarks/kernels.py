"""Kernel benchmark: fused kernels vs their unfused equivalents. Writes JSON.

    python -m benchmarks.kernels [--quick] [--json PATH] [--device auto|cpu|cuda]

CPU: the chosen CPU path (`kernels.get_ops("cpu")`) vs the naive numpy path (`kernels.reference`:
unfused float64 numpy, the obviously-correct version the tests compare against) at camera frames
of 640×360, 1280×720 and 1920×1080; the model runs at `--model-scale` of the frame
(preprocess: frame → model size, postprocess: model size → frame; the cache
kernels on the 1/8 latent grid). Unless ``--quick``, also the candidate CPU paths that
`kernels/cpu.py` chose between, so the static choice stays backed by a figure.

GPU (when CUDA is there): each fused Triton kernel vs the chain of stock torch ops
(`kernels.torch_chain`) at 1080p and stereo 2×1280×960 (model at frame size), inputs already on
the device (no host↔device copies timed). Reports p50/p95 per call from CUDA events around each
call with a 256 MB L2 flush queued before it (the flush keeps the GPU busy while Python launches,
so these time the GPU work, cold cache); the mean of back-to-back calls (no flush: launch overhead
shows here when the GPU outruns Python); and achieved bandwidth = ideal bytes (each needed input
read once, each output written once) / p50, against the device's peak from `PEAK_BANDWIDTH`
(goal: ≥ 50 %).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

import kernels
from kernels import cpu as cpu_ops, reference, spec
from models.metrics import describe_machine, percentiles, ratio_p50, time_ms

log = logging.getLogger(__name__)

CPU_SIZES = ((640, 360), (1280, 720), (1920, 1080))
LATENT_CHANNELS = 8
LEVELS = (5,) * LATENT_CHANNELS
MARGIN = 0.25
# A small camera motion on the latent grid (output → input pixels)
MOTION = np.array([[0.998, 0.01, 0.6], [-0.01, 0.998, -0.4]])

# Peak DRAM bandwidth in GB/s by device-name substring (first match wins; vendor data sheets)
PEAK_BANDWIDTH: tuple[tuple[str, float, str], ...] = (
    ("H200", 4800.0, "H200 (HBM3e) 4.8 TB/s"),
    ("H100 NVL", 3900.0, "H100 NVL (HBM3) 3.9 TB/s"),
    ("H100 PCIe", 2000.0, "H100 PCIe (HBM2e) 2.0 TB/s"),
    ("H100", 3350.0, "H100 SXM (HBM3) 3.35 TB/s"),
    ("A100-SXM4-80GB", 2039.0, "A100 SXM 80GB 2.04 TB/s"),
    ("A100 80GB PCIe", 1935.0, "A100 PCIe 80GB 1.94 TB/s"),
    ("A100", 1555.0, "A100 40GB 1.56 TB/s"),
    ("L40S", 864.0, "L40S 864 GB/s"),
    ("L4", 300.0, "L4 300 GB/s"),
    ("A10", 600.0, "A10 600 GB/s"),
    ("RTX 4090", 1008.0, "RTX 4090 1.01 TB/s"),
    ("RTX 3090", 936.0, "RTX 3090 936 GB/s"),
    ("V100", 900.0, "V100 900 GB/s"),
    ("T4", 320.0, "T4 320 GB/s"),
)


def time_cpu(fn: Callable[[], Any], warmup: int, iters: int, max_s: float) -> dict[str, float]:
    """Wall-clock per call after `warmup` calls; stops early after `max_s` seconds (at least 3 calls)."""
    return time_ms(fn, warmup, iters, min_iters=3, max_s=max_s, digits=4)


# --- CPU ----------------------------------------------------------------------------------------


def _cpu_inputs(rng: np.random.Generator, frame_wh: tuple[int, int], scale: float) -> dict[str, Any]:
    fw, fh = frame_wh
    mw, mh = max(1, round(fw * scale)), max(1, round(fh * scale))
    hp, wp = spec.padded_hw((mw, mh))
    lh, lw = hp // 8, wp // 8
    z = np.tanh(rng.standard_normal((1, LATENT_CHANNELS, lh, lw))).astype(np.float32)
    prev, _ = reference.fsq_hysteresis(z, None, LEVELS, 0.0)
    z2 = np.clip(z + rng.normal(0, 0.05, z.shape), -1, 1).astype(np.float32)
    return {
        "model_wh": (mw, mh),
        "latent_hw": (lh, lw),
        "rgb": rng.integers(0, 256, (fh, fw, 3), np.uint8),
        "nv12": rng.integers(16, 236, (fh * 3 // 2, fw), np.uint8),
        "styled": rng.random((1, 3, hp, wp), dtype=np.float32),
        "z": z2,
        "prev": prev,
        "mask": rng.random((1, lh, lw)) < 0.1,
        "latent": rng.standard_normal((1, LATENT_CHANNELS, lh, lw)).astype(np.float32),
    }


def _cpu_cases(ops: Any, d: dict[str, Any], frame_wh: tuple[int, int]) -> dict[str, Callable[[], Any]]:
    mw, mh = d["model_wh"]
    return {
        "preprocess_rgb_f32": lambda: ops.preprocess(d["rgb"], "rgb", (mw, mh), "float32"),
        "preprocess_nv12_f16": lambda: ops.preprocess(d["nv12"], "nv12", (mw, mh), "float16"),
        "postprocess": lambda: ops.postprocess(d["styled"], (mh, mw), frame_wh),
        "fsq_hysteresis": lambda: ops.fsq_hysteresis(d["z"], d["prev"], LEVELS, MARGIN),
        "dilate_mask_r1": lambda: ops.dilate_mask(d["mask"], 1),
    }


def _cpu_candidates(d: dict[str, Any], frame_wh: tuple[int, int]) -> dict[str, dict[str, Callable[[], Any]]]:
    """The alternatives kernels/cpu.py was chosen from (the first of each group is the chosen one)."""
    import cv2

    mw, mh = d["model_wh"]
    hp, wp = spec.padded_hw((mw, mh))
    img = d["rgb"]

    def resized_padded() -> np.ndarray:
        r = cv2.resize(img, (mw, mh), interpolation=cv2.INTER_LINEAR)
        return cv2.copyMakeBorder(r, 0, hp - mh, 0, wp - mw, cv2.BORDER_REPLICATE)

    def pre_transpose_multiply(dtype: Any) -> np.ndarray:
        out = np.empty((1, 3, hp, wp), dtype)
        np.multiply(resized_padded().transpose(2, 0, 1), np.float32(1 / 255), out=out[0], casting="unsafe")
        return out

    def pre_blob() -> np.ndarray:
        blob = cv2.dnn.blobFromImage(img, 1 / 255, (mw, mh), swapRB=False, crop=False)
        return np.pad(blob, ((0, 0), (0, 0), (0, hp - mh), (0, wp - mw)), mode="edge")

    def pre_float_first() -> np.ndarray:
        f = cv2.resize(img.astype(np.float32) * np.float32(1 / 255), (mw, mh), interpolation=cv2.INTER_LINEAR)
        f = cv2.copyMakeBorder(f, 0, hp - mh, 0, wp - mw, cv2.BORDER_REPLICATE)
        return np.ascontiguousarray(f.transpose(2, 0, 1))[None]

    def post_float() -> np.ndarray:
        x = d["styled"][0, :, :mh, :mw]
        f = cv2.merge([np.ascontiguousarray(np.clip(p, 0, 1)) for p in x])
        f = cv2.resize(f, frame_wh, interpolation=cv2.INTER_LINEAR)
        return (f * np.float32(255) + np.float32(0.5)).astype(np.uint8)

    lat, mats = d["latent"][0], np.ascontiguousarray(MOTION)
    lh, lw = d["latent_hw"]
    return {
        "preprocess_rgb_f32": {
            "split+LUT (chosen)": lambda: cpu_ops.preprocess(img, "rgb", (mw, mh), "float32"),
            "transposing np.multiply": lambda: pre_transpose_multiply(np.float32),
            "cv2.dnn.blobFromImage + pad": pre_blob,
            "float before resize": pre_float_first,
        },
        "preprocess_rgb_f16": {
            "split+LUT (chosen)": lambda: cpu_ops.preprocess(img, "rgb", (mw, mh), "float16"),
            "transposing np.multiply": lambda: pre_transpose_multiply(np.float16),
        },
        "postprocess": {
            "uint8 resize (chosen)": lambda: cpu_ops.postprocess(d["styled"], (mh, mw), frame_wh),
            "float32 resize": post_float,
        },
        "warp_affine": {
            "cv2.warpAffine per plane": lambda: cpu_ops._warp_cv2(lat, mats, lh, lw, "replicate"),
            "numpy gather": lambda: cpu_ops._warp_numpy(lat, mats, lh, lw, "replicate"),
        },
    }


def run_cpu(quick: bool, scale: float, sizes: tuple[tuple[int, int], ...] = CPU_SIZES) -> dict[str, Any]:
    import cv2

    rng = np.random.default_rng(0)
    warmup, iters, max_s = (1, 10, 1.0) if quick else (3, 50, 4.0)
    chosen, naive = kernels.get_ops("cpu"), reference.ReferenceOps()
    out: dict[str, Any] = {
        "cv2_threads": cv2.getNumThreads(),
        "model_scale": scale,
        "latent_channels": LATENT_CHANNELS,
        "warp_path": "cv2.warpAffine" if cpu_ops.cv2_warp_is_exact() else "numpy gather",
        "sizes": {},
    }
    for frame_wh in sizes:
        d = _cpu_inputs(rng, frame_wh, scale)
        key = f"{frame_wh[0]}x{frame_wh[1]}"
        rows: dict[str, Any] = {"model_wh": list(d["model_wh"]), "latent_hw": list(d["latent_hw"]), "ops": {}}
        fast_cases, slow_cases = _cpu_cases(chosen, d, frame_wh), _cpu_cases(naive, d, frame_wh)
        for name, fn in fast_cases.items():
            t_fast = time_cpu(fn, warmup, iters, max_s)
            t_slow = time_cpu(slow_cases[name], 1, max(3, iters // 5), max_s)
            rows["ops"][name] = {"chosen": t_fast, "naive_numpy_reference": t_slow,
                                 "speedup_p50": ratio_p50(t_slow, t_fast, 2)}
            log.info("cpu %s %s: chosen %.3f ms, naive %.3f ms", key, name, t_fast["p50_ms"], t_slow["p50_ms"])
        if not quick:
            rows["candidates"] = {
                group: {label: time_cpu(fn, warmup, iters, max_s) for label, fn in fns.items()}
                for group, fns in _cpu_candidates(d, frame_wh).items()
            }
        out["sizes"][key] = rows
    return out


# --- GPU ----------------------------------------------------------------------------------------


def peak_bandwidth(device_name: str) -> tuple[Optional[float], str]:
    for key, gbs, label in PEAK_BANDWIDTH:
        if key.lower() in device_name.lower():
            return gbs, label
    return None, "unknown device: no peak bandwidth on file"


def time_cuda(fn: Callable[[], Any], warmup: int, iters: int) -> dict[str, float]:
    """CUDA events around each call (L2 flushed before each), plus the mean of back-to-back calls."""
    import torch

    flush = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for s, e in zip(starts, ends):
        flush.zero_()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    ms = np.array([s.elapsed_time(e) for s, e in zip(starts, ends)])
    t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0.record()
    for _ in range(iters):
        fn()
    t1.record()
    torch.cuda.synchronize()
    return {**percentiles(ms.tolist(), digits=4), "back_to_back_ms": round(t0.elapsed_time(t1) / iters, 4)}


def _gpu_cases(bsz: int, frame_wh: tuple[int, int], dev: str = "cuda") -> dict[str, tuple[Callable[[Any], Any], int]]:
    """name → (call(ops), ideal bytes moved) for a batch of `bsz` frames at frame_wh (model at frame size)."""
    import torch

    fw, fh = frame_wh
    hp, wp = spec.padded_hw(frame_wh)
    lh, lw, c = hp // 8, wp // 8, LATENT_CHANNELS
    g = torch.Generator(device=dev).manual_seed(0)
    u8 = lambda *shape: torch.randint(0, 256, shape, dtype=torch.uint8, device=dev, generator=g)  # noqa: E731
    rgb = [u8(fh, fw, 3) for _ in range(bsz)]
    nv12 = [u8(fh * 3 // 2, fw) for _ in range(bsz)]
    styled = torch.rand((bsz, 3, hp, wp), device=dev, generator=g, dtype=torch.float16)
    stereo = bsz == 2
    z = torch.tanh(torch.randn((bsz, c, lh, lw), device=dev, generator=g))
    prev = torch.randint(0, 5, (bsz, c, lh, lw), dtype=torch.int32, device=dev, generator=g)
    mask = torch.rand((bsz, lh, lw), device=dev, generator=g) < 0.1
    frames = torch.stack(rgb) if stereo else rgb[0]  # a stacked (2, H, W, 3) batch: no copy in the call
    nv = torch.stack(nv12) if stereo else nv12[0]
    img_bytes = bsz * fh * fw * 3
    lat_bytes = bsz * c * lh * lw * 4
    return {
        "preprocess_rgb_f16": (lambda o: o.preprocess(frames, "rgb", frame_wh, "float16"),
                               img_bytes + bsz * 3 * hp * wp * 2),
        "preprocess_nv12_f16": (lambda o: o.preprocess(nv, "nv12", frame_wh, "float16"),
                                bsz * fh * fw * 3 // 2 + bsz * 3 * hp * wp * 2),
        "postprocess": (lambda o: o.postprocess(styled, (fh, fw), frame_wh, stereo),
                        bsz * 3 * fh * fw * 2 + img_bytes),
        "fsq_hysteresis": (lambda o: o.fsq_hysteresis(z, prev, LEVELS, MARGIN), 3 * lat_bytes + bsz * lh * lw),
        "dilate_mask_r1": (lambda o: o.dilate_mask(mask, 1), 2 * bsz * lh * lw),
    }


def run_gpu(quick: bool) -> dict[str, Any]:
    import torch
    import triton

    from kernels.torch_chain import TorchChainOps
    from kernels.triton_kernels import TritonOps

    name = torch.cuda.get_device_name()
    peak, peak_label = peak_bandwidth(name)
    warmup, iters = (5, 20) if quick else (20, 200)
    fused, chain = TritonOps("cuda"), TorchChainOps("cuda")
    out: dict[str, Any] = {"device": name, "peak_GBps": peak, "peak_source": peak_label,
                           "torch": torch.__version__, "triton": triton.__version__,
                           "host_device_copies_timed": False, "goal_fraction_of_peak": 0.5, "cases": {}}
    for label, bsz, frame_wh in (("1080p", 1, (1920, 1080)), ("stereo_2x1280x960", 2, (1280, 960))):
        rows = {}
        for op, (call, nbytes) in _gpu_cases(bsz, frame_wh).items():
            t_fused = time_cuda(lambda: call(fused), warmup, iters)
            t_chain = time_cuda(lambda: call(chain), warmup, iters)
            gbps = nbytes / (t_fused["p50_ms"] * 1e-3) / 1e9
            row = {"fused": t_fused, "torch_chain": t_chain,
                   "speedup_p50": ratio_p50(t_chain, t_fused, 2),
                   "ideal_bytes": nbytes, "achieved_GBps_p50": round(gbps, 1),
                   "achieved_GBps_back_to_back": round(nbytes / (t_fused["back_to_back_ms"] * 1e-3) / 1e9, 1)}
            if peak:
                row["fraction_of_peak_p50"] = round(gbps / peak, 3)
                row["meets_goal"] = gbps / peak >= 0.5
            rows[op] = row
            log.info("gpu %s %s: fused %.4f ms, chain %.4f ms, %.0f GB/s", label, op, t_fused["p50_ms"],
                     t_chain["p50_ms"], gbps)
        out["cases"][label] = rows
    return out


# --- entry point --------------------------------------------------------------------------------


def _summary(results: dict[str, Any]) -> list[str]:
    lines = ["CPU: chosen vs naive numpy (p50 ms)"]
    for size, rows in results["cpu"].get("sizes", {}).items():
        for op, r in rows["ops"].items():
            naive = r["naive_numpy_reference"]["p50_ms"]
            lines.append(f"  {size:>9} {op:<22} {r['chosen']['p50_ms']:9.3f} {naive:10.3f}  ×{r['speedup_p50']}")
        for group, cands in rows.get("candidates", {}).items():
            lines.append(f"  {size:>9} candidates {group}: " +
                         ", ".join(f"{k} {v['p50_ms']:.3f}" for k, v in cands.items()))
    gpu = results.get("gpu", {})
    if "cases" in gpu:
        lines.append(f"GPU {gpu['device']} (peak {gpu['peak_source']}): fused vs torch chain (p50 ms), GB/s")
        for case, rows in gpu["cases"].items():
            for op, r in rows.items():
                frac = f" {100 * r['fraction_of_peak_p50']:.0f}% of peak" if "fraction_of_peak_p50" in r else ""
                lines.append(f"  {case:>18} {op:<22} {r['fused']['p50_ms']:8.4f} {r['torch_chain']['p50_ms']:8.4f}"
                             f"  ×{r['speedup_p50']}  {r['achieved_GBps_p50']} GB/s{frac}")
    else:
        lines.append(f"GPU: {gpu.get('skipped', 'not run')}")
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations, no CPU candidates")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/kernels.json"), help="output file")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CPU, plus the GPU when there is one")
    parser.add_argument("--model-scale", type=float, default=0.5,
                        help="CPU part: model resolution as a fraction of the frame (default 0.5)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    results: dict[str, Any] = {"machine": describe_machine()}
    if args.device in ("auto", "cpu"):
        results["cpu"] = run_cpu(args.quick, args.model_scale)
    else:
        results["cpu"] = {"skipped": "--device cuda"}
    if args.device == "cpu":
        results["gpu"] = {"skipped": "--device cpu"}
    elif "cuda" in kernels.available_devices():
        results["gpu"] = run_gpu(args.quick)
    elif args.device == "cuda":
        parser.error("--device cuda: no CUDA GPU with torch and triton here")
    else:
        results["gpu"] = {"skipped": "no CUDA GPU (or torch/triton missing)"}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print("\n".join(_summary(results)))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

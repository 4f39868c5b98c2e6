"""Crops to look at: where strokes sit, and whether a flat dark frame shows a lattice. Writes a PNG + JSON.

    python -m benchmarks.look_crops --model LABEL=DIR [--model LABEL=DIR ...] --png OUT.png
        [--style starry --style pop-outline] [--photo coffee] [--box X,Y,SIZE] [--json OUT.json]

One row per style: photo | teacher | each model, a SIZE-px crop of the held-out photo at 640 px wide,
enlarged 3x (nearest, so every pixel shows). A last row per style: each model on a flat dark frame
(grey 0.08 with sensor noise σ 0.01), the crop's deviation from its mean stretched 5x around mid-grey (the teacher's too).
The JSON has each model's `lattice_peak` on that frame: the largest spectral power at the 4-px lattice
frequencies (fx, fy in {0, 1/4, 1/2} cycles/px, DC excluded) over the spectrum's median; the noise input's
own is given for reference.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

log = logging.getLogger("benchmarks.look_crops")
STRETCH = 5  # the flat rows' deviation from their mean, stretched this much around mid-grey


def lattice_peak(img_CHW: np.ndarray, border: int = 16) -> float:
    """A 4-px lattice's peak in the grey image (C, H, W): the largest power at the lattice frequencies over
    the spectrum's median power (white noise: a few; a lattice: thousands)."""
    g = np.asarray(img_CHW, np.float64).mean(0)[border:-border, border:-border]
    p = np.abs(np.fft.fft2(g - g.mean())) ** 2
    fy, fx = np.abs(np.fft.fftfreq(g.shape[0])), np.abs(np.fft.fftfreq(g.shape[1]))
    on = np.isin(np.round(fx, 6), (0.0, 0.25, 0.5))[None, :] & np.isin(np.round(fy, 6), (0.0, 0.25, 0.5))[:, None]
    on[0, 0] = False
    return float(p[on].max() / max(float(np.median(p)), 1e-30))


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.look_crops", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True, metavar="LABEL=DIR", help="a model folder, repeatable")
    ap.add_argument("--style", action="append", default=None, help="style name, repeatable (default starry, pop-outline)")
    ap.add_argument("--photo", default="coffee", help="held-out skimage photo (default coffee)")
    ap.add_argument("--box", default="200,120,128", help="crop X,Y,SIZE in the 640-px-wide photo (default 200,120,128)")
    ap.add_argument("--png", type=Path, required=True)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import torch
    from PIL import Image

    from models.build import load_model
    from models.data import DataConfig, Variant, render_variant
    from models.evaluate import stylize
    from models.teachers import parse_teacher

    models = []
    for item in args.model:
        label, _, path = item.partition("=")
        m, manifest = load_model(Path(path))
        models.append((label, m, manifest))
    names = [s["name"] for s in models[0][2]["styles"]]
    styles = args.style or ["starry", "pop-outline"]
    x0, y0, size = (int(v) for v in args.box.split(","))
    img = render_variant(Variant(f"skimage:{args.photo}", 640, 0), DataConfig())
    img = img[: img.shape[0] // 8 * 8, : img.shape[1] // 8 * 8]
    rng = np.random.default_rng(0)
    dark = np.clip(0.08 + 0.01 * rng.standard_normal((384, 640, 3)), 0, 1)
    dark_u8 = (dark * 255 + 0.5).astype(np.uint8)
    up = 3
    rows: list[np.ndarray] = []
    report: dict[str, Any] = {"photo": args.photo, "box": [x0, y0, size],
                              "lattice_peak_input": lattice_peak(dark_u8.transpose(2, 0, 1) / 255), "models": {}}

    def crop(a: np.ndarray, yy: int = y0, xx: int = x0) -> np.ndarray:
        return np.repeat(np.repeat(a[yy:yy + size, xx:xx + size], up, 0), up, 1)

    for style in styles:
        si = names.index(style)
        teacher = parse_teacher(models[0][2]["styles"][si]["teacher"])
        tiles = [crop(img), crop(teacher(img))]
        flat_tiles = [crop(dark_u8, 128, 256)]
        outs = [("teacher", teacher(dark_u8).astype(np.float32))]
        for label, m, _ in models:
            with torch.no_grad():
                tiles.append(crop(stylize(m, img, si, m.cfg.default_steps)))
                outs.append((label, stylize(m, dark_u8, si, m.cfg.default_steps).astype(np.float32)))
        for label, y in outs:
            dev = (y - y.mean(axis=(0, 1))) * STRETCH + 128
            flat_tiles.append(crop(np.clip(dev, 0, 255).astype(np.uint8), 128, 256))
            report["models"].setdefault(label, {})[style] = {
                "lattice_peak": round(lattice_peak(y.transpose(2, 0, 1) / 255), 1),
                "flat_std": round(float((y / 255).std(axis=(0, 1)).mean()), 5)}
        rows += [np.concatenate(tiles, 1), np.concatenate(flat_tiles, 1)]
    sheet = np.concatenate(rows, 0)
    args.png.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(args.png)
    report["columns"] = ["photo", "teacher"] + [label for label, _, _ in models]
    report["rows"] = [f"{s} {r}" for s in styles for r in ("crop", f"flat dark x{STRETCH}")]
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Does the student's grain follow the content as the teacher's does? The texture ratio (mean |Laplacian|
of grey, ours / teacher; `models.metrics.texture_ratio`) per style on three kinds of picture:

    python -m benchmarks.texture_by_content [--model DIR] [--width 640] [--steps K] [--json OUT.json]

- ``train_photos``: the first `--train-photos` of the scikit-image photographs the model trained on
  (`models.data.TRAIN_PHOTOS`; six by default: astronaut, chelsea, immunohistochemistry,
  hubble_deep_field, retina, camera: fur, stars, tissue, busy detail over most of the frame);
- ``procedural``: the procedural training images (`models.data.procedural_image`, seeds 0..2);
- ``held_out``: the held-out photographs `benchmarks.fidelity` scores (smooth walls, sky, a table).

A student whose grain follows the content as the teacher's does reads about the same on all three; one
that lays down about the same grain everywhere reads low on the busier training pictures and high on
the smoother held-out ones. A loss on the ratio per training crop then pulls the grain *up* (the
training crops are where the student is too smooth), which is what the `grain` term did (README).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

log = logging.getLogger("benchmarks.texture_by_content")


def picture_sets(width: int, train_photos: int, procedural: int) -> dict[str, list[np.ndarray]]:
    """The three kinds of picture above, uint8 RGB at `width`, sides multiples of 8 (as training renders them)."""
    from models.data import HELD_OUT_PHOTOS, TRAIN_PHOTOS, DataConfig, Variant, render_variant

    cfg = DataConfig()
    sources = {"train_photos": [f"skimage:{n}" for n in TRAIN_PHOTOS[:train_photos]],
               "procedural": [f"procedural:{i}" for i in range(procedural)],
               "held_out": [f"skimage:{n}" for n in HELD_OUT_PHOTOS]}
    return {k: [render_variant(Variant(src, width, 0), cfg) for src in v] for k, v in sources.items()}


def texture_by_content(stylize, teacher, sets: dict[str, list[np.ndarray]]) -> dict[str, float]:
    """Mean texture ratio of `stylize(img)` against `teacher(img)` over each set of pictures."""
    from models.metrics import texture_ratio

    return {name: round(float(np.mean([texture_ratio(stylize(img), teacher(img)) for img in imgs])), 3)
            for name, imgs in sets.items()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.texture_by_content", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped model)")
    ap.add_argument("--width", type=int, default=640, help="picture width in px (default 640, as the look)")
    ap.add_argument("--steps", type=int, default=1, help="refine steps K of ours (default 1)")
    ap.add_argument("--train-photos", type=int, default=6, help="training photographs to use (default 6)")
    ap.add_argument("--procedural", type=int, default=3, help="procedural training images to use (default 3)")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/texture_by_content.json"), help="JSON output")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from genreal_errors import UserError
    from models.build import load_model
    from models.evaluate import stylize
    from models.metrics import describe_machine
    from models.teachers import parse_teacher

    try:
        if args.width < 64 or args.steps < 1:
            raise UserError(f"bad --width {args.width} / --steps {args.steps}: at least 64 px and 1 step")
        model, manifest = load_model(args.model)
        if args.steps > model.cfg.max_steps:
            raise UserError(f"bad --steps {args.steps}: this model has at most {model.cfg.max_steps}")
        styles = [(i, s["name"], parse_teacher(s["teacher"])) for i, s in enumerate(manifest["styles"])]
    except UserError as exc:
        print(f"texture_by_content: error: {exc}", file=sys.stderr)
        return 2
    import torch

    sets = picture_sets(args.width, args.train_photos, args.procedural)
    torch.set_grad_enabled(False)
    rows = []
    for i, name, teacher in styles:
        if teacher.paired:
            continue
        row = {"name": name, **texture_by_content(lambda img: stylize(model, img, i, args.steps), teacher, sets)}
        rows.append(row)
        log.info("%-12s %s", name, "  ".join(f"{k} {v:.2f}" for k, v in row.items() if k != "name"))
    mean = {k: round(float(np.mean([r[k] for r in rows])), 3) for k in sets} if rows else {}
    log.info("mean         %s", "  ".join(f"{k} {v:.2f}" for k, v in mean.items()))
    result = {"model": str(args.model or "shipped"), "width": args.width, "steps": args.steps,
              "sets": {k: len(v) for k, v in sets.items()}, "styles": rows, "mean": mean,
              "machine": describe_machine()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

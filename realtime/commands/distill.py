"""`genreal distill`: train one multi-style student from teachers (needs the `train` extra)."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from genreal_errors import UserError

TEACHER_HELP = (
    "[NAME=]SPEC, repeat for several styles: builtin:N, builtin:3:0.5,12:0.5, image:PATH, onnx:PATH, "
    "pairs:DIR or procedural:cel (NAME defaults to a name made from the spec)"
)
_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)=(.+)$")


def split_named_spec(text: str) -> tuple[str, str]:
    """'starry=builtin:19' → ('starry', 'builtin:19'); 'builtin:19' → ('builtin-19', 'builtin:19').

    Default names are the spec with every character outside [A-Za-z0-9_.-] replaced by '-'
    (a style name never holds ':' or ',', which separate blends).
    """
    m = _NAME.match(text.strip())
    if m:
        return m.group(1), m.group(2)
    spec = text.strip()
    base = Path(spec.partition(":")[2]).stem if spec.startswith(("image:", "onnx:", "pairs:")) else ""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{spec.partition(':')[0]}-{base}" if base else spec).strip("-")
    return name or "style", spec


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("distill", help="distill teachers into one multi-style model (needs torch)",
                       description="Distill one or more teachers into one few-step multi-style model. "
                                   "Teacher outputs are cached; checkpoints are written periodically.")
    p.add_argument("--teacher", action="append", required=True, metavar="[NAME=]SPEC", help=TEACHER_HELP)
    p.add_argument("--preset", default="cpu", choices=("cpu", "gpu", "tiny"),
                   help="cpu: ~45 min on 2 cores; gpu: CUDA, bigger; tiny: a smoke test (default cpu)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (model, manifest, checkpoint)")
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.safetensors")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--iters", type=int, default=None, metavar="N", help="training iterations (default: the preset's)")
    p.add_argument("--cache-dir", type=Path, default=None, metavar="DIR", help="teacher output cache (default DIR/cache)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def run(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UserError("genreal distill needs torch: pip install 'generative-reality[train]'") from None
    from dataclasses import replace

    from models.distill import PRESETS, DistillConfig, distill
    from models.teachers import parse_teacher

    if args.iters is not None and args.iters < 1:
        raise UserError(f"bad --iters {args.iters}: it must be at least 1")
    named = [split_named_spec(t) for t in args.teacher]
    teachers = tuple(parse_teacher(spec) for _, spec in named)
    preset = PRESETS[args.preset]
    cfg = DistillConfig(
        teachers=teachers,
        names=tuple(n for n, _ in named),
        out=args.out,
        preset=preset if args.iters is None else replace(preset, budget_min=None),
        seed=args.seed,
        resume=args.resume,
        cache_dir=args.cache_dir,
        iters=args.iters,
        progress=not args.no_progress,
    )
    manifest = distill(cfg)
    fid = manifest["evaluation"]["fidelity"]
    print(json.dumps({"out": str(args.out), "mean_psnr": fid["mean_psnr"], "mean_ssim": fid["mean_ssim"],
                      "styles": manifest["styles"]}, indent=2), file=sys.stdout)
    return 0

"""`genreal export`: write a model's ONNX stage graphs (all size presets + dynamic) with metadata."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from genreal_errors import UserError

log = logging.getLogger(__name__)

PRESET_NAMES = ("640x360", "1280x720", "1920x1080", "stereo-1280x960", "dynamic")  # = models.export.ALL_PRESETS


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="export the model's ONNX graphs (needs the train extra)",
                       description="Export the model's stage graphs (encode, embed, initial, refine_step, decode "
                                   "and a fused whole-frame graph) to ONNX (FP32, opset 17): static graphs per size "
                                   "preset plus a dynamic-shape variant, each checked with onnx.checker and against "
                                   "torch (max abs difference <= 1e-3). Writes OUT/<preset>/<stage>.onnx, "
                                   "OUT/tables.npz and OUT/index.json.")
    p.add_argument("--model", type=Path, default=None, metavar="DIR",
                   help="a model folder (default: the shipped model)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="where to write the graphs (default: MODEL/onnx, where the runtime looks for them)")
    p.add_argument("--preset", action="append", default=None, metavar="NAME",
                   help=f"a size preset to export, repeatable: {', '.join(PRESET_NAMES)} or all (default all)")
    p.add_argument("--no-parity", action="store_true", help="skip the torch parity check")
    return p


def _presets(values: Any) -> tuple[str, ...]:
    if not values or "all" in values:
        return PRESET_NAMES
    bad = [v for v in values if v not in PRESET_NAMES]
    if bad:
        raise UserError(f"unknown --preset {bad[0]!r}: use {', '.join(PRESET_NAMES)} or all")
    return tuple(dict.fromkeys(values))


def run(args: argparse.Namespace) -> int:
    presets = _presets(args.preset)
    from models.manifest import resolve_model_dir

    resolve_model_dir(args.model)  # a missing model is a one-line error before torch loads
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} is a file: give a folder")
    from models.export import export_model

    try:
        result = export_model(args.model, args.out, presets=presets, check_parity=not args.no_parity)
    except ModuleNotFoundError as exc:
        if exc.name not in ("torch", "onnx", "safetensors"):
            raise
        raise UserError(f"export needs the train extra ({exc.name} missing): pip install 'generative-reality[train]'") \
            from None
    worst = max(result.max_abs_diff.values(), default=float("nan"))
    print(f"exported {len(result.files) - 2} graphs for {', '.join(result.presets)} to {result.out_dir}"
          + ("" if args.no_parity else f" (max abs diff vs torch {worst:.1e})"), file=sys.stdout, flush=True)
    return 0

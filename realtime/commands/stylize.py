"""`genreal stylize`: restyle still images with our model.

Runs on the base install: ``--backend auto`` picks ONNX Runtime for the shipped model (no torch
needed); torch is used only for a model folder that has no exported ONNX graphs.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from genreal_errors import UserError

log = logging.getLogger(__name__)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("stylize", help="restyle image files with the model",
                       description="Restyle image files; writes DIR/<stem>.png at each input's size. Runs on the "
                                   "base install (ONNX Runtime); torch is needed only for a --model folder without "
                                   "exported ONNX graphs ('genreal export' makes them).")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="input image files")
    p.add_argument("-o", "--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--style", default=None, help="style name or a blend like name:0.5,name2:0.5 (see 'genreal styles')")
    p.add_argument("--steps", type=int, default=None, metavar="K", help="refine steps: 1 up to the steps its manifest measured as helping (evaluation.steps; 'genreal "
                        "styles' shows them; default: the model's own)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run (default auto)")
    p.add_argument("--model", type=Path, default=None, metavar="DIR", help="a model folder (default: the shipped model)")
    p.add_argument("--backend", default="auto", help="auto (default: onnxruntime, or torch for a folder without "
                                                      "ONNX graphs), onnxruntime or torch")
    return p


def run(args: argparse.Namespace) -> int:
    import cv2
    import numpy as np

    from realtime.backends import create_backend
    from realtime.commands.run import backend_config

    for path in args.images:
        if not path.is_file():
            raise UserError(f"image not found: {path}")
    if args.backend not in ("auto", "onnxruntime", "torch"):
        raise UserError(f"--backend {args.backend!r} cannot stylize images: use auto, onnxruntime or torch")
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"-o {args.out} is a file: give a folder")
    backend = create_backend(backend_config(args, temporal=False))
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        backend.close()
        raise UserError(f"cannot create output folder {args.out}: {exc.strerror}") from None
    stems: set[str] = set()
    for path in args.images:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise UserError(f"cannot read image {path}: not a supported image file")
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        out = backend([rgb])[0]
        stem = path.stem
        if stem in stems:
            raise UserError(f"two inputs share the name {stem!r}: outputs would overwrite each other")
        stems.add(stem)
        dest = args.out / f"{stem}.png"
        if not cv2.imwrite(str(dest), np.ascontiguousarray(out[:, :, ::-1])):
            raise UserError(f"cannot write {dest}")
        log.info("%s → %s", path, dest)
    backend.close()
    return 0

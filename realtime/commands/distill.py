"""`genreal distill`: train one multi-style student from teachers (needs the `train` extra)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from genreal_errors import UserError

TEACHER_HELP = (
    "[NAME=]SPEC, repeat for several styles: builtin:N, builtin:3:0.5,12:0.5, image:PATH, onnx:PATH, "
    "pairs:DIR or procedural:cel (NAME defaults to a name made from the spec)"
)
def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("distill", help="distill teachers into one multi-style model (needs torch)",
                       description="Distill one or more teachers into one few-step multi-style model. "
                                   "Teacher outputs are cached; checkpoints are written periodically.")
    p.add_argument("--recipe", default=None, metavar="NAME|FILE",
                   help="run a recipe end to end: a built-in name (cpu: the shipped model's stages; smoke: a "
                        "minute's check) or a .toml file (models/recipes/); every stage's settings come from it, "
                        "a finished stage is kept and an unfinished one resumed when run again with the same --out")
    p.add_argument("--teacher", action="append", default=[], metavar="[NAME=]SPEC", help=TEACHER_HELP)
    p.add_argument("--preset", default="cpu", choices=("cpu", "gpu", "tiny"),
                   help="cpu: ~45 min on 2 cores; gpu: CUDA, bigger; tiny: a smoke test (default cpu)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (model, manifest, checkpoint)")
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.safetensors")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--iters", type=int, default=None, metavar="N", help="training iterations (default: the preset's)")
    p.add_argument("--lr", type=float, default=None, metavar="LR",
                   help="peak learning rate (default: the preset's, 2e-3 for cpu; about 5e-4..1e-3 suits --init "
                        "fine-tuning)")
    p.add_argument("--cache-dir", type=Path, default=None, metavar="DIR", help="teacher output cache (default DIR/cache)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--init", type=Path, default=None, metavar="MODEL_DIR",
                   help="start from this model folder's weights and architecture (same number of styles) instead of "
                        "a fresh initialization")
    p.add_argument("--tex-ch", type=int, default=None, metavar="N",
                   help="width of the decoder's full-resolution texture head (0 = none; the shipped model has 6; "
                        "default: the --init model's, else 0); with --init the head is added to that model's "
                        "decoder and starts as a no-op")
    p.add_argument("--freeze", action="append", default=[], metavar="PREFIX",
                   help="keep the parameters whose names start with PREFIX at their initial values, repeatable "
                        "(e.g. --freeze decoder.up4 --freeze decoder.out with --tex-ch: new texture comes from the head)")
    p.add_argument("--loss", action="append", default=[], metavar="NAME=VALUE",
                   help="set one loss weight or setting (models.distill.LossWeights), repeatable; e.g. "
                        "--loss texture=0 --loss pixel_blur=0 (the defaults are the shipped model's last stage: "
                        "texture 2, pixel_blur 2, temporal 2, warm_temporal 1, lattice 2000, lattice_flat 2000, "
                        "temporal_noise 0.015)")
    return p


def _check_writable_dir(path: Path, what: str) -> None:
    """Raise `UserError` unless folder `path` exists writable or could be created (its nearest existing
    ancestor is a writable folder). Creates nothing."""
    import os

    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise UserError(f"{what} {p} is a file, not a folder: choose another path")
        if not os.access(p, os.W_OK | os.X_OK):
            raise UserError(f"cannot write to {what} {p}: permission denied (choose a writable folder)")
        return
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot create {what} {p}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot create {what} {p}: no write permission in {parent} (choose a writable folder)")


def parse_loss_overrides(items: list[str]) -> dict[str, Any]:
    """['texture=0.5', 'pixel_kind=l1'] → {'texture': 0.5, 'pixel_kind': 'l1'} typed by the LossWeights
    field; `UserError` for unknown names or bad values."""
    from dataclasses import fields

    from models.distill import LossWeights

    known = {f.name: f for f in fields(LossWeights)}
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in known:
            raise UserError(f"bad --loss {item!r}: use NAME=VALUE with NAME one of {', '.join(known)}")
        default = getattr(LossWeights(), name)
        try:
            if isinstance(default, tuple):
                out[name] = tuple(v.strip() for v in value.split(",") if v.strip())
            elif isinstance(default, str):
                out[name] = value.strip()
            else:
                out[name] = float(value)
        except ValueError:
            raise UserError(f"bad --loss {item!r}: {value!r} is not a number") from None
    return out


def _make_dir(path: Path, what: str) -> None:
    """Create the folder `path` (the option `what`), or a one-line `UserError`: a read-only file system passes
    `_check_writable_dir` (root) but not this."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {what} {path}: {exc.strerror or exc} (choose a writable folder)") from None


def _in_out_dir(out: Path, train: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Create --out and run `train` (→ the manifest); a folder this made is removed again if `train` fails
    before writing anything into it."""
    created = not out.exists()
    _make_dir(out, "--out")
    try:
        return train()
    except BaseException:
        if created and not any(out.iterdir()):  # leave no empty folder behind
            out.rmdir()
        raise


def run(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UserError("genreal distill needs torch: pip install 'generative-reality[train]'") from None
    from dataclasses import replace

    from models.distill import PRESETS, DistillConfig, LossWeights, distill
    from models.teachers import parse_teacher, split_named_spec

    if args.cache_dir is not None:
        _check_writable_dir(args.cache_dir, "--cache-dir")
        _make_dir(args.cache_dir, "--cache-dir")
    if args.recipe is not None:
        return _run_recipe(args)
    if not args.teacher:
        raise UserError("genreal distill needs --teacher SPEC (one per style) or --recipe NAME|FILE")

    if args.iters is not None and args.iters < 1:
        raise UserError(f"bad --iters {args.iters}: it must be at least 1")
    if args.lr is not None and not 0 < args.lr <= 0.1:
        raise UserError(f"bad --lr {args.lr}: it must be in (0, 0.1]")
    if args.tex_ch is not None and not 0 <= args.tex_ch <= 64:
        raise UserError(f"bad --tex-ch {args.tex_ch}: it must be 0..64")
    from models.distill import CHECKPOINT

    _check_writable_dir(args.out, "--out")  # before anything is created or trained
    if args.resume and not (args.out / CHECKPOINT).is_file():
        raise UserError(f"--resume: no checkpoint ({CHECKPOINT}) in {args.out}: drop --resume to start afresh")
    named = [split_named_spec(t) for t in args.teacher]
    teachers = tuple(parse_teacher(spec) for _, spec in named)
    preset = PRESETS[args.preset]
    if args.lr is not None:
        preset = replace(preset, lr=args.lr)
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
        init=args.init,
        tex_ch=args.tex_ch,
        freeze=tuple(args.freeze),
        losses=replace(LossWeights(), **parse_loss_overrides(args.loss)),
    )
    manifest = _in_out_dir(args.out, lambda: distill(cfg))
    fid = manifest["evaluation"]["fidelity"]
    print(json.dumps({"out": str(args.out), "mean_psnr": fid["mean_psnr"], "mean_ssim": fid["mean_ssim"],
                      "styles": manifest["styles"]}, indent=2), file=sys.stdout)
    return 0


def _run_recipe(args: argparse.Namespace) -> int:
    """`genreal distill --recipe`: every setting comes from the recipe; options that would contradict it
    are refused."""
    from models.recipe import load_recipe, run_recipe

    clash = [flag for flag, value in (("--teacher", args.teacher), ("--iters", args.iters), ("--lr", args.lr),
                                      ("--init", args.init), ("--tex-ch", args.tex_ch), ("--freeze", args.freeze),
                                      ("--loss", args.loss), ("--resume", args.resume), ("--seed", args.seed != 0),
                                      ("--preset", args.preset != "cpu")) if value]
    if clash:
        raise UserError(f"--recipe sets every stage's settings: drop {', '.join(clash)} (or edit a copy of the "
                        "recipe file)")
    recipe = load_recipe(args.recipe)
    _check_writable_dir(args.out, "--out")
    manifest = _in_out_dir(args.out, lambda: run_recipe(recipe, args.out, cache_dir=args.cache_dir,
                                                         progress=not args.no_progress))
    fid = manifest["evaluation"]["fidelity"]
    print(json.dumps({"out": str(args.out), "recipe": manifest["training"]["recipe"], "mean_psnr": fid["mean_psnr"],
                      "mean_ssim": fid["mean_ssim"], "styles": manifest["styles"]}, indent=2), file=sys.stdout)
    return 0

"""Old recipe vs new at equal steps: two short distillation runs on the shipped model's styles.

    python -m benchmarks.recipe_trial --out DIR [--iters 500] [--init shipped|none] [--lr 5e-4]
        [--threads 1] [--loss texture=1 --loss pixel_blur=2 ...] [--old-loss NAME=VALUE ...]
        [--new-tex-ch N] [--new-freeze PREFIX ...]

Both runs use the cpu preset's data and crops, the same seed, the same number of steps and (by default)
start from the shipped weights (a fine-tuning trial: from scratch, a few hundred steps say little);
the first keeps `LossWeights()` (the shipped recipe) plus any `--old-loss` overrides, the second applies
the `--loss` overrides and, with `--new-tex-ch N`, adds the full-resolution texture head to the decoder
(equal recipes and `--new-tex-ch`: old decoder vs new at equal steps). Each
run writes a model folder (DIR/old, DIR/new) to measure with `python -m benchmarks.fidelity --model`.
The shipped weights are never written.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

log = logging.getLogger("benchmarks.recipe_trial")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.recipe_trial", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="trial folder (DIR/old, DIR/new, DIR/cache)")
    ap.add_argument("--iters", type=int, default=500, help="training steps per run (default 500)")
    ap.add_argument("--init", default="shipped", help="'shipped' (default), 'none' or a model folder")
    ap.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default 5e-4: fine-tuning)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the cores are shared)")
    ap.add_argument("--loss", action="append", default=[], metavar="NAME=VALUE", help="the new recipe's LossWeights")
    ap.add_argument("--old-loss", action="append", default=[], metavar="NAME=VALUE", help="the old arm's LossWeights")
    ap.add_argument("--new-tex-ch", type=int, default=None, metavar="N",
                    help="the new arm's decoder gets a full-resolution texture head of N channels")
    ap.add_argument("--new-freeze", action="append", default=[], metavar="PREFIX",
                    help="the new arm keeps these parameters (name prefixes) at their initial values")
    ap.add_argument("--only", choices=("old", "new"), default=None, help="run one arm only")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import torch

    from models.distill import PRESETS, DistillConfig, LossWeights, distill
    from models.manifest import read_manifest, resolve_model_dir
    from models.model import ModelConfig
    from models.teachers import parse_teacher
    from realtime.commands.distill import parse_loss_overrides
    from genreal_errors import UserError

    try:
        shipped = resolve_model_dir(None)
        manifest = read_manifest(shipped)
        init = None if args.init == "none" else shipped if args.init == "shipped" else Path(args.init)
        new_losses = replace(LossWeights(), **parse_loss_overrides(args.loss))
        old_losses = replace(LossWeights(), **parse_loss_overrides(args.old_loss))
    except UserError as exc:
        print(f"recipe_trial: error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    styles = [s for s in manifest["styles"]]
    teachers = tuple(parse_teacher(s["teacher"]) for s in styles)
    names = tuple(s["name"] for s in styles)
    preset = replace(PRESETS["cpu"], budget_min=None, lr=args.lr, threads=args.threads, ckpt_every=max(100, args.iters))
    model_cfg = ModelConfig.from_dict(manifest["config"])
    summary = {}
    arms = (("old", old_losses, None, ()), ("new", new_losses, args.new_tex_ch, tuple(args.new_freeze)))
    for arm, losses, tex_ch, freeze in arms:
        if args.only and arm != args.only:
            continue
        t0 = time.perf_counter()
        cfg = DistillConfig(teachers=teachers, names=names, out=args.out / arm, preset=preset, model=model_cfg,
                            losses=losses, iters=args.iters, init=init, tex_ch=tex_ch, freeze=freeze, cache_dir=args.out / "cache", progress=False)
        m = distill(cfg)
        summary[arm] = {"losses": m["training"]["losses"], "seconds": round(time.perf_counter() - t0, 1),
                        "training_seconds": m["training"]["seconds"]["training"],
                        "mean_psnr": m["evaluation"]["fidelity"]["mean_psnr"],
                        "mean_psnr_blurred": m["evaluation"]["fidelity"]["mean_psnr_blurred"]}
        log.info("%s: %s", arm, json.dumps(summary[arm]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "trial.json").write_text(json.dumps({"iters": args.iters, "init": str(init), "lr": args.lr,
                                                     "threads": args.threads, "new_tex_ch": args.new_tex_ch, "new_freeze": args.new_freeze,
                                                     "runs": summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`genreal styles`: the shipped model's styles, the teacher each was distilled from, fidelity figures."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from genreal_errors import UserError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("styles", help="list the model's styles with their teachers and fidelity",
                       description="List the styles of the model (default: the shipped one), the teacher "
                                   "each was distilled from and its PSNR / SSIM against that teacher.")
    p.add_argument("--json", action="store_true", help='print {"styles": [{"name", "teacher", "psnr", "ssim"}, ...]}')
    p.add_argument("--model", type=Path, default=None, metavar="DIR", help="a model folder (default: the shipped model)")
    return p


def run(args: argparse.Namespace) -> int:
    from models.manifest import read_manifest

    manifest = read_manifest(args.model)
    styles = []
    for s in manifest["styles"]:
        if not isinstance(s, dict) or "name" not in s:
            raise UserError("corrupt model manifest: every style needs a name")
        styles.append({"name": s["name"], "teacher": s.get("teacher"), "psnr": s.get("psnr"), "ssim": s.get("ssim")})
    if args.json:
        print(json.dumps({"styles": styles}, indent=2), file=sys.stdout)
        return 0
    fid = manifest.get("evaluation", {}).get("fidelity", {}) or {}
    width = max((len(s["name"]) for s in styles), default=4)
    print(f"{'style':<{width}}  {'teacher':<22}  {'PSNR dB':>7}  {'SSIM':>6}")
    for s in styles:
        psnr = f"{s['psnr']:.2f}" if s["psnr"] is not None else "-"
        ssim = f"{s['ssim']:.3f}" if s["ssim"] is not None else "-"
        print(f"{s['name']:<{width}}  {str(s['teacher']):<22}  {psnr:>7}  {ssim:>6}")
    if fid.get("images"):
        print(f"(student vs teacher on held-out {', '.join(fid['images'])}; mean {fid.get('mean_psnr')} dB, "
              f"SSIM {fid.get('mean_ssim')})")
    return 0

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
                                   "each was distilled from, its PSNR / SSIM against that teacher and, where the "
                                   "manifest has the look evaluation, its style distance (0 = the teacher's look, "
                                   "1 = no style) and texture ratio at K=1, and the refine steps --steps offers.")
    p.add_argument("--json", action="store_true", help='print {"styles": [{"name", "teacher", "psnr", "ssim", '
                   '"style_distance", "texture"}, ...], "steps": [...]}')
    p.add_argument("--model", type=Path, default=None, metavar="DIR", help="a model folder (default: the shipped model)")
    return p


def run(args: argparse.Namespace) -> int:
    from models.manifest import read_manifest
    from models.stages import info_from_manifest

    manifest = read_manifest(args.model)
    evaluation = manifest.get("evaluation", {}) or {}
    look = {s.get("name"): s.get("ours_k1", {}) for s in (evaluation.get("look") or {}).get("styles", [])}
    styles = []
    for s in manifest["styles"]:
        if not isinstance(s, dict) or "name" not in s:
            raise UserError("corrupt model manifest: every style needs a name")
        k1 = look.get(s["name"], {})
        styles.append({"name": s["name"], "teacher": s.get("teacher"), "psnr": s.get("psnr"), "ssim": s.get("ssim"),
                       "style_distance": k1.get("style_distance"), "texture": k1.get("texture")})
    steps_eval = evaluation.get("steps") or {}
    # the offered range is the one every --steps check uses (ModelInfo.offered_steps); claimed only when measured
    info = info_from_manifest(manifest, manifest["config"]) if steps_eval.get("useful") else None
    steps = list(range(1, info.offered_steps + 1)) if info is not None else None
    if args.json:
        print(json.dumps({"styles": styles, "steps": steps}, indent=2), file=sys.stdout)
        return 0
    fid = evaluation.get("fidelity", {}) or {}
    width = max((len(s["name"]) for s in styles), default=4)
    fmt = lambda v, spec: format(v, spec) if v is not None else "-"  # noqa: E731
    print(f"{'style':<{width}}  {'teacher':<22}  {'PSNR dB':>7}  {'SSIM':>6}  {'style dist':>10}  {'texture':>7}")
    for s in styles:
        print(f"{s['name']:<{width}}  {str(s['teacher']):<22}  {fmt(s['psnr'], '.2f'):>7}  {fmt(s['ssim'], '.3f'):>6}  "
              f"{fmt(s['style_distance'], '.2f'):>10}  {fmt(s['texture'], '.2f'):>7}")
    if fid.get("images"):
        print(f"(student vs teacher on held-out {', '.join(fid['images'])}; mean {fid.get('mean_psnr')} dB, "
              f"SSIM {fid.get('mean_ssim')}; style distance 0 = the teacher's look, 1 = no style, at K=1)")
    if info is not None:
        print(f"--steps offers {info.offered_range}{_per_step(steps_eval.get('per_k') or {}, info.offered_steps)}")
    return 0


def _per_step(per_k: dict[str, Any], offered: int) -> str:
    """': style distance K=1 0.492, K=2 0.468, K=3 0.455 (K=4 0.445, not offered: less gain than the rule asks)'."""
    def fig(k: str) -> str:
        return f"K={k} {per_k[k]['style_distance']:.3f}"

    ks = sorted((k for k in per_k if k.isdigit() and "style_distance" in (per_k[k] or {})), key=int)
    shown = [fig(k) for k in ks if int(k) <= offered]
    beyond = [fig(k) for k in ks if int(k) > offered]
    if not shown:
        return ""
    rest = f" ({', '.join(beyond)}, not offered: less gain than the manifest's rule asks)" if beyond else ""
    return f" (style distance on held-out photos, lower is closer to the teacher: {', '.join(shown)}{rest})"

"""Where a frame's time goes: each stage graph of our model on ONNX Runtime, and its multiply-adds.

    python -m benchmarks.stage_cost [--model DIR] [--size 640x360] [--iters 40] [--json OUT.json]

The stages of one full frame from the learned start at K=1 (`models.stages.run_frame`): the frame
normalization, encode, embed, initial, one refine step and decode, each called on its own through
`models.ort_stages.OrtStages` (the runtime's engine, CPU, FP32) after a warm-up, in rounds (every stage
once per round) so a shared CPU slows all alike; p50 per stage and its share of their sum. MACs per
part come from one torch forward pass at the same size (`count_macs`): a stage
whose share of the time is far above its share of the MACs is bound by memory traffic, not arithmetic.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

log = logging.getLogger("benchmarks.stage_cost")


def stage_calls(stages: Any, x: np.ndarray) -> dict[str, Callable[[], Any]]:
    """The stage calls of one frame (B, 3, H, W) float32 in 0..1, each on the previous stage's real output."""
    from models.stages import condition

    info = stages.info
    norm = stages.frame_norm(x)
    enc = stages.encode(x, norm)
    levels = np.zeros(enc.zq.shape, np.int32)  # any valid token ids time the same
    emb = stages.embed(levels)
    z0 = stages.initial(emb)
    cond = condition(stages.style_vector(np.eye(len(info.style_names), dtype=np.float32)[0]), enc.ctx)
    z1 = stages.refine(z0, emb, cond, 1, 0)
    return {"frame_norm": lambda: stages.frame_norm(x), "encode": lambda: stages.encode(x, norm),
            "embed": lambda: stages.embed(levels), "initial": lambda: stages.initial(emb),
            "refine_step": lambda: stages.refine(z0, emb, cond, 1, 0),
            "decode": lambda: stages.decode(z1, enc.skip, x, norm)}


def time_rounds(calls: dict[str, Callable[[], Any]], iters: int, warmup: int = 3) -> dict[str, list[float]]:
    """ms per call of each, `iters` rounds after `warmup` (every call once a round)."""
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    out: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(iters):
        for k, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            out[k].append((time.perf_counter() - t0) * 1e3)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.stage_cost", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="model folder with its ONNX export (default: shipped)")
    ap.add_argument("--size", default="640x360", help="frame size WxH (default 640x360)")
    ap.add_argument("--iters", type=int, default=40, help="timed rounds (default 40)")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/stage_cost.json"), help="JSON output")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from genreal_errors import UserError
    from models.metrics import describe_machine, percentiles
    from models.ort_stages import OrtStages
    from realtime.config import parse_size

    try:
        if args.iters < 1:
            raise UserError(f"bad --iters {args.iters}: at least 1")
        w, h = parse_size(args.size)
        stages = OrtStages(args.model, device="cpu", precision="fp32")
    except UserError as exc:
        print(f"stage_cost: error: {exc}", file=sys.stderr)
        return 2
    hp, wp = (h + 7) // 8 * 8, (w + 7) // 8 * 8
    x = np.random.default_rng(0).random((1, 3, hp, wp), dtype=np.float32)
    times = {k: percentiles(v) for k, v in time_rounds(stage_calls(stages, x), args.iters).items()}
    stages.close()
    total = sum(t["p50_ms"] for t in times.values())
    macs = _macs(args.model, hp, wp)
    result = {"model": str(args.model or "shipped"), "size": f"{wp}x{hp}", "iters": args.iters,
              "engine": "onnxruntime, CPU, FP32", "machine": describe_machine(), "ms": times,
              "p50_sum_ms": round(total, 3), "share_of_time": {k: round(t["p50_ms"] / total, 3) for k, t in times.items()},
              "gmac_by_part": {k: round(v / 1e9, 4) for k, v in macs.items()}}
    for k, t in times.items():
        log.info("  %-12s p50 %6.2f ms  (%2.0f%%)", k, t["p50_ms"], 100 * t["p50_ms"] / total)
    log.info("  sum          %6.2f ms; GMAC by part: %s", total, json.dumps(result["gmac_by_part"]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    log.info("wrote %s", args.json)
    return 0


def count_macs(model: Any, x: Any, style: Any) -> dict[str, int]:
    """Multiply-adds of one forward pass (B = 1), split by top-level module (decoder.texture on its own)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    counts: dict[str, int] = {}
    names = {m: n for n, m in model.named_modules()}

    def part(name: str) -> str:
        return "decoder.texture" if name.startswith("decoder.texture") else name.split(".")[0]

    def hook(mod: Any, inp: Any, out: Any) -> None:
        if isinstance(mod, nn.Conv2d):
            k = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
        else:
            k = mod.in_features
        counts[part(names[mod])] = counts.get(part(names[mod]), 0) + out.numel() * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    orig = F.interpolate

    def interp(t: Any, *a: Any, **kw: Any) -> Any:
        out = orig(t, *a, **kw)
        counts["bilinear"] = counts.get("bilinear", 0) + 4 * out.numel()
        return out

    F.interpolate = interp
    try:
        with torch.no_grad():
            model(x, style, model.cfg.default_steps)
    finally:
        F.interpolate = orig
        for h in handles:
            h.remove()
    return counts


def _macs(model_dir: Optional[Path], hp: int, wp: int) -> dict[str, int]:
    """MACs per part of one forward pass at (hp, wp), K = 1; {} where torch is not installed."""
    try:
        import torch
    except ImportError:
        return {}
    from models.build import load_model

    model, _ = load_model(model_dir)
    style = model.style_embedding(torch.eye(model.cfg.num_styles)[0])
    with torch.no_grad():
        return count_macs(model, torch.rand(1, 3, hp, wp), style)


if __name__ == "__main__":
    sys.exit(main())

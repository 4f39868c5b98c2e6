"""The full-resolution texture head's cost: the shipped model vs the same with `tex_ch` = N, per frame.

    python -m benchmarks.decoder_cost [--tex-ch 6] [--size 640x360] [--frames 40] [--json PATH]

Both models are exported (`models.export.export_model`, parity checked) into a temporary folder and run
through the `Backend` contract on ONNX Runtime (preprocess + infer + postprocess, temporal reuse off, a
different photo each frame), taking turns in blocks of 5 frames so a shared CPU slows both alike: compare
the ratio measured in one run. The head's weights are random (untrained weights time the same; a zero last
layer is replaced so nothing can be folded away). MACs: every convolution and linear layer of one forward
pass at the size (torch hooks), plus 4 multiply-adds per output value of each bilinear upsampling.
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

log = logging.getLogger("benchmarks.decoder_cost")


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


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.decoder_cost", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tex-ch", type=int, default=6, help="the head's width (default 6)")
    ap.add_argument("--size", default="640x360", help="frame size WxH with an exported preset (default 640x360)")
    ap.add_argument("--frames", type=int, default=40, help="timed frames per model (default 40)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import torch

    from models.build import build_model, load_model, save_model
    from models.distill import load_matching
    from models.export import export_model
    from models.manifest import read_manifest, resolve_model_dir
    from models.metrics import describe_machine, percentiles
    from realtime.backends import create_backend
    from realtime.config import BackendConfig

    w, h = (int(v) for v in args.size.lower().split("x"))
    shipped = resolve_model_dir(None)
    old, _ = load_model(shipped)
    manifest = read_manifest(shipped)
    torch.manual_seed(0)
    new = build_model(replace(old.cfg, tex_ch=args.tex_ch)).eval()
    load_matching(new, old.state_dict())
    with torch.no_grad():
        new.decoder.texture.out.weight.normal_(0, 0.05)
    x = torch.rand(1, 3, (h + 7) // 8 * 8, (w + 7) // 8 * 8)
    style = old.style_embedding(torch.eye(old.cfg.num_styles)[0])
    macs = {"old": count_macs(old, x, style), "new": count_macs(new, x, style)}
    photos = _photos(w, h)
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {}
        for arm, model in (("old", old), ("new", new)):
            d = Path(tmp) / arm
            save_model(model, d, {k: v for k, v in manifest.items() if k != "config"})
            t0 = time.perf_counter()
            export_model(d, presets=[args.size])
            log.info("%s exported in %.0f s", arm, time.perf_counter() - t0)
            dirs[arm] = d
        backends = {arm: create_backend(BackendConfig(name="onnxruntime", device="cpu", temporal=False,
                                                      precision="fp32", model_dir=d)) for arm, d in dirs.items()}
        times: dict[str, list[float]] = {arm: [] for arm in backends}
        for arm, b in backends.items():  # warm-up
            for i in range(3):
                b([photos[i % len(photos)]])
        i = 0
        while min(len(t) for t in times.values()) < args.frames:
            for arm, b in backends.items():
                for _ in range(5):
                    t0 = time.perf_counter()
                    b([photos[i % len(photos)]])
                    times[arm].append((time.perf_counter() - t0) * 1e3)
                    i += 1
    p50 = {arm: percentiles(t)["p50_ms"] for arm, t in times.items()}
    result: dict[str, Any] = {
        "size": args.size, "tex_ch": args.tex_ch, "frames": args.frames, "machine": describe_machine(),
        "ms_per_frame": {arm: percentiles(t) for arm, t in times.items()},
        "ratio_new_over_old_p50": round(p50["new"] / p50["old"], 3),
        "gmac": {arm: round(sum(c.values()) / 1e9, 4) for arm, c in macs.items()},
        "gmac_by_part": {arm: {k: round(v / 1e9, 4) for k, v in c.items()} for arm, c in macs.items()},
    }
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0


def _photos(w: int, h: int) -> list[np.ndarray]:
    from skimage import data
    from skimage.transform import resize

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        img = getattr(data, name)()
        out.append((resize(img, (h, w), anti_aliasing=True) * 255).astype(np.uint8))
    return out


if __name__ == "__main__":
    raise SystemExit(main())

"""`genreal calibrate`: INT8 Q/DQ stage graphs from real frames, with a fidelity/speed report.

Needs the exported FP32 graphs (``genreal export``) and the `onnx` package (the `train` extra).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from genreal_errors import UserError

log = logging.getLogger(__name__)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "calibrate", help="quantize the exported model to INT8 where fidelity allows",
        description="Collect calibration frames from a source, quantize each exported stage graph to INT8 "
                    "(ONNX Q/DQ, the input of both ONNX Runtime and TensorRT), measure fidelity (whole-frame PSNR "
                    "vs FP32) and speed on this CPU, and keep INT8 only for the stages whose drop against the "
                    "teacher stays below --max-drop-db. Writes <model>/onnx/<preset>/<stage>.int8.onnx and "
                    "int8_report.json. The shipped model needs --out DIR (a copy with the INT8 graphs added).")
    p.add_argument("--model", type=Path, default=None, metavar="DIR",
                   help="a model folder with exported ONNX graphs (default: the shipped model)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="write a copy of the model folder with the INT8 graphs added (needed for the shipped model)")
    p.add_argument("--in-place", action="store_true",
                   help="write into the shipped model folder (maintainers shipping INT8 graphs)")
    p.add_argument("--preset", action="append", default=None, metavar="NAME",
                   help="size preset to calibrate, e.g. 640x360; repeat for several (default: every exported one)")
    p.add_argument("--source", default="demo", metavar="SRC",
                   help="where calibration frames come from: demo (default), a video file, images:GLOB, webcam:N, ...")
    p.add_argument("--frames", type=int, default=24, metavar="N",
                   help="calibration samples to collect; every 4th is held out to measure fidelity (default 24)")
    p.add_argument("--every", type=int, default=4, metavar="N", help="keep every N-th source frame (default 4)")
    p.add_argument("--size", default=None, metavar="WxH", help="calibration size for the dynamic preset (default 640x360)")
    p.add_argument("--method", default="minmax", choices=("minmax", "entropy", "percentile"),
                   help="activation range calibration (default minmax)")
    p.add_argument("--activations", default="int8", choices=("int8", "uint8"),
                   help="int8: symmetric, for ONNX Runtime and TensorRT (default); uint8: ONNX Runtime CPU only")
    p.add_argument("--stages", default=None, metavar="LIST",
                   help="comma-separated stages to try in INT8 (default: encode,embed,initial,refine_step,decode "
                        "and fused when exported)")
    p.add_argument("--max-drop-db", type=float, default=1.0, metavar="DB",
                   help="largest allowed worst-case drop of the PSNR against the teacher (default 1.0)")
    p.add_argument("--min-psnr-db", type=float, default=None, metavar="DB",
                   help="override: keep a stage when its INT8 frame PSNR vs FP32 is at least DB")
    p.add_argument("--steps", type=int, default=None, metavar="K", help="refine steps of the measured frames")
    p.add_argument("--repeats", type=int, default=10, metavar="N", help="timing runs per measurement (default 10)")
    return p


def collect_samples(spec: str, size: tuple[int, int], count: int, batch: int = 1, every: int = 1,
                    progress: bool = True) -> list[Any]:
    """Open `spec`, keep every `every`-th frame resized to `size` (per eye), and group eye images into
    `count` samples of `batch` images each (`calibration.collect.group_samples`). Raises `UserError` for
    an unknown source or when it yields no frames."""
    from tqdm import tqdm

    from calibration.collect import check_samples, group_samples
    from realtime.config import SourceConfig
    from realtime.sources import make_source

    if count < 1:
        raise UserError(f"bad --frames {count}: it must be at least 1")
    source = make_source(SourceConfig(spec=spec, size=size))
    bar = tqdm(total=count, desc="collect frames", unit="sample", disable=None if progress else True)
    source.open()
    try:
        samples, seen = group_samples((item.images for item in source), count, batch, every, lambda: bar.update(1))
    finally:
        source.close()
        bar.close()
    return check_samples(samples, seen, count, batch, every, spec)


def collector(cfg: Any) -> Any:
    """The `calibrate` collector for a `CalibrateConfig`: its source, frame count and spacing."""
    return lambda size, batch: collect_samples(cfg.source, size, cfg.frames, batch, cfg.every, cfg.progress)


def run(args: argparse.Namespace) -> int:
    from realtime.config import parse_size

    from calibration.calibrate import CalibrateConfig, calibrate

    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip()) if args.stages else ()
    if args.frames < 1:
        raise UserError(f"bad --frames {args.frames}: it must be at least 1")
    cfg = CalibrateConfig(
        model_dir=args.model, out=args.out, in_place=args.in_place, presets=tuple(args.preset or ()),
        source=args.source, frames=args.frames, every=args.every,
        size=parse_size(args.size) if args.size else None, method=args.method, activations=args.activations,
        stages=stages, max_drop_db=args.max_drop_db, min_psnr_db=args.min_psnr_db, steps=args.steps,
        repeats=args.repeats, progress=not args.quiet)
    reports = calibrate(cfg, collector(cfg))
    for preset, rep in reports.items():
        frame = rep["frame"]
        line = (f"{preset}: INT8 kept for {', '.join(rep['kept']) or 'no stage'} "
                f"(bound {rep['rule']['min_psnr_db']:.1f} dB vs FP32)")
        if "kept" in frame:
            line += (f"; frame PSNR vs FP32 {frame['kept']['psnr_db']:.1f} dB, {frame['fp32_ms']['p50_ms']:.1f} → "
                     f"{frame['kept_int8_ms']['p50_ms']:.1f} ms ({frame['kept_speedup']:.2f}x) on this CPU")
        print(line)
        for stage, st in rep["stages"].items():
            print(f"  {stage:12s} PSNR {st['psnr_db']:6.2f} dB  {st['fp32_ms']['p50_ms']:8.2f} → {st['int8_ms']['p50_ms']:8.2f} ms"
                  f"  {'INT8' if st['kept'] else 'FP32'}")
    return 0

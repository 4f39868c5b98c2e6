"""`genreal run`: restyle a live or recorded source into one or more sinks."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from realtime.budget import BUDGET_PRESETS
from realtime.config import PRECISIONS, BackendConfig, PipelineConfig, SourceConfig, parse_size
from genreal_errors import UserError

SOURCE_HELP = (
    "webcam:N, a video file, a URL (rtsp://, http://, ...), images:GLOB, demo, demo:live (paced like a camera), demo:stereo, "
    "or stereo forms sbs:SRC, tb:SRC, pair:SRC_L,SRC_R"
)
SINK_HELP = "window, a file path (.mp4 H.264, .mkv FFV1, ...), vcam, web (or web:PORT: the browser page), or null; repeat for several"


def add_pipeline_options(p: argparse.ArgumentParser, *, style_default: Any = None) -> None:
    """Options shared by `run` and `demo`."""
    p.add_argument("--style", default=style_default,
                   help="style name; for --backend teacher an index 0-25 or a blend like 3:0.5,12:0.5 "
                        "(default: the backend's default style)")
    p.add_argument("--backend", default="auto",
                   help="auto (default), teacher, identity, or another registered backend")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run (default auto)")
    p.add_argument("--budget-ms", default=None, metavar="MS",
                   help="capture→display budget in ms, or a preset: " + ", ".join(
                       f"{k} ({v:g} ms)" for k, v in BUDGET_PRESETS.items()))
    p.add_argument("--size", type=str, default=None, metavar="WxH",
                   help="processing size per eye, e.g. 640x360 (default: the source's own size)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="numeric precision of our model (default auto: fp16 on GPUs, fp32 on CPUs; int8 needs "
                        "'genreal calibrate' first)")
    p.add_argument("--model", type=Path, default=None, metavar="DIR",
                   help="a model folder from 'genreal distill' (default: the shipped model)")
    p.add_argument("--steps", type=int, default=None, metavar="K", help="refine steps of our model (1-4)")
    p.add_argument("--no-temporal", action="store_true", help="turn temporal latent reuse off")
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N frames")
    p.add_argument("--stats-json", type=Path, default=None, metavar="PATH", help="write the run's statistics as JSON")


def parse_budget(text: Any) -> Any:
    if text is None:
        return None
    if text in BUDGET_PRESETS:
        return BUDGET_PRESETS[text]
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"bad --budget-ms {text!r}: give milliseconds (e.g. 33) or one of "
                        f"{', '.join(BUDGET_PRESETS)}") from None
    return value


def pipeline_config(args: argparse.Namespace, source: str, sinks: list[str]) -> PipelineConfig:
    if args.max_frames is not None and args.max_frames < 1:
        raise UserError(f"bad --max-frames {args.max_frames}: it must be at least 1")
    return PipelineConfig(
        source=SourceConfig(spec=source, size=parse_size(args.size) if args.size else None,
                            max_frames=args.max_frames),
        sinks=tuple(sinks),
        backend=BackendConfig(name=args.backend, device=args.device, style=args.style,
                              steps=args.steps, temporal=not args.no_temporal, precision=args.precision,
                              model_dir=args.model),
        budget_ms=parse_budget(args.budget_ms),
        stats_json=args.stats_json,
    )


def print_summary(stats: Any) -> None:
    print(stats.summary(), file=sys.stdout, flush=True)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("run", help="restyle a camera, video, stream or stereo source",
                       description="Restyle a live or recorded source into one or more sinks. "
                                   "Live sources drop frames rather than fall behind; files keep every frame.")
    p.add_argument("--source", required=True, metavar="SRC", help=SOURCE_HELP)
    p.add_argument("--sink", action="append", required=True, metavar="SINK", help=SINK_HELP)
    add_pipeline_options(p)
    return p


def run(args: argparse.Namespace) -> int:
    from realtime.app import run_pipeline

    stats = run_pipeline(pipeline_config(args, args.source, args.sink), report=print_summary)
    return 130 if stats.interrupted else 0

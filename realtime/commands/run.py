"""`genreal run`: restyle a live or recorded source into one or more sinks."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from realtime.budget import BUDGET_PRESETS
from realtime.config import (DEFAULT_RECONNECTS, DEFAULT_STALL_S, MAX_SIDE, MIN_SIDE, PRECISIONS, BackendConfig,
                             PipelineConfig, SourceConfig, parse_size)
from realtime.detail import DETAIL_MODES, DetailConfig
from genreal_errors import UserError

SOURCE_HELP = (
    "webcam:N, a video file, - (a video piped into standard input: MPEG-TS, Matroska, not MP4), a URL (rtsp://, "
    "tcp://, http://, ...; reconnected after a stall or a disconnect), images:GLOB, demo, demo:live (paced and "
    "looping like a camera), demo:stereo, or stereo forms sbs:SRC, tb:SRC, pair:SRC_L,SRC_R"
)
EXIT_CODES = ("exit codes: 0 done; 2 a bad option, file, model or output (one line on stderr); 3 a live stream "
              "lost after every reconnect; 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP (outputs finalized, summary and "
              "--stats-json written); 141 standard output closed early (e.g. | head)")
SINK_HELP = "window, a file path (.mp4 H.264, .mkv FFV1, ...), vcam, web (or web:PORT: the browser page), or null; repeat for several"


def add_pipeline_options(p: argparse.ArgumentParser, *, style_default: Any = None) -> None:
    """Options shared by `run` and `demo`."""
    p.add_argument("--style", default=style_default,
                   help="style name or a blend of styles with positive weights like cel:0.5,frost:0.5 (see "
                        "'genreal styles'); for --backend teacher an index 0-25 or a blend like 3:0.5,12:0.5 "
                        "(default: the backend's default style)")
    p.add_argument("--backend", default="auto",
                   help="auto (default: the first engine that can run our model here: tensorrt, onnxruntime on "
                        "cuda, torch on cuda, onnxruntime on the cpu, torch; an error in the model, style or options "
                        "ends the run instead of switching), onnxruntime, torch, tensorrt, teacher or identity")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run (default auto)")
    p.add_argument("--budget-ms", default=None, metavar="MS",
                   help="latency budget in ms, or a preset: " + ", ".join(
                       f"{k} ({v:g} ms)" for k, v in BUDGET_PRESETS.items()) + ". Over budget, the model runs "
                        "fewer steps, then at a lower internal resolution; no frame is dropped for being late (a "
                        "live source drops only frames a newer one replaced). Live sources count capture→display; "
                        "a file (read ahead, every frame kept) counts each frame's own processing and output")
    p.add_argument("--size", type=str, default=None, metavar="WxH",
                   help=f"processing size per eye, e.g. 640x360, each side {MIN_SIDE}-{MAX_SIDE} (default: the "
                        "source's own size; video files pad odd sides to even)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="numeric precision of our model (default auto: fp16 on GPUs, fp32 on CPUs; int8 needs "
                        "'genreal calibrate' first)")
    p.add_argument("--model", type=Path, default=None, metavar="DIR",
                   help="a model folder from 'genreal distill' (default: the shipped model)")
    p.add_argument("--steps", type=int, default=None, metavar="K",
                   help="refine steps of our model: 1 up to the steps its manifest measured as helping "
                        "(evaluation.steps; a model without that record runs 1 to its maximum; default: the model's own)")
    p.add_argument("--no-temporal", action="store_true", help="turn temporal latent reuse off")
    p.add_argument("--detail", default="off", choices=DETAIL_MODES,
                   help="the keyframe detail layer: the style's teacher paints keyframes in the background and "
                        "optical flow carries their strokes to the frames between (on; auto: on where the style "
                        "has a fast teacher and the --budget-ms holds it; default off). The window's HUD and "
                        "--stats-json show its keyframes, confidence and cost; see docs/detail.md")
    p.add_argument("--keyframe-every", type=int, default=DetailConfig.keyframe_every, metavar="N",
                   help=f"--detail: at most one keyframe every N frames (default {DetailConfig.keyframe_every})")
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N frames")
    p.add_argument("--stats-json", type=Path, default=None, metavar="PATH",
                   help="write the run's statistics as JSON (checked writable before the run starts)")
    p.add_argument("--stall-s", type=float, default=DEFAULT_STALL_S, metavar="S",
                   help=f"live streams: no data for S seconds counts as a disconnect (default {DEFAULT_STALL_S:g})")
    p.add_argument("--reconnect", type=int, default=None, metavar="N",
                   help=f"live streams and cameras: after a stall or a disconnect, reconnect up to N times in a "
                        f"row with backoff (default {DEFAULT_RECONNECTS} for URLs and webcams, 0 for files); when "
                        "all fail the run ends with exit code 3")
    p.add_argument("--as-fast-as-possible", action="store_true",
                   help="--sink window: show a video file as fast as it is processed, not at its frame rate")


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
    if not math.isfinite(value):
        raise UserError(f"bad --budget-ms {text!r}: give a finite number of milliseconds")
    return value


def backend_config(args: argparse.Namespace, **overrides: Any) -> BackendConfig:
    """The `BackendConfig` of a command's options (run, demo, serve, stylize: the one place it is built from
    the command line). Options a command does not have keep their defaults; `overrides` win."""
    fields = dict(name=args.backend, device=args.device, style=args.style, steps=args.steps,
                  temporal=not getattr(args, "no_temporal", False), precision=getattr(args, "precision", "auto"),
                  model_dir=args.model)
    if hasattr(args, "detail"):  # run, demo and serve have the detail layer's options
        fields["detail"] = detail_config(args)
    return BackendConfig(**{**fields, **overrides})


def pipeline_config(args: argparse.Namespace, source: str, sinks: list[str]) -> PipelineConfig:
    if args.max_frames is not None and args.max_frames < 1:
        raise UserError(f"bad --max-frames {args.max_frames}: it must be at least 1")
    return PipelineConfig(
        source=SourceConfig(spec=source, size=parse_size(args.size) if args.size else None,
                            max_frames=args.max_frames, stall_s=args.stall_s, reconnect=args.reconnect),
        sinks=tuple(sinks),
        backend=backend_config(args),
        budget_ms=parse_budget(args.budget_ms),
        stats_json=args.stats_json,
        strength=getattr(args, "strength", 1.0),
    )


def detail_config(args: argparse.Namespace) -> DetailConfig:
    """`--detail` and `--keyframe-every` → the detail layer's config (a `UserError` for bad values)."""
    return DetailConfig(mode=args.detail, keyframe_every=args.keyframe_every)


def print_summary(stats: Any) -> None:
    print(stats.summary(), file=sys.stdout, flush=True)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("run", help="restyle a camera, video, stream or stereo source",
                       description="Restyle a live or recorded source into one or more sinks. "
                                   "Live sources drop frames rather than fall behind; files keep every frame.",
                       epilog=EXIT_CODES)
    p.add_argument("--source", required=True, metavar="SRC", help=SOURCE_HELP)
    p.add_argument("--sink", action="append", required=True, metavar="SINK", help=SINK_HELP)
    add_pipeline_options(p)
    p.add_argument("--strength", type=float, default=1.0, metavar="S",
                   help="how much of the restyled picture to show: 0 = the input, 1 = fully restyled (default), "
                        "a blend between (as the browser page's strength slider)")
    return p


def run(args: argparse.Namespace) -> int:
    from realtime.app import run_pipeline

    stats = run_pipeline(pipeline_config(args, args.source, args.sink), report=print_summary,
                         pace_files=not args.as_fast_as_possible)
    return 130 if stats.interrupted else 0

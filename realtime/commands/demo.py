"""`genreal demo`: the main job on embedded defaults — no camera, no GPU, no download."""
from __future__ import annotations

import argparse
import logging
from typing import Any

from realtime.commands.run import add_pipeline_options, pipeline_config, print_summary

log = logging.getLogger(__name__)

DEFAULT_OUT = "genreal-demo.mp4"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="restyle the built-in clip (no camera or GPU needed)",
                       description="Restyle a built-in clip (a slow virtual camera move over photographs "
                                   f"shipped with scikit-image) and write it to {DEFAULT_OUT}, with a latency summary.")
    p.add_argument("--source", default="demo", metavar="SRC", help="demo (default) or demo:stereo, or any run source")
    p.add_argument("--sink", action="append", default=None, metavar="SINK",
                   help=f"where to write (default {DEFAULT_OUT}); window to watch it live")
    add_pipeline_options(p)
    return p


def run(args: argparse.Namespace) -> int:
    from realtime.app import run_pipeline

    sinks = args.sink or [DEFAULT_OUT]
    stats = run_pipeline(pipeline_config(args, args.source, sinks), report=print_summary,
                         pace_files=not args.as_fast_as_possible)  # the file sink says what it wrote
    return 130 if stats.interrupted else 0

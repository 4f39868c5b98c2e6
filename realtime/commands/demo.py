"""`genreal demo`: the main job on embedded defaults — no camera, no GPU, no download.

By default the built-in clip is paced like a 30 fps camera (``demo:live``, one pass of its frames), so the
capture→display figure printed at the end is what a webcam would see on this machine: a frame the model
cannot keep up with is dropped, as with a camera, rather than left waiting in a queue. ``--source demo``
reads the clip as fast as the pipeline takes it (every frame kept, like a video file); its capture→display
then counts the time frames wait in the queue, and the summary says so.
"""
from __future__ import annotations

import argparse
import logging
from typing import Any

from realtime.commands.run import add_pipeline_options, pipeline_config, print_summary

log = logging.getLogger(__name__)

DEFAULT_OUT = "genreal-demo.mp4"
#: the default source: the clip paced like a camera (`--max-frames` defaults to one pass of the clip)
DEFAULT_SOURCE = "demo:live"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="restyle the built-in clip (no camera or GPU needed)",
                       description="Restyle a built-in clip (a slow virtual camera move over photographs "
                                   f"shipped with scikit-image), paced like a 30 fps camera, and write it to "
                                   f"{DEFAULT_OUT}, with a latency summary.")
    p.add_argument("--source", default=None, metavar="SRC",
                   help=f"{DEFAULT_SOURCE} (default: the clip paced like a 30 fps camera, one pass), demo (every "
                        "frame as fast as it is processed, like a video file), demo:stereo, or any run source")
    p.add_argument("--sink", action="append", default=None, metavar="SINK",
                   help=f"where to write (default {DEFAULT_OUT}); window to watch it live")
    add_pipeline_options(p)
    return p


def latency_note(source: str, stats: Any) -> str:
    """One line saying what the capture→display figure of this demo run means."""
    p50 = stats.end_to_end.summary()["p50_ms"]
    if source.startswith("demo:live"):
        return (f"capture→display p50 {p50:.0f} ms: the clip was paced like a 30 fps camera, so this is what a webcam "
                f"would see here ({stats.dropped} frames the model could not keep up with were dropped, as live input is)")
    if source in ("demo", "demo:stereo"):
        return (f"capture→display p50 {p50:.0f} ms counts the time frames waited in the queue: {source} is read as fast "
                f"as the pipeline takes it, every frame kept like a video file; 'genreal demo' (paced like a camera) "
                "shows a webcam's figure")
    return ""


def run(args: argparse.Namespace) -> int:
    from realtime.app import run_pipeline
    from realtime.sources.synthetic import DEMO_FRAMES

    source = args.source or DEFAULT_SOURCE
    if args.source is None and args.max_frames is None:
        args.max_frames = DEMO_FRAMES  # one pass of the looping clip
    sinks = args.sink or [DEFAULT_OUT]
    stats = run_pipeline(pipeline_config(args, source, sinks), report=print_summary,
                         pace_files=not args.as_fast_as_possible)  # the file sink says what it wrote
    note = latency_note(source, stats)
    if note:
        print(note, flush=True)
    return 130 if stats.interrupted else 0

"""Output sinks: `make_sink(spec)` turns a `--sink` value into a `Sink`.

SINK: ``null``, ``window``, ``vcam`` (or ``vcam:/dev/videoN``), ``web`` (or ``web:PORT``: the browser page) or a file path whose extension
picks the encoder (see `FORMATS`; written into ``<stem>.partial<ext>`` and renamed onto the target when the
run ends, locked against a second run on the same target). Making a sink validates it (output directory writable,
extension known, display present, virtual camera device present) and raises `UserError`
before any frame is processed; the window / file / camera itself opens at the first frame.
`validate_sink(spec)` runs the same checks without making the sink (nothing starts, nothing binds),
so every output can be checked before the source is opened.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from genreal_errors import UserError
from realtime.sinks.base import Overlay, Sink
from realtime.sinks.file import FORMATS, OTHER_SINKS, FileSink, check_file_sink, supported_extensions
from realtime.sinks.null import NullSink
from realtime.sinks.vcam import VcamSink
from realtime.sinks.window import WindowSink

__all__ = ["make_sink", "validate_sink", "output_path", "Sink", "Overlay", "NullSink", "FileSink", "WindowSink", "VcamSink", "FORMATS"]

SINK_KINDS = f"{OTHER_SINKS} or a video file path"



def output_path(spec: str) -> Optional[Path]:
    """The file a `--sink` value writes, or None for window / vcam / web / null."""
    text = (spec or "").strip()
    kind, _, arg = text.partition(":")
    kind = kind.lower()
    if not text or (kind in ("null", "window") and not arg) or kind in ("vcam", "web") or "://" in text:
        return None
    return Path(text).expanduser()


def validate_sink(spec: str) -> None:
    """Raise `UserError` for a `--sink` value `make_sink` would refuse, without making the sink
    (a web sink's server is not started, a window not opened)."""
    text = (spec or "").strip()
    kind, _, arg = text.partition(":")
    kind = kind.lower()
    if kind == "web":
        from realtime.sinks.web import parse_port

        parse_port(arg)
        return
    if kind == "window" and not arg:
        from realtime.sinks.window import check_display

        check_display()
        return
    if output_path(text) is None:  # null, vcam or a refused URL: nothing opens before the first frame
        make_sink(text)
        return
    check_file_sink(text)  # a file sink would create and lock its partial file


def make_sink(spec: str, fps: Optional[float] = None, pace: bool = False) -> Sink:
    """Make (and validate) the sink for one `--sink` value.

    `fps` is the source's nominal frame rate (file and virtual camera sinks; default 30).
    `pace`: a window shows frames at their timestamps (a file source), not as fast as they come.
    """
    text = (spec or "").strip()
    if not text:
        raise UserError(f"empty --sink: use {SINK_KINDS} ({supported_extensions()})")
    kind, _, arg = text.partition(":")
    kind = kind.lower()
    if kind == "null" and not arg:
        return NullSink()
    if kind == "window" and not arg:
        return WindowSink(pace=pace)
    if kind == "web":
        from realtime.sinks.web import WebSink, parse_port

        return WebSink(parse_port(arg))
    if kind == "vcam":
        return VcamSink(fps=fps, device=arg or None)
    if "://" in text:
        raise UserError(f"--sink {text}: streaming outputs are not supported; use {SINK_KINDS}")
    return FileSink(text, fps=fps)

"""Output sinks: `make_sink(spec)` turns a `--sink` value into a `Sink`.

SINK: ``null``, ``window``, ``vcam`` (or ``vcam:/dev/videoN``), ``web`` (or ``web:PORT``: the browser page) or a file path whose extension
picks the encoder (see `FORMATS`). Making a sink validates it (output directory writable,
extension known, display present, virtual camera device present) and raises `UserError`
before any frame is processed; the window / file / camera itself opens at the first frame.
"""
from __future__ import annotations

from typing import Optional

from genreal_errors import UserError
from realtime.sinks.base import Overlay, Sink
from realtime.sinks.file import FORMATS, FileSink, supported_extensions
from realtime.sinks.null import NullSink
from realtime.sinks.vcam import VcamSink
from realtime.sinks.window import WindowSink

__all__ = ["make_sink", "Sink", "Overlay", "NullSink", "FileSink", "WindowSink", "VcamSink", "FORMATS"]

SINK_KINDS = "window, vcam, web (or web:PORT), null or a video file path"



def make_sink(spec: str, fps: Optional[float] = None) -> Sink:
    """Make (and validate) the sink for one `--sink` value.

    `fps` is the source's nominal frame rate (file and virtual camera sinks; default 30).
    """
    text = (spec or "").strip()
    if not text:
        raise UserError(f"empty --sink: use {SINK_KINDS} ({supported_extensions()})")
    kind, _, arg = text.partition(":")
    kind = kind.lower()
    if kind == "null" and not arg:
        return NullSink()
    if kind == "window" and not arg:
        return WindowSink()
    if kind == "web":
        from realtime.sinks.web import WebSink, parse_port

        return WebSink(parse_port(arg))
    if kind == "vcam":
        return VcamSink(fps=fps, device=arg or None)
    if "://" in text:
        raise UserError(f"--sink {text}: streaming outputs are not supported; use {SINK_KINDS}")
    return FileSink(text, fps=fps)

"""Frame sources: `make_source(cfg)` turns a `--source` spec into an unopened `Source`.

Specs (DESIGN.md §4):

- ``webcam:N`` — camera N (OpenCV, V4L2 on Linux); ``webcam`` = ``webcam:0``
- a video file path (or ``file://PATH``), or a stream URL: ``rtsp://``, ``rtmp://``,
  ``http(s)://``, ``udp://``, ``tcp://``, ``srt://`` (PyAV)
- ``images:GLOB`` — sorted still images played as a video
- ``demo`` / ``demo:live`` / ``demo:stereo`` — the built-in clips (no camera needed; ``demo:live`` is paced like a camera)
- stereo: ``sbs:SRC`` (left | right), ``tb:SRC`` (top = left eye), ``pair:SRC_L,SRC_R``

Source modules import OpenCV and PyAV only when a source is opened.
"""
from __future__ import annotations

import os
import re
from dataclasses import replace

from realtime.config import SourceConfig
from genreal_errors import UserError
from realtime.sources.base import Source

__all__ = ["ACCEPTED_FORMS", "Source", "make_source"]

ACCEPTED_FORMS = ("webcam:N, a video file, a stream URL (rtsp://, rtmp://, http(s)://, udp://, tcp://, srt://), "
                  "images:GLOB, demo, demo:live, demo:stereo, sbs:SRC, tb:SRC or pair:SRC_L,SRC_R")

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_PREFIX = re.compile(r"^([A-Za-z][A-Za-z0-9_+-]*):")
_KINDS = ("webcam", "images", "demo", "sbs", "tb", "pair")


def make_source(cfg: SourceConfig) -> Source:
    """The source `cfg.spec` names, not yet opened. Raises `UserError` for a spec we cannot use."""
    spec = (cfg.spec or "").strip()
    if not spec:
        raise UserError(f"empty --source: use {ACCEPTED_FORMS}")
    url = _URL.match(spec)
    if url:
        from realtime.sources.media import URL_SCHEMES, MediaSource

        scheme = url.group(1).lower()
        if scheme == "file":
            return MediaSource(cfg, spec[len("file://"):])
        if scheme in URL_SCHEMES:
            return MediaSource(cfg, spec, is_url=True)
        raise UserError(f"unknown source {spec!r} ({scheme}:// is not supported): use {ACCEPTED_FORMS}")
    prefix = _PREFIX.match(spec)
    if prefix and not os.path.exists(spec) and not _is_drive_letter(prefix.group(1)):
        return _make_prefixed(cfg, prefix.group(1).lower(), spec[prefix.end():])
    if spec == "demo":
        from realtime.sources.demo import DemoSource

        return DemoSource(cfg)
    if spec == "webcam":
        return _make_prefixed(cfg, "webcam", "0")
    from realtime.sources.media import MediaSource

    return MediaSource(cfg, os.path.expanduser(spec))


def _is_drive_letter(prefix: str) -> bool:
    return os.name == "nt" and len(prefix) == 1


def _make_prefixed(cfg: SourceConfig, kind: str, rest: str) -> Source:
    spec = cfg.spec.strip()
    if kind == "webcam":
        from realtime.sources.webcam import WebcamSource

        return WebcamSource(cfg, _camera_index(rest, spec))
    if kind == "images":
        from realtime.sources.images import ImageSequenceSource

        if not rest:
            raise UserError("images: needs a pattern, e.g. --source 'images:frames/*.png'")
        return ImageSequenceSource(cfg, rest)
    if kind == "demo":
        from realtime.sources.demo import DemoSource, StereoDemoSource

        if rest in ("", "mono"):
            return DemoSource(cfg)
        if rest == "live":
            return DemoSource(cfg, live=True)
        if rest == "stereo":
            return StereoDemoSource(cfg)
        raise UserError(f"unknown demo {spec!r}: use demo, demo:live (paced like a camera) or demo:stereo")
    if kind in ("sbs", "tb"):
        from realtime.sources.stereo import SplitStereoSource

        if not rest:
            raise UserError(f"{kind}: needs a source to split, e.g. --source {kind}:video.mp4")
        inner = make_source(replace(cfg, spec=rest, size=None, max_frames=None))  # resized after the split
        return SplitStereoSource(cfg, inner, kind)  # type: ignore[arg-type]
    if kind == "pair":
        from realtime.sources.stereo import PairSource

        left, right = _split_pair(rest)
        return PairSource(cfg, make_source(replace(cfg, spec=left, max_frames=None)),
                          make_source(replace(cfg, spec=right, max_frames=None)))
    raise UserError(f"unknown source {spec!r} (not a file, and {kind}: is not a source type): use {ACCEPTED_FORMS}")


def _camera_index(rest: str, spec: str) -> int:
    text = rest.strip()
    if text.startswith("/dev/video"):
        text = text[len("/dev/video"):]
    if not text.isdigit():
        raise UserError(f"bad camera index in {spec!r}: use webcam:0, webcam:1, ...")
    return int(text)


def _plausible(part: str) -> bool:
    """Could `part` be one source spec? (used to find the comma that separates two)"""
    part = part.strip()
    if not part:
        return False
    if _URL.match(part) or part in ("demo", "webcam") or os.path.exists(os.path.expanduser(part)):
        return True
    prefix = _PREFIX.match(part)
    return bool(prefix and prefix.group(1).lower() in _KINDS)


def _split_pair(rest: str) -> tuple[str, str]:
    """'SRC_L,SRC_R' → (SRC_L, SRC_R); with several commas, the one split where both sides make sense."""
    cuts = [i for i, ch in enumerate(rest) if ch == ","]
    if not cuts:
        raise UserError(f"pair:{rest} needs two sources separated by a comma, e.g. pair:webcam:0,webcam:1")
    if len(cuts) == 1:
        candidates = [(rest[: cuts[0]], rest[cuts[0] + 1:])]
    else:
        candidates = [(rest[:i], rest[i + 1:]) for i in cuts if _plausible(rest[:i]) and _plausible(rest[i + 1:])]
    if len(candidates) != 1:
        raise UserError(f"cannot tell the two sources apart in pair:{rest}: "
                        "avoid commas in file names, e.g. rename or link the files")
    left, right = (s.strip() for s in candidates[0])
    if not left or not right:
        raise UserError(f"pair:{rest} needs two sources separated by a comma, e.g. pair:left.mp4,right.mp4")
    return left, right

"""Frozen configuration dataclasses, composed into one `PipelineConfig` and validated once.

Invalid combinations raise `UserError`; nothing is silently changed.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from genreal_errors import UserError
from models.style_blend import blend_terms
from realtime.detail import DetailConfig

Size = tuple[int, int]  # (width, height)

#: the sizes our model runs at (its dynamic ONNX profile; sides not a multiple of 8 are padded inside)
MIN_SIDE = 64
MAX_SIDE = 3840
DEFAULT_STALL_S = 5.0  # --stall-s
DEFAULT_RECONNECTS = 5  # --reconnect for live URLs (files: 0)
PRECISIONS = ("auto", "fp32", "fp16", "int8")


def parse_size(text: str) -> Size:
    """'640x360' → (640, 360). Raises `UserError` for anything else."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text or "")
    if not m:
        raise UserError(f"bad --size {text!r}: use WIDTHxHEIGHT, e.g. 640x360")
    w, h = int(m.group(1)), int(m.group(2))
    if not (MIN_SIDE <= w <= MAX_SIDE and MIN_SIDE <= h <= MAX_SIDE):
        raise UserError(f"bad --size {text!r}: each side must be between {MIN_SIDE} and {MAX_SIDE} pixels")
    return w, h


@dataclass(frozen=True)
class SourceConfig:
    """How to open a source. `size` resizes every frame (per eye for stereo); None keeps the native size."""

    spec: str
    size: Optional[Size] = None
    fps: Optional[float] = None  # requested camera rate (webcam); None = the device's default
    max_frames: Optional[int] = None  # stop after this many frames (None = until the input ends)
    stall_s: float = DEFAULT_STALL_S  # live streams: no data for this long counts as a disconnect
    reconnect: Optional[int] = None  # live streams: reconnect attempts in a row (None = the default for the source)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.stall_s) and 0.1 <= self.stall_s <= 3600):
            raise UserError(f"bad --stall-s {self.stall_s:g}: give seconds between 0.1 and 3600")
        if self.reconnect is not None and self.reconnect < 0:
            raise UserError(f"bad --reconnect {self.reconnect}: give 0 (never) or a number of attempts")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise UserError(f"bad fps {self.fps}: give a positive frame rate")


@dataclass(frozen=True)
class BackendConfig:
    name: str = "auto"  # a registry name or "auto"
    device: str = "auto"  # auto | cpu | cuda
    style: Optional[str] = None  # None = the backend's default style
    steps: Optional[int] = None  # refine steps K (our model; its manifest's range, `ModelInfo.check_steps`); None = the model's default
    temporal: bool = True
    precision: str = "auto"  # auto | fp32 | fp16 | int8 (our model's engines; auto = the engine's best)
    model_dir: Optional[Path] = None  # None = the shipped model
    detail: DetailConfig = field(default_factory=DetailConfig)  # the keyframe detail layer (--detail)

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise UserError(f"unknown --device {self.device!r}: use auto, cpu or cuda")
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown --precision {self.precision!r}: use {', '.join(PRECISIONS)}")
        if self.style is not None:
            blend_terms(self.style)  # the blend's form and weights; whether the names exist is the backend's to say


@dataclass(frozen=True)
class PipelineConfig:
    source: SourceConfig
    sinks: tuple[str, ...]
    backend: BackendConfig = field(default_factory=BackendConfig)
    budget_ms: Optional[float] = None  # capture→display budget; None = no deadline
    stats_json: Optional[Path] = None
    queue_size: int = 2  # bounded queues between threads (1–2)
    strength: float = 1.0  # 0 = the input, 1 = fully restyled (realtime/driver.py blends the two images)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.strength) and 0.0 <= self.strength <= 1.0):
            raise UserError(f"bad --strength {self.strength:g}: give a number from 0 (the input) to 1 (fully restyled)")
        if not self.sinks:
            raise UserError("no --sink given: use e.g. --sink window, --sink out.mp4 or --sink null")
        if self.budget_ms is not None and not self.budget_ms > 0:
            raise UserError(f"bad --budget-ms {self.budget_ms}: it must be a positive number of milliseconds")
        if not 1 <= self.queue_size <= 4:
            raise UserError(f"queue_size must be 1 to 4, got {self.queue_size}")

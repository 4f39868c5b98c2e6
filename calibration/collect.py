"""Calibration samples: frames grouped into model inputs, and the held-out split.

Where frames come from (any `--source`: demo, a video, ``images:GLOB``, a camera, stereo forms) is the
runtime's business: `realtime.commands.calibrate.collect_samples` opens the source and hands its
frames to `group_samples`; `calibration.calibrate.calibrate` takes a collector callable.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from genreal_errors import UserError

log = logging.getLogger(__name__)

Sample = list[np.ndarray]  # one model input: `batch` uint8 (H, W, 3) RGB eye images
#: (size (W, H) per eye, batch) → samples: how `calibrate` gets its frames
Collector = Callable[[tuple[int, int], int], list[Sample]]


def group_samples(frames: Iterable[Sequence[np.ndarray]], count: int, batch: int = 1, every: int = 1,
                  on_sample: Optional[Callable[[], None]] = None) -> tuple[list[Sample], int]:
    """Keep every `every`-th frame (each a sequence of eye images) and group eye images into `count`
    samples of `batch` images each; returns (samples, frames read).

    A stereo frame gives its two eyes; for ``batch=2`` mono frames pair up two consecutive kept frames
    (as if two cameras), for ``batch=1`` a stereo frame gives each eye as its own sample."""
    if count < 1:
        raise UserError(f"bad --frames {count}: it must be at least 1")
    if every < 1:
        raise UserError(f"bad --every {every}: it must be at least 1")
    samples: list[Sample] = []
    pending: list[np.ndarray] = []
    seen = 0
    for images in frames:
        seen += 1
        if (seen - 1) % every:
            continue
        pending.extend(np.ascontiguousarray(img) for img in images)
        while len(pending) >= batch and len(samples) < count:
            samples.append(pending[:batch])
            pending = pending[batch:]
            if on_sample is not None:
                on_sample()
        if len(samples) >= count:
            break
    return samples, seen


def check_samples(samples: list[Sample], seen: int, count: int, batch: int, every: int, spec: str) -> list[Sample]:
    """`UserError` for no samples or mixed sizes; a warning when the source ended early."""
    if not samples:
        raise UserError(f"source {spec!r} gave no frames ({seen} read): use a source with at least {batch * every} "
                        f"frames, e.g. --source demo")
    if len(samples) < count:
        log.warning("source %s ended after %d of %d calibration samples; using those", spec, len(samples), count)
    shapes = {img.shape for s in samples for img in s}
    if len(shapes) != 1:
        raise UserError(f"source {spec!r} gave frames of several sizes {sorted(shapes)}: pass --size WxH")
    return samples


def split_samples(samples: list[Sample], eval_every: int = 4) -> tuple[list[Sample], list[Sample]]:
    """(calibration, evaluation): every `eval_every`-th sample is held out to measure fidelity.

    With fewer than two samples, the one sample does both (the report says so).
    """
    if len(samples) < 2:
        return samples, samples
    held = [s for i, s in enumerate(samples) if i % eval_every == eval_every - 1] or [samples[-1]]
    calib = [s for s in samples if not any(s is h for h in held)]
    return calib, held


__all__ = ["Sample", "Collector", "group_samples", "check_samples", "split_samples"]

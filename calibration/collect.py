"""Calibration frames from any `--source` (demo, a video, ``images:GLOB``, a camera, stereo forms)."""
from __future__ import annotations

import logging

import numpy as np

from realtime.config import Size, SourceConfig
from realtime.errors import UserError

log = logging.getLogger(__name__)

Sample = list[np.ndarray]  # one model input: `batch` uint8 (H, W, 3) RGB eye images


def collect_samples(spec: str, size: Size, count: int, batch: int = 1, every: int = 1,
                    progress: bool = True) -> list[Sample]:
    """Open `spec`, keep every `every`-th frame resized to `size` (per eye), and group eye images
    into `count` samples of `batch` images each.

    A stereo source gives its two eyes; for ``batch=2`` a mono source gives two consecutive kept
    frames (as if two cameras), for ``batch=1`` a stereo source gives each eye as its own sample.
    Raises `UserError` for an unknown source or when it yields no frames.
    """
    from tqdm import tqdm

    from realtime.sources import make_source

    if count < 1:
        raise UserError(f"bad --frames {count}: it must be at least 1")
    if every < 1:
        raise UserError(f"bad --every {every}: it must be at least 1")
    source = make_source(SourceConfig(spec=spec, size=size))
    samples: list[Sample] = []
    pending: list[np.ndarray] = []
    seen = 0
    bar = tqdm(total=count, desc="collect frames", unit="sample", disable=None if progress else True)
    source.open()
    try:
        for item in source:
            seen += 1
            if (seen - 1) % every:
                continue
            pending.extend(np.ascontiguousarray(img) for img in item.images)
            while len(pending) >= batch and len(samples) < count:
                samples.append(pending[:batch])
                pending = pending[batch:]
                bar.update(1)
            if len(samples) >= count:
                break
    finally:
        source.close()
        bar.close()
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


__all__ = ["Sample", "collect_samples", "split_samples"]

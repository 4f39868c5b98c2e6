"""Style blends: the one parser of ``--style`` values like ``cel``, ``cel:0.5,frost:0.5`` (our model's named
styles) or ``19``, ``3:0.5,12:0.5`` (the teacher's indices).

`blend_terms` checks a blend's form and weights (usable before a model is loaded: `--style` is refused
before anything opens); `blend_weights` turns it into normalized weights over a model's style names.
A weight must be a finite positive number and the weights' sum finite: NaN, negative, all-zero or
overflowing weights would turn the picture black or white. Numpy only (models/, the runtime and the
teacher runner share it).
"""
from __future__ import annotations

import difflib
import math
from typing import Sequence

import numpy as np

from genreal_errors import UserError


def blend_terms(spec: str) -> list[tuple[str, float]]:
    """'cel:0.5,frost:0.5' → [('cel', 0.5), ('frost', 0.5)]; a plain name weighs 1. Raises `UserError`
    for an empty blend, a weight that is not a finite positive number, or weights whose sum overflows."""
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not parts:
        raise UserError(f"empty --style {spec!r}: give a style name (see 'genreal styles') or a blend like "
                        "cel:0.5,frost:0.5")
    terms: list[tuple[str, float]] = []
    for part in parts:
        name, sep, text = part.rpartition(":")
        if not sep:
            name, text = part, "1"
        name = name.strip()
        if not name:
            raise UserError(f"bad --style {spec!r}: {part!r} has no style name; use e.g. cel:0.5,frost:0.5")
        try:
            weight = float(text)
        except ValueError:
            raise UserError(f"bad --style weight {text.strip()!r} for {name!r} in {spec!r}: use a number, "
                            f"e.g. {name}:0.5") from None
        if not math.isfinite(weight) or weight <= 0:
            raise UserError(f"bad --style weight {text.strip()!r} for {name!r} in {spec!r}: weights must be finite "
                            f"positive numbers, e.g. {name}:0.5")
        terms.append((name, weight))
    if not math.isfinite(sum(w for _, w in terms)):
        raise UserError(f"bad --style {spec!r}: the weights add up to more than a float can hold; use weights "
                        "like 0.5 (they are normalized)")
    return terms


def blend_weights(spec: str, names: Sequence[str], catalog: str = "see 'genreal styles'") -> np.ndarray:
    """A blend over `names` → normalized (S,) float32 weights. Raises `UserError` (an unknown name gets the
    closest known one as a hint; `catalog` says where the names are listed)."""
    names = [str(n) for n in names]
    w = np.zeros(len(names), dtype=np.float64)
    for name, weight in blend_terms(spec):
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            listed = ", ".join(names) if len(names) <= 30 else f"{names[0]} … {names[-1]}"
            raise UserError(f"unknown style {name!r}: {hint}use one of {listed} ({catalog})")
        w[names.index(name)] += weight
    f32 = np.finfo(np.float32)
    if f32.tiny <= w[w > 0].min() and w.sum() < f32.max:
        w32 = w.astype(np.float32)
        return w32 / w32.sum()  # float32, as the runtime always normalized
    return (w / w.sum()).astype(np.float32)  # weights beyond float32's range (or below it): normalize in float64


__all__ = ["blend_terms", "blend_weights"]

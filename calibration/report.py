"""Fidelity of INT8 stages against FP32 and the rule that decides which stages keep INT8 (timing: `models.metrics`).

The rule (documented in `keep_bound_db` and the report):

    The model's fidelity is its PSNR against its teacher, P_ref dB (the best style's figure in the
    model manifest: the strictest case). Quantizing adds an error e to the FP32 output, measured as
    PSNR(INT8 vs FP32) = P_q on the final RGB of whole frames. By the triangle inequality on RMSE,
    the PSNR against the teacher drops by at most 20·log10(1 + 10^((P_ref − P_q)/20)) dB, which is
    below `max_drop_db` (1 dB) whenever P_q ≥ P_ref + 20·log10(1 / (10^(max_drop/20) − 1))
    (≈ P_ref + 18.3 dB for 1 dB). A stage keeps INT8 when quantizing it alone meets that bound, and
    the kept stages together must meet it too (else the weakest kept stage is dropped, repeatedly).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Optional

import numpy as np

from models.metrics import mse, psnr_from_mse, ratio_p50

#: the bound used when the manifest carries no fidelity figures
DEFAULT_MIN_PSNR_DB = 40.0


def fidelity(outputs: Iterable[np.ndarray], references: Iterable[np.ndarray]) -> dict[str, float]:
    """PSNR of outputs vs references over whole frames: of the mean MSE (``psnr_db``) and the worst frame."""
    mses = [mse(a, b) for a, b in zip(outputs, references)]
    if not mses:
        raise ValueError("no frames to compare")
    return {"psnr_db": round(psnr_from_mse(float(np.mean(mses))), 3),
            "worst_frame_psnr_db": round(psnr_from_mse(max(mses)), 3), "frames": len(mses)}


def max_drop_db(reference_psnr_db: float, psnr_vs_fp32_db: float) -> float:
    """Worst-case drop of the PSNR against the teacher when an error of `psnr_vs_fp32_db` is added."""
    return 20.0 * math.log10(1.0 + 10.0 ** ((reference_psnr_db - psnr_vs_fp32_db) / 20.0))


def keep_bound_db(reference_psnr_db: Optional[float], max_drop: float = 1.0) -> float:
    """The PSNR(INT8 vs FP32) a stage needs so the fidelity against the teacher drops by < `max_drop` dB."""
    if not max_drop > 0:
        raise ValueError("max_drop must be positive")
    if reference_psnr_db is None:
        return DEFAULT_MIN_PSNR_DB
    return reference_psnr_db + 20.0 * math.log10(1.0 / (10.0 ** (max_drop / 20.0) - 1.0))


def reference_psnr(manifest: dict[str, Any]) -> Optional[float]:
    """The best style's PSNR against its teacher in a model manifest (None when it has no figures)."""
    values = [float(s["psnr"]) for s in manifest.get("styles", []) if isinstance(s.get("psnr"), (int, float))]
    return max(values) if values else None


def speedup(fp32: dict[str, float], int8: dict[str, float]) -> float:
    """FP32 median / INT8 median (> 1: INT8 is faster), of two `models.metrics.percentiles` records."""
    return ratio_p50(fp32, int8)


__all__ = ["DEFAULT_MIN_PSNR_DB", "fidelity", "max_drop_db", "keep_bound_db", "reference_psnr", "speedup"]

"""The detail layer's per-frame passes (realtime/detail.py), each one fused pass over the frame:

    out = detail_add(student, residual, disp, conf, disp_scale)      # warp the anchor's detail, weight, add
    out = warp_blend(shown, last, flow, weight, disp_scale)          # the temporal filter: the last output
                                                                     # warped to this frame, mixed in

Semantics (the reference, `detail_add_reference`, spells them out in numpy):

- ``student`` uint8 (H, W, 3); ``residual`` float32 (H, W, 3): the anchor frame's detail;
- ``disp`` float32 (h, w, 2) and ``conf`` float32 (h, w) at the flow's size: for each pixel, where it
  was in the anchor frame (x, y offsets in flow px) and how much of the detail to show;
- both are upsampled bilinearly to (H, W) with OpenCV's half-pixel-centre convention (``cv2.resize``,
  ``INTER_LINEAR``, edges replicated); the offset is multiplied by ``disp_scale`` (frame px per flow px);
- the residual is sampled bilinearly at ``p + offset`` (coordinates clamped to the frame: edges
  replicated), multiplied by the confidence and added; the sum is rounded (half to even) and saturated.

`warp_blend` (reference: `warp_blend_reference`): ``flow`` (h, w, 2) and ``weight`` (h, w) upsampled the
same way; ``last`` sampled bilinearly at ``p + flow · disp_scale`` (clamped); the output is
``weight · last + (1 − weight) · shown``, rounded and saturated.

The CPU versions go through OpenCV's fixed-point remap (1/32 px): they match the references within a few
levels where the picture is steep (tests/test_kernels_detail.py). `kernels/detail_triton.py` has the CUDA
versions: one Triton program per block of pixels, all of a pass in one. Nothing heavy at import.
"""
from __future__ import annotations

import functools

import numpy as np

from kernels.reference import resize_bilinear


def _check(student: np.ndarray, residual: np.ndarray, disp: np.ndarray, conf: np.ndarray) -> None:
    if student.dtype != np.uint8 or student.ndim != 3 or student.shape[2] != 3:
        raise ValueError(f"student must be uint8 (H, W, 3), got {student.dtype} {student.shape}")
    if residual.shape != student.shape:
        raise ValueError(f"residual {residual.shape} must match the student's {student.shape}")
    if disp.ndim != 3 or disp.shape[2] != 2 or conf.shape != disp.shape[:2]:
        raise ValueError(f"disp must be (h, w, 2) and conf (h, w): got {disp.shape} and {conf.shape}")


@functools.lru_cache(maxsize=8)
def _grid(h: int, w: int) -> np.ndarray:
    g = np.stack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)), -1)
    g.setflags(write=False)
    return g


def warp_by_flow(img: np.ndarray, disp: np.ndarray, disp_scale: float, cubic: bool = False) -> np.ndarray:
    """`img` (H, W, C) sampled at p + upsampled(disp) · disp_scale (bilinear, or bicubic with `cubic`;
    edges replicated); itself, untouched, for the identity map (no resampling at all)."""
    import cv2

    if not cv2.countNonZero(disp.reshape(-1)):
        return img
    h, w = img.shape[:2]
    m = cv2.resize(disp, (w, h), interpolation=cv2.INTER_LINEAR)
    m *= disp_scale
    m += _grid(h, w)
    return cv2.remap(img, m, None, cv2.INTER_CUBIC if cubic else cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def detail_add(student: np.ndarray, residual: np.ndarray, disp: np.ndarray, conf: np.ndarray,
               disp_scale: float) -> np.ndarray:
    """The CPU pass (OpenCV): resize the map and the confidence, remap, multiply, add with saturation."""
    import cv2

    _check(student, residual, disp, conf)
    h, w = student.shape[:2]
    detail = warp_by_flow(residual, disp, disp_scale)
    c = cv2.cvtColor(cv2.resize(conf, (w, h), interpolation=cv2.INTER_LINEAR), cv2.COLOR_GRAY2RGB)
    return cv2.add(student, cv2.multiply(detail, c), dtype=cv2.CV_8U)


def warp_blend(shown: np.ndarray, last: np.ndarray, flow: np.ndarray, weight: np.ndarray,
               disp_scale: float) -> np.ndarray:
    """The CPU pass (OpenCV): the last output warped by the upsampled flow, mixed in by the upsampled weight."""
    import cv2

    _check_blend(shown, last, flow, weight)
    h, w = shown.shape[:2]
    last = warp_by_flow(last, flow, disp_scale)
    a = cv2.resize(weight, (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.blendLinear(last, shown, a, 1.0 - a)


def _check_blend(shown: np.ndarray, last: np.ndarray, flow: np.ndarray, weight: np.ndarray) -> None:
    if shown.dtype != np.uint8 or shown.ndim != 3 or shown.shape[2] != 3 or last.shape != shown.shape \
            or last.dtype != np.uint8:
        raise ValueError(f"shown and last must be uint8 (H, W, 3) alike, got {shown.shape} and {last.shape}")
    if flow.ndim != 3 or flow.shape[2] != 2 or weight.shape != flow.shape[:2]:
        raise ValueError(f"flow must be (h, w, 2) and weight (h, w): got {flow.shape} and {weight.shape}")


def warp_blend_reference(shown: np.ndarray, last: np.ndarray, flow: np.ndarray, weight: np.ndarray,
                         disp_scale: float) -> np.ndarray:
    """`warp_blend`'s semantics in plain numpy (float64)."""
    _check_blend(shown, last, flow, weight)
    h, w = shown.shape[:2]
    d = resize_bilinear(flow, w, h) * disp_scale
    a = resize_bilinear(weight[..., None], w, h)
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    last_at = _sample(last, gx + d[..., 0], gy + d[..., 1])
    return np.clip(np.rint(a * last_at + (1.0 - a) * shown.astype(np.float64)), 0, 255).astype(np.uint8)


def _sample(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear sample of (H, W, C) at float coordinates, clamped to the image (edges replicated)."""
    h, w = img.shape[:2]
    x = np.clip(x, 0.0, w - 1)
    y = np.clip(y, 0.0, h - 1)
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    a = img.astype(np.float64)
    top = a[y0, x0] * (1 - fx) + a[y0, x1] * fx
    bot = a[y1, x0] * (1 - fx) + a[y1, x1] * fx
    return top * (1 - fy) + bot * fy


def detail_add_reference(student: np.ndarray, residual: np.ndarray, disp: np.ndarray, conf: np.ndarray,
                         disp_scale: float) -> np.ndarray:
    """The semantics in plain numpy (float64): the yardstick for the CPU and CUDA versions."""
    _check(student, residual, disp, conf)
    h, w = student.shape[:2]
    d = resize_bilinear(disp, w, h) * disp_scale  # (H, W, 2)
    c = resize_bilinear(conf[..., None], w, h)  # (H, W, 1)
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    detail = _sample(residual, gx + d[..., 0], gy + d[..., 1])
    return np.clip(np.rint(student.astype(np.float64) + c * detail), 0, 255).astype(np.uint8)


__all__ = ["detail_add", "detail_add_reference", "warp_blend", "warp_blend_reference", "warp_by_flow"]

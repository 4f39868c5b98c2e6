"""The fast CPU paths (OpenCV + numpy, no torch), chosen per kernel by `benchmarks/kernels.py`.

Each function follows `kernels.spec`; where it rounds differently from the float64 reference the
docstring says by how much (the tests hold it to that). Choices, each measured against the
alternatives listed (``python -m benchmarks.kernels`` without ``--quick`` times them again):

- preprocess: decode with ``cv2.cvtColor`` (YUV), resize and pad on uint8 (``cv2.resize``,
  ``cv2.copyMakeBorder``), then split the planes and scale them with a 256-entry ``cv2.LUT``
  straight into the NCHW output. Beat: a transposing ``np.multiply``, ``cv2.dnn.blobFromImage``,
  float conversion before the resize, ``np.take`` with a LUT.
- postprocess: clip, scale and round to uint8 on the model grid (``cv2.multiply`` with a CV_8U
  result), ``cv2.merge``, resize on uint8, blend with ``cv2.addWeighted``. Beat: resizing and
  blending in float32 (about 6× slower at 1080p).
- warp: ``cv2.warpAffine`` per plane when this OpenCV samples float images at float coordinates
  (OpenCV ≥ 4.11's rewrite; older ones snap to 1/32 pixel); otherwise an exact numpy gather.
  Probed once, on first use.
- dilation: ``cv2.dilate`` with a rectangular element (separable inside OpenCV).
- fsq hysteresis and masked blends: vectorized numpy (already memory-bound; nothing to fuse on CPU).
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Optional, Sequence

import numpy as np

from kernels import reference, spec

log = logging.getLogger(__name__)

# k / 255 for every uint8 code k, as (256, 1) tables for cv2.LUT (float16 stored as its bit pattern)
_LUT32 = (np.arange(256) / 255.0).astype(np.float32).reshape(256, 1)
_LUT16 = (np.arange(256) / 255.0).astype(np.float16).view(np.uint16).reshape(256, 1)


def _cv2() -> Any:
    import cv2

    return cv2


# --- preprocess -------------------------------------------------------------------------------


def _decode_u8(image: np.ndarray, fmt: str, h: int, w: int) -> np.ndarray:
    """Camera buffer → uint8 (H, W, 3) in the buffer's own channel order (RGB; BGR stays BGR)."""
    cv2 = _cv2()
    if fmt in ("rgb", "bgr"):
        return image
    if fmt == "nv12":
        return cv2.cvtColor(image, cv2.COLOR_YUV2RGB_NV12)
    return cv2.cvtColor(image.reshape(h, w, 2), cv2.COLOR_YUV2RGB_YUYV)


def preprocess(images: reference.Images, fmt: str = "rgb", out_size: Optional[tuple[int, int]] = None,
               dtype: Any = "float32", pad_multiple: int = 8) -> np.ndarray:
    """Camera buffer(s) → (B, 3, Hp, Wp) RGB in [0, 1].

    Within 1/255 of the reference for RGB/BGR (OpenCV resizes uint8 with 11-bit weights and rounds)
    and within 2/255 for NV12/YUYV (plus OpenCV's fixed-point colour conversion, rounded to uint8).
    """
    cv2 = _cv2()
    items = reference.as_list(images, fmt)
    h_in, w_in = spec.decoded_hw(items[0].shape, fmt)
    w, h = spec.check_out_size(out_size, (w_in, h_in))
    hp, wp = spec.padded_hw((w, h), pad_multiple)
    name = spec.dtype_name(dtype)
    lut = _LUT32 if name == "float32" else _LUT16
    out = np.empty((len(items), 3, hp, wp), np.float32 if name == "float32" else np.uint16)
    order = (2, 1, 0) if fmt == "bgr" else (0, 1, 2)  # plane i of the decoded image → output channel
    for i, image in enumerate(items):
        if image.shape != items[0].shape or image.dtype != np.uint8:
            raise ValueError(f"batched camera images must all be uint8 {items[0].shape}, "
                             f"got {image.dtype} {image.shape}")
        rgb = _decode_u8(np.ascontiguousarray(image), fmt, h_in, w_in)  # (H_in, W_in, 3) uint8
        if (w, h) != (w_in, h_in):
            rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)  # (h, w, 3)
        if (hp, wp) != (h, w):
            rgb = cv2.copyMakeBorder(rgb, 0, hp - h, 0, wp - w, cv2.BORDER_REPLICATE)  # (hp, wp, 3)
        for plane, c in zip(cv2.split(rgb), order):
            cv2.LUT(plane, lut, dst=out[i, c])
    return out if name == "float32" else out.view(np.float16)


# --- postprocess ------------------------------------------------------------------------------


def postprocess(x: np.ndarray, valid_hw: tuple[int, int], out_size: Optional[tuple[int, int]] = None,
                stereo_pack: bool = False) -> np.ndarray:
    """(B, 3, Hp, Wp) float RGB → uint8 display image(s).

    Rounds to uint8 on the model grid before resizing (double rounding): within 1 of the reference's
    uint8 values.
    """
    cv2 = _cv2()
    b, h, w, wo, ho = spec.check_postprocess(x.shape, valid_hw, out_size, stereo_pack)
    # OpenCV >= 5.1's binding reads a one-element array as a scalar (scalar x scalar: a (4, 1) result); a
    # one-element scale array keeps a one-pixel plane an image
    scale: Any = 255.0 if h * w > 1 else np.full((1, 1), 255.0, np.float32)
    eyes = []
    for i in range(b):
        crop = x[i, :, :h, :w]  # (3, h, w) view
        if crop.dtype != np.float32:
            crop = crop.astype(np.float32)
        planes = [cv2.multiply(crop[c], scale, dtype=cv2.CV_8U) for c in range(3)]  # clip + round
        styled = cv2.merge(planes)  # (h, w, 3) uint8
        if (wo, ho) != (w, h):
            styled = cv2.resize(styled, (wo, ho), interpolation=cv2.INTER_LINEAR)  # (Ho, Wo, 3)
        eyes.append(styled)
    return reference.pack_output(np.stack(eyes), stereo_pack)


# --- cache ------------------------------------------------------------------------------------


def fsq_hysteresis(z: np.ndarray, prev_levels: Optional[np.ndarray], levels: Sequence[int],
                   margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Same float32 arithmetic as the reference, vectorized over channels: bit-identical."""
    b, c, h, w = z.shape
    levels = spec.check_levels(levels, c)
    n = np.asarray(levels, np.int32).reshape(1, c, 1, 1)
    half = ((n - 1) * 0.5).astype(np.float32)  # (1, C, 1, 1)
    u = np.clip(z.astype(np.float32, copy=False), np.float32(-1), np.float32(1))
    u = (u + np.float32(1)) * half  # (B, C, H, W) float32
    k = np.clip(np.floor(u + np.float32(0.5)), 0, n - 1).astype(np.int32)
    if prev_levels is None:
        return k, np.ones((b, h, w), bool)
    p = prev_levels.astype(np.int32, copy=False)
    switch = (np.abs(u - p.astype(np.float32)) - np.abs(u - k.astype(np.float32))) > np.float32(margin)
    k = np.where(switch, k, p)
    return k, (k != p).any(axis=1)


def dilate_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    """Exact (boolean)."""
    cv2 = _cv2()
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    mask = np.ascontiguousarray(mask, dtype=bool)
    if radius == 0:
        return mask.copy()
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * radius + 1, 2 * radius + 1))
    out = np.empty_like(mask)
    for i in range(mask.shape[0]):
        out[i] = cv2.dilate(mask[i].view(np.uint8), kernel).view(bool)
    return out


def _warp_numpy(plane_stack: np.ndarray, a: np.ndarray, ho: int, wo: int, border: str) -> np.ndarray:
    """(C, H, W) float32 → (C, Ho, Wo) float32, exact bilinear gather (float32 weights)."""
    c, h, w = plane_stack.shape
    ys, xs = np.mgrid[0:ho, 0:wo].astype(np.float64)
    sx = a[0, 0] * xs + a[0, 1] * ys + a[0, 2]
    sy = a[1, 0] * xs + a[1, 1] * ys + a[1, 2]
    if border == "replicate":
        sx, sy = np.clip(sx, 0, w - 1), np.clip(sy, 0, h - 1)
    else:  # keep the int conversion in range; anything ≥ 1 px outside samples only zeros anyway
        sx, sy = np.clip(sx, -2, w + 1), np.clip(sy, -2, h + 1)
    x0, y0 = np.floor(sx), np.floor(sy)
    wx, wy = (sx - x0).astype(np.float32), (sy - y0).astype(np.float32)
    x0, y0 = x0.astype(np.intp), y0.astype(np.intp)
    flat = plane_stack.reshape(c, h * w)
    out = np.zeros((c, ho, wo), np.float32)
    for yy, fy in ((y0, 1 - wy), (y0 + 1, wy)):
        for xx, fx in ((x0, 1 - wx), (x0 + 1, wx)):
            inside = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
            idx = np.clip(yy, 0, h - 1) * w + np.clip(xx, 0, w - 1)
            out += flat[:, idx] * (fy * fx * inside)
    return out


_CV2_BORDERS = {"replicate": "BORDER_REPLICATE", "zeros": "BORDER_CONSTANT"}


def _warp_cv2(plane_stack: np.ndarray, a: np.ndarray, ho: int, wo: int, border: str) -> np.ndarray:
    cv2 = _cv2()
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    mode = getattr(cv2, _CV2_BORDERS[border])
    out = np.empty((plane_stack.shape[0], ho, wo), np.float32)
    for c in range(plane_stack.shape[0]):
        cv2.warpAffine(plane_stack[c], a, (wo, ho), dst=out[c], flags=flags, borderMode=mode, borderValue=0)
    return out


@functools.lru_cache(maxsize=None)
def cv2_warp_is_exact() -> bool:
    """Whether this OpenCV's float warpAffine matches the exact bilinear reference (probed once)."""
    rng = np.random.default_rng(0)
    planes = rng.standard_normal((1, 1, 9, 11)).astype(np.float32)
    a = np.array([[0.93, 0.11, -1.37], [-0.07, 1.06, 0.71]])
    exact = all(
        np.abs(_warp_cv2(planes[0], a, 9, 11, border) - reference.warp_affine(planes, a, border=border)[0]).max()
        < 1e-4
        for border in spec.BORDERS
    )
    log.debug("cv2.warpAffine on float32 is %s", "exact" if exact else "quantized: using the numpy gather")
    return exact


def warp_affine(latent: np.ndarray, A: Any, out_hw: Optional[tuple[int, int]] = None,
                border: str = "replicate") -> np.ndarray:
    """Float32 arithmetic; within 1e-4 (relative to the values' range) of the reference."""
    spec.check_border(border)
    b, c, h, w = latent.shape
    ho, wo = out_hw if out_hw is not None else (h, w)
    mats = spec.affine_batch(A, b)
    warp = _warp_cv2 if cv2_warp_is_exact() else _warp_numpy
    out = np.empty((b, c, ho, wo), latent.dtype)
    for i in range(b):
        planes = np.ascontiguousarray(latent[i], dtype=np.float32)  # (C, H, W)
        out[i] = warp(planes, np.ascontiguousarray(mats[i]), ho, wo, border)
    return out


def masked_blend(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """bool mask: exact; float mask: float32 arithmetic."""
    if a.shape != b.shape:
        raise ValueError(f"masked_blend needs equal shapes, got {a.shape} and {b.shape}")
    spec.check_mask(mask.shape, a.shape)
    if mask.dtype == bool:
        out = a.copy()
        np.copyto(out, b, where=mask[:, None])
        return out
    a32 = a.astype(np.float32, copy=False)
    out = b.astype(np.float32)  # a fresh copy
    out -= a32
    out *= mask[:, None].astype(np.float32, copy=False)
    out += a32
    return out.astype(a.dtype, copy=False)



class CpuOps:
    """The chosen CPU paths behind the common `Ops` interface: numpy arrays in and out, no torch."""

    name = "cpu-opencv"
    device = "cpu"

    preprocess = staticmethod(preprocess)
    postprocess = staticmethod(postprocess)
    fsq_hysteresis = staticmethod(fsq_hysteresis)
    dilate_mask = staticmethod(dilate_mask)
    warp_affine = staticmethod(warp_affine)
    masked_blend = staticmethod(masked_blend)

"""Plain numpy references for every kernel: float64, unfused, written to be obviously correct.

They define the semantics in `kernels.spec` executably; the fast paths (`kernels.cpu`,
`kernels.triton_kernels`, `kernels.torch_chain`) are tested against them. They double as the
"naive numpy path" of the CPU benchmark. No torch, no OpenCV.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np

from kernels import spec

Images = Union[np.ndarray, Sequence[np.ndarray]]


def as_list(images: Images, fmt: str) -> list[np.ndarray]:
    """One camera buffer → [image]; a sequence, or a stacked (B, ...) array of them → a list."""
    if isinstance(images, np.ndarray):
        return list(images) if spec.is_batched(images.shape, fmt) else [images]
    items = list(images)
    if not items:
        raise ValueError("no images given")
    return items


# --- preprocess -------------------------------------------------------------------------------


def yuv_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """BT.601 limited range; uint8 planes of one size → float64 (H, W, 3) RGB clipped to [0, 1]."""
    y = np.maximum(y.astype(np.float64) - 16.0, 0.0)  # footroom (Y < 16) clamps to black, as in OpenCV
    u = u.astype(np.float64) - 128.0
    v = v.astype(np.float64) - 128.0
    r = spec.BT601_Y * y + spec.BT601_RV * v
    g = spec.BT601_Y * y - spec.BT601_GU * u - spec.BT601_GV * v
    b = spec.BT601_Y * y + spec.BT601_BU * u
    return np.clip(np.stack([r, g, b], axis=-1) / 255.0, 0.0, 1.0)


def decode_rgb(image: np.ndarray, fmt: str) -> np.ndarray:
    """A camera buffer → float64 (H, W, 3) RGB in [0, 1] at its own resolution."""
    h, w = spec.decoded_hw(image.shape, fmt)
    if image.dtype != np.uint8:
        raise ValueError(f"camera image must be uint8, got {image.dtype}")
    if fmt == "rgb":
        return image.astype(np.float64) / 255.0
    if fmt == "bgr":
        return image[:, :, ::-1].astype(np.float64) / 255.0
    if fmt == "nv12":
        y = image[:h]
        uv = image[h:].reshape(h // 2, w // 2, 2)
        u = np.repeat(np.repeat(uv[:, :, 0], 2, axis=0), 2, axis=1)  # nearest chroma upsampling
        v = np.repeat(np.repeat(uv[:, :, 1], 2, axis=0), 2, axis=1)
        return yuv_to_rgb(y, u, v)
    packed = image.reshape(h, w // 2, 4)  # Y0 U Y1 V
    y = packed[:, :, [0, 2]].reshape(h, w)
    u = np.repeat(packed[:, :, 1], 2, axis=1)
    v = np.repeat(packed[:, :, 3], 2, axis=1)
    return yuv_to_rgb(y, u, v)


def _axis_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps along one axis with half-pixel centres: (i0, i1, weight of i1)."""
    s = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    s = np.clip(s, 0.0, n_in - 1)
    i0 = np.floor(s).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, s - i0


def resize_bilinear(img: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """(H, W, C) float → (out_h, out_w, C) float64, bilinear with half-pixel centres, edges clamped."""
    h, w = img.shape[:2]
    y0, y1, wy = _axis_taps(h, out_h)
    x0, x1, wx = _axis_taps(w, out_w)
    img = img.astype(np.float64)
    rows = img[y0] * (1.0 - wy)[:, None, None] + img[y1] * wy[:, None, None]  # (out_h, W, C)
    return rows[:, x0] * (1.0 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]


def preprocess(images: Images, fmt: str = "rgb", out_size: Optional[tuple[int, int]] = None,
               dtype: Any = "float32", pad_multiple: int = 8) -> np.ndarray:
    """Camera buffer(s) → (B, 3, Hp, Wp) RGB in [0, 1]; see `kernels.spec`."""
    items = as_list(images, fmt)
    h_in, w_in = spec.decoded_hw(items[0].shape, fmt)
    w, h = spec.check_out_size(out_size, (w_in, h_in))
    hp, wp = spec.padded_hw((w, h), pad_multiple)
    out = []
    for image in items:
        if image.shape != items[0].shape:
            raise ValueError(f"batched images differ in shape: {image.shape} vs {items[0].shape}")
        rgb = resize_bilinear(decode_rgb(image, fmt), w, h)  # (h, w, 3)
        rgb = np.pad(rgb, ((0, hp - h), (0, wp - w), (0, 0)), mode="edge")  # (hp, wp, 3)
        out.append(rgb.transpose(2, 0, 1))
    return np.stack(out).astype(spec.dtype_name(dtype))


# --- postprocess ------------------------------------------------------------------------------


def pack_output(y_bhwc: np.ndarray, stereo_pack: bool) -> np.ndarray:
    """(B, Ho, Wo, 3) → postprocess's output layout."""
    if stereo_pack:
        return np.ascontiguousarray(np.concatenate([y_bhwc[0], y_bhwc[1]], axis=1))
    return np.ascontiguousarray(y_bhwc[0] if y_bhwc.shape[0] == 1 else y_bhwc)


def postprocess(x: np.ndarray, valid_hw: tuple[int, int], out_size: Optional[tuple[int, int]] = None,
                stereo_pack: bool = False) -> np.ndarray:
    """(B, 3, Hp, Wp) float RGB → uint8 display image(s); see `kernels.spec`."""
    b, h, w, wo, ho = spec.check_postprocess(x.shape, valid_hw, out_size, stereo_pack)
    valid = np.clip(x[:, :, :h, :w].astype(np.float64), 0.0, 1.0)  # (B, 3, H, W), clipped per source pixel
    y = np.stack([resize_bilinear(valid[i].transpose(1, 2, 0), wo, ho) for i in range(b)])  # (B, Ho, Wo, 3)
    return pack_output(np.floor(y * 255.0 + 0.5).astype(np.uint8), stereo_pack)


# --- cache ------------------------------------------------------------------------------------


def fsq_hysteresis(z: np.ndarray, prev_levels: Optional[np.ndarray], levels: Sequence[int],
                   margin: float) -> tuple[np.ndarray, np.ndarray]:
    """(B, C, H, W) float → ((B, C, H, W) int32 level indices, (B, H, W) bool changed).

    float32 arithmetic, one channel at a time, exactly as written in `kernels.spec`.
    """
    b, c, h, w = z.shape
    levels = spec.check_levels(levels, c)
    out = np.empty((b, c, h, w), np.int32)
    changed = np.zeros((b, h, w), bool) if prev_levels is not None else np.ones((b, h, w), bool)
    m = np.float32(margin)
    for ch, n_levels in enumerate(levels):
        half = np.float32((n_levels - 1) * 0.5)
        u = (np.clip(z[:, ch].astype(np.float32), np.float32(-1), np.float32(1)) + np.float32(1)) * half
        k = np.clip(np.floor(u + np.float32(0.5)), 0, n_levels - 1).astype(np.int32)
        if prev_levels is not None:
            p = prev_levels[:, ch].astype(np.int32)
            switch = (np.abs(u - p.astype(np.float32)) - np.abs(u - k.astype(np.float32))) > m
            k = np.where(switch, k, p)
            changed |= k != p
        out[:, ch] = k
    return out, changed


def dilate_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    """(B, H, W) bool → (B, H, W) bool, OR over a (2r+1)² square; outside the map is False."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    b, h, w = mask.shape
    r = int(radius)
    padded = np.zeros((b, h + 2 * r, w + 2 * r), bool)
    padded[:, r:r + h, r:r + w] = mask
    out = np.zeros((b, h, w), bool)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out |= padded[:, dy:dy + h, dx:dx + w]
    return out


def _sample_bilinear(plane: np.ndarray, sx: np.ndarray, sy: np.ndarray, border: str) -> np.ndarray:
    """plane (H, W) sampled at float coords (any shape), float64."""
    h, w = plane.shape
    if border == "replicate":
        sx = np.clip(sx, 0.0, w - 1)
        sy = np.clip(sy, 0.0, h - 1)
    x0 = np.floor(sx).astype(np.int64)
    y0 = np.floor(sy).astype(np.int64)
    wx, wy = sx - x0, sy - y0
    total = np.zeros(sx.shape)
    for yy, fy in ((y0, 1.0 - wy), (y0 + 1, wy)):
        for xx, fx in ((x0, 1.0 - wx), (x0 + 1, wx)):
            inside = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
            val = plane[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)].astype(np.float64)
            total += np.where(inside, val, 0.0) * fy * fx
    return total


def warp_affine(latent: np.ndarray, A: Any, out_hw: Optional[tuple[int, int]] = None,
                border: str = "replicate") -> np.ndarray:
    """(B, C, H, W) → (B, C, Ho, Wo) in latent's dtype; bilinear, A maps output → input pixels."""
    spec.check_border(border)
    b, c, h, w = latent.shape
    ho, wo = out_hw if out_hw is not None else (h, w)
    mats = spec.affine_batch(A, b)
    ys, xs = np.mgrid[0:ho, 0:wo].astype(np.float64)
    out = np.empty((b, c, ho, wo), latent.dtype)
    for i in range(b):
        sx = mats[i, 0, 0] * xs + mats[i, 0, 1] * ys + mats[i, 0, 2]
        sy = mats[i, 1, 0] * xs + mats[i, 1, 1] * ys + mats[i, 1, 2]
        for ch in range(c):
            out[i, ch] = _sample_bilinear(latent[i, ch], sx, sy, border)
    return out


def masked_blend(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(B, C, H, W) a, b and a (B, H, W) mask: bool → where(mask, b, a); float → a + mask (b - a)."""
    if a.shape != b.shape:
        raise ValueError(f"masked_blend needs equal shapes, got {a.shape} and {b.shape}")
    spec.check_mask(mask.shape, a.shape)
    m = mask[:, None]
    if mask.dtype == bool:
        return np.where(m, b, a).astype(a.dtype)
    a64 = a.astype(np.float64)
    return (a64 + m.astype(np.float64) * (b.astype(np.float64) - a64)).astype(a.dtype)



class ReferenceOps:
    """The references behind the common `Ops` interface (slow; for tests and the benchmark)."""

    name = "reference"
    device = "cpu"

    preprocess = staticmethod(preprocess)
    postprocess = staticmethod(postprocess)
    fsq_hysteresis = staticmethod(fsq_hysteresis)
    dilate_mask = staticmethod(dilate_mask)
    warp_affine = staticmethod(warp_affine)
    masked_blend = staticmethod(masked_blend)

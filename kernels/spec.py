"""The exact semantics every implementation of the kernels follows (reference, CPU, torch, Triton).

Nothing here imports torch or cv2: shape checks and conventions only.

Pixel coordinates
    Pixel (row i, column j) has its centre at (x=j, y=i). A resize from (W_in, H_in) to (W, H)
    samples output pixel (x, y) at source coordinates (half-pixel centres, as ``cv2.INTER_LINEAR``
    and ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``)::

        sx = (x + 0.5) * W_in / W - 0.5        sy = (y + 0.5) * H_in / H - 0.5

    clamped to [0, W_in-1] × [0, H_in-1], then blended bilinearly between the 2×2 neighbours
    floor(s) and floor(s)+1 (the latter clamped into the image). No antialiasing when shrinking.

Camera formats (`preprocess`)
    ``rgb``/``bgr``: (H, W, 3) uint8. ``nv12``: (H*3/2, W) uint8, an H×W Y plane followed by
    H/2 rows of interleaved U,V pairs (H and W even). ``yuyv`` (YUY2): (H, 2W) or (H, W, 2)
    uint8, bytes Y0 U Y1 V per pixel pair (W even). YUV is BT.601 *limited range*
    (Y in 16..235, U/V in 16..240, centred at 128)::

        R = 1.164383 (Y-16)                   + 1.596027 (V-128)
        G = 1.164383 (Y-16) - 0.391762 (U-128) - 0.812968 (V-128)
        B = 1.164383 (Y-16) + 2.017232 (U-128)

    with ``Y-16`` floored at 0 (footroom codes below 16 are black, as in OpenCV), divided by
    255 and clipped to [0, 1] per source pixel, *before* the resize. Chroma is
    upsampled by nearest neighbour (each U,V sample covers its 2×2 block in NV12, its 2×1 pair
    in YUYV), as OpenCV's ``cvtColor`` does.

Padding
    The resized (H, W) image is padded at the bottom and right to (Hp, Wp), the next multiples
    of ``pad_multiple``, by edge replication (a padded pixel repeats the nearest valid pixel).
    The valid region is always the top-left (H, W) = (out_size[1], out_size[0]) (out_size
    defaults to the camera size); `padded_hw` gives (Hp, Wp). Output: (B, 3, Hp, Wp) RGB in
    [0, 1], float32 or float16.

Batches (stereo)
    `preprocess` takes one camera buffer (B = 1), a sequence of equal-shaped ones, or a stacked
    array with one more leading dimension (`is_batched`). `postprocess` of B = 2 with
    ``stereo_pack`` writes left | right side by side, (Ho, 2 Wo, 3).

Postprocess
    crop the valid (H, W) region → clip to [0, 1] (per source pixel, like the YUV conversion:
    values are always clipped before resampling) → resize to out_size → ``floor(255 y + 0.5)`` as uint8.
    (Blending with the camera image, the "strength", is the frame driver's, realtime/driver.py, on every
    backend's uint8 output.)

FSQ hysteresis (per channel c with L = levels[c] ≥ 2 levels at -1 + 2k/(L-1), k = 0..L-1)
    ``u = (clip(z, -1, 1) + 1) * (L-1)/2`` (float32; position in units of the level spacing),
    ``k_new = clip(floor(u + 0.5), 0, L-1)`` (nearest level, ties upwards). With a previous
    level p the channel switches to k_new only if ``|u - p| - |u - k_new| > margin``, else it keeps
    p. ``changed[b, y, x]`` = any channel's level differs from the previous one (all True
    when there is no previous).

Dilation
    Square structuring element of side 2r+1; pixels outside the map count as False.

Affine warp
    ``A`` is 2×3 (or B×2×3), mapping *output* pixel coordinates to *input* pixel coordinates in
    the latent grid's own pixels (``cv2.warpAffine`` with ``WARP_INVERSE_MAP``)::

        sx = A[0,0] x + A[0,1] y + A[0,2]      sy = A[1,0] x + A[1,1] y + A[1,2]

    sampled bilinearly. ``border="replicate"`` clamps (sx, sy) into the input;
    ``border="zeros"`` treats neighbours outside the input as 0. Use `affine_to_latent` to turn an
    image-pixel affine into a latent-pixel one.

Masked blend
    bool mask (B, H, W): ``where(mask, b, a)`` over every channel; float mask (alpha in [0, 1]):
    ``a + alpha * (b - a)``.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

FORMATS = ("rgb", "bgr", "nv12", "yuyv")
BORDERS = ("replicate", "zeros")
DTYPES = ("float32", "float16")

# BT.601 limited range, Y'CbCr → R'G'B' (on 0..255 codes)
BT601_Y = 1.164383
BT601_RV = 1.596027
BT601_GU = 0.391762
BT601_GV = 0.812968
BT601_BU = 2.017232


def dtype_name(dtype: Any) -> str:
    """'float32' | 'float16' for a numpy dtype, a torch dtype or a string."""
    name = str(dtype).replace("torch.", "")
    name = {"float": "float32", "half": "float16", "<class 'numpy.float32'>": "float32",
            "<class 'numpy.float16'>": "float16"}.get(name, name)
    if name not in DTYPES:
        raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
    return name


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def padded_hw(out_size: tuple[int, int], pad_multiple: int = 8) -> tuple[int, int]:
    """(Hp, Wp) of `preprocess`'s output for out_size=(W, H)."""
    if pad_multiple < 1:
        raise ValueError(f"pad_multiple must be >= 1, got {pad_multiple}")
    w, h = out_size
    return round_up(h, pad_multiple), round_up(w, pad_multiple)


def decoded_hw(shape: Sequence[int], fmt: str) -> tuple[int, int]:
    """(H, W) in pixels of a camera buffer of `shape` in format `fmt`; raises ValueError if malformed."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown pixel format {fmt!r}: use one of {', '.join(FORMATS)}")
    shape = tuple(int(s) for s in shape)
    if fmt in ("rgb", "bgr"):
        if len(shape) != 3 or shape[2] != 3:
            raise ValueError(f"{fmt} image must be (H, W, 3) uint8, got {shape}")
        h, w = shape[:2]
    elif fmt == "nv12":
        # rows = 3H/2 with H even  <=>  rows divisible by 3
        if len(shape) != 2 or shape[0] % 3 or shape[1] % 2:
            raise ValueError(f"nv12 image must be (H*3/2, W) uint8 with H, W even, got {shape}")
        h, w = shape[0] * 2 // 3, shape[1]
    else:  # yuyv
        if len(shape) == 3 and shape[2] == 2:
            h, w = shape[0], shape[1]
        elif len(shape) == 2 and shape[1] % 2 == 0:
            h, w = shape[0], shape[1] // 2
        else:
            raise ValueError(f"yuyv image must be (H, 2W) or (H, W, 2) uint8, got {shape}")
        if w % 2:
            raise ValueError(f"yuyv image needs an even width, got {w} pixels")
    if h < 1 or w < 1:
        raise ValueError(f"empty {fmt} image: {shape}")
    return h, w


def is_batched(shape: Sequence[int], fmt: str) -> bool:
    """Whether a camera-buffer array of `shape` is a stacked batch (B, ...) of `fmt` images: it has one
    more dimension than the single form ((H, W, 3), (H*3/2, W), (H, 2W) or (H, W, 2) for YUYV)."""
    ndim = len(shape)
    if fmt == "yuyv":
        return ndim == 4 or (ndim == 3 and shape[-1] != 2)
    return ndim == (4 if fmt in ("rgb", "bgr") else 3)


def check_out_size(out_size: Optional[tuple[int, int]], default_wh: tuple[int, int]) -> tuple[int, int]:
    """out_size (W, H), defaulting to `default_wh`; both sides must be >= 1."""
    if out_size is None:
        return int(default_wh[0]), int(default_wh[1])
    w, h = (int(v) for v in out_size)
    if w < 1 or h < 1:
        raise ValueError(f"out_size must be (W, H) with both >= 1, got {out_size}")
    return w, h


def check_postprocess(x_shape: Sequence[int], valid_hw: tuple[int, int], out_size: Optional[tuple[int, int]],
                      stereo_pack: bool) -> tuple[int, int, int, int, int]:
    """Validate postprocess arguments; return (B, H, W, Wo, Ho)."""
    if len(x_shape) != 4 or x_shape[1] != 3:
        raise ValueError(f"postprocess input must be (B, 3, H, W), got {tuple(x_shape)}")
    b = int(x_shape[0])
    h, w = (int(v) for v in valid_hw)
    if not (1 <= h <= x_shape[2] and 1 <= w <= x_shape[3]):
        raise ValueError(f"valid_hw {valid_hw} does not fit the input {tuple(x_shape)}")
    wo, ho = check_out_size(out_size, (w, h))
    if stereo_pack and b != 2:
        raise ValueError(f"stereo_pack needs a batch of 2 (left, right), got {b}")
    return b, h, w, wo, ho


def output_shape(b: int, wo: int, ho: int, stereo_pack: bool) -> tuple[int, ...]:
    """Shape of postprocess's uint8 result: (Ho, Wo, 3), (Ho, 2 Wo, 3) packed, or (B, Ho, Wo, 3)."""
    if stereo_pack:
        return (ho, 2 * wo, 3)
    return (ho, wo, 3) if b == 1 else (b, ho, wo, 3)


def check_levels(levels: Sequence[int], channels: int) -> tuple[int, ...]:
    levels = tuple(int(v) for v in levels)
    if len(levels) != channels or any(v < 2 for v in levels):
        raise ValueError(f"need one FSQ level count >= 2 per channel ({channels}), got {levels}")
    return levels


def check_border(border: str) -> str:
    if border not in BORDERS:
        raise ValueError(f"border must be one of {', '.join(BORDERS)}, got {border!r}")
    return border


def affine_batch(A: Any, batch: int) -> np.ndarray:
    """A as a float64 (B, 2, 3) numpy array; a single (2, 3) is repeated for every batch item."""
    a = np.asarray(A, dtype=np.float64)
    if a.shape == (2, 3):
        a = np.broadcast_to(a, (batch, 2, 3))
    if a.shape != (batch, 2, 3):
        raise ValueError(f"affine matrix must be (2, 3) or ({batch}, 2, 3), got {a.shape}")
    return a


def affine_to_latent(A_img: Any, factor: int = 8) -> np.ndarray:
    """Turn a 2×3 affine on image pixels (output → input) into the same motion on a latent grid
    `factor` times coarser, whose pixel j covers image pixels [f j, f j + f) (centre f j + (f-1)/2).

    ``A_lat = S⁻¹ · A_img · S`` with ``S(p) = f p + (f-1)/2``.
    """
    a = np.asarray(A_img, dtype=np.float64)
    if a.shape != (2, 3):
        raise ValueError(f"affine matrix must be (2, 3), got {a.shape}")
    f = float(factor)
    c = (f - 1.0) / 2.0
    lin = a[:, :2]
    # A_img(S p) = lin (f p + c) + t ; S⁻¹(q) = (q - c) / f
    t = (lin @ np.array([c, c]) + a[:, 2] - c) / f
    return np.concatenate([lin, t[:, None]], axis=1)


def check_mask(mask_shape: Sequence[int], latent_shape: Sequence[int]) -> None:
    b, _, h, w = latent_shape
    if tuple(mask_shape) != (b, h, w):
        raise ValueError(f"mask must be (B, H, W) = {(b, h, w)}, got {tuple(mask_shape)}")

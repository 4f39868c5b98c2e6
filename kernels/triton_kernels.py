"""Triton kernels for CUDA (torch tensors in and out), one fused pass per operation.

Semantics: `kernels.spec`. Every kernel also runs under Triton's interpreter
(``TRITON_INTERPRET=1`` *before* this module is imported: Triton decides per ``@triton.jit``
at decoration time) on CPU tensors, which is how CI tests them. The kernels call only
builtins (``tl.full``, not the ``@jit`` helpers of ``triton.language.standard`` such as
``tl.zeros``), so an interpreted copy of this module works even when triton itself was
imported in compiled mode.

Layout conventions: images are (B, H, W, C) uint8 row-major; model tensors (B, C, H, W)
contiguous. Launchers make inputs contiguous (a copy only if they were not) and never sync
with the host, so they can be captured in a CUDA graph — except where a numpy argument has to
be uploaded first (pass device tensors on the hot path).
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import triton
import triton.language as tl

from kernels import spec
from kernels.torch_util import TORCH_DTYPES, Tensors, as_tensor, batch_tensor

_FMT_IDS = {"rgb": 0, "bgr": 1, "nv12": 2, "yuyv": 3}

# BT.601 limited range (see kernels.spec), as compile-time constants
_CY = tl.constexpr(spec.BT601_Y)
_CRV = tl.constexpr(spec.BT601_RV)
_CGU = tl.constexpr(spec.BT601_GU)
_CGV = tl.constexpr(spec.BT601_GV)
_CBU = tl.constexpr(spec.BT601_BU)
_INV255 = tl.constexpr(1.0 / 255.0)


# --- preprocess -------------------------------------------------------------------------------


@triton.jit
def _yuv_to_rgb(yv, u, v):
    """uint8 tiles → float32 RGB tiles in [0, 1] (BT.601 limited range, footroom clamped)."""
    yf = tl.maximum(yv.to(tl.float32) - 16.0, 0.0) * _CY
    uf = u.to(tl.float32) - 128.0
    vf = v.to(tl.float32) - 128.0
    r = (yf + _CRV * vf) * _INV255
    g = (yf - _CGU * uf - _CGV * vf) * _INV255
    b = (yf + _CBU * uf) * _INV255
    r = tl.minimum(tl.maximum(r, 0.0), 1.0)
    g = tl.minimum(tl.maximum(g, 0.0), 1.0)
    b = tl.minimum(tl.maximum(b, 0.0), 1.0)
    return r, g, b


@triton.jit
def _load_rgb(src, y, x, row_stride, h_in, FMT: tl.constexpr):
    """Decode the pixels at integer coords (y, x) (in range) → three float32 tiles in [0, 1]."""
    if FMT == 2:  # nv12: Y plane, then interleaved UV rows at half resolution
        yv = tl.load(src + y * row_stride + x)
        puv = src + (h_in + y // 2) * row_stride + (x // 2) * 2
        r, g, b = _yuv_to_rgb(yv, tl.load(puv), tl.load(puv + 1))
    elif FMT == 3:  # yuyv: Y0 U Y1 V
        prow = src + y * row_stride
        pair = prow + (x // 2) * 4
        r, g, b = _yuv_to_rgb(tl.load(prow + x * 2), tl.load(pair + 1), tl.load(pair + 3))
    else:  # rgb / bgr, 3 bytes per pixel
        p = src + y * row_stride + x * 3
        c0 = tl.load(p).to(tl.float32) * _INV255
        c1 = tl.load(p + 1).to(tl.float32) * _INV255
        c2 = tl.load(p + 2).to(tl.float32) * _INV255
        if FMT == 1:
            r, g, b = c2, c1, c0
        else:
            r, g, b = c0, c1, c2
    return r, g, b


@triton.jit
def _lerp2(c00, c01, c10, c11, wx, wy):
    top = c00 + (c01 - c00) * wx
    bot = c10 + (c11 - c10) * wx
    return top + (bot - top) * wy


@triton.jit
def _taps(o, n_valid, n_in, scale, max_s):
    """Bilinear taps for output coords `o` (1-D): edge-replicate padding beyond n_valid, half-pixel
    centres, clamped source coords. → (i0, i1, weight of i1)."""
    v = tl.minimum(o, n_valid - 1)
    s = (v.to(tl.float32) + 0.5) * scale - 0.5
    s = tl.minimum(tl.maximum(s, 0.0), max_s)
    f = tl.floor(s)
    i0 = f.to(tl.int32)
    i1 = tl.minimum(i0 + 1, n_in - 1)
    return i0, i1, s - f


@triton.jit
def _preprocess_kernel(src_ptr, out_ptr, h_in, w_in, src_stride_b, row_stride,
                       H, W, Hp, Wp, scale_y, scale_x, max_sy, max_sx,
                       FMT: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    pid_x = tl.program_id(0)
    pid_y = tl.program_id(1)
    b = tl.program_id(2)
    oy = pid_y * BLOCK_H + tl.arange(0, BLOCK_H)  # (BH,) padded output rows
    ox = pid_x * BLOCK_W + tl.arange(0, BLOCK_W)  # (BW,)
    y0, y1, wy = _taps(oy, H, h_in, scale_y, max_sy)
    x0, x1, wx = _taps(ox, W, w_in, scale_x, max_sx)
    y0, y1, wy = y0[:, None], y1[:, None], wy[:, None]
    x0, x1, wx = x0[None, :], x1[None, :], wx[None, :]
    src = src_ptr + b.to(tl.int64) * src_stride_b
    r00, g00, b00 = _load_rgb(src, y0, x0, row_stride, h_in, FMT)
    r01, g01, b01 = _load_rgb(src, y0, x1, row_stride, h_in, FMT)
    r10, g10, b10 = _load_rgb(src, y1, x0, row_stride, h_in, FMT)
    r11, g11, b11 = _load_rgb(src, y1, x1, row_stride, h_in, FMT)
    plane = Hp * Wp
    out = out_ptr + b.to(tl.int64) * 3 * plane + oy[:, None] * Wp + ox[None, :]  # (BH, BW)
    mask = (oy[:, None] < Hp) & (ox[None, :] < Wp)
    ty = out_ptr.dtype.element_ty
    tl.store(out, _lerp2(r00, r01, r10, r11, wx, wy).to(ty), mask=mask)
    tl.store(out + plane, _lerp2(g00, g01, g10, g11, wx, wy).to(ty), mask=mask)
    tl.store(out + 2 * plane, _lerp2(b00, b01, b10, b11, wx, wy).to(ty), mask=mask)


# --- postprocess ------------------------------------------------------------------------------


@triton.jit
def _load_clipped(p):
    return tl.minimum(tl.maximum(tl.load(p).to(tl.float32), 0.0), 1.0)


@triton.jit
def _postprocess_kernel(x_ptr, out_ptr, H, W, Hp, Wp, Ho, Wo,
                        scale_y, scale_x, max_sy, max_sx, out_stride_b, out_stride_y,
                        BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    pid_x = tl.program_id(0)
    pid_y = tl.program_id(1)
    b = tl.program_id(2)
    oy = pid_y * BLOCK_H + tl.arange(0, BLOCK_H)  # (BH,) display rows
    ox = pid_x * BLOCK_W + tl.arange(0, BLOCK_W)  # (BW,)
    y0, y1, wy = _taps(oy, Ho, H, scale_y, max_sy)
    x0, x1, wx = _taps(ox, Wo, W, scale_x, max_sx)
    i00 = y0[:, None] * Wp + x0[None, :]
    i01 = y0[:, None] * Wp + x1[None, :]
    i10 = y1[:, None] * Wp + x0[None, :]
    i11 = y1[:, None] * Wp + x1[None, :]
    wy = wy[:, None]
    wx = wx[None, :]
    mask = (oy[:, None] < Ho) & (ox[None, :] < Wo)
    pix = oy[:, None] * out_stride_y + ox[None, :] * 3
    out = out_ptr + b.to(tl.int64) * out_stride_b + pix
    for c in tl.static_range(3):
        plane = x_ptr + (b.to(tl.int64) * 3 + c) * Hp * Wp
        val = _lerp2(_load_clipped(plane + i00), _load_clipped(plane + i01),
                     _load_clipped(plane + i10), _load_clipped(plane + i11), wx, wy) * 255.0
        q = tl.minimum(tl.maximum(tl.floor(val + 0.5), 0.0), 255.0)
        tl.store(out + c, q.to(tl.uint8), mask=mask)


# --- cache ------------------------------------------------------------------------------------


@triton.jit
def _fsq_kernel(z_ptr, prev_ptr, levels_ptr, out_ptr, changed_ptr, C, HW, margin,
                HAS_PREV: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < HW
    changed = tl.full((BLOCK,), 0, tl.int32)
    for c in range(C):
        n = tl.load(levels_ptr + c)  # levels of this channel (int32)
        half = (n - 1).to(tl.float32) * 0.5
        idx = (b * C + c).to(tl.int64) * HW + offs
        z = tl.load(z_ptr + idx, mask=m, other=0.0).to(tl.float32)
        u = (tl.minimum(tl.maximum(z, -1.0), 1.0) + 1.0) * half  # position in level units
        k = tl.minimum(tl.maximum(tl.floor(u + 0.5), 0.0), (n - 1).to(tl.float32)).to(tl.int32)
        if HAS_PREV:
            p = tl.load(prev_ptr + idx, mask=m, other=0)
            switch = (tl.abs(u - p.to(tl.float32)) - tl.abs(u - k.to(tl.float32))) > margin
            k = tl.where(switch, k, p)
            changed = changed | (k != p).to(tl.int32)
        tl.store(out_ptr + idx, k, mask=m)
    if HAS_PREV:
        flag = changed
    else:
        flag = changed + 1
    tl.store(changed_ptr + b.to(tl.int64) * HW + offs, flag.to(tl.uint8), mask=m)


@triton.jit
def _dilate_kernel(m_ptr, out_ptr, H, W, R, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    pid_x = tl.program_id(0)
    pid_y = tl.program_id(1)
    b = tl.program_id(2)
    oy = pid_y * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]  # (BH, 1)
    ox = pid_x * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]  # (1, BW)
    base = m_ptr + b.to(tl.int64) * H * W
    acc = tl.full((BLOCK_H, BLOCK_W), 0, tl.int32)
    for dy in range(0, 2 * R + 1):
        yy = oy + dy - R
        row_ok = (yy >= 0) & (yy < H)
        for dx in range(0, 2 * R + 1):
            xx = ox + dx - R
            ok = row_ok & (xx >= 0) & (xx < W)
            acc = acc | tl.load(base + yy * W + xx, mask=ok, other=0).to(tl.int32)
    mask = (oy < H) & (ox < W)
    tl.store(out_ptr + b.to(tl.int64) * H * W + oy * W + ox, acc.to(tl.uint8), mask=mask)


@triton.jit
def _warp_kernel(src_ptr, a_ptr, out_ptr, C, h_in, w_in, H, W, a_stride_b,
                 BORDER_ZEROS: tl.constexpr, BLOCK: tl.constexpr):
    """out = warp(src, A): bilinear, A maps output → input pixels."""
    pid = tl.program_id(0)
    b = tl.program_id(1)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < H * W
    oy = (offs // W).to(tl.float32)
    ox = (offs % W).to(tl.float32)
    a = a_ptr + b * a_stride_b
    sx = tl.load(a + 0) * ox + tl.load(a + 1) * oy + tl.load(a + 2)
    sy = tl.load(a + 3) * ox + tl.load(a + 4) * oy + tl.load(a + 5)
    if BORDER_ZEROS:  # keep the int conversion in range; ≥ 1 px outside samples only zeros anyway
        sx = tl.minimum(tl.maximum(sx, -2.0), w_in + 1.0)
        sy = tl.minimum(tl.maximum(sy, -2.0), h_in + 1.0)
    else:
        sx = tl.minimum(tl.maximum(sx, 0.0), w_in - 1.0)
        sy = tl.minimum(tl.maximum(sy, 0.0), h_in - 1.0)
    fx = tl.floor(sx)
    fy = tl.floor(sy)
    wx = sx - fx
    wy = sy - fy
    x0 = fx.to(tl.int32)
    y0 = fy.to(tl.int32)
    x1 = x0 + 1
    y1 = y0 + 1
    if BORDER_ZEROS:
        ok_x0 = (x0 >= 0) & (x0 < w_in)
        ok_x1 = (x1 >= 0) & (x1 < w_in)
        ok_y0 = (y0 >= 0) & (y0 < h_in)
        ok_y1 = (y1 >= 0) & (y1 < h_in)
    else:
        x1 = tl.minimum(x1, w_in - 1)
        y1 = tl.minimum(y1, h_in - 1)
        ok_x0 = m
        ok_x1 = m
        ok_y0 = m
        ok_y1 = m
    for c in range(C):
        plane = src_ptr + (b * C + c).to(tl.int64) * h_in * w_in
        v00 = tl.load(plane + y0 * w_in + x0, mask=m & ok_y0 & ok_x0, other=0.0).to(tl.float32)
        v01 = tl.load(plane + y0 * w_in + x1, mask=m & ok_y0 & ok_x1, other=0.0).to(tl.float32)
        v10 = tl.load(plane + y1 * w_in + x0, mask=m & ok_y1 & ok_x0, other=0.0).to(tl.float32)
        v11 = tl.load(plane + y1 * w_in + x1, mask=m & ok_y1 & ok_x1, other=0.0).to(tl.float32)
        val = _lerp2(v00, v01, v10, v11, wx, wy)
        idx = (b * C + c).to(tl.int64) * H * W + offs
        tl.store(out_ptr + idx, val.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _blend_kernel(a_ptr, b_ptr, mask_ptr, out_ptr, C, HW, MASK_FLOAT: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    bi = tl.program_id(1)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < HW
    if MASK_FLOAT:
        alpha = tl.load(mask_ptr + bi.to(tl.int64) * HW + offs, mask=m, other=0.0).to(tl.float32)
    else:
        mv = tl.load(mask_ptr + bi.to(tl.int64) * HW + offs, mask=m, other=0)  # uint8 0/1
        take = mv != 0
        keep = mv == 0
    for c in range(C):
        idx = (bi * C + c).to(tl.int64) * HW + offs
        if MASK_FLOAT:
            va = tl.load(a_ptr + idx, mask=m, other=0.0).to(tl.float32)
            vb = tl.load(b_ptr + idx, mask=m, other=0.0).to(tl.float32)
            val = va + alpha * (vb - va)
        else:  # read only the side that is used
            va = tl.load(a_ptr + idx, mask=m & keep, other=0.0)
            vb = tl.load(b_ptr + idx, mask=m & take, other=0.0)
            val = tl.where(take, vb, va)
        tl.store(out_ptr + idx, val.to(out_ptr.dtype.element_ty), mask=m)


# --- launchers --------------------------------------------------------------------------------

_BH, _BW = 8, 128  # 2-D image tiles: 1024 pixels, rows of 128 for coalescing
_BLOCK = 1024  # 1-D latent tiles
# FMA contraction stays on (explicitly: Triton 3.10 flips the default) except for the FSQ kernel,
# whose level decisions must match the float32 reference bit for bit.
_LAUNCH = {"num_warps": 4, "enable_fp_fusion": True}
_LAUNCH_EXACT = {"num_warps": 4, "enable_fp_fusion": False}


def _as_bool_u8(mask: torch.Tensor) -> torch.Tensor:
    mask = mask.contiguous()
    return mask.view(torch.uint8) if mask.dtype == torch.bool else (mask != 0).view(torch.uint8)


@functools.lru_cache(maxsize=64)
def _levels_tensor(levels: tuple[int, ...], device: str) -> torch.Tensor:
    return torch.tensor(levels, dtype=torch.int32, device=device)


class TritonOps:
    """The Triton kernels behind the common `Ops` interface: torch tensors on `device`.

    numpy inputs are accepted and uploaded (a host→device copy and sync: avoid on the hot path).
    """

    name = "triton"

    def __init__(self, device: Union[str, torch.device] = "cuda") -> None:
        self.device = torch.device(device)

    def preprocess(self, images: Tensors, fmt: str = "rgb", out_size: Optional[tuple[int, int]] = None,
                   dtype: Any = "float32", pad_multiple: int = 8) -> torch.Tensor:
        """uint8 camera buffer(s) → (B, 3, Hp, Wp) RGB in [0, 1] of `dtype`, one kernel launch."""
        src = batch_tensor(images, fmt, self.device)  # (B, ...) uint8
        if src.dtype != torch.uint8:
            raise ValueError(f"camera image must be uint8, got {src.dtype}")
        h_in, w_in = spec.decoded_hw(src.shape[1:], fmt)
        w, h = spec.check_out_size(out_size, (w_in, h_in))
        hp, wp = spec.padded_hw((w, h), pad_multiple)
        bsz = src.shape[0]
        out = torch.empty((bsz, 3, hp, wp), dtype=TORCH_DTYPES[spec.dtype_name(dtype)], device=self.device)
        row_stride = {"rgb": 3 * w_in, "bgr": 3 * w_in, "nv12": w_in, "yuyv": 2 * w_in}[fmt]
        grid = (triton.cdiv(wp, _BW), triton.cdiv(hp, _BH), bsz)
        _preprocess_kernel[grid](src, out, h_in, w_in, src[0].numel(), row_stride, h, w, hp, wp,
                                 h_in / h, w_in / w, float(h_in - 1), float(w_in - 1),
                                 FMT=_FMT_IDS[fmt], BLOCK_H=_BH, BLOCK_W=_BW, **_LAUNCH)
        return out

    def postprocess(self, x: torch.Tensor, valid_hw: tuple[int, int], out_size: Optional[tuple[int, int]] = None,
                    stereo_pack: bool = False) -> torch.Tensor:
        """(B, 3, Hp, Wp) float RGB → uint8 display image(s) (HWC), one kernel launch."""
        x = as_tensor(x, self.device).contiguous()
        bsz, h, w, wo, ho = spec.check_postprocess(x.shape, valid_hw, out_size, stereo_pack)
        hp, wp = x.shape[2], x.shape[3]
        out = torch.empty(spec.output_shape(bsz, wo, ho, stereo_pack), dtype=torch.uint8, device=self.device)
        if stereo_pack:
            out_stride_b, out_stride_y = wo * 3, 2 * wo * 3
        else:
            out_stride_b, out_stride_y = ho * wo * 3, wo * 3
        grid = (triton.cdiv(wo, _BW), triton.cdiv(ho, _BH), bsz)
        _postprocess_kernel[grid](x, out, h, w, hp, wp, ho, wo, h / ho, w / wo, float(h - 1), float(w - 1),
                                  out_stride_b, out_stride_y, BLOCK_H=_BH, BLOCK_W=_BW, **_LAUNCH)
        return out

    def fsq_hysteresis(self, z: torch.Tensor, prev_levels: Optional[torch.Tensor], levels: Sequence[int],
                       margin: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) float → ((B, C, H, W) int32 levels, (B, H, W) bool changed)."""
        z = as_tensor(z, self.device).contiguous()
        bsz, c, h, w = z.shape
        levels = spec.check_levels(levels, c)
        out = torch.empty((bsz, c, h, w), dtype=torch.int32, device=self.device)
        changed = torch.empty((bsz, h, w), dtype=torch.bool, device=self.device)
        prev = out  # placeholder pointer when unused
        if prev_levels is not None:
            prev = as_tensor(prev_levels, self.device).to(torch.int32).contiguous()
            if prev.shape != z.shape:
                raise ValueError(f"prev_levels must have z's shape {tuple(z.shape)}, got {tuple(prev.shape)}")
        grid = (triton.cdiv(h * w, _BLOCK), bsz)
        _fsq_kernel[grid](z, prev, _levels_tensor(levels, str(self.device)), out, changed.view(torch.uint8),
                          c, h * w, float(margin), HAS_PREV=prev_levels is not None, BLOCK=_BLOCK, **_LAUNCH_EXACT)
        return out, changed

    def dilate_mask(self, mask: torch.Tensor, radius: int) -> torch.Tensor:
        """(B, H, W) bool → (B, H, W) bool, square (2r+1)² element, outside is False."""
        if radius < 0:
            raise ValueError(f"radius must be >= 0, got {radius}")
        src = _as_bool_u8(as_tensor(mask, self.device))
        bsz, h, w = src.shape
        out = torch.empty((bsz, h, w), dtype=torch.bool, device=self.device)
        grid = (triton.cdiv(w, _BW // 2), triton.cdiv(h, _BH), bsz)
        _dilate_kernel[grid](src, out.view(torch.uint8), h, w, int(radius), BLOCK_H=_BH, BLOCK_W=_BW // 2,
                             **_LAUNCH)
        return out

    def _affine(self, A: Any, bsz: int) -> tuple[torch.Tensor, int]:
        """A as a float32 device tensor (2, 3) or (B, 2, 3) and its batch stride."""
        if isinstance(A, torch.Tensor):
            a = A.to(device=self.device, dtype=torch.float32).contiguous()
        else:
            a = torch.from_numpy(np.ascontiguousarray(A, dtype=np.float32)).to(self.device)
        if tuple(a.shape) == (2, 3):
            return a, 0
        if tuple(a.shape) == (bsz, 2, 3):
            return a, 6
        raise ValueError(f"affine matrix must be (2, 3) or ({bsz}, 2, 3), got {tuple(a.shape)}")

    def warp_affine(self, latent: torch.Tensor, A: Any, out_hw: Optional[tuple[int, int]] = None,
                    border: str = "replicate") -> torch.Tensor:
        """(B, C, H, W) → (B, C, Ho, Wo) bilinear; A maps output → input latent pixels."""
        spec.check_border(border)
        src = as_tensor(latent, self.device).contiguous()
        bsz, c, h_in, w_in = src.shape
        ho, wo = (int(v) for v in (out_hw or (h_in, w_in)))
        a, a_stride = self._affine(A, bsz)
        out = torch.empty((bsz, c, ho, wo), dtype=src.dtype, device=self.device)
        grid = (triton.cdiv(ho * wo, _BLOCK), bsz)
        _warp_kernel[grid](src, a, out, c, h_in, w_in, ho, wo, a_stride,
                           BORDER_ZEROS=border == "zeros", BLOCK=_BLOCK, **_LAUNCH)
        return out

    def masked_blend(self, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """bool mask → where(mask, b, a); float mask → a + mask (b - a); mask (B, H, W)."""
        a = as_tensor(a, self.device).contiguous()
        b = as_tensor(b, self.device).contiguous()
        if a.shape != b.shape:
            raise ValueError(f"masked_blend needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
        spec.check_mask(mask.shape, a.shape)
        mask_t = as_tensor(mask, self.device)
        is_float = mask_t.dtype.is_floating_point
        mask_arg = mask_t.contiguous() if is_float else _as_bool_u8(mask_t)
        bsz, c, h, w = a.shape
        out = torch.empty_like(a)
        grid = (triton.cdiv(h * w, _BLOCK), bsz)
        _blend_kernel[grid](a, b, mask_arg, out, c, h * w, MASK_FLOAT=is_float, BLOCK=_BLOCK, **_LAUNCH)
        return out

"""`kernels.detail`'s passes for CUDA, one Triton kernel each (torch tensors in and out): `detail_add_cuda`
upsamples the flow-size map and confidence, samples the anchor's detail, weights it and adds it to the
student's frame; `warp_blend_cuda` upsamples the step's flow and weight, samples the last output and mixes it
into this one.

Semantics: `kernels.detail.detail_add_reference` and `warp_blend_reference` (the one difference: the final
rounding is half-up, not half-to-even). Like kernels/triton_kernels.py it calls only builtins, so it also runs under Triton's
interpreter (``TRITON_INTERPRET=1`` before import) on CPU tensors, which is how tests check it; it has not
run on a GPU here (the tests compile it for sm_90 without one).
"""
from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl


@triton.jit
def _taps(fy, fx, h, w):
    """Bilinear taps of (h, w) at clamped float coordinates: the four flat indices and their weights."""
    y0 = fy.to(tl.int32)  # fy ≥ 0: truncation is floor
    x0 = fx.to(tl.int32)
    y1 = tl.minimum(y0 + 1, h - 1)
    x1 = tl.minimum(x0 + 1, w - 1)
    ay = fy - y0.to(tl.float32)
    ax = fx - x0.to(tl.float32)
    return (y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1,
            (1.0 - ay) * (1.0 - ax), (1.0 - ay) * ax, ay * (1.0 - ax), ay * ax)


@triton.jit
def _lerp(ptr, i00, i01, i10, i11, w00, w01, w10, w11, stride, ch, valid):
    """The bilinear sample of channel `ch` (of `stride`) from the taps, in float32."""
    return (tl.load(ptr + i00 * stride + ch, mask=valid, other=0).to(tl.float32) * w00
            + tl.load(ptr + i01 * stride + ch, mask=valid, other=0).to(tl.float32) * w01
            + tl.load(ptr + i10 * stride + ch, mask=valid, other=0).to(tl.float32) * w10
            + tl.load(ptr + i11 * stride + ch, mask=valid, other=0).to(tl.float32) * w11)


@triton.jit
def _upsampled(d_ptr, c_ptr, py, px, h, w, sy, sx, valid):
    """The flow-size (dx, dy) field and a one-channel field at frame pixel (py, px): OpenCV's INTER_LINEAR
    resize (half-pixel centres, edges replicated)."""
    fy = tl.minimum(tl.maximum((py.to(tl.float32) + 0.5) * sy - 0.5, 0.0), h - 1.0)
    fx = tl.minimum(tl.maximum((px.to(tl.float32) + 0.5) * sx - 0.5, 0.0), w - 1.0)
    i00, i01, i10, i11, w00, w01, w10, w11 = _taps(fy, fx, h, w)
    dx = _lerp(d_ptr, i00, i01, i10, i11, w00, w01, w10, w11, 2, 0, valid)
    dy = _lerp(d_ptr, i00, i01, i10, i11, w00, w01, w10, w11, 2, 1, valid)
    c = _lerp(c_ptr, i00, i01, i10, i11, w00, w01, w10, w11, 1, 0, valid)
    return dx, dy, c


@triton.jit
def _detail_add_kernel(s_ptr, r_ptr, d_ptr, c_ptr, out_ptr, H, W, h, w, sy, sx, disp_scale,
                       BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < H * W
    py = offs // W
    px = offs % W
    dx, dy, c = _upsampled(d_ptr, c_ptr, py, px, h, w, sy, sx, valid)
    # where the pixel was in the anchor frame, clamped to it (edges replicated)
    qx = tl.minimum(tl.maximum(px.to(tl.float32) + dx * disp_scale, 0.0), W - 1.0)
    qy = tl.minimum(tl.maximum(py.to(tl.float32) + dy * disp_scale, 0.0), H - 1.0)
    j00, j01, j10, j11, v00, v01, v10, v11 = _taps(qy, qx, H, W)
    for ch in tl.static_range(3):
        det = _lerp(r_ptr, j00, j01, j10, j11, v00, v01, v10, v11, 3, ch, valid)
        s = tl.load(s_ptr + offs * 3 + ch, mask=valid, other=0).to(tl.float32)
        v = tl.minimum(tl.maximum(s + c * det + 0.5, 0.0), 255.0)
        tl.store(out_ptr + offs * 3 + ch, v.to(tl.uint8), mask=valid)


def detail_add_cuda(student: Any, residual: Any, disp: Any, conf: Any, disp_scale: float,
                    block: int = 512) -> torch.Tensor:
    """`kernels.detail.detail_add` on torch tensors (uint8 (H, W, 3), float32 (H, W, 3), (h, w, 2), (h, w))."""
    student, residual = student.contiguous(), residual.contiguous().float()
    disp, conf = disp.contiguous().float(), conf.contiguous().float()
    H, W = student.shape[:2]
    h, w = disp.shape[:2]
    if residual.shape != student.shape or disp.shape[2] != 2 or tuple(conf.shape) != (h, w):
        raise ValueError(f"shapes: student {tuple(student.shape)}, residual {tuple(residual.shape)}, "
                         f"disp {tuple(disp.shape)}, conf {tuple(conf.shape)}")
    out = torch.empty_like(student)
    grid = (triton.cdiv(H * W, block),)
    _detail_add_kernel[grid](student, residual, disp, conf, out, H, W, h, w, h / H, w / W, float(disp_scale),
                             BLOCK=block)
    return out


@triton.jit
def _warp_blend_kernel(s_ptr, l_ptr, f_ptr, a_ptr, out_ptr, H, W, h, w, sy, sx, disp_scale, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < H * W
    py = offs // W
    px = offs % W
    dx, dy, a = _upsampled(f_ptr, a_ptr, py, px, h, w, sy, sx, valid)
    qx = tl.minimum(tl.maximum(px.to(tl.float32) + dx * disp_scale, 0.0), W - 1.0)
    qy = tl.minimum(tl.maximum(py.to(tl.float32) + dy * disp_scale, 0.0), H - 1.0)
    j00, j01, j10, j11, v00, v01, v10, v11 = _taps(qy, qx, H, W)
    for ch in tl.static_range(3):
        last = _lerp(l_ptr, j00, j01, j10, j11, v00, v01, v10, v11, 3, ch, valid)
        s = tl.load(s_ptr + offs * 3 + ch, mask=valid, other=0).to(tl.float32)
        v = tl.minimum(tl.maximum(a * last + (1.0 - a) * s + 0.5, 0.0), 255.0)
        tl.store(out_ptr + offs * 3 + ch, v.to(tl.uint8), mask=valid)


def warp_blend_cuda(shown: Any, last: Any, flow: Any, weight: Any, disp_scale: float,
                    block: int = 512) -> torch.Tensor:
    """`kernels.detail.warp_blend` on torch tensors (uint8 (H, W, 3) twice, float32 (h, w, 2), (h, w))."""
    shown, last = shown.contiguous(), last.contiguous()
    flow, weight = flow.contiguous().float(), weight.contiguous().float()
    H, W = shown.shape[:2]
    h, w = flow.shape[:2]
    if last.shape != shown.shape or flow.shape[2] != 2 or tuple(weight.shape) != (h, w):
        raise ValueError(f"shapes: shown {tuple(shown.shape)}, last {tuple(last.shape)}, flow {tuple(flow.shape)}, "
                         f"weight {tuple(weight.shape)}")
    out = torch.empty_like(shown)
    grid = (triton.cdiv(H * W, block),)
    _warp_blend_kernel[grid](shown, last, flow, weight, out, H, W, h, w, h / H, w / W, float(disp_scale), BLOCK=block)
    return out


__all__ = ["detail_add_cuda", "warp_blend_cuda"]

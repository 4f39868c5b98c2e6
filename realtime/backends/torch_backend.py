"""`torch` backend: our distilled model's stages in PyTorch (CPU; CUDA when present).

`TorchStages` implements `ModelStages` (realtime/backends/stages.py): numpy arrays in and out on
CPU (zero-copy through `torch.from_numpy`), CUDA tensors on the GPU. `TorchBackend` is
`ModelBackend` on those stages. Only this module imports torch, and only when a backend is built.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np

from realtime.backends.model_backend import ModelBackend
from realtime.backends.stages import Encoded, ModelInfo, info_from_manifest
from realtime.config import BackendConfig
from realtime.errors import UserError

log = logging.getLogger(__name__)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise UserError("torch not installed: pip install 'generative-reality[train]'") from None
    return torch


class TorchStages:
    """The model's stages in PyTorch. On "cpu" arrays are numpy; on "cuda" torch tensors."""

    engine = "torch"

    def __init__(self, device: str = "auto", model_dir: Optional[str | Path] = None) -> None:
        torch = _import_torch()
        from models.build import load_model

        if device == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda asked for, but torch sees no CUDA device: use --device cpu")
        self._torch = torch
        self.kernel_device = "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
        self.model, self.manifest = load_model(model_dir, strict=True, device=self.kernel_device)
        self.info: ModelInfo = info_from_manifest(self.manifest, self.model.cfg.to_dict(), str(model_dir or ""))
        half = torch.tensor([(v - 1) / 2 for v in self.info.fsq_levels], dtype=torch.float32)
        self._half = half.view(1, -1, 1, 1).to(self.kernel_device)  # (1, d, 1, 1)

    # numpy on CPU, tensors on CUDA
    def _in(self, a: Any) -> Any:
        return self._torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a

    def _out(self, t: Any) -> Any:
        return t.numpy() if self.kernel_device == "cpu" else t

    def style_vector(self, weights: np.ndarray) -> Any:
        with self._torch.inference_mode():
            w = self._torch.from_numpy(np.asarray(weights, np.float32)).to(self.kernel_device)
            return self._out(self.model.style_embedding(w))  # (1, E)

    def encode(self, x: Any) -> Encoded:
        with self._torch.inference_mode():
            x = self._in(x).float()
            zq = self._torch.tanh(self.model.encoder(x))  # (B, d, h, w)
            return Encoded(self._out(zq), self._out(self.model.skip(x)))

    def embed(self, levels: Any) -> Any:
        with self._torch.inference_mode():
            codes = (self._in(levels).float() - self._half) / self._half  # (B, d, h, w) in [-1, 1]
            return self._out(self.model.embed(codes))

    def initial(self, emb: Any) -> Any:
        with self._torch.inference_mode():
            return self._out(self.model.initial_latent(self._in(emb)))

    def refine(self, z: Any, emb: Any, style_vec: Any, steps: int, first_step: int = 0) -> Any:
        with self._torch.inference_mode():
            return self._out(self.model.refine(self._in(z), self._in(emb), self._in(style_vec), steps, first_step))

    def decode(self, z: Any, skip: Any, x: Any) -> Any:
        with self._torch.inference_mode():
            return self._out(self.model.decode(self._in(z), self._in(skip), self._in(x).float()))

    def close(self) -> None:
        pass


class TorchBackend(ModelBackend):
    """Our model in PyTorch."""

    name = "torch"

    def __init__(self, config: BackendConfig, model_dir: Optional[str | Path] = None) -> None:
        super().__init__(TorchStages(config.device, model_dir or config.model_dir), config)

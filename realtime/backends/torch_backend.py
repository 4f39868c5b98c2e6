"""`torch` backend: our distilled model's stages in PyTorch (CPU; CUDA when present).

`TorchStages` implements `ModelStages` (models/stages.py): numpy arrays in and out on
CPU (zero-copy through `torch.from_numpy`), CUDA tensors on the GPU. `TorchBackend` is
`ModelBackend` on those stages. Only this module imports torch, and only when a backend is built.

On CUDA (none of this runs on the CPU path):

- FP16 weights and activations (``--precision auto`` or ``fp16``); stage outputs are handed back
  as float32 so the kernels and the temporal cache see one dtype on every engine.
- The K refiner steps run as one captured CUDA graph per (shape, K, first step), replayed from
  preallocated static buffers (`_RefineGraph`): one launch instead of ~10 kernels per step.
- ``GENREAL_TORCH_COMPILE=1`` compiles the encoder and decoder with `torch.compile`
  (``max-autotune-no-cudagraphs``, static shapes); off by default because the first frame of
  every size then takes tens of seconds.

Without an NVIDIA driver, ``--device cuda`` fails before torch is even imported, so
``--backend auto`` on a CPU machine never loads torch for its CUDA probe.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from realtime.backends.model_backend import ModelBackend
from models.stages import StageEncoding, ModelInfo, frame_norm, info_from_manifest
from realtime.config import BackendConfig
from genreal_errors import BackendUnavailable, UserError

log = logging.getLogger(__name__)


def nvidia_driver_present() -> bool:
    """Whether an NVIDIA kernel driver is loaded (a cheap check that imports nothing)."""
    return any(os.path.exists(p) for p in ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0"))


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise BackendUnavailable("torch not installed: pip install 'generative-reality[train]'") from None
    return torch


class _RefineGraph:
    """CUDA only: `steps` refiner steps captured as one CUDA graph over static (preallocated) buffers.

    `run` copies the inputs into the static buffers, replays the graph and returns a clone of the
    static output (the next replay overwrites it).
    """

    def __init__(self, torch: Any, model: Any, z: Any, emb: Any, conds: Any) -> None:
        self._torch = torch
        self.z_in = z.clone()  # (B, C, h, w)
        self.emb_in = emb.clone()  # (B, C, h, w)
        self.cond_in = conds.clone()  # (K, B, E)
        step = model.refiner.step

        def body() -> Any:
            zz = self.z_in
            for k in range(self.cond_in.shape[0]):
                zz = zz + step(zz, self.emb_in, self.cond_in[k])
            return zz

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up outside the capture (cuDNN picks its kernels here)
            for _ in range(2):
                body()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.z_out = body()

    def run(self, z: Any, emb: Any, conds: Any) -> Any:
        self.z_in.copy_(z)
        self.emb_in.copy_(emb)
        self.cond_in.copy_(conds)
        self.graph.replay()
        return self.z_out.clone()


class TorchStages:
    """The model's stages in PyTorch. On "cpu" arrays are numpy; on "cuda" torch tensors (float32 at the
    stage boundaries; FP16 inside with --precision auto/fp16)."""

    engine = "torch"

    def __init__(self, device: str = "auto", model_dir: Optional[str | Path] = None, precision: str = "auto",
                 compile: Optional[bool] = None, cuda_graphs: bool = True) -> None:
        if device == "cuda" and not nvidia_driver_present():
            raise BackendUnavailable("no NVIDIA driver is loaded here: use --device cpu")
        if precision == "int8":
            raise UserError("the torch backend runs fp32 or fp16: for --precision int8 use --backend onnxruntime "
                            "(after 'genreal calibrate')")
        torch = _import_torch()
        from models.build import load_model

        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("torch sees no CUDA device: use --device cpu")
        self._torch = torch
        self.kernel_device = "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
        on_gpu = self.kernel_device == "cuda"
        if precision == "fp16" and not on_gpu:
            raise UserError("--precision fp16 with the torch backend needs a CUDA GPU: on the CPU use fp32")
        self.precision = ("fp16" if on_gpu else "fp32") if precision == "auto" else precision
        self.dtype = torch.float16 if self.precision == "fp16" else torch.float32
        self.model, self.manifest = load_model(model_dir, strict=True, device=self.kernel_device)
        self.info: ModelInfo = info_from_manifest(self.manifest, self.model.cfg.to_dict(), str(model_dir or ""))
        half = torch.tensor([(v - 1) / 2 for v in self.info.fsq_levels], dtype=torch.float32)
        self._half = half.view(1, -1, 1, 1).to(self.kernel_device)  # (1, d, 1, 1)
        self._graphs: dict[tuple, _RefineGraph] = {}
        self._cuda_graphs = bool(cuda_graphs) and on_gpu
        if on_gpu:
            self._setup_cuda(compile)

    def _setup_cuda(self, compile: Optional[bool]) -> None:  # pragma: no cover - needs a CUDA GPU
        torch = self._torch
        torch.backends.cudnn.benchmark = True  # static shapes per size: let cuDNN pick the fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        self.model = self.model.to(self.dtype)
        if compile is None:
            compile = os.environ.get("GENREAL_TORCH_COMPILE", "") == "1"
        if compile:
            opts = {"mode": "max-autotune-no-cudagraphs", "dynamic": False}
            self.model.encoder = torch.compile(self.model.encoder, **opts)
            self.model.decoder = torch.compile(self.model.decoder, **opts)
            log.info("torch: encoder and decoder compiled with torch.compile (first frame of each size is slow)")

    # numpy on CPU, tensors on CUDA
    def _in(self, a: Any, dtype: Any = None) -> Any:
        t = self._torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a
        return t.to(dtype or self.dtype) if t.is_floating_point() else t

    def _out(self, t: Any) -> Any:
        if self.kernel_device == "cpu":
            return t.numpy()
        return t.float() if t.dtype != self._torch.float32 else t

    def style_vector(self, weights: np.ndarray) -> Any:
        with self._torch.inference_mode():
            w = self._torch.from_numpy(np.asarray(weights, np.float32)).to(self.kernel_device)
            return self._out(self.model.style_embedding(w.to(self.dtype)))  # (1, E)

    def frame_norm(self, x: Any) -> Any:
        if not self.info.normalize:
            return None
        with self._torch.inference_mode():
            return frame_norm(x)  # numpy on the CPU, a tensor on CUDA

    def encode(self, x: Any, norm: Any = None) -> StageEncoding:
        with self._torch.inference_mode():
            zq, skip, ctx = self.model.stage_encode(self._in(x), None if norm is None else self._in(norm))
            return StageEncoding(self._out(zq), self._out(skip), None if ctx is None else self._out(ctx))

    def embed(self, levels: Any) -> Any:
        with self._torch.inference_mode():
            codes = (self._in(levels).float() - self._half) / self._half  # (B, d, h, w) in [-1, 1]
            return self._out(self.model.embed(codes.to(self.dtype)))

    def initial(self, emb: Any) -> Any:
        with self._torch.inference_mode():
            return self._out(self.model.initial_latent(self._in(emb)))

    def refine(self, z: Any, emb: Any, style_vec: Any, steps: int, first_step: int = 0) -> Any:
        with self._torch.inference_mode():
            z, emb, sv = self._in(z), self._in(emb), self._in(style_vec)
            if self._cuda_graphs and steps > 0:
                return self._out(self._refine_graph(z, emb, sv, steps, first_step))
            return self._out(self.model.refine(z, emb, sv, steps, first_step))

    def _refine_graph(self, z: Any, emb: Any, style_vec: Any, steps: int, first_step: int) -> Any:  # pragma: no cover
        """CUDA only: the refine loop through a captured CUDA graph (captured once per shape and steps)."""
        if steps < 0 or first_step + steps > self.info.max_steps:
            raise ValueError(f"refine steps must be within 0..{self.info.max_steps}")
        step_emb = self.model.refiner.step_emb  # (max_steps, E)
        conds = (style_vec.expand(z.shape[0], -1)[None] + step_emb[first_step:first_step + steps, None])  # (K, B, E)
        key = (tuple(z.shape), steps, first_step)
        graph = self._graphs.get(key)
        if graph is None:
            if len(self._graphs) >= 16:  # many sizes in one run: drop the oldest captures
                self._graphs.pop(next(iter(self._graphs)))
            graph = self._graphs[key] = _RefineGraph(self._torch, self.model, z, emb, conds.contiguous())
        return graph.run(z, emb, conds)

    def decode(self, z: Any, skip: Any, x: Any, norm: Any = None) -> Any:
        with self._torch.inference_mode():
            norm = None if norm is None else self._in(norm)
            return self._out(self.model.decode(self._in(z), self._in(skip), self._in(x), norm))

    def close(self) -> None:
        self._graphs.clear()


class TorchBackend(ModelBackend):
    """Our model in PyTorch."""

    name = "torch"

    def __init__(self, config: BackendConfig, model_dir: Optional[str | Path] = None) -> None:
        super().__init__(TorchStages(config.device, model_dir or config.model_dir, precision=config.precision),
                         config)

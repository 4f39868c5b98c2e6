"""`tensorrt` backend: our model's stage graphs as TensorRT 10 engines, arrays as torch CUDA tensors.

`TensorRTStages` implements `ModelStages` (models/stages.py) with ``kernel_device`` "cuda":
the kernels' Triton pre/postprocess and FSQ run on the same torch CUDA tensors the engines read
and write. Engines are built lazily from ``<model>/onnx/<preset>/<stage>.onnx`` on the first frame
of a size (models/tensorrt_build.py: optimization profile from the stage's `ExportSpec`, timing
cache, engine cache keyed by the graph's metadata hash; a mismatched engine is rebuilt, never run).

Execution uses only TensorRT 10's name-based API: for every I/O tensor (``num_io_tensors``,
``get_tensor_name``, ``get_tensor_mode``) the context gets ``set_input_shape`` and
``set_tensor_address`` once, pointing at buffers allocated once (torch CUDA tensors, reallocated
only when the frame size changes); ``execute_async_v3`` runs on the backend's own CUDA stream
(a `torch.cuda.Stream`, ordered against torch's current stream with ``wait_stream``). Inputs are
copied into the fixed input buffers and outputs copied out of the fixed output buffers
(device-to-device, microseconds), so callers may keep returned tensors across frames and the
addresses never change, which is what CUDA-graph capture needs: with ``GENREAL_TRT_CUDA_GRAPH=1``
each engine call (copy-in + execute) is captured once per size and replayed.

CUDA memory and streams: torch (present on every GPU machine we use) rather than cuda-python, so
the Triton kernels, the engines and the temporal cache share one allocator and one stream model.

Precision: ``auto``/``fp16`` → FP16 engines; ``fp32`` → FP32 (TF32) engines; ``int8`` → the
``<stage>.int8.onnx`` Q/DQ graphs from ``genreal calibrate`` (explicit quantization, INT8 + FP16)
for the stages calibration kept, FP16 engines for the others.

This module imports tensorrt and torch only when the stages are built: without tensorrt the
constructor raises ``BackendUnavailable("tensorrt not installed: ...")`` and ``--backend auto`` moves on.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from genreal_errors import BackendUnavailable, UserError
from models.exported import CHAIN_STAGES, INT8_SUFFIX, METADATA_KEY, open_exported, read_artifact_metadata
from models.stages import StageEncoding, ModelInfo, frame_norm
from realtime.backends.model_backend import ModelBackend
from realtime.config import BackendConfig

log = logging.getLogger(__name__)

CUDA_GRAPH_ENV = "GENREAL_TRT_CUDA_GRAPH"


class _Stream:
    """The backend's own CUDA stream (torch), or a stand-in on "cpu" (tests with a fake tensorrt)."""

    def __init__(self, torch: Any, device: str) -> None:
        self.torch = torch
        self.cuda = device.startswith("cuda")
        self.stream = torch.cuda.Stream(device=device) if self.cuda else None

    @property
    def handle(self) -> int:
        return int(self.stream.cuda_stream) if self.stream is not None else 0

    def enter(self) -> None:
        """Work queued on torch's current stream so far (the inputs) happens before ours."""
        if self.stream is not None:
            self.stream.wait_stream(self.torch.cuda.current_stream())

    def leave(self) -> None:
        """Torch's current stream waits for our work (the outputs) before it goes on."""
        if self.stream is not None:
            self.torch.cuda.current_stream().wait_stream(self.stream)

    def context(self) -> Any:
        import contextlib

        return self.torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()


def _torch_dtype(trt: Any, torch: Any, dt: Any) -> Any:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
             trt.DataType.INT32: torch.int32, trt.DataType.INT8: torch.int8, trt.DataType.BOOL: torch.bool}
    try:
        return table[dt]
    except KeyError:
        raise UserError(f"tensorrt engine I/O type {dt} is not supported here: re-export with 'genreal export'") \
            from None


class EngineRunner:
    """One deserialized engine: its execution context, fixed I/O buffers and (optionally) a CUDA graph."""

    def __init__(self, trt: Any, torch: Any, runtime: Any, plan: bytes, name: str, device: str, stream: _Stream,
                 cuda_graph: bool = False) -> None:
        self.trt, self.torch, self.name, self.device, self.stream = trt, torch, name, device, stream
        self.engine = runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise UserError(f"tensorrt could not load the {name} engine (a TensorRT or driver mismatch?): delete the "
                            f"engine cache (GENREAL_CACHE) to rebuild it")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.buffers: dict[str, Any] = {}
        self._shapes: Optional[tuple[tuple[int, ...], ...]] = None
        self.use_graph = cuda_graph and stream.cuda
        self._graph: Any = None

    def bind(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Set the input shapes and (re)allocate every I/O buffer; a no-op when the shapes are unchanged."""
        key = tuple(tuple(int(v) for v in shapes[n]) for n in self.inputs)
        if key == self._shapes:
            return
        trt, torch = self.trt, self.torch
        for n, shape in zip(self.inputs, key):
            if not self.context.set_input_shape(n, shape):
                raise UserError(f"tensorrt {self.name}: input {n} of shape {shape} is outside the engine's profile")
        self.buffers = {}
        for n in self.inputs + self.outputs:
            shape = tuple(int(v) for v in self.context.get_tensor_shape(n))
            dtype = _torch_dtype(trt, torch, self.engine.get_tensor_dtype(n))
            buf = torch.empty(shape, dtype=dtype, device=self.device)
            self.buffers[n] = buf
            self.context.set_tensor_address(n, int(buf.data_ptr()))
        self._shapes, self._graph = key, None

    def _launch(self) -> None:
        if not self.context.execute_async_v3(self.stream.handle):
            raise RuntimeError(f"tensorrt {self.name}: execute_async_v3 failed")

    def __call__(self, **inputs: Any) -> list[Any]:
        """Run on our stream: copy `inputs` into the fixed buffers, execute, copy the outputs out."""
        self.bind({n: tuple(inputs[n].shape) for n in self.inputs})
        self.stream.enter()
        with self.stream.context():
            for n in self.inputs:
                self.buffers[n].copy_(inputs[n])
            if self.use_graph:
                self._replay()
            else:
                self._launch()
            outs = [self.buffers[n].clone() for n in self.outputs]
        self.stream.leave()
        return outs

    def _replay(self) -> None:
        """CUDA graph of one execute: captured after a first plain run (TensorRT's lazy setup), then replayed."""
        torch = self.torch
        if self._graph is None:
            self._launch()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self.stream.stream):
                self._launch()
            self._graph = graph
            log.debug("tensorrt %s: CUDA graph captured", self.name)
        self._graph.replay()


class TensorRTStages:
    """The model's stages as TensorRT engines (torch CUDA tensors in and out).

    `trt` and `dev` can be injected (tests run the whole path with a fake tensorrt module on "cpu",
    where arrays are numpy like every CPU engine's).
    """

    engine = "tensorrt"

    def __init__(self, model_dir: Optional[str | Path] = None, precision: str = "auto", device: str = "cuda",
                 cache_dir: Optional[Path] = None, cuda_graph: Optional[bool] = None, trt: Any = None,
                 dev: Any = None) -> None:
        from models import tensorrt_build as tb

        self._tb = tb
        self.trt = trt if trt is not None else tb.import_tensorrt()
        try:
            import torch
        except ImportError:
            raise BackendUnavailable("the tensorrt backend needs torch for CUDA memory: pip install 'generative-reality[kernels]'") \
                from None
        self.torch = torch
        if device not in ("cuda", "cpu") and not device.startswith("cuda:"):
            raise UserError(f"the tensorrt backend runs on cuda, not {device!r}: use --backend onnxruntime for the CPU")
        if device == "cpu" and trt is None:
            raise BackendUnavailable("the tensorrt backend runs on an NVIDIA GPU: use --backend onnxruntime on the CPU")
        self.device = device
        self.kernel_device = "cpu" if device == "cpu" else "cuda"
        self.dev = dev if dev is not None else tb.device_info(self.trt)
        self._load_model(model_dir)
        self.precision = "fp16" if precision == "auto" else precision
        if self.precision not in tb.PRECISIONS:
            raise UserError(f"unknown --precision {precision!r} for tensorrt: use fp32, fp16 or int8")
        if self.precision == "int8" and not self.exported.has_int8():
            raise UserError(f"no INT8 graphs in {self.onnx_dir} (*{INT8_SUFFIX}): run 'genreal calibrate' first, "
                            "or use --precision fp16")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else tb.engine_cache_dir()
        self.cuda_graph = bool(int(os.environ.get(CUDA_GRAPH_ENV, "0"))) if cuda_graph is None else bool(cuda_graph)
        self.stream = _Stream(torch, device)
        self.runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))
        self._engines: dict[str, dict[str, EngineRunner]] = {}  # preset → stage → runner
        self._active: dict[str, EngineRunner] = {}
        self._current: Optional[tuple[int, int, int]] = None
        self.preset: Optional[str] = None
        self.stage_precision: dict[str, str] = {}

    # -- files ----------------------------------------------------------------------------------
    def _load_model(self, model_dir: Optional[str | Path]) -> None:
        """The exported model, read and checked like every engine's (`models.exported.open_exported`)."""
        from models.model import ModelConfig  # the export specs' shapes come from the config (torch-free class)

        self.exported = open_exported(model_dir)
        self.model_dir, self.onnx_dir = self.exported.model_dir, self.exported.onnx_dir
        self.info: ModelInfo = self.exported.info
        self.cfg = ModelConfig.from_dict(self.exported.manifest["config"])
        self.presets: tuple[str, ...] = self.exported.presets
        self.styles_table = self._to_dev(self.exported.tables.styles)  # (S, E)
        self.step_emb = self._to_dev(self.exported.tables.step_emb)  # (max_steps, E)

    def _to_dev(self, a: np.ndarray) -> Any:
        return self.torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def _graph_for(self, preset: str, stage: str) -> tuple[Path, str]:
        """(ONNX file, engine precision) of one stage: the INT8 Q/DQ graph where calibration kept one."""
        path = self.exported.graph_file(preset, stage, self.precision)
        if self.precision != "int8":
            return path, self.precision
        if path.name.endswith(INT8_SUFFIX):
            return path, "int8"
        log.info("tensorrt int8: %s/%s has no INT8 graph (calibration kept FP32): FP16 engine", preset, stage)
        return path, "fp16"

    def _metadata(self, path: Path) -> dict[str, Any]:
        meta = self.exported.check_graph(path, read_artifact_metadata(path).get(METADATA_KEY))
        quant = meta.get("quantization") or {}
        if isinstance(quant, dict) and quant.get("tensorrt") is False:
            raise UserError(f"{path} was calibrated with --activations uint8 (ONNX Runtime CPU only): re-run "
                            "'genreal calibrate' with --activations int8 for TensorRT")
        return meta

    # -- engines ----------------------------------------------------------------------------------
    def engines_for(self, batch: int, hp: int, wp: int) -> dict[str, EngineRunner]:
        """The stage engines for padded frames (batch, 3, hp, wp): built or loaded on first use."""
        key = (batch, hp, wp)
        if key == self._current:
            return self._active
        from models.export import preset_specs

        preset = self.exported.preset_covering(wp, hp, batch)
        if preset not in self._engines:
            specs = preset_specs(self.cfg, preset)
            runners = {}
            for stage in CHAIN_STAGES:
                path, precision = self._graph_for(preset, stage)
                meta = self._metadata(path)
                _, _, plan = self._tb.ensure_engine(self.trt, path, specs[stage], preset, precision, self.dev,
                                                    str(meta["metadata_hash"]), self.cache_dir)
                runners[stage] = EngineRunner(self.trt, self.torch, self.runtime, plan, f"{preset}/{stage}",
                                              self.device, self.stream, self.cuda_graph)
                self.stage_precision[stage] = precision
            self._engines[preset] = runners
        log.info("tensorrt: %dx%d batch %d runs the %s engines (%s)", wp, hp, batch, preset,
                 ", ".join(f"{s} {p}" for s, p in self.stage_precision.items()))
        self._current, self._active, self.preset = key, self._engines[preset], preset
        return self._active

    # -- arrays: torch tensors on the device (numpy in and out in the "cpu" test mode) ----------------
    def _in(self, a: Any, dtype: Any = None) -> Any:
        t = self.torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a
        t = t.to(self.device)
        return t.to(dtype) if dtype is not None and t.dtype != dtype else t.contiguous()

    def _out(self, t: Any) -> Any:
        return t.numpy() if self.kernel_device == "cpu" else t

    # -- ModelStages ----------------------------------------------------------------------------------
    def style_vector(self, weights: np.ndarray) -> Any:
        w = self._in(np.asarray(weights, np.float32).reshape(1, -1))  # (1, S)
        return self._out(w @ self.styles_table)  # (1, E)

    def frame_norm(self, x: Any) -> Any:
        return self._out(frame_norm(self._in(x, self.torch.float32))) if self.info.normalize else None

    def _norm_feed(self, x: Any, norm: Any) -> dict[str, Any]:
        if not self.info.normalize:
            return {}
        return {"norm": frame_norm(x) if norm is None else self._in(norm, self.torch.float32)}

    def encode(self, x: Any, norm: Any = None) -> StageEncoding:
        x = self._in(x, self.torch.float32)  # (B, 3, Hp, Wp)
        run = self.engines_for(x.shape[0], x.shape[2], x.shape[3])
        outs = run["encode"](x=x, **self._norm_feed(x, norm))  # zq (B, d, h, w), skip (B, S, Hp/4, Wp/4)[, ctx (B, E)]
        return StageEncoding(self._out(outs[0]), self._out(outs[1]), self._out(outs[2]) if len(outs) > 2 else None)

    def embed(self, levels: Any) -> Any:
        (emb,) = self._active["embed"](levels=self._in(levels, self.torch.int32))
        return self._out(emb)  # (B, C, h, w)

    def initial(self, emb: Any) -> Any:
        (z0,) = self._active["initial"](emb=self._in(emb))
        return self._out(z0)

    def refine(self, z: Any, emb: Any, style_vec: Any, steps: int, first_step: int = 0) -> Any:
        self.exported.check_steps(steps, first_step)
        e = self.step_emb.shape[1]
        z, emb, vec = self._in(z), self._in(emb), self._in(style_vec).reshape(-1, e)  # vec (1 or B, E)
        run = self._active["refine_step"]
        for k in range(first_step, first_step + steps):
            cond = (vec + self.step_emb[min(k, self.step_emb.shape[0] - 1)]).expand(z.shape[0], -1).contiguous()  # (B, E)
            (z,) = run(z=z, emb=emb, cond=cond)
        return self._out(z)

    def decode(self, z: Any, skip: Any, x: Any, norm: Any = None) -> Any:
        x = self._in(x, self.torch.float32)
        (rgb,) = self._active["decode"](z=self._in(z), skip=self._in(skip), x=x, **self._norm_feed(x, norm))
        return self._out(rgb)  # (B, 3, Hp, Wp) unclamped

    def close(self) -> None:
        self._engines.clear()
        self._active = {}
        self._current = None


class TensorRTBackend(ModelBackend):
    """Our model as TensorRT engines on an NVIDIA GPU."""

    name = "tensorrt"

    def __init__(self, config: BackendConfig, model_dir: Optional[str | Path] = None) -> None:
        if config.device == "cpu":
            raise BackendUnavailable("the tensorrt backend runs on an NVIDIA GPU, not --device cpu: use --backend onnxruntime")
        stages = TensorRTStages(model_dir or config.model_dir, precision=config.precision)
        super().__init__(stages, config)
        self.device = "cuda"

    def stats(self) -> dict[str, Any]:
        st: TensorRTStages = self.stages  # type: ignore[assignment]
        return {**super().stats(), "precision": st.precision, "preset": st.preset,
                "stage_precision": dict(st.stage_precision), "cuda_graph": st.cuda_graph}


__all__ = ["TensorRTStages", "TensorRTBackend", "EngineRunner", "CUDA_GRAPH_ENV"]

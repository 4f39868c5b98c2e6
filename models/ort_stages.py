"""Our model's exported stage graphs in ONNX Runtime: the engine (`OrtStages`, a `ModelStages`) that the
runtime's default backend runs and that INT8 calibration records on. No torch.

`OrtStages` runs the graphs `genreal export` writes, read and checked once through
`models.exported.open_exported` (``<model_dir>/onnx/<preset>/<stage>.onnx`` + ``tables.npz`` +
``index.json``). Arrays in and out are numpy (``kernel_device`` "cpu") on every provider.

- Graph choice: the static preset made for the frame's padded size and batch when one exists,
  else the dynamic graphs, else a `UserError` listing the sizes that exist (`preset=` pins one).
  Sessions open on the first frame of a size and stay open (a size change opens that size's
  sessions once).
- Providers: CPU (full graph optimization, intra-op threads = cores). With `onnxruntime-gpu`:
  CUDA (and TensorRT when its provider is present) with FP16, engine and timing caches in a folder
  keyed by the graphs' metadata hash. Asking for cuda where the provider cannot start is a
  `UserError`, never a silent fall back to the CPU.
- Precision: fp32; fp16 on GPU providers only; int8 loads ``<stage>.int8.onnx`` (Q/DQ graphs
  from `genreal calibrate`). `files=` runs chosen stages from other files (calibration's candidates).
- Every graph's metadata (``metadata_props["genreal"]``) must name the model's weights hash and
  styles (`ExportedModel.check_graph`); graphs exported from other weights are refused.
- `recorder=`: a `Recorder` that keeps every stage graph's inputs (calibration data).

Only `onnxruntime` and numpy are imported (onnxruntime when the stages are built).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from genreal_errors import BackendUnavailable, UserError
from models.exported import (CHAIN_STAGES, EXPORT_HINT, INT8_SUFFIX, METADATA_KEY, ExportedModel, first_line,
                             open_exported)
from models.stages import StageEncoding, ModelInfo, frame_norm

log = logging.getLogger(__name__)


@dataclass
class Recorder:
    """The inputs each stage graph received, one feed dict per graph call (arrays are copies)."""

    feeds: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)

    def add(self, stage: str, feed: Mapping[str, np.ndarray]) -> None:
        self.feeds.setdefault(stage, []).append({k: np.array(v, copy=True) for k, v in feed.items()})


def _import_ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailable("onnxruntime not installed: pip install onnxruntime (or onnxruntime-gpu)") from None
    return ort


def default_cache_dir() -> Path:
    """Where TensorRT engines, timing caches and FP16 graphs go: $GENREAL_CACHE or ~/.cache/genreal."""
    root = os.environ.get("GENREAL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "genreal")
    return Path(root) / "onnxruntime"


def _toposort(graph: Any) -> None:
    """Reorder `graph.node` in place so every node comes after the producers of its inputs."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = [n for n in pending if not all(i in ready for i in n.input)]
        done = [n for n in pending if all(i in ready for i in n.input)]
        if not done:
            raise ValueError("graph has a cycle or an undefined input")
        for n in done:
            ordered.append(n)
            ready.update(n.output)
        pending = rest
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)


class ProviderPlan:
    """Which execution providers a session gets, decided once from device and precision."""

    def __init__(self, device: str, precision: str, cache_root: Path) -> None:
        ort = _import_ort()
        avail = set(ort.get_available_providers())
        has_cuda = "CUDAExecutionProvider" in avail
        if device == "cuda" and not has_cuda:
            raise BackendUnavailable("onnxruntime has no CUDA provider here "
                            "(pip install onnxruntime-gpu on a machine with an NVIDIA GPU): use --device cpu")
        self.gpu = device == "cuda" or (device == "auto" and has_cuda)
        if precision == "fp16" and not self.gpu:
            raise UserError("--precision fp16 needs a GPU provider (onnxruntime-gpu with CUDA): "
                            "on the CPU use --precision fp32 or int8")
        self.precision = ("fp16" if self.gpu else "fp32") if precision == "auto" else precision
        self.tensorrt = self.gpu and "TensorrtExecutionProvider" in avail
        self.cache_root = cache_root
        self.device = "cuda" if self.gpu else "cpu"

    def providers(self, metadata_hash: str) -> list[Any]:
        if not self.gpu:
            return ["CPUExecutionProvider"]
        cache = self.cache_root / metadata_hash[:16]
        cache.mkdir(parents=True, exist_ok=True)
        cuda = ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "EXHAUSTIVE", "do_copy_in_default_stream": "1"})
        out: list[Any] = []
        if self.tensorrt and self.precision != "int8":
            out.append(("TensorrtExecutionProvider", {
                "trt_fp16_enable": self.precision == "fp16",
                "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache),
            }))
        return out + [cuda, "CPUExecutionProvider"]


class OrtStages:
    """The model's stages as ONNX Runtime sessions (numpy arrays in and out)."""

    engine = "onnxruntime"
    kernel_device = "cpu"  # arrays are numpy on every provider; on CUDA refine keeps z on the device

    def __init__(self, model_dir: Optional[str | Path] = None, device: str = "auto", precision: str = "auto",
                 threads: Optional[int] = None, cache_dir: Optional[Path] = None, *,
                 exported: Optional[ExportedModel] = None, preset: Optional[str] = None,
                 files: Optional[Mapping[str, Path]] = None, recorder: Optional[Recorder] = None) -> None:
        """`exported` (else read from `model_dir`); `preset` pins the graph set (else chosen per frame size);
        `files` maps stages to other graph files to run instead (calibration's INT8 candidates);
        `recorder` keeps every stage's inputs."""
        self._ort = _import_ort()
        self.exported = exported if exported is not None else open_exported(model_dir)
        self.model_dir, self.onnx_dir = self.exported.model_dir, self.exported.onnx_dir
        self.info: ModelInfo = self.exported.info
        self.presets: tuple[str, ...] = self.exported.presets
        self.tables = self.exported.tables
        if preset is not None and preset not in self.presets:
            raise UserError(f"no ONNX graphs for preset {preset} in {self.onnx_dir}: {EXPORT_HINT} with that preset")
        self._pinned = preset
        self._files = {s: Path(p) for s, p in (files or {}).items()}
        self.recorder = recorder
        self.plan = ProviderPlan(device, precision, cache_dir or default_cache_dir())
        self.device = self.plan.device
        self.precision = self.plan.precision
        self.threads = int(threads or os.cpu_count() or 1)
        self._sessions: dict[str, dict[str, Any]] = {}  # preset → stage → InferenceSession
        self._current: Optional[tuple[int, int, int]] = None  # (B, Hp, Wp) of the active sessions
        self._active: dict[str, Any] = {}
        self.preset: Optional[str] = None
        self._announced: set[str] = set()  # graph sets already logged at INFO
        if self.precision == "int8" and not self.exported.has_int8():
            raise UserError(f"no INT8 graphs in {self.onnx_dir} (*{INT8_SUFFIX}): run 'genreal calibrate' first, "
                            "or use --precision fp32")
        if self.plan.gpu:
            try:
                self._check_gpu_starts()
            except UserError as exc:
                if device != "auto" or precision == "fp16":
                    raise
                # --device auto: onnxruntime-gpu is installed but CUDA cannot start here; say so and use the CPU
                log.warning("onnxruntime: %s; --device auto runs on the CPU", str(exc).split(":")[0])
                self._sessions.clear()
                self.plan = ProviderPlan("cpu", precision, self.plan.cache_root)
                self.device, self.precision = self.plan.device, self.plan.precision

    # -- files ------------------------------------------------------------------------------
    def _stage_path(self, preset: str, stage: str) -> Path:
        if stage in self._files:
            return self._files[stage]
        path = self.exported.graph_file(preset, stage, self.precision)
        if self.precision == "int8" and not path.name.endswith(".int8.onnx"):
            log.info("int8: %s/%s has no INT8 graph, it runs in FP32", preset, stage)
        return path

    # -- sessions -----------------------------------------------------------------------------
    def _options(self) -> Any:
        ort = self._ort
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # A frame runs 5+ sessions back to back, each with its own intra-op pool: spinning workers of the
        # session that just finished would steal the cores from the next one (measured: 3x slower chains).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return opts

    def _open(self, path: Path, stage: str, preset: str) -> Any:
        """A session for one graph. On the GPU the metadata is read first (its hash keys the engine cache)."""
        if not path.is_file():
            raise UserError(f"missing ONNX graph {path}: {EXPORT_HINT} again")
        meta: Optional[dict[str, Any]] = None
        model_path, providers = path, ["CPUExecutionProvider"]
        if self.plan.gpu:
            meta = self._checked_metadata(path, self._session(path, ["CPUExecutionProvider"], optimize=False))
            if self.precision == "fp16" and not self.plan.tensorrt:
                model_path = self._fp16_graph(path, meta)
            providers = self.plan.providers(str(meta.get("metadata_hash", "nohash")))
        sess = self._session(model_path, providers, stage=stage)
        if meta is None:
            self._checked_metadata(path, sess)
        if self.plan.gpu and "CUDAExecutionProvider" not in sess.get_providers():
            raise BackendUnavailable("onnxruntime's CUDA provider could not start (check the NVIDIA driver, CUDA and cuDNN "
                            "versions onnxruntime-gpu needs): use --device cpu")
        if meta is None:
            log.debug("opened %s/%s", preset, stage)
        return sess

    def _session(self, path: Path, providers: list[Any], optimize: bool = True, stage: str = "") -> Any:
        ort = self._ort
        opts = self._options()
        if not optimize:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        elif stage == "decode" and not path.name.endswith(INT8_SUFFIX) and providers == ["CPUExecutionProvider"]:
            # the decoder's full-resolution layers run faster without the CPU provider's blocked (NCHWc)
            # layout, whose reorders back to NCHW cost more than it saves there: the shipped 640x360 decode
            # 8.9 -> 8.1 ms p50 on our 2-core CPU, outputs within 3e-7 (the other stages gain from it)
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        try:
            return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise UserError(f"corrupt ONNX graph {path}: {first_line(exc)} ({EXPORT_HINT} again)") from None

    def _checked_metadata(self, path: Path, sess: Any) -> dict[str, Any]:
        """The graph's genreal metadata, checked against this model (`ExportedModel.check_graph`)."""
        return self.exported.check_graph(path, sess.get_modelmeta().custom_metadata_map.get(METADATA_KEY))

    def _fp16_graph(self, path: Path, meta: dict[str, Any]) -> Path:
        """An FP16 copy of an FP32 graph (FP32 inputs/outputs) for the CUDA provider, cached by metadata hash.
        Needs the `onnx` package (gpu extra). GPU only: never reached on the CPU provider."""
        out = self.plan.cache_root / str(meta.get("metadata_hash", "nohash"))[:16] / f"{path.stem}.fp16.onnx"
        if out.is_file():
            return out
        try:
            import onnx
            from onnxruntime.transformers.float16 import convert_float_to_float16
        except ImportError:
            raise UserError("--precision fp16 on the CUDA provider needs the onnx package: "
                            "pip install 'generative-reality[gpu]', or use --precision fp32") from None
        out.parent.mkdir(parents=True, exist_ok=True)
        proto = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
        _toposort(proto.graph)  # the converter appends its input casts at the end of the node list
        tmp = out.with_name(out.name + ".tmp")
        onnx.save(proto, str(tmp))
        os.replace(tmp, out)
        return out

    def _check_gpu_starts(self) -> None:
        """Open one small graph on the GPU now, so a provider that cannot start fails at startup."""
        preset = self.presets[0]
        self._sessions.setdefault(preset, {})["embed"] = self._open(self._stage_path(preset, "embed"), "embed", preset)

    def sessions_for(self, batch: int, hp: int, wp: int) -> dict[str, Any]:
        """The stage sessions for padded frames (batch, 3, hp, wp), opened on first use."""
        key = (batch, hp, wp)
        if key == self._current:
            return self._active
        preset = self._pinned or self.exported.preset_covering(wp, hp, batch)
        sessions = self._sessions.setdefault(preset, {})
        for stage in CHAIN_STAGES:
            if stage not in sessions:
                sessions[stage] = self._open(self._stage_path(preset, stage), stage, preset)
        # once per graph set at INFO: temporal crops switch shapes (and full frame <-> dynamic) often
        first = preset not in self._announced
        self._announced.add(preset)
        log.log(logging.INFO if first else logging.DEBUG,
                "onnxruntime: %dx%d batch %d runs the %s graphs on %s (%s)", wp, hp, batch, preset,
                self.device, self.precision)
        self._current, self._active, self.preset = key, sessions, preset
        return sessions

    def session(self, stage: str) -> Any:
        """The active preset's session of one stage (after the first frame of a size)."""
        return self._active[stage]

    def _run(self, stage: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.recorder is not None:
            self.recorder.add(stage, feeds)
        return self._active[stage].run(None, feeds)

    # -- ModelStages ----------------------------------------------------------------------------
    def style_vector(self, weights: np.ndarray) -> np.ndarray:
        return self.tables.style_vector(weights)  # (1, E)

    def frame_norm(self, x: np.ndarray) -> Optional[np.ndarray]:
        return frame_norm(x) if self.info.normalize else None

    def _with_norm(self, feeds: dict[str, np.ndarray], x: np.ndarray, norm: Optional[np.ndarray]) -> dict[str, np.ndarray]:
        if self.info.normalize:
            feeds["norm"] = np.ascontiguousarray(frame_norm(x) if norm is None else norm, dtype=np.float32)
        return feeds

    def encode(self, x: np.ndarray, norm: Optional[np.ndarray] = None) -> StageEncoding:
        x = np.ascontiguousarray(x, dtype=np.float32)  # (B, 3, Hp, Wp)
        self.sessions_for(x.shape[0], x.shape[2], x.shape[3])
        outs = self._run("encode", self._with_norm({"x": x}, x, norm))  # zq, skip[, ctx (B, E)]
        return StageEncoding(outs[0], outs[1], outs[2] if len(outs) > 2 else None)

    def embed(self, levels: np.ndarray) -> np.ndarray:
        (emb,) = self._run("embed", {"levels": np.ascontiguousarray(levels, dtype=np.int32)})
        return emb  # (B, C, h, w)

    def initial(self, emb: np.ndarray) -> np.ndarray:
        (z0,) = self._run("initial", {"emb": emb})
        return z0

    def refine(self, z: np.ndarray, emb: np.ndarray, style_vec: np.ndarray, steps: int,
               first_step: int = 0) -> np.ndarray:
        self.exported.check_steps(steps, first_step)
        if steps == 0:
            return z
        batch = z.shape[0]
        conds = [self.tables.cond(style_vec, k, batch) for k in range(first_step, first_step + steps)]
        if self.plan.gpu:
            return self._refine_bound(z, emb, conds)
        z = np.ascontiguousarray(z, dtype=np.float32)
        for cond in conds:
            (z,) = self._run("refine_step", {"z": z, "emb": emb, "cond": cond})
        return z

    def _refine_bound(self, z: np.ndarray, emb: np.ndarray, conds: list[np.ndarray]) -> np.ndarray:
        """GPU only: the K refine steps with I/O binding, z and emb on the device between steps (one upload,
        one download) instead of a host round trip per step."""
        ort = self._ort
        sess = self._active["refine_step"]
        z_dev = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(z, np.float32), "cuda", 0)
        emb_dev = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(emb, np.float32), "cuda", 0)
        for cond in conds:
            io = sess.io_binding()
            io.bind_ortvalue_input("z", z_dev)
            io.bind_ortvalue_input("emb", emb_dev)
            io.bind_cpu_input("cond", cond)
            io.bind_output("z_next", "cuda", 0)
            sess.run_with_iobinding(io)
            z_dev = io.get_outputs()[0]
        return z_dev.numpy()

    def decode(self, z: np.ndarray, skip: np.ndarray, x: np.ndarray, norm: Optional[np.ndarray] = None) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        (rgb,) = self._run("decode", self._with_norm({"z": np.ascontiguousarray(z, np.float32), "skip": skip, "x": x},
                                                     x, norm))
        return rgb  # (B, 3, Hp, Wp) unclamped

    def close(self) -> None:
        self._sessions.clear()
        self._active = {}
        self._current = None


__all__ = ["OrtStages", "ProviderPlan", "Recorder", "default_cache_dir"]

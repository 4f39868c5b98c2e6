"""`onnxruntime` backend (the default): our model's exported stage graphs in ONNX Runtime. No torch.

`OrtStages` implements `ModelStages` (realtime/backends/stages.py) on the graphs `genreal export`
writes (models/export.py: ``<model_dir>/onnx/<preset>/<stage>.onnx`` + ``tables.npz`` +
``index.json``). Arrays in and out are numpy (``kernel_device`` "cpu") on every provider.

- Graph choice: the static preset made for the frame's padded size and batch when one exists,
  else the dynamic graphs, else a `UserError` listing the sizes that exist. Sessions open on the
  first frame of a size and stay open (a size change opens that size's sessions once).
- Providers: CPU (full graph optimization, intra-op threads = cores). With `onnxruntime-gpu`:
  CUDA (and TensorRT when its provider is present) with FP16, engine and timing caches in a folder
  keyed by the graphs' metadata hash. Asking for cuda where the provider cannot start is a
  `UserError`, never a silent fall back to the CPU.
- Precision: fp32; fp16 on GPU providers only; int8 loads ``<stage>.int8.onnx`` (Q/DQ graphs
  from `genreal calibrate`).
- Every graph's metadata (``metadata_props["genreal"]``) must name the model's weights hash and
  styles; graphs exported from other weights are refused.

Only `onnxruntime` and numpy are imported (onnxruntime when the stages are built).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from realtime.backends.model_backend import ModelBackend
from realtime.backends.stages import Encoded, ModelInfo, frame_norm, info_from_manifest
from realtime.config import BackendConfig
from realtime.errors import BackendUnavailable, UserError

log = logging.getLogger(__name__)

ONNX_DIR = "onnx"
INDEX_FILE = "index.json"
TABLES_FILE = "tables.npz"
INT8_SUFFIX = ".int8.onnx"
METADATA_KEY = "genreal"
DYNAMIC = "dynamic"
#: the stages `OrtStages` runs, in frame order (the fused graph is for benchmarks and engines)
STAGES: tuple[str, ...] = ("encode", "embed", "initial", "refine_step", "decode")
EXPORT_HINT = "run 'genreal export --model DIR' (needs the train extra)"


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def preset_for(size: tuple[int, int], batch: int, available: Sequence[str]) -> Optional[str]:
    """The exported preset for padded frames of `size` (W, H) at `batch`: the static one made for it,
    else "dynamic" when exported and within its range, else None."""
    from models.export import preset_for as _preset_for  # numpy-only module: no torch

    return _preset_for(size, batch, available)


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
                 threads: Optional[int] = None, cache_dir: Optional[Path] = None) -> None:
        from models.manifest import WEIGHTS_FILE, read_manifest, resolve_model_dir  # json only: no torch

        self._ort = _import_ort()
        self.model_dir = resolve_model_dir(model_dir)
        manifest = read_manifest(self.model_dir)
        self.info: ModelInfo = info_from_manifest(manifest, manifest["config"], str(self.model_dir))
        self.onnx_dir = self.model_dir / ONNX_DIR
        self.index = self._read_index()
        self.presets: tuple[str, ...] = tuple(str(p) for p in self.index["presets"])
        self._weights_sha = _sha256(self.model_dir / WEIGHTS_FILE)
        if self.index.get("weights_sha256") != self._weights_sha:
            raise UserError(f"the ONNX graphs in {self.onnx_dir} were exported from other weights than "
                            f"{self.model_dir / WEIGHTS_FILE}: {EXPORT_HINT} again")
        if list(self.index.get("style_names", [])) != list(self.info.style_names):
            raise UserError(f"the ONNX graphs in {self.onnx_dir} name other styles than the model's manifest: "
                            f"{EXPORT_HINT} again")
        self.styles_table, self.step_emb = self._read_tables()  # (S, E), (max_steps, E)
        self.plan = ProviderPlan(device, precision, cache_dir or default_cache_dir())
        self.device = self.plan.device
        self.precision = self.plan.precision
        self.threads = int(threads or os.cpu_count() or 1)
        self._sessions: dict[str, dict[str, Any]] = {}  # preset → stage → InferenceSession
        self._current: Optional[tuple[int, int, int]] = None  # (B, Hp, Wp) of the active sessions
        self._active: dict[str, Any] = {}
        self.preset: Optional[str] = None
        self._announced: set[str] = set()  # graph sets already logged at INFO
        if self.precision == "int8" and not any(self._int8_paths(p) for p in self.presets):
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
    def _read_index(self) -> dict[str, Any]:
        path = self.onnx_dir / INDEX_FILE
        if not path.is_file():
            raise BackendUnavailable(f"no ONNX graphs for the model in {self.model_dir} (missing {ONNX_DIR}/{INDEX_FILE}): "
                            f"{EXPORT_HINT}, or use --backend torch")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"corrupt {path}: {_first_line(exc)} ({EXPORT_HINT} again)") from None
        if not isinstance(data, dict) or not isinstance(data.get("presets"), list) or not data["presets"]:
            raise UserError(f"corrupt {path}: it lists no presets ({EXPORT_HINT} again)")
        return data

    def _read_tables(self) -> tuple[np.ndarray, np.ndarray]:
        path = self.onnx_dir / TABLES_FILE
        try:
            with np.load(path, allow_pickle=False) as data:
                styles = np.asarray(data["styles"], np.float32)
                step_emb = np.asarray(data["step_emb"], np.float32)
                levels = tuple(int(v) for v in np.ravel(data["fsq_levels"]))
        except FileNotFoundError:
            raise UserError(f"missing {path}: {EXPORT_HINT}") from None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise UserError(f"corrupt {path}: {_first_line(exc)} ({EXPORT_HINT} again)") from None
        info = self.info
        if (styles.shape[0] != len(info.style_names) or step_emb.shape != (info.max_steps, styles.shape[1])
                or levels != info.fsq_levels):
            raise UserError(f"corrupt {path}: tables {styles.shape}, {step_emb.shape} do not match the model "
                            f"({EXPORT_HINT} again)")
        return styles, step_emb

    def _int8_paths(self, preset: str) -> dict[str, Path]:
        return {s: p for s in STAGES if (p := self.onnx_dir / preset / f"{s}{INT8_SUFFIX}").is_file()}

    def _stage_path(self, preset: str, stage: str) -> Path:
        if self.precision == "int8":
            int8 = self._int8_paths(preset)
            if not int8:
                raise UserError(f"no INT8 graphs for preset {preset} in {self.onnx_dir / preset}: run "
                                f"'genreal calibrate' for that size, or use --precision fp32")
            if stage in int8:
                return int8[stage]
            log.info("int8: %s/%s has no INT8 graph, it runs in FP32", preset, stage)
        return self.onnx_dir / preset / f"{stage}.onnx"

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
        sess = self._session(model_path, providers)
        if meta is None:
            self._checked_metadata(path, sess)
        if self.plan.gpu and "CUDAExecutionProvider" not in sess.get_providers():
            raise BackendUnavailable("onnxruntime's CUDA provider could not start (check the NVIDIA driver, CUDA and cuDNN "
                            "versions onnxruntime-gpu needs): use --device cpu")
        if meta is None:
            log.debug("opened %s/%s", preset, stage)
        return sess

    def _session(self, path: Path, providers: list[Any], optimize: bool = True) -> Any:
        ort = self._ort
        opts = self._options()
        if not optimize:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise UserError(f"corrupt ONNX graph {path}: {_first_line(exc)} ({EXPORT_HINT} again)") from None

    def _checked_metadata(self, path: Path, sess: Any) -> dict[str, Any]:
        """The graph's genreal metadata, checked against this model's weights."""
        raw = sess.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        try:
            meta = json.loads(raw) if raw else None
        except ValueError:
            meta = None
        if not isinstance(meta, dict):
            raise UserError(f"ONNX graph {path} has no genreal metadata: {EXPORT_HINT} again")
        if meta.get("weights_sha256") != self._weights_sha:
            raise UserError(f"ONNX graph {path} was exported from other weights than this model: {EXPORT_HINT} again")
        return meta

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
        preset = preset_for((wp, hp), batch, self.presets)
        if preset is None:
            from models.export import describe_presets

            raise UserError(f"no ONNX graph covers {wp}x{hp} at batch {batch} in {self.onnx_dir}: exported are "
                            f"{describe_presets(self.presets)}; pick one with --size, or 'genreal export' "
                            "the dynamic preset")
        sessions = self._sessions.setdefault(preset, {})
        for stage in STAGES:
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

    def _run(self, stage: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._active[stage].run(None, feeds)

    # -- ModelStages ----------------------------------------------------------------------------
    def style_vector(self, weights: np.ndarray) -> np.ndarray:
        w = np.asarray(weights, np.float32).reshape(1, -1)  # (1, S)
        return w @ self.styles_table  # (1, E)

    def frame_norm(self, x: np.ndarray) -> Optional[np.ndarray]:
        return frame_norm(x) if self.info.normalize else None

    def _with_norm(self, feeds: dict[str, np.ndarray], x: np.ndarray, norm: Optional[np.ndarray]) -> dict[str, np.ndarray]:
        if self.info.normalize:
            feeds["norm"] = np.ascontiguousarray(frame_norm(x) if norm is None else norm, dtype=np.float32)
        return feeds

    def encode(self, x: np.ndarray, norm: Optional[np.ndarray] = None) -> Encoded:
        x = np.ascontiguousarray(x, dtype=np.float32)  # (B, 3, Hp, Wp)
        self.sessions_for(x.shape[0], x.shape[2], x.shape[3])
        outs = self._run("encode", self._with_norm({"x": x}, x, norm))  # zq, skip[, ctx (B, E)]
        return Encoded(outs[0], outs[1], outs[2] if len(outs) > 2 else None)

    def embed(self, levels: np.ndarray) -> np.ndarray:
        (emb,) = self._run("embed", {"levels": np.ascontiguousarray(levels, dtype=np.int32)})
        return emb  # (B, C, h, w)

    def initial(self, emb: np.ndarray) -> np.ndarray:
        (z0,) = self._run("initial", {"emb": emb})
        return z0

    def cond(self, style_vec: np.ndarray, step: int, batch: int) -> np.ndarray:
        """The refine_step input (B, E) = style_vec (+ frame context), (1 or B, E), + step_emb[step]."""
        e = self.step_emb.shape[1]
        vec = np.asarray(style_vec, np.float32).reshape(-1, e) + self.step_emb[min(step, len(self.step_emb) - 1)]
        return np.ascontiguousarray(np.broadcast_to(vec, (batch, e)), dtype=np.float32)

    def refine(self, z: np.ndarray, emb: np.ndarray, style_vec: np.ndarray, steps: int,
               first_step: int = 0) -> np.ndarray:
        if steps < 0 or first_step + steps > self.info.max_steps:
            raise ValueError(f"refine steps must be within 0..{self.info.max_steps}")
        if steps == 0:
            return z
        batch = z.shape[0]
        conds = [self.cond(style_vec, k, batch) for k in range(first_step, first_step + steps)]
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


__all__ = ["OrtStages", "OnnxRuntimeBackend", "ProviderPlan", "preset_for", "default_cache_dir"]

"""TensorRT engines from the exported ONNX stage graphs (TensorRT 10 Python API), and the engine file.

One step per module (NVIDIA's samples): export (models/export.py) → calibrate (calibration/) →
build (here) → infer (realtime/backends/tensorrt_backend.py). Built with only the TensorRT 10 API::

    builder = trt.Builder(logger)
    network = builder.create_network(0)                  # explicit batch is the only mode in TRT 10
    parser = trt.OnnxParser(network, logger); parser.parse_from_file(onnx)
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)                # fp16 and int8
    config.set_flag(trt.BuilderFlag.INT8)                # int8: the Q/DQ graph is explicitly quantized
    profile = builder.create_optimization_profile()
    profile.set_shape(name, min, opt, max)               # from the stage's ExportSpec
    config.add_optimization_profile(profile)
    config.set_timing_cache(config.create_timing_cache(bytes), False)
    plan = builder.build_serialized_network(network, config)

An engine file is ``b"GENRTRT1"`` + uint32 header length (little endian) + a JSON header + the
serialized plan. The header names the GPU, compute capability, TensorRT version, the graph's
metadata hash and file hash, precision and profile, and the plan's length and sha256. An engine
whose header does not match this machine and graph is rebuilt, never run; a corrupt or
truncated file is a one-line `EngineFileError` (a `UserError`).

Engines live in a cache folder keyed by the graph's metadata: ``$GENREAL_CACHE/engines`` or
``~/.cache/genreal/engines`` (`engine_cache_dir`), one timing cache per GPU and TensorRT version.
Nothing here imports tensorrt or torch at import time.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from genreal_errors import UserError
from models.exported import sha256_file

if TYPE_CHECKING:  # pragma: no cover
    from models.export import ExportSpec

log = logging.getLogger(__name__)

ENGINE_MAGIC = b"GENRTRT1"
HEADER_FORMAT = "genreal-trt-engine/1"
PRECISIONS = ("fp32", "fp16", "int8")
MAX_HEADER_BYTES = 1 << 20
#: header fields that must equal this machine's / this graph's for an engine to run
MATCH_FIELDS = ("format", "stage", "preset", "precision", "metadata_hash", "onnx_sha256", "gpu_name",
                "compute_capability", "tensorrt_version", "profile")
INSTALL_HINT = "pip install 'generative-reality[gpu]' (TensorRT 10 needs an NVIDIA GPU), or use --backend onnxruntime"


class EngineFileError(UserError):
    """A corrupt or truncated engine file."""


# --- TensorRT itself ------------------------------------------------------------------------


def import_tensorrt() -> Any:
    """`import tensorrt`, checked to be TensorRT 10 or newer; `UserError` otherwise."""
    try:
        import tensorrt as trt
    except ImportError:
        raise UserError(f"tensorrt not installed: {INSTALL_HINT}") from None
    version = str(getattr(trt, "__version__", "0"))
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = 0
    if major < 10:
        raise UserError(f"tensorrt {version} is too old: genreal uses the TensorRT 10 API (pip install 'tensorrt>=10.1')")
    return trt


@dataclass(frozen=True)
class DeviceInfo:
    """What an engine is only valid for."""

    gpu_name: str
    compute_capability: str  # "9.0"
    tensorrt_version: str


def device_info(trt: Any, device: int = 0) -> DeviceInfo:
    """This GPU and TensorRT version (the GPU is read through torch, which owns our CUDA memory)."""
    import torch

    if not torch.cuda.is_available():
        raise UserError("the tensorrt backend needs an NVIDIA GPU that torch can see: use --backend onnxruntime")
    major, minor = torch.cuda.get_device_capability(device)
    return DeviceInfo(torch.cuda.get_device_name(device), f"{major}.{minor}", str(trt.__version__))


# --- profiles ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileShape:
    """One input's optimization-profile entry: ``profile.set_shape(name, min, opt, max)``."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def profile_from_spec(spec: "ExportSpec") -> tuple[ProfileShape, ...]:
    """The optimization profile of a stage graph from its `ExportSpec` (equal shapes for static graphs).

    Raises ValueError when a spec's min/opt/max are missing, of another rank, or not min ≤ opt ≤ max.
    """
    out = []
    for t in spec.inputs:
        lo, mid, hi = tuple(int(v) for v in t.min), tuple(int(v) for v in t.opt), tuple(int(v) for v in t.max)
        if not (len(lo) == len(mid) == len(hi) == len(t.shape)):
            raise ValueError(f"{spec.stage}/{t.name}: profile ranks differ from shape {t.shape}")
        if not all(a <= b <= c for a, b, c in zip(lo, mid, hi)):
            raise ValueError(f"{spec.stage}/{t.name}: profile needs min <= opt <= max, got {lo} {mid} {hi}")
        for i, d in enumerate(t.shape):
            if isinstance(d, int) and not lo[i] == mid[i] == hi[i] == d:
                raise ValueError(f"{spec.stage}/{t.name}: static dim {i} is {d} but the profile says {lo[i]}..{hi[i]}")
        out.append(ProfileShape(t.name, lo, mid, hi))
    return tuple(out)


# --- header and file ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineHeader:
    stage: str
    preset: str
    precision: str
    metadata_hash: str
    onnx_sha256: str
    gpu_name: str
    compute_capability: str
    tensorrt_version: str
    profile: tuple[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...]
    format: str = HEADER_FORMAT
    engine_bytes: int = 0
    engine_sha256: str = ""
    created: str = ""
    build_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EngineHeader":
        prof = tuple((str(n), tuple(a), tuple(b), tuple(c)) for n, a, b, c in d.get("profile", ()))
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k != "profile"}
        return cls(**{**known, "profile": prof})

    def mismatches(self, expected: "EngineHeader") -> list[str]:
        """The `MATCH_FIELDS` where this header differs from `expected` ("field: have → want")."""
        out = []
        for name in MATCH_FIELDS:
            have, want = getattr(self, name), getattr(expected, name)
            if have != want:
                out.append(f"{name}: {have} → {want}")
        return out


def expected_header(stage: str, preset: str, precision: str, metadata_hash: str, onnx_sha256: str,
                    dev: DeviceInfo, profile: Sequence[ProfileShape]) -> EngineHeader:
    return EngineHeader(stage=stage, preset=preset, precision=precision, metadata_hash=metadata_hash,
                        onnx_sha256=onnx_sha256, gpu_name=dev.gpu_name, compute_capability=dev.compute_capability,
                        tensorrt_version=dev.tensorrt_version,
                        profile=tuple((p.name, p.min, p.opt, p.max) for p in profile))


def write_engine(path: Path, header: EngineHeader, plan: bytes) -> EngineHeader:
    """Write an engine file atomically (temporary file + rename); returns the header as written."""
    plan = bytes(plan)
    from dataclasses import replace

    header = replace(header, engine_bytes=len(plan), engine_sha256=hashlib.sha256(plan).hexdigest(),
                     created=header.created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    body = header.to_json()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(ENGINE_MAGIC + struct.pack("<I", len(body)) + body + plan)
    os.replace(tmp, path)
    return header


def read_header(path: Path) -> EngineHeader:
    """The header of an engine file (the plan is not read). Raises `EngineFileError`."""
    return _read(path, with_plan=False)[0]


def read_engine(path: Path) -> tuple[EngineHeader, bytes]:
    """(header, serialized plan) of an engine file, the plan checked against the header's length and
    sha256. Raises `EngineFileError` for a corrupt or truncated file."""
    header, plan = _read(path, with_plan=True)
    assert plan is not None
    return header, plan


def _read(path: Path, with_plan: bool) -> tuple[EngineHeader, Optional[bytes]]:
    path = Path(path)
    fix = f"delete {path} to rebuild it"
    try:
        with open(path, "rb") as f:
            head = f.read(len(ENGINE_MAGIC) + 4)
            if len(head) < len(ENGINE_MAGIC) + 4 or not head.startswith(ENGINE_MAGIC):
                raise EngineFileError(f"corrupt TensorRT engine {path}: not a genreal engine file ({fix})")
            (n,) = struct.unpack("<I", head[len(ENGINE_MAGIC):])
            if n > MAX_HEADER_BYTES:
                raise EngineFileError(f"corrupt TensorRT engine {path}: bad header length ({fix})")
            body = f.read(n)
            if len(body) < n:
                raise EngineFileError(f"truncated TensorRT engine {path}: the header is cut off ({fix})")
            try:
                header = EngineHeader.from_dict(json.loads(body))
            except (ValueError, TypeError, KeyError) as exc:
                raise EngineFileError(f"corrupt TensorRT engine {path}: bad header ({exc}; {fix})") from None
            plan = f.read() if with_plan else None
    except OSError as exc:
        raise EngineFileError(f"cannot read TensorRT engine {path}: {exc.strerror or exc}") from None
    if plan is not None:
        if len(plan) != header.engine_bytes:
            raise EngineFileError(f"truncated TensorRT engine {path}: {len(plan)} of {header.engine_bytes} plan bytes "
                                  f"({fix})")
        if hashlib.sha256(plan).hexdigest() != header.engine_sha256:
            raise EngineFileError(f"corrupt TensorRT engine {path}: the plan's checksum does not match ({fix})")
    return header, plan


# --- cache -------------------------------------------------------------------------------------


def engine_cache_dir() -> Path:
    """$GENREAL_CACHE/engines, else ~/.cache/genreal/engines."""
    root = os.environ.get("GENREAL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "genreal")
    return Path(root) / "engines"


def cache_key(metadata_hash: str, onnx_sha256: str, stage: str, preset: str, precision: str,
              profile: Sequence[ProfileShape]) -> str:
    """What names an engine in the cache: the graph (metadata + file hash), stage, preset, precision, profile.
    The GPU and TensorRT version are in the header: a changed GPU or TensorRT rebuilds the same file."""
    body = json.dumps([metadata_hash, onnx_sha256, stage, preset, precision,
                       [(p.name, p.min, p.opt, p.max) for p in profile]], sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:20]


def engine_path(cache_dir: Path, stage: str, preset: str, precision: str, key: str) -> Path:
    return Path(cache_dir) / f"{preset}-{stage}-{precision}-{key}.engine"


def timing_cache_path(cache_dir: Path, dev: DeviceInfo) -> Path:
    slug = "".join(c if c.isalnum() else "-" for c in dev.gpu_name).strip("-").lower() or "gpu"
    return Path(cache_dir) / f"timing-{slug}-sm{dev.compute_capability}-trt{dev.tensorrt_version}.cache"


# --- build ---------------------------------------------------------------------------------------


def build_plan(trt: Any, onnx_path: Path, profile: Sequence[ProfileShape], precision: str,
               timing_cache: Optional[Path] = None, workspace_bytes: Optional[int] = None) -> bytes:
    """Parse `onnx_path` and build a serialized engine (TensorRT 10 API; see the module docstring).

    fp16: FP16 kernels allowed; int8: FP16 + INT8 on a Q/DQ graph (explicit quantization, the scales
    come from the graph; no calibrator). The timing cache is read before and written after the build.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise UserError(f"TensorRT cannot parse {onnx_path}: {errors[0] if errors else 'unknown error'} "
                        f"(re-export with 'genreal export')")
    config = builder.create_builder_config()
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    opt_profile = builder.create_optimization_profile()
    for p in profile:
        opt_profile.set_shape(p.name, p.min, p.opt, p.max)
    config.add_optimization_profile(opt_profile)
    cache = None
    if timing_cache is not None:
        data = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise UserError(f"TensorRT could not build an engine for {onnx_path} ({precision}); see the TensorRT log "
                        f"above, or use --backend onnxruntime")
    if cache is not None and timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = timing_cache.with_name(timing_cache.name + f".{os.getpid()}.tmp")
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
        os.replace(tmp, timing_cache)
    return bytes(plan)


def ensure_engine(trt: Any, onnx_path: Path, spec: "ExportSpec", preset: str, precision: str, dev: DeviceInfo,
                  metadata_hash: str, cache_dir: Optional[Path] = None) -> tuple[Path, EngineHeader, bytes]:
    """The engine for one stage graph on this GPU: the cached one when its header matches, else built now
    (logged) and cached. A corrupt cached file raises `EngineFileError`; a mismatched one is rebuilt."""
    cache_dir = Path(cache_dir) if cache_dir is not None else engine_cache_dir()
    profile = profile_from_spec(spec)
    onnx_sha = sha256_file(onnx_path)
    want = expected_header(spec.stage, preset, precision, metadata_hash, onnx_sha, dev, profile)
    path = engine_path(cache_dir, spec.stage, preset, precision,
                       cache_key(metadata_hash, onnx_sha, spec.stage, preset, precision, profile))
    if path.is_file():
        header, plan = read_engine(path)
        diff = header.mismatches(want)
        if not diff:
            log.debug("tensorrt: cached engine %s", path)
            return path, header, plan
        log.info("tensorrt: engine %s does not match (%s): rebuilding", path.name, "; ".join(diff))
    log.info("tensorrt: building the %s %s engine for %s on %s (first use; cached in %s)", precision, spec.stage,
             preset, dev.gpu_name, cache_dir)
    t0 = time.perf_counter()
    plan = build_plan(trt, onnx_path, profile, precision, timing_cache_path(cache_dir, dev))
    from dataclasses import replace

    header = write_engine(path, replace(want, build_seconds=round(time.perf_counter() - t0, 3)), plan)
    return path, header, plan


__all__ = ["ENGINE_MAGIC", "HEADER_FORMAT", "PRECISIONS", "MATCH_FIELDS", "EngineFileError", "DeviceInfo",
           "ProfileShape", "EngineHeader", "import_tensorrt", "device_info", "profile_from_spec", "expected_header",
           "write_engine", "read_header", "read_engine", "engine_cache_dir", "cache_key", "engine_path",
           "timing_cache_path", "sha256_file", "build_plan", "ensure_engine"]

"""The exported-model contract, read side: one torch-free module that reads and checks what
`genreal export` (models/export.py) and `genreal calibrate` write, for every engine that runs it
(ONNX Runtime, TensorRT) and for calibration.

An exported folder (``<model_dir>/onnx``)::

    <onnx>/<preset>/<stage>.onnx        presets: SIZE_PRESETS and "dynamic"; stages: STAGES
    <onnx>/<preset>/<stage>.int8.onnx   Q/DQ graphs kept by 'genreal calibrate' (optional)
    <onnx>/tables.npz                   styles (S, E), step_emb (max_steps, E), fsq_levels (d,), style_names
    <onnx>/index.json                   format, presets, stages, weights hash, style names, graph metadata hashes

Every graph carries ``metadata_props["genreal"]`` = json {stage, preset, shapes, dtype, opset, format,
weights_sha256, code_revision, style_names, default_steps, versions, metadata_hash}.

`open_exported(model_dir)` reads the manifest, the index and the tables once and checks them against
each other and against the weights file (hash, style names, table shapes, FSQ levels) into one
typed `ExportedModel`; `ExportedModel.check_graph(path, meta)` checks one graph's metadata the same
way for every engine. Only numpy and json at import; onnxruntime inside `read_artifact_metadata`.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

import numpy as np

from genreal_errors import UserError
from models.stages import ModelInfo, info_from_manifest

FORMAT = "genreal-onnx/1"
METADATA_KEY = "genreal"
ONNX_DIR = "onnx"
TABLES_FILE = "tables.npz"
INDEX_FILE = "index.json"
INT8_SUFFIX = ".int8.onnx"
DYNAMIC = "dynamic"
STAGES: tuple[str, ...] = ("encode", "embed", "initial", "refine_step", "decode", "fused")
#: the stages a frame runs through one by one (the fused graph does them all)
CHAIN_STAGES: tuple[str, ...] = ("encode", "embed", "initial", "refine_step", "decode")
EXPORT_HINT = "run 'genreal export --model DIR' (needs the train extra)"

Size = tuple[int, int]  # (W, H)

#: name → ((W, H) per eye, batch)
SIZE_PRESETS: dict[str, tuple[Size, int]] = {
    "640x360": ((640, 360), 1),
    "1280x720": ((1280, 720), 1),
    "1920x1080": ((1920, 1080), 1),
    "stereo-1280x960": ((1280, 960), 2),
}
#: the dynamic variant's range: B 1..2, H and W multiples of 8 within these bounds
DYNAMIC_MIN: tuple[int, Size] = (1, (64, 64))
DYNAMIC_OPT: tuple[int, Size] = (1, (1280, 720))
DYNAMIC_MAX: tuple[int, Size] = (2, (3840, 2160))
ALL_PRESETS: tuple[str, ...] = (*SIZE_PRESETS, DYNAMIC)


# -- small shared helpers ----------------------------------------------------------------------
def sha256_file(path: Union[str, Path]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def metadata_hash(meta: Mapping[str, Any]) -> str:
    """sha256 of the metadata without its own `metadata_hash` field (canonical JSON)."""
    body = {k: v for k, v in meta.items() if k != "metadata_hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def first_line(exc: BaseException) -> str:
    """An exception's first line (at most 200 characters) for a one-line error."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def preset_for(size: Size, batch: int, available: Iterable[str]) -> Optional[str]:
    """The static preset among `available` made for exactly (W, H) and `batch`, else "dynamic" when
    available and within its range, else None."""
    avail = list(available)
    for name in avail:
        if name in SIZE_PRESETS and SIZE_PRESETS[name] == (tuple(size), batch):
            return name
    w, h = size
    (wmin, hmin), (wmax, hmax) = DYNAMIC_MIN[1], DYNAMIC_MAX[1]
    if (DYNAMIC in avail and DYNAMIC_MIN[0] <= batch <= DYNAMIC_MAX[0] and wmin <= w <= wmax and hmin <= h <= hmax
            and w % 8 == 0 and h % 8 == 0):
        return DYNAMIC
    return None


def describe_presets(available: Iterable[str]) -> str:
    """'640x360 (batch 1), dynamic (B 1-2, 64x64 to 3840x2160)' for error messages."""
    parts = []
    for name in available:
        if name == DYNAMIC:
            parts.append(f"dynamic (batch {DYNAMIC_MIN[0]}-{DYNAMIC_MAX[0]}, {DYNAMIC_MIN[1][0]}x{DYNAMIC_MIN[1][1]} "
                         f"to {DYNAMIC_MAX[1][0]}x{DYNAMIC_MAX[1][1]}, multiples of 8)")
        elif name in SIZE_PRESETS:
            (w, h), b = SIZE_PRESETS[name]
            parts.append(f"{w}x{h} (batch {b})")
    return ", ".join(parts) or "none"


def stage_file(preset_dir: Path, stage: str, precision: str = "fp32") -> Path:
    """``<preset_dir>/<stage>.onnx`` (FP32) or ``<preset_dir>/<stage>.int8.onnx`` (INT8 Q/DQ)."""
    return Path(preset_dir) / (f"{stage}{INT8_SUFFIX}" if precision == "int8" else f"{stage}.onnx")


def read_artifact_metadata(onnx_path: Union[str, Path]) -> dict[str, Any]:
    """The graph's ``metadata_props`` as a dict (JSON values decoded), read with onnxruntime only.

    Raises `UserError` for a missing, truncated or corrupt file.
    """
    import onnxruntime as ort

    path = Path(onnx_path)
    if not path.is_file():
        raise UserError(f"missing ONNX graph {path}: {EXPORT_HINT}")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        raise UserError(f"corrupt ONNX graph {path}: {first_line(exc)} ({EXPORT_HINT} again)") from None
    return decode_metadata(sess.get_modelmeta().custom_metadata_map)


def decode_metadata(props: Mapping[str, str]) -> dict[str, Any]:
    """A graph's ``metadata_props`` map with JSON values decoded (others kept as strings)."""
    out: dict[str, Any] = {}
    for k, v in props.items():
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def load_index(path: Path) -> dict[str, Any]:
    """``index.json`` as a dict, {} when missing or unreadable (export merges with an old one)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_index(onnx_dir: Union[str, Path]) -> dict[str, Any]:
    """The ``index.json`` of an exported folder; `UserError` when missing or corrupt."""
    path = Path(onnx_dir) / INDEX_FILE
    if not path.is_file():
        raise UserError(f"no ONNX graphs in {onnx_dir} (missing {INDEX_FILE}): {EXPORT_HINT}, or use --backend torch")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"corrupt {path}: {first_line(exc)} ({EXPORT_HINT} again)") from None
    if not isinstance(data, dict) or not isinstance(data.get("presets"), list) or not data["presets"] \
            or not isinstance(data.get("graphs"), dict):
        raise UserError(f"corrupt {path}: it lists no presets ({EXPORT_HINT} again)")
    return data


# -- tables ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tables:
    """The host-side tables the stage graphs need (``tables.npz``, written next to the graphs)."""

    styles: np.ndarray  # (S, E) style embedding table
    step_emb: np.ndarray  # (max_steps, E) refiner step embeddings
    fsq_levels: tuple[int, ...]

    @property
    def max_steps(self) -> int:
        return int(self.step_emb.shape[0])

    def style_vector(self, weights: np.ndarray) -> np.ndarray:
        """(S,) style weights → (1, E) style vector (blending styles = blending embeddings)."""
        return np.asarray(weights, np.float32).reshape(1, -1) @ self.styles

    def one_hot(self, style: int) -> np.ndarray:
        w = np.zeros(self.styles.shape[0], np.float32)
        w[int(style)] = 1.0
        return w

    def cond(self, vec: np.ndarray, step: int, batch: int) -> np.ndarray:
        """The refine_step graph's ``cond`` input: (B, E) = vec (style + frame context: (1 or B, E)) + step_emb[step]."""
        e = self.step_emb.shape[1]
        out = np.asarray(vec, np.float32).reshape(-1, e) + self.step_emb[min(step, self.max_steps - 1)]
        return np.ascontiguousarray(np.broadcast_to(out, (batch, e)), dtype=np.float32)


def load_tables(onnx_dir: Path) -> Tables:
    """Read ``<onnx_dir>/tables.npz``; `UserError` when missing or corrupt."""
    path = Path(onnx_dir) / TABLES_FILE
    try:
        with np.load(path, allow_pickle=False) as data:
            styles = np.asarray(data["styles"], np.float32)
            step_emb = np.asarray(data["step_emb"], np.float32)
            levels = tuple(int(v) for v in np.ravel(data["fsq_levels"]))
    except FileNotFoundError:
        raise UserError(f"missing {path}: {EXPORT_HINT}") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise UserError(f"corrupt {path}: {first_line(exc)} ({EXPORT_HINT} again)") from None
    if styles.ndim != 2 or step_emb.ndim != 2 or styles.shape[1] != step_emb.shape[1]:
        raise UserError(f"corrupt {path}: styles {styles.shape} and step embeddings {step_emb.shape} disagree "
                        f"({EXPORT_HINT} again)")
    return Tables(styles=styles, step_emb=step_emb, fsq_levels=levels)


# -- the exported model -------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportedModel:
    """A model folder's exported graphs, read and checked once (see `open_exported`)."""

    model_dir: Path
    onnx_dir: Path
    manifest: dict[str, Any]
    info: ModelInfo
    index: dict[str, Any]
    presets: tuple[str, ...]
    tables: Tables
    weights_sha256: str

    def preset_dir(self, preset: str) -> Path:
        return self.onnx_dir / preset

    def int8_files(self, preset: str) -> dict[str, Path]:
        """stage → INT8 graph of one preset, for the stages calibration kept."""
        return {s: p for s in STAGES if (p := stage_file(self.preset_dir(preset), s, "int8")).is_file()}

    def has_int8(self) -> bool:
        return any(self.int8_files(p) for p in self.presets)

    def graph_file(self, preset: str, stage: str, precision: str = "fp32") -> Path:
        """The graph a stage runs from: its INT8 file for precision "int8" where calibration kept one
        (`UserError` when the preset has none at all), else its FP32 file."""
        if precision == "int8":
            int8 = self.int8_files(preset)
            if not int8:
                raise UserError(f"no INT8 graphs for preset {preset} in {self.preset_dir(preset)}: run "
                                f"'genreal calibrate' for that size, or use --precision fp32")
            if stage in int8:
                return int8[stage]
        path = stage_file(self.preset_dir(preset), stage)
        if not path.is_file():
            raise UserError(f"missing ONNX graph {path}: {EXPORT_HINT} again")
        return path

    def preset_covering(self, wp: int, hp: int, batch: int) -> str:
        """The preset whose graphs run padded frames (batch, 3, hp, wp); `UserError` listing what exists."""
        preset = preset_for((wp, hp), batch, self.presets)
        if preset is None:
            raise UserError(f"no ONNX graph covers {wp}x{hp} at batch {batch} in {self.onnx_dir}: exported are "
                            f"{describe_presets(self.presets)}; pick one with --size, or 'genreal export' the "
                            "dynamic preset")
        return preset

    def check_graph(self, path: Path, meta: Any) -> dict[str, Any]:
        """One graph's genreal metadata (the value of ``metadata_props["genreal"]``, decoded), checked
        against this model: present, from these weights, naming these styles. Returns it."""
        if isinstance(meta, str):
            try:
                meta = json.loads(meta)
            except ValueError:
                meta = None
        if not isinstance(meta, dict) or "metadata_hash" not in meta:
            raise UserError(f"ONNX graph {path} has no genreal metadata: {EXPORT_HINT} again")
        if meta.get("weights_sha256") != self.weights_sha256:
            raise UserError(f"ONNX graph {path} was exported from other weights than this model: {EXPORT_HINT} again")
        names = meta.get("style_names")
        if names is not None and list(names) != list(self.info.style_names):
            raise UserError(f"ONNX graph {path} names other styles than the model's manifest: {EXPORT_HINT} again")
        return meta

    def check_steps(self, steps: int, first_step: int = 0) -> None:
        """Refine steps first_step .. first_step+steps-1 must be step embeddings the model has."""
        if steps < 0 or first_step < 0 or first_step + steps > self.info.max_steps:
            raise ValueError(f"refine steps must be within 0..{self.info.max_steps}")


def open_exported(model_dir: Optional[Union[str, Path]] = None) -> ExportedModel:
    """Read a model folder's manifest, ``onnx/index.json`` and ``onnx/tables.npz`` and check them against
    each other and the weights file. Raises `UserError` naming the problem and the fix."""
    from models.manifest import WEIGHTS_FILE, read_manifest, resolve_model_dir, style_names

    root = resolve_model_dir(model_dir)
    manifest = read_manifest(root)
    info = info_from_manifest(manifest, manifest["config"], str(root))
    onnx_dir = root / ONNX_DIR
    index = read_index(onnx_dir)
    fmt = index.get("format", FORMAT)
    if fmt != FORMAT:
        raise UserError(f"{onnx_dir / INDEX_FILE} is format {fmt!r}, this genreal reads {FORMAT!r}: {EXPORT_HINT} again")
    weights_sha = sha256_file(root / WEIGHTS_FILE)
    if index.get("weights_sha256") != weights_sha:
        raise UserError(f"the ONNX graphs in {onnx_dir} were exported from other weights than {root / WEIGHTS_FILE}: "
                        f"{EXPORT_HINT} again")
    if list(index.get("style_names", [])) != style_names(manifest):
        raise UserError(f"the ONNX graphs in {onnx_dir} name other styles than the model's manifest: {EXPORT_HINT} again")
    tables = load_tables(onnx_dir)
    if (tables.styles.shape[0] != len(info.style_names) or tables.max_steps != info.max_steps
            or tables.fsq_levels != info.fsq_levels):
        raise UserError(f"corrupt {onnx_dir / TABLES_FILE}: tables {tables.styles.shape}, {tables.step_emb.shape} do "
                        f"not match the model ({EXPORT_HINT} again)")
    return ExportedModel(model_dir=root, onnx_dir=onnx_dir, manifest=manifest, info=info, index=index,
                         presets=tuple(str(p) for p in index["presets"]), tables=tables, weights_sha256=weights_sha)


__all__ = ["FORMAT", "METADATA_KEY", "ONNX_DIR", "TABLES_FILE", "INDEX_FILE", "INT8_SUFFIX", "DYNAMIC", "STAGES",
           "CHAIN_STAGES", "EXPORT_HINT", "SIZE_PRESETS", "DYNAMIC_MIN", "DYNAMIC_OPT", "DYNAMIC_MAX", "ALL_PRESETS",
           "sha256_file", "metadata_hash", "first_line", "preset_for", "describe_presets", "stage_file",
           "read_artifact_metadata", "decode_metadata", "load_index", "read_index", "Tables", "load_tables",
           "ExportedModel", "open_exported"]

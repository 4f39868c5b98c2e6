"""The exported stage graphs of one size preset, run frame by frame with ONNX Runtime on the CPU.

`StageChain` runs the stage graphs (`models/export.py` contract: ``encode``, ``embed``, ``initial``,
``refine_step``, ``decode``) as one whole frame, exactly as the runtime does::

    x (B, 3, H, W)[, norm] ─encode─▶ zq, skip[, ctx] ─FSQ (kernels)─▶ levels ─embed─▶ emb ─initial─▶ z0
      z_{k+1} = refine_step(z_k, emb, style_vec [+ ctx] + step_emb[k])  k < steps  (ctx: encode's frame context)
      decode(z, skip, x[, norm]) ─▶ rgb (B, 3, H, W)     (norm: the frame normalization, models with one)

Each stage can come from its FP32 graph or its INT8 (Q/DQ) graph, so calibration can measure the
final-frame effect of quantizing any subset of stages. With a `Recorder`, the chain keeps the real
inputs each stage graph saw: the calibration data of that graph.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from models.export import CHAIN_STAGES, ONNX_DIR, TABLES_FILE  # numpy-only at import
from realtime.errors import UserError

log = logging.getLogger(__name__)

INT8_SUFFIX = ".int8.onnx"
REPORT_FILE = "int8_report.json"
EXPORT_HINT = "run 'genreal export' first"


def stage_path(preset_dir: Path, stage: str, precision: str = "fp32") -> Path:
    """``<preset_dir>/<stage>.onnx`` (FP32) or ``<preset_dir>/<stage>.int8.onnx`` (INT8 Q/DQ)."""
    return Path(preset_dir) / (f"{stage}{INT8_SUFFIX}" if precision == "int8" else f"{stage}.onnx")


@dataclass(frozen=True)
class Tables:
    """The host-side tables the stage graphs need (stored by the exporter next to the graphs)."""

    styles: np.ndarray  # (S, E) style embedding table
    step_emb: np.ndarray  # (max_steps, E) refiner step embeddings
    fsq_levels: tuple[int, ...]

    @property
    def max_steps(self) -> int:
        return int(self.step_emb.shape[0])

    def cond(self, style: int, step: int, batch: int) -> np.ndarray:
        """The refine_step graph's ``cond`` input: (B, E) = styles[style] + step_emb[step]."""
        vec = self.styles[style] + self.step_emb[min(step, self.max_steps - 1)]  # (E,)
        return np.ascontiguousarray(np.broadcast_to(vec, (batch, vec.shape[0])), dtype=np.float32)


def _first_key(data: Mapping[str, Any], names: Sequence[str], path: Path) -> np.ndarray:
    for name in names:
        if name in data:
            return np.asarray(data[name])
    raise UserError(f"corrupt tables {path}: it needs one of {', '.join(names)} ({EXPORT_HINT} again)")


def load_tables(onnx_dir: Path) -> Tables:
    """Read ``<onnx_dir>/tables.npz``; `UserError` when missing or incomplete."""
    path = Path(onnx_dir) / TABLES_FILE
    if not path.is_file():
        raise UserError(f"no {TABLES_FILE} in {onnx_dir}: {EXPORT_HINT}")
    try:
        with np.load(path, allow_pickle=False) as data:
            styles = _first_key(data, ("styles", "style_table"), path).astype(np.float32)
            step_emb = _first_key(data, ("step_emb", "step_embeddings"), path).astype(np.float32)
            levels = _first_key(data, ("fsq_levels", "levels"), path)
    except (OSError, ValueError) as exc:
        raise UserError(f"corrupt tables {path}: {exc} ({EXPORT_HINT} again)") from None
    if styles.ndim != 2 or step_emb.ndim != 2 or styles.shape[1] != step_emb.shape[1]:
        raise UserError(f"corrupt tables {path}: styles {styles.shape} and step embeddings {step_emb.shape} disagree")
    return Tables(styles=styles, step_emb=step_emb, fsq_levels=tuple(int(v) for v in np.ravel(levels)))


@dataclass
class Recorder:
    """The inputs each stage graph received, one feed dict per graph call (arrays are copies)."""

    feeds: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)

    def add(self, stage: str, feed: Mapping[str, np.ndarray]) -> None:
        self.feeds.setdefault(stage, []).append({k: np.array(v, copy=True) for k, v in feed.items()})


def make_session(path: Path, threads: Optional[int] = None) -> Any:
    """A CPU `InferenceSession` for one graph; `UserError` for a missing or corrupt file."""
    import onnxruntime as ort

    if not Path(path).is_file():
        raise UserError(f"missing ONNX graph {path}: {EXPORT_HINT}")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"corrupt ONNX graph {path}: {first[:200]} ({EXPORT_HINT} again)") from None


class StageChain:
    """ORT sessions of the chain's stage graphs (any mix of FP32 / INT8 files), run as whole frames."""

    def __init__(self, paths: Mapping[str, Path], tables: Tables, threads: Optional[int] = None) -> None:
        missing = [s for s in CHAIN_STAGES if s not in paths]
        if missing:
            raise ValueError(f"StageChain needs a graph for every stage, missing {missing}")
        import kernels

        self.paths = {s: Path(paths[s]) for s in CHAIN_STAGES}
        self.tables = tables
        self.sessions = {s: make_session(self.paths[s], threads) for s in CHAIN_STAGES}
        self.ops = kernels.get_ops("cpu")

    def _inputs(self, name: str) -> set[str]:
        return {i.name for i in self.sessions[name].get_inputs()}

    def stage(self, name: str, feed: Mapping[str, np.ndarray], recorder: Optional[Recorder] = None) -> list[np.ndarray]:
        if recorder is not None:
            recorder.add(name, feed)
        return self.sessions[name].run(None, dict(feed))

    def run(self, x: np.ndarray, style: int, steps: int, recorder: Optional[Recorder] = None,
            extra_steps: int = 0) -> np.ndarray:
        """x (B, 3, H, W) float32 in [0, 1] → rgb (B, 3, H, W), `steps` refine steps from the learned start.

        `extra_steps` refine steps more are run after the ones decoded (only to record refine_step
        inputs for the step embeddings a warm start uses); they do not change the output.
        """
        b = x.shape[0]
        feed = {"x": x}
        if "norm" in self._inputs("encode"):  # models with frame normalization
            from realtime.backends.stages import frame_norm

            feed["norm"] = frame_norm(x)  # (B, 4)
        outs = self.stage("encode", feed, recorder)  # zq (B, d, h, w), skip (B, S, H/4, W/4)[, ctx (B, E)]
        zq, skip = outs[0], outs[1]
        ctx = outs[2] if len(outs) > 2 else None
        levels, _ = self.ops.fsq_hysteresis(zq, None, self.tables.fsq_levels, 0.0)  # (B, d, h, w) int32
        (emb,) = self.stage("embed", {"levels": levels.astype(np.int32, copy=False)}, recorder)  # (B, C, h, w)
        (z,) = self.stage("initial", {"emb": emb}, recorder)  # (B, C, h, w)
        z_out = z
        for k in range(steps + extra_steps):
            cond = self.tables.cond(style, k, b)
            if ctx is not None:
                cond = np.ascontiguousarray(cond + ctx, dtype=np.float32)  # + the frame context
            (z,) = self.stage("refine_step", {"z": z, "emb": emb, "cond": cond}, recorder)
            if k == steps - 1:
                z_out = z
        dfeed = {"z": z_out, "skip": skip, "x": x, **({"norm": feed["norm"]} if "norm" in feed else {})}
        (rgb,) = self.stage("decode", dfeed, recorder)  # (B, 3, H, W)
        return rgb

    def frame(self, images: Sequence[np.ndarray], style: int, steps: int,
              recorder: Optional[Recorder] = None, extra_steps: int = 0) -> np.ndarray:
        """uint8 RGB eye images → uint8 (B, H, W, 3) output, through the runtime's pre/postprocess kernels."""
        x = self.ops.preprocess(list(images), fmt="rgb")  # (B, 3, Hp, Wp) float32
        rgb = self.run(x, style, steps, recorder, extra_steps)
        out = self.ops.postprocess(rgb, valid_hw=images[0].shape[:2])
        return out if out.ndim == 4 else out[None]


class FusedGraph:
    """The ``fused`` graph (x, style) → (rgb, zq): a whole frame from the learned start, K = default steps."""

    def __init__(self, path: Path, tables: Tables, threads: Optional[int] = None) -> None:
        import kernels

        self.path = Path(path)
        self.tables = tables
        self.session = make_session(self.path, threads)
        self.ops = kernels.get_ops("cpu")

    def feed(self, x: np.ndarray, style: int) -> dict[str, np.ndarray]:
        b = x.shape[0]
        vec = np.broadcast_to(self.tables.styles[style], (b, self.tables.styles.shape[1]))  # (B, E)
        return {"x": x, "style": np.ascontiguousarray(vec, dtype=np.float32)}

    def frame(self, images: Sequence[np.ndarray], style: int, recorder: Optional[Recorder] = None) -> np.ndarray:
        x = self.ops.preprocess(list(images), fmt="rgb")  # (B, 3, Hp, Wp)
        feed = self.feed(x, style)
        if recorder is not None:
            recorder.add("fused", feed)
        rgb = self.session.run(["rgb"], feed)[0]  # (B, 3, Hp, Wp)
        out = self.ops.postprocess(rgb, valid_hw=images[0].shape[:2])
        return out if out.ndim == 4 else out[None]


__all__ = ["FusedGraph", "CHAIN_STAGES", "ONNX_DIR", "TABLES_FILE", "INT8_SUFFIX", "REPORT_FILE", "EXPORT_HINT", "Tables",
           "Recorder", "StageChain", "load_tables", "make_session", "stage_path"]

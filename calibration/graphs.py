"""The exported stage graphs of one size preset, run frame by frame the way the runtime runs them.

`OrtChain` is the runtime's own ONNX Runtime engine (`models.ort_stages.OrtStages`, pinned to one
preset, CPU, FP32 unless told to run some stages from other files) driven through the one stage chain
`models.stages.run_frame`, with the runtime's pre/postprocess kernels and its frame normalization
from the uint8 camera images::

    images ─preprocess─▶ x ─encode─▶ zq, skip[, ctx] ─FSQ─▶ levels ─embed─▶ emb ─initial─▶ z0
      z_{k+1} = refine_step(z_k, emb, style_vec [+ ctx] + step_emb[k])  k < steps
      decode(z, skip, x[, norm]) ─▶ rgb ─postprocess─▶ uint8

Each stage can come from its FP32 graph or an INT8 (Q/DQ) file, so calibration can measure the
final-frame effect of quantizing any subset of stages. With a `Recorder`, the engine keeps the real
inputs each stage graph saw: the calibration data of that graph.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from genreal_errors import UserError
from models.exported import CHAIN_STAGES, EXPORT_HINT, ONNX_DIR, ExportedModel, first_line, stage_file
from models.ort_stages import OrtStages, Recorder
from models.stages import images_norm, run_frame

log = logging.getLogger(__name__)

REPORT_FILE = "int8_report.json"


def make_session(path: Path, threads: Optional[int] = None) -> Any:
    """A CPU `InferenceSession` for one graph (the fused graph, timing a lone INT8 candidate);
    `UserError` for a missing or corrupt file."""
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
        raise UserError(f"corrupt ONNX graph {path}: {first_line(exc)} ({EXPORT_HINT} again)") from None


class OrtChain:
    """One preset's stage graphs (any mix of FP32 / INT8 files) as the runtime runs a whole frame."""

    def __init__(self, exported: ExportedModel, preset: str, files: Optional[Mapping[str, Path]] = None,
                 recorder: Optional[Recorder] = None) -> None:
        import kernels

        self.exported = exported
        self.stages = OrtStages(exported=exported, device="cpu", precision="fp32", preset=preset, files=files,
                                recorder=recorder)
        self.ops = kernels.get_ops("cpu")

    def prepare(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """uint8 RGB eye images → (x (B, 3, Hp, Wp), norm (B, 4) or None), as the runtime's preprocess."""
        x = self.ops.preprocess(list(images), fmt="rgb")
        return x, (images_norm(images) if self.exported.info.normalize else None)

    def run(self, x: np.ndarray, norm: Optional[np.ndarray], style: int, steps: int, extra_steps: int = 0) -> np.ndarray:
        """x → rgb (B, 3, Hp, Wp): `steps` refine steps from the learned start (plus `extra_steps` thrown
        away: they only record refine_step inputs for the step embeddings a warm start uses)."""
        vec = self.stages.style_vector(self.exported.tables.one_hot(style))  # (1, E)
        return run_frame(self.stages, self.ops, x, vec, steps, norm, extra_steps=extra_steps).rgb

    def frame(self, images: Sequence[np.ndarray], style: int, steps: int, extra_steps: int = 0) -> np.ndarray:
        """uint8 RGB eye images → uint8 (B, H, W, 3) output."""
        x, norm = self.prepare(images)
        out = self.ops.postprocess(self.run(x, norm, style, steps, extra_steps), valid_hw=images[0].shape[:2])
        return out if out.ndim == 4 else out[None]

    def session(self, stage: str) -> Any:
        return self.stages.session(stage)


class FusedGraph:
    """The ``fused`` graph (x, style) → (rgb, zq): a whole frame from the learned start, K = default steps."""

    def __init__(self, path: Path, exported: ExportedModel, threads: Optional[int] = None) -> None:
        import kernels

        self.path = Path(path)
        self.tables = exported.tables
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


__all__ = ["OrtChain", "FusedGraph", "CHAIN_STAGES", "ONNX_DIR", "REPORT_FILE", "EXPORT_HINT", "Recorder",
           "make_session", "stage_file"]

"""INT8 Q/DQ quantization of one stage graph with ONNX Runtime's static quantization.

The output is a QDQ ONNX model: symmetric INT8 activations and symmetric per-channel INT8 weights
(zero points 0), which is what TensorRT's explicit quantization takes as is (the same file is the
TensorRT INT8 input) and what ONNX Runtime's CPU kernels run as integer convolutions.
Only the compute-heavy ops (and the ReLUs folded into them) get Q/DQ (`QUANT_OPS`); element-wise ops
(FiLM, residual adds, tanh, the decoder's colour transform) stay in float, as TensorRT's Q/DQ
placement guide recommends.

``activations="uint8"`` is a CPU-only variant (asymmetric uint8 activations): ONNX Runtime's x86
kernels run it faster than int8 activations, but TensorRT refuses it (its metadata says so).
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from genreal_errors import UserError

log = logging.getLogger(__name__)

#: op types that get Q/DQ nodes (weights and their float inputs)
#: (Relu too: its Q/DQ folds into the conv before it, so conv outputs get the tighter [0, max] range;
#: measured on genreal-v1 at 640x360: +3.7 dB encode, +2.6 dB decode frame PSNR vs conv-only Q/DQ)
QUANT_OPS: tuple[str, ...] = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Relu")
#: --activations values: int8 (symmetric, zero point 0: what TensorRT takes) or uint8 (asymmetric,
#: faster with ONNX Runtime's x86 CPU kernels, but TensorRT cannot build these graphs)
ACTIVATIONS = ("int8", "uint8")
#: --method values → onnxruntime CalibrationMethod names
METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def require_onnx() -> Any:
    """Import `onnx` (a `train`-extra dependency that quantization needs) or raise a one-line `UserError`."""
    try:
        import onnx
    except ImportError:
        raise UserError("genreal calibrate needs the onnx package: pip install 'generative-reality[train]'") from None
    return onnx


def _reader_base() -> type:
    from onnxruntime.quantization import CalibrationDataReader

    return CalibrationDataReader


def make_reader(feeds: Sequence[dict[str, np.ndarray]], desc: str = "calibrate", progress: bool = True) -> Any:
    """A `CalibrationDataReader` over recorded stage inputs (the real intermediate tensors), with a tqdm bar."""
    from tqdm import tqdm

    class StageDataReader(_reader_base()):  # type: ignore[misc]
        """Feeds one stage graph the inputs it received while the FP32 chain ran the calibration frames."""

        def __init__(self) -> None:
            self.feeds = list(feeds)
            self._it: Iterator[dict[str, np.ndarray]] = iter(self.feeds)
            self.bar = tqdm(total=len(self.feeds), desc=desc, unit="input", disable=None if progress else True)

        def get_next(self) -> Optional[dict[str, np.ndarray]]:
            feed = next(self._it, None)
            if feed is None:
                self.bar.close()
            else:
                self.bar.update(1)
            return feed

        def rewind(self) -> None:
            self._it = iter(self.feeds)

        def __len__(self) -> int:
            return len(self.feeds)

    return StageDataReader()


def quantize_stage(fp32_path: Path, out_path: Path, feeds: Sequence[dict[str, np.ndarray]],
                   method: str = "minmax", cache_path: Optional[Path] = None, progress: bool = True,
                   activations: str = "int8") -> dict[str, Any]:
    """Quantize one stage graph to `out_path` (QDQ, INT8 symmetric, per-channel weights).

    `cache_path`, when given, receives ONNX Runtime's calibration cache (the tensor ranges, JSON):
    the explicit calibration artifact. Returns the settings used (for the report and metadata).
    """
    require_onnx()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in METHODS:
        raise UserError(f"unknown --method {method!r}: use {', '.join(METHODS)}")
    if activations not in ACTIVATIONS:
        raise UserError(f"unknown --activations {activations!r}: use {' or '.join(ACTIVATIONS)}")
    if not feeds:
        raise UserError(f"no calibration inputs for {fp32_path.name}: collect at least one frame")
    symmetric = activations == "int8"
    settings = {"format": "QDQ", "activations": "int8-symmetric" if symmetric else "uint8-asymmetric",
                "weights": "int8-symmetric-per-channel", "ops": list(QUANT_OPS), "method": method,
                "inputs": len(feeds), "tensorrt": symmetric}
    # (not CalibMaxIntermediateOutputs: onnxruntime 1.32 drops the collected data at each limit)
    extra: dict[str, Any] = {"ActivationSymmetric": symmetric, "WeightSymmetric": True}
    if method == "percentile":
        extra["CalibPercentile"] = 99.99  # measured best of 99.99 / 99.999 on decode
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="genreal-int8-") as tmp:
        tmp_out = Path(tmp) / out_path.name
        tmp_cache = Path(tmp) / "calib.json"
        chatter = io.StringIO()  # onnxruntime prints histogram progress: keep stdout clean
        with contextlib.redirect_stdout(chatter), _quiet_preprocess_hint():
            quantize_static(
                str(fp32_path), str(tmp_out), make_reader(feeds, f"calibrate {fp32_path.stem}", progress),
                quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
                op_types_to_quantize=list(QUANT_OPS),
                calibrate_method=getattr(CalibrationMethod, METHODS[method]),
                extra_options=extra,
                calibration_cache_path=str(tmp_cache) if cache_path is not None else None,
            )
        if chatter.getvalue().strip():
            log.debug("onnxruntime quantization: %s", chatter.getvalue().strip())
        _copy(tmp_out, out_path)
        if cache_path is not None and tmp_cache.is_file():
            _copy(tmp_cache, Path(cache_path))
    return settings


class _DropHint(logging.Filter):
    """While quantizing, drops onnxruntime's root-logger chatter: its info lines ("Created a copy of bias
    input ...") and the "Please consider pre-processing" hint (our graphs are exported with static
    shapes and constant folding, which is what that pre-processing provides). A logger's filter sees
    only records logged on that logger itself: our own loggers' records are not affected."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _quiet_preprocess_hint() -> Iterator[None]:
    root = logging.getLogger()
    hint = _DropHint()
    root.addFilter(hint)
    try:
        yield
    finally:
        root.removeFilter(hint)


def _copy(src: Path, dst: Path) -> None:
    """Copy `src` to `dst` through a temporary file in `dst`'s folder, so `dst` is never half written."""
    import shutil

    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)


def set_int8_metadata(path: Path, fp32_meta: dict[str, Any], extra: dict[str, Any]) -> None:
    """Give an INT8 graph its FP32 source's ``genreal`` metadata plus the quantization settings."""
    from models.export import set_metadata

    onnx = require_onnx()
    model = onnx.load(str(path))
    set_metadata(model, {**fp32_meta, **extra, "precision": "int8", "dtype": fp32_meta.get("dtype", "float32")})
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)


def read_genreal_metadata(path: Path) -> dict[str, Any]:
    """The ``genreal`` metadata of an exported graph (json-decoded), {} when it has none (onnxruntime only)."""
    from models.exported import METADATA_KEY, read_artifact_metadata

    meta = read_artifact_metadata(path).get(METADATA_KEY, {})
    return meta if isinstance(meta, dict) else {}


__all__ = ["QUANT_OPS", "ACTIVATIONS", "METHODS", "require_onnx", "make_reader", "quantize_stage", "set_int8_metadata",
           "read_genreal_metadata"]

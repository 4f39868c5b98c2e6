"""INT8 vs FP32 on this CPU (ONNX Runtime), with the fidelity cost, measured in the same run. Writes JSON.

    python -m benchmarks.int8 [--presets 640x360,1280x720] [--frames 24] [--repeats 20] [--json PATH]

For each preset it runs `genreal calibrate` (calibration/calibrate.py) on a temporary copy of the
model (the model folder is never written), twice: with symmetric int8 activations (the graphs
TensorRT also takes; what `genreal calibrate` writes by default) and with uint8 activations (ONNX
Runtime CPU only). Each run reports, per stage and for the whole frame (encode + FSQ + embed +
initial + K refine steps + decode, no pre/post), the FP32 and INT8 ms (median of `--repeats` runs
after warm-up, ONNX Runtime CPUExecutionProvider) and the PSNR of the INT8 output against the FP32
output on held-out frames (uint8 RGB of the whole frame). Ratios are what to compare: the CPU may
be shared, which makes absolute figures noisy.

Needs exported graphs (``genreal export``); without them, the model is exported into the
temporary copy first (needs torch, the `train` extra).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

DEFAULT_PRESETS = ("640x360", "1280x720")


def _prepare(model: Optional[Path], presets: tuple[str, ...], tmp: Path) -> Path:
    """A temporary copy of the model folder holding FP32 graphs for `presets` (exported when missing)."""
    from models.manifest import resolve_model_dir

    src = resolve_model_dir(model)
    dst = tmp / "model"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.int8.onnx", "*.int8.calib.json", "int8_report.json"))
    missing = [p for p in presets if not (dst / "onnx" / p / "encode.onnx").is_file()]
    if missing:
        from models.export import export_model

        log.info("exporting %s into the temporary copy", ", ".join(missing))
        export_model(dst, presets=missing)
    return dst


def _summary(rep: dict[str, Any]) -> dict[str, Any]:
    frame = rep["frame"]
    out: dict[str, Any] = {
        "kept": rep["kept"], "bound_db": rep["rule"]["min_psnr_db"],
        "fp32_ms": frame["fp32_ms"]["p50_ms"],
        "stages": {s: {"psnr_db": v["psnr_db"], "fp32_ms": v["fp32_ms"]["p50_ms"], "int8_ms": v["int8_ms"]["p50_ms"],
                       "speedup": v["speedup"], "kept": v["kept"]} for s, v in rep["stages"].items()},
    }
    if "kept_int8_ms" in frame:
        out.update(kept_int8_ms=frame["kept_int8_ms"]["p50_ms"], kept_speedup=frame["kept_speedup"],
                   kept_psnr_db=frame["kept"]["psnr_db"])
    if "all_int8_ms" in frame:
        out.update(all_int8_ms=frame["all_int8_ms"]["p50_ms"], all_int8_speedup=frame["all_int8_speedup"],
                   all_int8_psnr_db=frame["all_int8"]["psnr_db"])
    return out


def run(model: Optional[Path], presets: tuple[str, ...], frames: int, repeats: int, source: str,
        activations: tuple[str, ...]) -> dict[str, Any]:
    from calibration.calibrate import CalibrateConfig, calibrate
    from models.metrics import describe_machine
    from realtime.commands.calibrate import collector

    results: dict[str, Any] = {"benchmark": "int8", "machine": describe_machine(), "source": source, "frames": frames,
                               "repeats": repeats, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "runs": {}}
    with tempfile.TemporaryDirectory(prefix="genreal-bench-int8-") as tmp:
        copy = _prepare(model, presets, Path(tmp))
        for act in activations:
            for preset in presets:
                cfg = CalibrateConfig(model_dir=copy, presets=(preset,), source=source, frames=frames,
                                      repeats=repeats, activations=act, progress=False)
                rep = calibrate(cfg, collector(cfg))[preset]
                results["runs"][f"{preset}/{act}"] = {"preset": preset, "activations": act, **_summary(rep),
                                                      "report": rep}
    return results


def _table(results: dict[str, Any]) -> str:
    lines = [f"{'preset/activations':24s} {'FP32 ms':>9s} {'kept INT8 ms':>13s} {'x':>6s} {'PSNR dB':>8s} "
             f"{'all INT8 ms':>12s} {'x':>6s} {'PSNR dB':>8s}  kept"]
    for key, r in results["runs"].items():
        lines.append(f"{key:24s} {r['fp32_ms']:9.2f} {r.get('kept_int8_ms', float('nan')):13.2f} "
                     f"{r.get('kept_speedup', float('nan')):6.2f} {r.get('kept_psnr_db', float('nan')):8.2f} "
                     f"{r.get('all_int8_ms', float('nan')):12.2f} {r.get('all_int8_speedup', float('nan')):6.2f} "
                     f"{r.get('all_int8_psnr_db', float('nan')):8.2f}  {','.join(r['kept']) or '-'}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.int8", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--presets", default=",".join(DEFAULT_PRESETS), help="comma-separated size presets")
    parser.add_argument("--frames", type=int, default=24, help="calibration samples (every 4th held out)")
    parser.add_argument("--repeats", type=int, default=20, help="timing runs per measurement")
    parser.add_argument("--source", default="demo", help="calibration/evaluation frames (default: the demo clip)")
    parser.add_argument("--activations", default="int8,uint8", help="int8 (TensorRT-compatible), uint8 or both")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/int8.json"), help="output file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    presets = tuple(p.strip() for p in args.presets.split(",") if p.strip())
    acts = tuple(a.strip() for a in args.activations.split(",") if a.strip())
    results = run(args.model, presets, args.frames, args.repeats, args.source, acts)
    print(_table(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""INT8 calibration (`genreal calibrate`): Q/DQ stage graphs from real frames, kept where fidelity allows.

    from calibration.calibrate import CalibrateConfig, calibrate
    reports = calibrate(CalibrateConfig(model_dir=Path("my-model"), presets=("640x360",), source="demo"))

Modules, one step each:

- `calibration.collect`  — calibration frames from any `--source` (`collect_samples`, `split_samples`)
- `calibration.graphs`   — the exported stage graphs run as whole frames with ONNX Runtime
  (`StageChain`, `FusedGraph`), recording each graph's real inputs (`Recorder`)
- `calibration.quantize` — ONNX Runtime static quantization of one graph to QDQ INT8
  (`quantize_stage`, `make_reader`: the `CalibrationDataReader`)
- `calibration.report`   — frame fidelity (PSNR from `models.metrics`) and the keep rule (`keep_bound_db`)
- `calibration.calibrate`— the command: quantize, measure, select, write
  ``<model>/onnx/<preset>/<stage>.int8.onnx`` + ``int8_report.json``

Needs `onnx` (the `train` extra) besides onnxruntime. Nothing heavy is imported here.
"""

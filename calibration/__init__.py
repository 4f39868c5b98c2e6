"""INT8 calibration (`genreal calibrate`): Q/DQ stage graphs from real frames, kept where fidelity allows.

    from calibration.calibrate import CalibrateConfig, calibrate
    cfg = CalibrateConfig(model_dir=Path("my-model"), presets=("640x360",), source="demo")
    reports = calibrate(cfg, collect)   # collect(size, batch) -> samples: the caller opens the source
                                        # (the runtime's: realtime.commands.calibrate.collector(cfg))

Modules, one step each:

- `calibration.collect`  — frames grouped into calibration samples, the held-out split (`group_samples`,
  `split_samples`); the caller's collector opens the source
- `calibration.graphs`   — the exported stage graphs run as whole frames with ONNX Runtime
  (`OrtChain`: the runtime's ONNX Runtime engine `models.ort_stages.OrtStages` through the one stage chain
  `models.stages.run_frame`; `FusedGraph`), recording each graph's real inputs (`Recorder`)
- `calibration.quantize` — ONNX Runtime static quantization of one graph to QDQ INT8
  (`quantize_stage`, `make_reader`: the `CalibrationDataReader`)
- `calibration.report`   — frame fidelity (PSNR from `models.metrics`) and the keep rule (`keep_bound_db`)
- `calibration.calibrate`— the command: quantize, measure, select, write
  ``<model>/onnx/<preset>/<stage>.int8.onnx`` + ``int8_report.json``

Needs `onnx` (the `train` extra) besides onnxruntime. Nothing heavy is imported here.
"""

"""`genreal calibrate`: INT8 Q/DQ stage graphs from real frames, kept only where fidelity allows.

For each size preset of an exported model (``<model>/onnx/<preset>/<stage>.onnx``, see
models/export.py):

1. collect calibration frames from any source (the caller's collector: `realtime.commands.calibrate`),
   hold every 4th out;
2. run the FP32 stage chain over them as the runtime does, recording every stage graph's real inputs
   (`calibration.graphs.OrtChain`: the runtime's ONNX Runtime engine with a `Recorder`);
3. quantize each stage graph on its own recorded inputs (`calibration.quantize`: QDQ, symmetric
   INT8, per-channel weights, ONNX Runtime static quantization);
4. measure, on the held-out frames, the final RGB of the whole frame with that one stage INT8
   against the all-FP32 frame (PSNR), and the speed of each stage and of the whole frame on this CPU;
5. keep INT8 for the stages that pass the rule in `calibration.report` (default: the fidelity
   against the teacher drops by < 1 dB, worst case), check the kept set together, and write
   ``<stage>.int8.onnx`` (+ ``<stage>.int8.calib.json``, ONNX Runtime's calibration cache: the tensor
   ranges) for kept stages and ``int8_report.json`` into the preset folder. INT8 files of stages not
   kept are removed, so a runtime never loads a stale one.

Where the files go: a model folder the user owns is updated in place. The shipped model
(``models/weights/...``, package data that may be read-only) needs ``--out DIR``: a copy of the
model folder with the INT8 graphs added (use it with ``--model DIR``); ``--in-place`` writes into
the shipped folder anyway (for maintainers who ship INT8 graphs).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from calibration.collect import Collector, Sample, split_samples
from calibration.graphs import (CHAIN_STAGES, EXPORT_HINT, ONNX_DIR, REPORT_FILE, FusedGraph, OrtChain, Recorder,
                                make_session)
from calibration.quantize import quantize_stage, read_genreal_metadata, require_onnx, set_int8_metadata
from calibration.report import fidelity, keep_bound_db, max_drop_db, reference_psnr, speedup
from genreal_errors import UserError
from models.exported import ExportedModel, Size, open_exported
from models.exported import stage_file as stage_path
from models.metrics import describe_machine, time_ms, time_pair_ms

log = logging.getLogger(__name__)

DEFAULT_CALIB_SIZE: Size = (640, 360)
CALIB_CACHE_SUFFIX = ".int8.calib.json"
#: calibration inputs per graph are thinned (evenly) to this many bytes: onnxruntime keeps every
#: intermediate tensor of every input until the end, ~10x the inputs for the full-resolution stages
MAX_CALIB_INPUT_BYTES = 512 << 20
#: the graphs calibrate can quantize
QUANT_STAGES: tuple[str, ...] = (*CHAIN_STAGES, "fused")


@dataclass(frozen=True)
class CalibrateConfig:
    model_dir: Optional[Path] = None  # None = the shipped model
    out: Optional[Path] = None  # a copy of the model folder with the INT8 graphs added
    in_place: bool = False  # write into the shipped model folder
    presets: tuple[str, ...] = ()  # () = every exported preset
    source: str = "demo"
    frames: int = 24  # samples collected (every 4th is held out for the fidelity measurement)
    every: int = 4  # keep every N-th source frame
    size: Optional[Size] = None  # calibration size for a dynamic preset (default 640x360)
    method: str = "minmax"  # minmax | entropy | percentile
    activations: str = "int8"  # int8 (symmetric: TensorRT and ORT) | uint8 (ORT CPU only)
    stages: tuple[str, ...] = ()  # candidates for INT8 (() = the chain's stages, plus fused when exported)
    max_drop_db: float = 1.0
    min_psnr_db: Optional[float] = None  # overrides the bound the rule derives
    steps: Optional[int] = None  # refine steps of the measured frames (None = the model's default)
    repeats: int = 10  # timing runs per measurement
    progress: bool = True

    def __post_init__(self) -> None:
        bad = [s for s in self.stages if s not in QUANT_STAGES]
        if bad:
            raise UserError(f"bad --stages {','.join(self.stages)}: choose from {','.join(QUANT_STAGES)}")
        if not self.max_drop_db > 0:
            raise UserError(f"bad --max-drop-db {self.max_drop_db}: it must be positive")
        if self.repeats < 1:
            raise UserError(f"bad --repeats {self.repeats}: it must be at least 1")
        if self.out is not None and self.in_place:
            raise UserError("--out and --in-place exclude each other: pick one")


# --- where the files go ---------------------------------------------------------------------


def is_shipped(model_dir: Path) -> bool:
    from models.manifest import WEIGHTS_DIR

    try:
        return Path(model_dir).resolve().is_relative_to(WEIGHTS_DIR.resolve())
    except OSError:
        return False


def _check_writable(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".genreal-write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"cannot write to {what} {folder}: {exc.strerror or exc} (pass --out DIR, a writable folder)") \
            from None


def prepare_target(model_dir: Path, out: Optional[Path], in_place: bool = False) -> Path:
    """The model folder to write INT8 graphs into (see the module docstring). Raises `UserError`."""
    model_dir = Path(model_dir)
    if out is None:
        if is_shipped(model_dir) and not in_place:
            raise UserError(f"{model_dir} is the shipped model (package data): pass --out DIR to write a copy with the "
                            f"INT8 graphs added (then use --model DIR), or --in-place to write into it")
        _check_writable(model_dir / ONNX_DIR, "the model folder")
        return model_dir
    out = Path(out).expanduser()
    if out.resolve() == model_dir.resolve():
        _check_writable(out / ONNX_DIR, "the model folder")
        return out
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "manifest.json").is_file())):
        raise UserError(f"--out {out} exists and is not a model folder: pick a new or empty folder")
    _check_writable(out, "--out")
    try:
        shutil.copytree(model_dir, out, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.tmp", ".genreal-write-test-*"))
    except (OSError, shutil.Error) as exc:
        raise UserError(f"cannot copy {model_dir} to --out {out}: {exc}") from None
    log.info("copied model %s → %s", model_dir, out)
    return out


# --- presets ---------------------------------------------------------------------------------


def list_presets(onnx_dir: Path) -> list[str]:
    """Preset folders of an export that hold an encode graph, in `ALL_PRESETS` order."""
    from models.export import ALL_PRESETS

    if not onnx_dir.is_dir():
        return []
    found = [p.name for p in onnx_dir.iterdir() if p.is_dir() and (p / "encode.onnx").is_file()]
    return sorted(found, key=lambda p: (ALL_PRESETS.index(p) if p in ALL_PRESETS else len(ALL_PRESETS), p))


def preset_geometry(preset: str, size: Optional[Size]) -> tuple[Size, int]:
    """((W, H) per eye, batch) to calibrate a preset at: its own for static presets, `size`
    (default 640x360) with batch 1 for the dynamic one."""
    from models.export import DYNAMIC, SIZE_PRESETS

    if preset == DYNAMIC or preset not in SIZE_PRESETS:
        return (tuple(size) if size else DEFAULT_CALIB_SIZE), 1  # type: ignore[return-value]
    (w, h), batch = SIZE_PRESETS[preset]
    if size is not None and tuple(size) != (w, h):
        log.warning("--size %dx%d ignored for static preset %s", size[0], size[1], preset)
    return (w, h), batch


# --- one preset ------------------------------------------------------------------------------


def _outputs(runner: Any, samples: list[Sample], steps: Optional[int], n_styles: int) -> list[np.ndarray]:
    """uint8 outputs over `samples`; sample i uses style i mod S (every style gets measured)."""
    if isinstance(runner, FusedGraph):
        return [runner.frame(s, i % n_styles) for i, s in enumerate(samples)]
    return [runner.frame(s, i % n_styles, steps) for i, s in enumerate(samples)]


def _chain(exported: ExportedModel, preset: str, int8: dict[str, Path], recorder: Optional[Recorder] = None) -> OrtChain:
    """The runtime's chain on `preset`, with the stages in `int8` run from those files."""
    return OrtChain(exported, preset, files=int8, recorder=recorder)


def thin(feeds: list[dict[str, np.ndarray]], budget: int = MAX_CALIB_INPUT_BYTES) -> list[dict[str, np.ndarray]]:
    """At most `budget` bytes of `feeds`, picked evenly (so every style and step stays represented)."""
    if not feeds:
        return feeds
    per = max(1, sum(a.nbytes for a in feeds[0].values()))
    keep = max(1, min(len(feeds), budget // per))
    if keep == len(feeds):
        return feeds
    idx = np.unique(np.linspace(0, len(feeds) - 1, keep).round().astype(int))
    log.info("calibrating on %d of %d inputs (%.0f MB each) to bound memory", len(idx), len(feeds), per / 2**20)
    return [feeds[i] for i in idx]


def candidate_stages(preset_dir: Path, asked: tuple[str, ...]) -> list[str]:
    """The asked stages (default: the chain's, plus ``fused`` when exported) that exist in `preset_dir`."""
    names = list(asked) if asked else [*CHAIN_STAGES, "fused"]
    for s in CHAIN_STAGES:
        if not stage_path(preset_dir, s).is_file():
            raise UserError(f"missing ONNX graph {stage_path(preset_dir, s)}: {EXPORT_HINT}")
    if "fused" in names and not stage_path(preset_dir, "fused").is_file():
        if asked:
            raise UserError(f"missing ONNX graph {stage_path(preset_dir, 'fused')}: {EXPORT_HINT} with the fused stage")
        names.remove("fused")
    return names


def calibrate_preset(model_dir: Path, preset: str, cfg: CalibrateConfig, manifest: dict[str, Any],
                     samples: list[Sample], size: Size, batch: int) -> dict[str, Any]:
    """Quantize, measure and select the INT8 stages of one preset; write them and the report."""
    from tqdm import tqdm

    exported = open_exported(model_dir)
    preset_dir = exported.preset_dir(preset)
    steps = int(cfg.steps or min(exported.info.default_steps, exported.info.offered_steps))
    max_steps = exported.info.max_steps
    exported.info.check_steps(steps)  # the model's offered range, as at run time
    n_styles = len(exported.info.style_names)
    candidates = candidate_stages(preset_dir, cfg.stages)

    calib, held = split_samples(samples)
    recorder = Recorder()
    recording = _chain(exported, preset, {}, recorder)
    fused = FusedGraph(stage_path(preset_dir, "fused"), exported) if "fused" in candidates else None
    for i, sample in enumerate(tqdm(calib, desc=f"{preset}: FP32 inputs", unit="sample",
                                    disable=None if cfg.progress else True)):
        # refine past `steps` so the step embeddings of warm starts (k = max_steps-K ..) are calibrated too
        recording.frame(sample, i % n_styles, steps, extra_steps=max_steps - steps)
        if fused is not None:
            fused.frame(sample, i % n_styles, recorder)
    fp32 = _chain(exported, preset, {})
    refs = _outputs(fp32, held, steps, n_styles)
    fused_refs = _outputs(fused, held, None, n_styles) if fused is not None else []

    reference = reference_psnr(manifest)
    bound = cfg.min_psnr_db if cfg.min_psnr_db is not None else keep_bound_db(reference, cfg.max_drop_db)
    x0, norm0 = fp32.prepare(held[0])  # (B, 3, H, W), (B, 4) for timing
    stages: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="genreal-calib-") as tmp:
        staged: dict[str, Path] = {}
        caches: dict[str, Path] = {}
        for stage in candidates:
            out = Path(tmp) / f"{stage}.int8.onnx"
            caches[stage] = Path(tmp) / f"{stage}{CALIB_CACHE_SUFFIX}"
            settings = quantize_stage(stage_path(preset_dir, stage), out, thin(recorder.feeds[stage]), cfg.method,
                                      cache_path=caches[stage], progress=cfg.progress, activations=cfg.activations)
            staged[stage] = out
            if stage == "fused":
                fid = fidelity(_outputs(FusedGraph(out, exported), held, None, n_styles), fused_refs)
                s32 = fused.session  # type: ignore[union-attr]
            else:
                fid = fidelity(_outputs(_chain(exported, preset, {stage: out}), held, steps, n_styles), refs)
                s32 = fp32.session(stage)
            feed = recorder.feeds[stage][0]
            s8 = make_session(out)
            t32, t8 = time_pair_ms(lambda: s32.run(None, feed), lambda: s8.run(None, feed), iters=cfg.repeats)
            ok = fid["psnr_db"] >= bound
            stages[stage] = {**fid, "kept": ok, "fp32_ms": t32, "int8_ms": t8, "speedup": speedup(t32, t8),
                             "calls_per_frame": steps if stage == "refine_step" else 1,
                             "calibration_inputs": settings.get("inputs")}
            if stage == "fused":
                stages[stage]["compared_with"] = "the FP32 fused graph"
            if reference is not None:
                stages[stage]["max_drop_vs_teacher_db"] = round(max_drop_db(reference, fid["psnr_db"]), 3)
            log.info("%s %s: INT8 frame PSNR vs FP32 %.2f dB (bound %.2f) → %s; %.2f → %.2f ms", preset, stage,
                     fid["psnr_db"], bound, "INT8" if ok else "FP32", t32["p50_ms"], t8["p50_ms"])

        # the kept chain stages together must meet the bound too: drop the weakest until they do
        kept = sorted((s for s in candidates if s in CHAIN_STAGES and stages[s]["kept"]),
                      key=lambda s: stages[s]["psnr_db"])

        def together(names: list[str]) -> Optional[dict[str, Any]]:
            return fidelity(_outputs(_chain(exported, preset, {s: staged[s] for s in names}), held, steps,
                                     n_styles), refs) if names else None

        combined = together(kept)
        while kept and combined is not None and combined["psnr_db"] < bound:
            weakest = kept.pop(0)
            stages[weakest]["kept"] = False
            stages[weakest]["reason"] = "dropped: the kept stages together missed the bound"
            log.info("%s: INT8 stages together %.2f dB < %.2f: %s back to FP32", preset, combined["psnr_db"], bound,
                     weakest)
            combined = together(kept)

        # each INT8 frame is timed alternately with an FP32 frame; fp32_ms is from the first pairing
        def fp32_frame() -> Any:
            return fp32.run(x0, norm0, 0, steps)

        frame: dict[str, Any] = {}
        if kept:
            mixed = _chain(exported, preset, {s: staged[s] for s in kept})
            t32, t8 = time_pair_ms(fp32_frame, lambda: mixed.run(x0, norm0, 0, steps), iters=cfg.repeats)
            frame.update(fp32_ms=t32, kept_int8_ms=t8, kept_speedup=speedup(t32, t8), kept=combined)
        chain_staged = {s: p for s, p in staged.items() if s in CHAIN_STAGES}
        if chain_staged:
            every = _chain(exported, preset, chain_staged)
            t32, t8 = time_pair_ms(fp32_frame, lambda: every.run(x0, norm0, 0, steps), iters=cfg.repeats)
            frame.setdefault("fp32_ms", t32)
            frame["all_int8_stages"] = sorted(chain_staged, key=CHAIN_STAGES.index)
            frame["all_int8_ms"] = t8
            frame["all_int8_speedup"] = speedup(t32, t8)
            frame["all_int8"] = fidelity(_outputs(every, held, steps, n_styles), refs)
        else:  # only the fused graph was a candidate
            frame["fp32_ms"] = time_ms(fp32_frame, iters=cfg.repeats)
        kept_all = [s for s in candidates if s in kept or (s == "fused" and stages[s]["kept"])]
        _write_kept(preset_dir, kept_all, staged, caches, settings, cfg, len(calib))

    report = {
        "format": "genreal-int8-report/1",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "preset": preset, "size": list(size), "batch": batch, "steps": steps,
        "source": cfg.source, "every": cfg.every,
        "frames": {"calibration": len(calib), "evaluation": len(held), "held_out": held is not calib},
        "quantization": {k: v for k, v in settings.items() if k != "inputs"},
        "rule": {
            "text": "keep INT8 for a stage when the whole-frame PSNR of INT8 vs FP32 (uint8 RGB, held-out frames, "
                    "all styles) is at least the bound; the bound makes the worst-case drop of the PSNR against "
                    f"the teacher < {cfg.max_drop_db:g} dB (bound = best style PSNR vs teacher + "
                    "20*log10(1/(10^(drop/20)-1))); the kept chain stages together must meet it too",
            "max_drop_db": cfg.max_drop_db, "reference_psnr_db": reference, "min_psnr_db": round(bound, 3),
            "overridden": cfg.min_psnr_db is not None},
        "stages": stages,
        "kept": kept_all,
        "frame": frame,
        "timing": "ms per call on ONNX Runtime CPUExecutionProvider (models.metrics.percentiles: p50_ms, p95_ms, "
                  "p99_ms, mean_ms, min_ms, n over the runs after warm-up); frame = encode + FSQ + embed + initial + steps x refine_step + decode (no pre/post)",
        "machine": describe_machine(),
    }
    (preset_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    log.info("%s: INT8 kept for %s; report %s", preset, ", ".join(kept_all) or "no stage", preset_dir / REPORT_FILE)
    return report


def _write_kept(preset_dir: Path, kept: list[str], staged: dict[str, Path], caches: dict[str, Path],
                settings: dict[str, Any], cfg: CalibrateConfig, n_calib: int) -> None:
    """Install the kept INT8 graphs (with metadata) and their calibration caches; remove stale ones."""
    for stage in (*CHAIN_STAGES, "fused"):
        dst = stage_path(preset_dir, stage, "int8")
        cache_dst = preset_dir / f"{stage}{CALIB_CACHE_SUFFIX}"
        if stage not in kept:
            for stale in (dst, cache_dst):
                if stale.exists():
                    stale.unlink()
                    log.info("removed stale %s", stale)
            continue
        meta = read_genreal_metadata(stage_path(preset_dir, stage))
        quant = {k: v for k, v in settings.items() if k != "inputs"}
        set_int8_metadata(staged[stage], meta, {"quantization": {**quant, "source": cfg.source,
                                                                 "calibration_frames": n_calib}})
        for src, target in ((staged[stage], dst), (caches[stage], cache_dst)):
            if src.is_file():
                tmp = target.with_name(target.name + ".tmp")
                shutil.copyfile(src, tmp)
                tmp.replace(target)


# --- the whole command -------------------------------------------------------------------------


def calibrate(cfg: CalibrateConfig, collect: Collector) -> dict[str, dict[str, Any]]:
    """Run calibration for every asked preset; returns preset → report (also written as JSON).

    `collect(size, batch)` gives the calibration samples for a preset's geometry (`cfg.frames` of them,
    from `cfg.source`: see `realtime.commands.calibrate.collector`)."""
    from models.manifest import read_manifest, resolve_model_dir

    require_onnx()
    model_dir = resolve_model_dir(cfg.model_dir)
    manifest = read_manifest(model_dir)
    available = list_presets(model_dir / ONNX_DIR)
    if not available:
        raise UserError(f"no ONNX graphs in {model_dir / ONNX_DIR}: {EXPORT_HINT}")
    presets = list(cfg.presets) or available
    missing = [p for p in presets if p not in available]
    if missing:
        raise UserError(f"no ONNX graphs for preset {', '.join(missing)} in {model_dir / ONNX_DIR} (exported: "
                        f"{', '.join(available)}): {EXPORT_HINT} with that preset")
    target = prepare_target(model_dir, cfg.out, cfg.in_place)
    collected: dict[tuple[Size, int], list[Sample]] = {}
    reports = {}
    for preset in presets:
        size, batch = preset_geometry(preset, cfg.size)
        key = (tuple(size), batch)
        if key not in collected:
            collected[key] = collect(size, batch)
        reports[preset] = calibrate_preset(target, preset, cfg, manifest, collected[key], size, batch)
    return reports


def config_dict(cfg: CalibrateConfig) -> dict[str, Any]:
    d = asdict(cfg)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


__all__ = ["CalibrateConfig", "calibrate", "calibrate_preset", "prepare_target", "is_shipped", "list_presets", "candidate_stages", "QUANT_STAGES", "thin",
           "preset_geometry", "config_dict"]

"""`genreal calibrate`: INT8 Q/DQ stage graphs, the keep rule, the report and where files go."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from calibration import report as rp
from calibration.calibrate import CalibrateConfig, calibrate, is_shipped, prepare_target
from calibration.collect import split_samples
from calibration.quantize import make_reader
from genreal_errors import UserError
from models.metrics import PSNR_CAP_DB, psnr
from realtime.commands.calibrate import collect_samples, collector

PRESET = "640x360"


@pytest.fixture(scope="module")
def exported(export_chain) -> Path:
    """A user-owned copy of the shipped model with its 640x360 chain graphs exported."""
    return export_chain("calib")


def _cfg(model: Path, **kw: object) -> CalibrateConfig:
    base = dict(model_dir=model, presets=(PRESET,), frames=4, every=2, repeats=1, progress=False,
                stages=("initial", "refine_step", "decode"))
    return CalibrateConfig(**{**base, **kw})  # type: ignore[arg-type]


def _calibrate(cfg: CalibrateConfig) -> dict:
    return calibrate(cfg, collector(cfg))


# --- the rule --------------------------------------------------------------------------------------


def test_keep_bound_guarantees_the_drop() -> None:
    assert rp.keep_bound_db(24.42, 1.0) == pytest.approx(24.42 + 18.27, abs=0.01)
    for ref in (12.0, 24.42):
        for drop in (0.25, 1.0, 3.0):
            assert rp.max_drop_db(ref, rp.keep_bound_db(ref, drop)) == pytest.approx(drop)
            assert rp.max_drop_db(ref, rp.keep_bound_db(ref, drop) + 1) < drop
    assert rp.keep_bound_db(None) == rp.DEFAULT_MIN_PSNR_DB
    assert rp.reference_psnr({"styles": [{"psnr": 15.1}, {"psnr": 24.4}, {"name": "x"}]}) == 24.4
    a = np.zeros((4, 4, 3), np.uint8)
    fid = rp.fidelity([a, a + 2], [a, a])
    assert fid["psnr_db"] == pytest.approx(10 * math.log10(255 ** 2 / 2), abs=1e-3)
    assert fid["worst_frame_psnr_db"] == pytest.approx(10 * math.log10(255 ** 2 / 4), abs=1e-3)


# --- calibrate end to end -------------------------------------------------------------------------------


@pytest.mark.slow
def test_calibrate_keeps_stages_by_the_rule_and_writes_qdq_graphs(exported: Path) -> None:
    import onnx

    from models.export import read_artifact_metadata

    rep = _calibrate(_cfg(exported))[PRESET]
    pdir = exported / "onnx" / PRESET
    saved = json.loads((pdir / "int8_report.json").read_text())
    assert saved["kept"] == rep["kept"] and saved["preset"] == PRESET and saved["batch"] == 1
    bound = rep["rule"]["min_psnr_db"]
    assert bound == pytest.approx(rp.keep_bound_db(_best_style_psnr()), abs=0.01)  # the shipped model's best style
    assert rep["frames"] == {"calibration": 3, "evaluation": 1, "held_out": True}
    for stage in ("initial", "refine_step", "decode"):
        st = rep["stages"][stage]
        assert st["fp32_ms"]["p50_ms"] > 0 and st["int8_ms"]["p50_ms"] > 0 and st["frames"] == 1
        passes = st["psnr_db"] >= bound
        assert st["kept"] == (passes and "reason" not in st)
        assert (pdir / f"{stage}.int8.onnx").is_file() == st["kept"] == (stage in rep["kept"])
    assert "refine_step" in rep["kept"]  # ~57 dB on genreal-v1: far above the bound
    assert rep["frame"]["kept"]["psnr_db"] >= bound
    assert not (pdir / "encode.int8.onnx").exists()  # not a candidate this run
    for stage in rep["kept"]:
        path = pdir / f"{stage}.int8.onnx"
        meta = read_artifact_metadata(path)["genreal"]
        fp32 = read_artifact_metadata(pdir / f"{stage}.onnx")["genreal"]
        assert meta["precision"] == "int8" and meta["weights_sha256"] == fp32["weights_sha256"]
        assert meta["metadata_hash"] == fp32["metadata_hash"] and meta["quantization"]["tensorrt"] is True
        assert (pdir / f"{stage}.int8.calib.json").is_file()
        model = onnx.load(str(path))
        ops = {n.op_type for n in model.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
        zps = [inits[n.input[2]] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
               and len(n.input) > 2 and n.input[2] in inits]
        # symmetric: every zero point 0, int8 (int32 for biases), no uint8: what TensorRT takes
        assert zps and not any(z.any() for z in zps) and {z.dtype for z in zps} <= {np.dtype(np.int8), np.dtype(np.int32)}
        assert np.dtype(np.int8) in {z.dtype for z in zps}
        assert any(inits[n.input[1]].size > 1 for n in model.graph.node  # per-channel weight scales
                   if n.op_type == "DequantizeLinear" and n.input[1] in inits)


@pytest.mark.slow
def test_int8_graphs_run_in_the_onnxruntime_backend_and_stale_ones_go(exported: Path) -> None:
    from realtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from realtime.config import BackendConfig

    _calibrate(_cfg(exported, stages=("refine_step",), min_psnr_db=0.0))
    pdir = exported / "onnx" / PRESET
    assert (pdir / "refine_step.int8.onnx").is_file()
    img = np.random.default_rng(1).integers(0, 256, (360, 640, 3), dtype=np.uint8)
    outs = {}
    for precision in ("fp32", "int8"):
        b = OnnxRuntimeBackend(BackendConfig(name="onnxruntime", device="cpu", style="cel", temporal=False,
                                             precision=precision), model_dir=exported)
        outs[precision] = b([img])[0]
    # INT8 ran, and is close (the fourth weights' refine step in INT8: 31.5 dB from FP32 on this frame)
    assert 30 < psnr(outs["int8"], outs["fp32"]) < PSNR_CAP_DB
    rep = _calibrate(_cfg(exported, stages=("refine_step",), min_psnr_db=99.0))[PRESET]
    assert rep["kept"] == [] and rep["rule"]["overridden"] is True
    assert not list(pdir.glob("*.int8.onnx")) and not list(pdir.glob("*.int8.calib.json"))


@pytest.mark.slow
def test_onnx_package_is_required(exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(UserError, match=r"needs the onnx package: pip install 'generative-reality\[train\]'"):
        _calibrate(_cfg(exported))


# --- where the files go -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_shipped_model_needs_out_and_out_gets_a_copy(tmp_path: Path, exported: Path) -> None:
    from models.manifest import default_model_dir

    assert is_shipped(default_model_dir()) and not is_shipped(exported)
    with pytest.raises(UserError, match="shipped model .*--out DIR"):
        prepare_target(default_model_dir(), None)
    out = prepare_target(exported, tmp_path / "copy")
    assert (out / "model.safetensors").is_file() and (out / "onnx" / PRESET / "decode.onnx").is_file()
    assert prepare_target(exported, tmp_path / "copy") == out  # re-running into the same copy is fine
    assert prepare_target(exported, None) == exported  # a user's own model is updated in place
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="exists and is not a model folder"):
        prepare_target(exported, tmp_path / "other")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="cannot write to --out"):
        prepare_target(exported, tmp_path / "afile" / "sub")
    with pytest.raises(UserError, match="exclude each other"):
        CalibrateConfig(out=tmp_path, in_place=True)


@pytest.mark.slow
def test_cli_bad_inputs_are_one_line_errors(tmp_path: Path, exported: Path, copy_model,
                                            capsys: pytest.CaptureFixture) -> None:
    from realtime.cli import main

    bare = copy_model(tmp_path / "bare")
    cases = [
        (["--model", str(bare)], "run 'genreal export"),
        (["--model", str(exported), "--preset", "1920x1080"], "no ONNX graphs for preset 1920x1080"),
        (["--model", str(exported), "--source", "nosuch:thing"], "unknown source"),
        (["--model", str(exported), "--source", f"images:{tmp_path}/none/*.png"], "no files match"),
        (["--model", str(exported), "--stages", "encode,bogus"], "bad --stages"),
        (["--model", str(exported), "--frames", "0"], "bad --frames"),
    ]
    for extra, words in cases:
        assert main(["calibrate", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and err.count("\n") == 0, err


@pytest.mark.slow
def test_cli_calibrates_and_prints_the_summary(exported: Path, capsys: pytest.CaptureFixture) -> None:
    from realtime.cli import main

    args = ["-q", "calibrate", "--model", str(exported), "--preset", PRESET, "--frames", "4", "--every", "2",
            "--repeats", "1", "--stages", "initial", "--max-drop-db", "0.5"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{PRESET}: INT8 kept for ") and "initial" in out
    rep = json.loads((exported / "onnx" / PRESET / "int8_report.json").read_text())
    assert rep["rule"]["max_drop_db"] == 0.5 and list(rep["stages"]) == ["initial"]
    assert rep["rule"]["min_psnr_db"] == pytest.approx(rp.keep_bound_db(_best_style_psnr(), 0.5), abs=1e-3)


# --- frames and the data reader -----------------------------------------------------------------------------


def test_collect_pairs_mono_frames_and_splits_stereo_eyes() -> None:
    pairs = collect_samples("demo", (64, 48), 3, batch=2, every=2, progress=False)
    assert len(pairs) == 3 and all(len(s) == 2 and s[0].shape == (48, 64, 3) for s in pairs)
    assert not np.array_equal(pairs[0][0], pairs[0][1])  # two different frames as two "cameras"
    eyes = collect_samples("demo:stereo", (64, 48), 4, batch=1, progress=False)
    assert len(eyes) == 4 and all(len(s) == 1 for s in eyes)
    calib, held = split_samples(eyes)
    assert len(calib) == 3 and len(held) == 1 and held[0] is eyes[3]
    assert split_samples(eyes[:1]) == (eyes[:1], eyes[:1])


def test_thin_bounds_calibration_memory_evenly() -> None:
    from calibration.calibrate import thin

    feeds = [{"x": np.full((1, 1000), i, np.float32)} for i in range(10)]  # 4000 bytes each
    assert thin(feeds, budget=10**9) == feeds
    kept = thin(feeds, budget=4 * 4000)
    assert [int(f["x"][0, 0]) for f in kept] == [0, 3, 6, 9]  # spread over all inputs (every style)
    assert len(thin(feeds, budget=1)) == 1


def test_reader_feeds_recorded_inputs_in_order() -> None:
    feeds = [{"z": np.full((1, 2), i, np.float32)} for i in range(3)]
    reader = make_reader(feeds, progress=False)
    got = [reader.get_next() for _ in range(4)]
    assert [float(g["z"][0, 0]) for g in got[:3]] == [0.0, 1.0, 2.0] and got[3] is None
    reader.rewind()
    assert float(reader.get_next()["z"][0, 0]) == 0.0


def _best_style_psnr() -> float:
    """The best style's PSNR against its teacher in the shipped manifest (what the keep rule starts from)."""
    from models.manifest import read_manifest

    return max(float(st["psnr"]) for st in read_manifest()["styles"])

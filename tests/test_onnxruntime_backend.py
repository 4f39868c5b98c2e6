"""The ONNX Runtime backend (the default): graph choice, parity with torch, no torch on the runtime path,
bad models and options as one-line errors; plus the torch backend's CPU-side checks."""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from realtime.backends import AUTO_ORDER, create_backend
from realtime.backends.onnxruntime_backend import OnnxRuntimeBackend, OrtStages
from realtime.cli import main
from realtime.config import BackendConfig
from genreal_errors import UserError
from tests.conftest import set_index_presets as set_presets
from tests.fakes import NO_TORCH_PRELUDE, assert_one_line_error  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def image(w: int, h: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.repeat(np.repeat(base, 8, 0), 8, 1)[:h, :w])


@pytest.fixture(scope="module")
def ort_backend():
    backend = OnnxRuntimeBackend(BackendConfig(name="onnxruntime", style="cel"))
    yield backend
    backend.close()


# -- the default path ------------------------------------------------------------------------------
def test_auto_picks_onnxruntime_on_this_cpu_and_says_why(caplog):
    assert AUTO_ORDER[:4] == ("tensorrt:cuda", "onnxruntime:cuda", "torch:cuda", "onnxruntime:cpu")
    with caplog.at_level(logging.INFO, logger="realtime.backends"):
        backend = create_backend(BackendConfig())
    try:
        assert backend.name == "onnxruntime" and backend.device == "cpu"
        line = [r.getMessage() for r in caplog.records if "backend auto" in r.getMessage()]
        assert len(line) == 1 and "chose onnxruntime on cpu" in line[0] and "onnxruntime:cuda" in line[0]
    finally:
        backend.close()


def test_static_graph_for_a_preset_size_matches_torch(ort_backend):
    from realtime.backends.torch_backend import TorchBackend

    img = image(640, 360)
    out = ort_backend([img])[0]
    assert ort_backend.stages.preset == "640x360" and out.shape == (360, 640, 3) and out.dtype == np.uint8
    torch_backend = TorchBackend(BackendConfig(name="torch", style="cel", device="cpu"))
    ref = torch_backend([img])[0]
    assert np.abs(out.astype(int) - ref).max() <= 1  # the same model: at most one uint8 step of rounding
    assert np.abs(out.astype(int) - img).mean() > 2  # and it does restyle


def test_other_sizes_use_the_dynamic_graphs_and_stereo_its_batch_2_preset(ort_backend):
    out = ort_backend([image(300, 170)])[0]
    assert ort_backend.stages.preset == "dynamic" and out.shape == (170, 300, 3)
    left, right = image(1280, 960, 1), image(1280, 960, 2)
    eyes = ort_backend([left, right])
    assert ort_backend.stages.preset == "stereo-1280x960" and [e.shape for e in eyes] == [(960, 1280, 3)] * 2
    assert ort_backend.stats()["engine"] == "onnxruntime"


def test_style_switch_and_blend_without_reloading(ort_backend):
    img = image(640, 360, 3)
    sessions = dict(ort_backend.stages.sessions_for(1, 360, 640))
    a = ort_backend([img])[0]
    ort_backend.set_style("starry")
    b = ort_backend([img])[0]
    ort_backend.set_style("cel:0.5,starry:0.5")
    c = ort_backend([img])[0]
    assert np.abs(a.astype(int) - b).mean() > 1 and c.shape == a.shape
    assert ort_backend.stages.sessions_for(1, 360, 640) == sessions  # same session objects
    ort_backend.set_style("cel")


def test_refine_step_zero_and_the_cond_table(ort_backend):
    st: OrtStages = ort_backend.stages
    z = np.ones((1, 64, 45, 80), np.float32)
    assert st.refine(z, z, st.style_vector(np.eye(8, dtype=np.float32)[0]), 0) is z
    cond = st.tables.cond(st.style_vector(np.eye(8, dtype=np.float32)[1]), 3, 2)
    assert cond.shape == (2, 64) and np.allclose(cond[1], st.tables.styles[1] + st.tables.step_emb[3])
    with pytest.raises(ValueError):
        st.refine(z, z, cond[:1], 3, 2)


def test_runtime_path_never_imports_torch(tmp_path):
    """`genreal run` with the default backend and `genreal demo` in a process where importing torch fails."""
    script = NO_TORCH_PRELUDE + f"""
from realtime.cli import main
code = main(["run", "--source", "demo", "--sink", "null", "--max-frames", "3", "--style", "frost"])
assert code == 0, code
code = main(["demo", "--sink", {str(tmp_path / 'demo.mp4')!r}, "--max-frames", "2", "--backend", "onnxruntime"])
assert code == 0, code
assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
print("NO-TORCH-OK")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "NO-TORCH-OK" in proc.stdout, proc.stderr[-2000:]
    assert "chose onnxruntime on cpu" in proc.stderr


# -- bad models, sizes, styles, options -------------------------------------------------------------------
def test_size_no_graph_covers_lists_the_exported_sizes(model_copy):
    set_presets(model_copy, ["640x360"])
    backend = OnnxRuntimeBackend(BackendConfig(name="onnxruntime"), model_dir=model_copy)
    with pytest.raises(UserError, match=r"no ONNX graph covers 504x304 at batch 1.*640x360 \(batch 1\)"):
        backend([image(500, 300)])


@pytest.mark.parametrize("damage,words", [
    ("truncate", ["corrupt ONNX graph", "encode.onnx", "genreal export"]),
    ("garbage", ["corrupt ONNX graph", "encode.onnx"]),
    ("delete", ["missing ONNX graph", "encode.onnx"]),
])
def test_corrupt_or_missing_graph_is_one_line_exit_2(model_copy, damage, words, capsys):
    path = model_copy / "onnx" / "640x360" / "encode.onnx"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    elif damage == "garbage":
        path.write_bytes(b"\x00not an onnx file" * 100)
    else:
        path.unlink()
    code = main(["run", "--source", "demo", "--sink", "null", "--max-frames", "2", "--backend", "onnxruntime",
                 "--model", str(model_copy)])
    assert_one_line_error(capsys, code, *words)


def test_graphs_from_other_weights_are_refused(model_copy):
    index = json.loads((model_copy / "onnx" / "index.json").read_text())
    index["weights_sha256"] = "0" * 64
    (model_copy / "onnx" / "index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="exported from other weights"):
        OnnxRuntimeBackend(BackendConfig(name="onnxruntime"), model_dir=model_copy)


def test_a_model_without_graphs_says_run_export(model_copy, capsys):
    shutil.rmtree(model_copy / "onnx")
    code = main(["run", "--source", "demo", "--sink", "null", "--max-frames", "1", "--backend", "onnxruntime",
                 "--model", str(model_copy)])
    assert_one_line_error(capsys, code, "no ONNX graphs", "genreal export")


def test_corrupt_tables_are_refused(model_copy):
    (model_copy / "onnx" / "tables.npz").write_bytes(b"PK\x03\x04broken")
    with pytest.raises(UserError, match="corrupt .*tables.npz"):
        OnnxRuntimeBackend(BackendConfig(name="onnxruntime"), model_dir=model_copy)


def test_unknown_style_is_one_line_exit_2(capsys):
    code = main(["run", "--source", "demo", "--sink", "null", "--max-frames", "1", "--backend", "onnxruntime",
                 "--style", "van-gogh"])
    assert_one_line_error(capsys, code, "unknown style", "van-gogh", "genreal styles")


@pytest.mark.parametrize("kwargs,match", [
    ({"precision": "fp16", "device": "cpu"}, "fp16 needs a GPU provider"),
    ({"precision": "int8"}, "genreal calibrate"),
])
def test_precision_that_cannot_run_here_is_refused(kwargs, match):
    with pytest.raises(UserError, match=match):
        OnnxRuntimeBackend(BackendConfig(name="onnxruntime", **kwargs))


def test_cuda_without_its_provider_is_refused_not_a_silent_cpu_run():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here: the refusal needs a CPU-only onnxruntime")
    with pytest.raises(UserError, match="no CUDA provider"):
        OnnxRuntimeBackend(BackendConfig(name="onnxruntime", device="cuda"))


def test_int8_loads_the_calibrated_graphs_by_file_name(model_copy):
    """`<stage>.int8.onnx` next to the FP32 graphs is what --precision int8 runs (here: FP32 copies)."""
    for stage in ("encode", "refine_step"):
        shutil.copy(model_copy / "onnx" / "640x360" / f"{stage}.onnx",
                    model_copy / "onnx" / "640x360" / f"{stage}.int8.onnx")
    backend = OnnxRuntimeBackend(BackendConfig(name="onnxruntime", precision="int8"), model_dir=model_copy)
    assert backend([image(640, 360)])[0].shape == (360, 640, 3)
    assert backend.stats()["precision"] == "int8"
    assert backend.stages._stage_path("640x360", "encode").name == "encode.int8.onnx"
    assert backend.stages._stage_path("640x360", "decode").name == "decode.onnx"
    with pytest.raises(UserError, match="no INT8 graphs for preset dynamic"):
        backend([image(300, 170)])


# -- the torch backend's CPU side (its CUDA branches need a GPU and were not run here) --------------------------
def test_torch_cuda_without_a_driver_fails_before_importing_torch():
    script = """
import sys
from realtime.backends.torch_backend import TorchStages, nvidia_driver_present
from genreal_errors import UserError
if nvidia_driver_present():
    print("HAS-DRIVER"); sys.exit(0)
try:
    TorchStages("cuda")
except UserError as exc:
    print("REFUSED", exc)
assert "torch" not in sys.modules
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if "HAS-DRIVER" in proc.stdout:
        pytest.skip("an NVIDIA driver is present: the no-driver refusal cannot be shown here")
    assert "REFUSED" in proc.stdout and "no NVIDIA driver" in proc.stdout


@pytest.mark.parametrize("precision,match", [("fp16", "needs a CUDA GPU"), ("int8", "runs fp32 or fp16")])
def test_torch_backend_refuses_precisions_it_cannot_run_on_cpu(precision, match):
    from realtime.backends.torch_backend import TorchBackend

    with pytest.raises(UserError, match=match):
        TorchBackend(BackendConfig(name="torch", device="cpu", precision=precision))


# -- GPU provider logic, driven with a CPU-only onnxruntime that claims a CUDA provider ----------------------
@pytest.fixture()
def fake_cuda_provider(monkeypatch, tmp_path):
    """onnxruntime says CUDA is available, but sessions asked for it end up on the CPU (as when the CUDA
    libraries cannot load): the backend must notice instead of running on the CPU silently."""
    import onnxruntime as ort

    real = ort.get_available_providers
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real()])
    monkeypatch.setenv("GENREAL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_cuda_that_cannot_start_is_exit_2(fake_cuda_provider, capsys):
    code = main(["run", "--source", "demo", "--sink", "null", "--max-frames", "1", "--backend", "onnxruntime",
                 "--device", "cuda"])
    assert_one_line_error(capsys, code, "CUDA provider could not start", "--device cpu")
    # the engine/timing cache folder is keyed by the graph's metadata hash
    assert [p.name for p in (fake_cuda_provider / "onnxruntime").iterdir()] and \
        all(len(p.name) == 16 for p in (fake_cuda_provider / "onnxruntime").iterdir())


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_device_auto_says_cuda_failed_and_runs_on_the_cpu(fake_cuda_provider, caplog):
    with caplog.at_level(logging.WARNING):
        backend = OnnxRuntimeBackend(BackendConfig(name="onnxruntime", device="auto"))
    assert backend.device == "cpu" and backend.stats()["precision"] == "fp32"
    assert any("runs on the CPU" in r.getMessage() for r in caplog.records)
    assert backend([image(640, 360)])[0].shape == (360, 640, 3)


def test_fp16_graph_conversion_for_the_cuda_provider(model_copy, tmp_path):
    """The FP16 copy the CUDA provider runs: FP16 weights, FP32 inputs/outputs, cached by metadata hash."""
    import onnx

    stages = OrtStages(model_copy, device="cpu", cache_dir=tmp_path / "c")
    path = model_copy / "onnx" / "640x360" / "refine_step.onnx"
    meta = stages._checked_metadata(path, stages._session(path, ["CPUExecutionProvider"], optimize=False))
    out = stages._fp16_graph(path, meta)
    assert out.parent.name == meta["metadata_hash"][:16] and out.is_file()
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    assert {i.data_type for i in proto.graph.initializer if len(i.dims) == 4} == {onnx.TensorProto.FLOAT16}
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in proto.graph.input)
    assert stages._fp16_graph(path, meta) == out  # cached


def test_frame_normalization_from_the_camera_images_matches_the_frame(ort_backend):
    """The shipped model normalizes each frame (ModelConfig.normalize): the backend reads the norm from
    the uint8 camera images, which matches the padded float frame's own within rounding, and a crop
    of a frame is computed with its frame's norm and context (its key frame's), not its own."""
    from models.stages import frame_norm, images_norm

    assert ort_backend.info.normalize
    img = image(640, 360, 5)
    prep = ort_backend.preprocess([img])
    x = prep.x
    assert np.abs(images_norm([img]) - frame_norm(x)).max() < 5e-3  # x has 8 replicated padding rows
    assert np.array_equal(ort_backend._norm_of(prep), images_norm([img]))  # read from the camera image
    flat = images_norm([np.full((64, 64, 3), 90, np.uint8)])
    assert np.allclose(flat[0], [90 / 255] * 3 + [0.02])  # a flat frame: the spread floor


def test_steps_past_the_measured_useful_ones_are_refused_and_the_ladder_stops_there(model_copy, capsys):
    from models.manifest import update_manifest

    evidence = "K=1 → K=4: style distance 0.600 → 0.580"
    update_manifest(model_copy, **{"evaluation.steps": {"useful": 2, "evidence": evidence}})
    ok = OnnxRuntimeBackend(BackendConfig(name="onnxruntime", model_dir=model_copy, steps=2))
    try:
        assert ok.info.useful_steps == 2 and ok.info.offered_steps == 2 and ok.info.max_steps == 4
        from realtime.budget import Choice

        ok.apply_choice(Choice(4))  # the controller cannot climb past the useful steps either
        assert ok.steps == 2
    finally:
        ok.close()
    rc = main(["run", "--source", "demo", "--sink", "null", "--max-frames", "2", "--model", str(model_copy),
               "--steps", "3"])
    assert_one_line_error(capsys, rc, "--steps 3", "past K=2", evidence, "use --steps 1 to 2")


def test_the_cpu_decode_session_skips_the_blocked_layout_the_others_keep_it(ort_backend):
    import onnxruntime as ort

    ort_backend([image(640, 360, seed=5)])
    level = lambda stage: ort_backend.stages.session(stage).get_session_options().graph_optimization_level  # noqa: E731
    assert level("decode") == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    assert level("encode") == level("refine_step") == ort.GraphOptimizationLevel.ORT_ENABLE_ALL

"""models/exported.py: the one reader of an exported model, used by ONNX Runtime, TensorRT and calibration."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from genreal_errors import UserError
from models import exported as ex


@pytest.fixture()
def copy(tmp_path: Path) -> Path:
    """The shipped model with its 640x360 graphs, index and tables (a folder the test may break)."""
    from models.manifest import default_model_dir

    src, dst = default_model_dir(), tmp_path / "model"
    (dst / "onnx").mkdir(parents=True)
    for name in ("manifest.json", "model.safetensors"):
        shutil.copy(src / name, dst / name)
    for name in ("index.json", "tables.npz"):
        shutil.copy(src / "onnx" / name, dst / "onnx" / name)
    shutil.copytree(src / "onnx" / "640x360", dst / "onnx" / "640x360")
    return dst


def test_reads_the_shipped_model_into_one_typed_object() -> None:
    m = ex.open_exported()
    assert m.presets == ("640x360", "1280x720", "1920x1080", "stereo-1280x960", "dynamic")
    assert m.tables.styles.shape == (len(m.info.style_names), m.tables.step_emb.shape[1])
    assert m.tables.max_steps == m.info.max_steps and m.tables.fsq_levels == m.info.fsq_levels
    assert m.weights_sha256 == ex.sha256_file(m.model_dir / "model.safetensors")
    assert m.preset_covering(640, 360, 1) == "640x360" and m.preset_covering(320, 184, 1) == "dynamic"
    with pytest.raises(UserError, match="no ONNX graph covers 330x184"):
        m.preset_covering(330, 184, 1)
    meta = ex.read_artifact_metadata(m.graph_file("640x360", "encode"))[ex.METADATA_KEY]
    assert m.check_graph(Path("encode.onnx"), meta) is meta
    assert m.check_graph(Path("x"), json.dumps(meta)) == meta  # the raw metadata string as ORT gives it


def test_cond_adds_the_step_embedding_and_broadcasts() -> None:
    t = ex.open_exported().tables
    vec = t.style_vector(t.one_hot(2))  # (1, E)
    cond = t.cond(vec, 1, 2)
    assert cond.shape == (2, t.styles.shape[1]) and np.allclose(cond[1], t.styles[2] + t.step_emb[1])
    assert np.allclose(t.cond(vec, 99, 1)[0], t.styles[2] + t.step_emb[-1])  # past the table: the last step


def test_refine_range_is_checked_once_for_every_engine() -> None:
    m = ex.open_exported()
    m.check_steps(m.info.max_steps, 0)
    m.check_steps(1, m.info.max_steps - 1)
    for steps, first in ((m.info.max_steps + 1, 0), (1, m.info.max_steps), (-1, 0)):
        with pytest.raises(ValueError):
            m.check_steps(steps, first)


@pytest.mark.parametrize("breakage, words", [
    ("weights", "other weights"),
    ("styles", "other styles"),
    ("format", "format"),
    ("index", "corrupt"),
    ("no-index", "no ONNX graphs"),
    ("tables", "corrupt"),
    ("table-shape", "do not match"),
])
def test_mismatches_are_refused_with_one_line(copy: Path, breakage: str, words: str) -> None:
    onnx = copy / "onnx"
    index = json.loads((onnx / "index.json").read_text())
    if breakage == "weights":
        index["weights_sha256"] = "0" * 64
    elif breakage == "styles":
        index["style_names"] = list(reversed(index["style_names"]))
    elif breakage == "format":
        index["format"] = "genreal-onnx/0"
    if breakage in ("weights", "styles", "format"):
        (onnx / "index.json").write_text(json.dumps(index))
    elif breakage == "index":
        (onnx / "index.json").write_text("{not json")
    elif breakage == "no-index":
        (onnx / "index.json").unlink()
    elif breakage == "tables":
        (onnx / "tables.npz").write_bytes(b"PK\x03\x04 truncated")
    elif breakage == "table-shape":
        with np.load(onnx / "tables.npz") as d:
            data = dict(d)
        np.savez(onnx / "tables.npz", **{**data, "step_emb": data["step_emb"][:1]})
    with pytest.raises(UserError, match=words) as err:
        ex.open_exported(copy)
    assert "\n" not in str(err.value)


def test_a_graph_from_other_weights_is_refused(copy: Path) -> None:
    m = ex.open_exported(copy)
    meta = ex.read_artifact_metadata(m.graph_file("640x360", "decode"))[ex.METADATA_KEY]
    with pytest.raises(UserError, match="other weights"):
        m.check_graph(Path("decode.onnx"), {**meta, "weights_sha256": "f" * 64})
    with pytest.raises(UserError, match="other styles"):
        m.check_graph(Path("decode.onnx"), {**meta, "style_names": ["a"]})
    with pytest.raises(UserError, match="no genreal metadata"):
        m.check_graph(Path("decode.onnx"), None)


def test_int8_files_fall_back_per_stage_and_refuse_a_preset_without_any(copy: Path) -> None:
    m = ex.open_exported(copy)
    assert not m.has_int8()
    with pytest.raises(UserError, match="genreal calibrate"):
        m.graph_file("640x360", "encode", "int8")
    shutil.copy(m.graph_file("640x360", "decode"), m.preset_dir("640x360") / "decode.int8.onnx")
    assert m.has_int8() and m.graph_file("640x360", "decode", "int8").name == "decode.int8.onnx"
    assert m.graph_file("640x360", "encode", "int8").name == "encode.onnx"  # calibration kept FP32 there
    with pytest.raises(UserError, match="missing ONNX graph"):
        m.graph_file("640x360", "fused-nope")


def test_the_engines_read_through_it(copy: Path) -> None:
    """ONNX Runtime and TensorRT refuse the same mismatch with the same reader (TensorRT via a fake)."""
    from models.ort_stages import OrtStages

    index = json.loads((copy / "onnx" / "index.json").read_text())
    index["style_names"] = list(reversed(index["style_names"]))
    (copy / "onnx" / "index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="other styles"):
        OrtStages(copy, device="cpu")
    pytest.importorskip("torch", reason="the tensorrt backend keeps its buffers in torch (the train extra)")
    from realtime.backends.tensorrt_backend import TensorRTStages
    from tests.test_tensorrt import DEV, make_fake_trt

    with pytest.raises(UserError, match="other styles"):
        TensorRTStages(copy, device="cpu", trt=make_fake_trt([]), dev=DEV)

"""ONNX export (models/export.py, `genreal export`): specs, graphs, metadata, parity, the shipped graphs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.export import (ALL_PRESETS, DYNAMIC, OPSET, SIZE_PRESETS, STAGES, ExportSpec, TensorSpec,
                           describe_presets, metadata_hash, preset_for, read_artifact_metadata,
                           read_index, sha256_file, stage_specs)
from models.manifest import default_model_dir
from models.model import ModelConfig
from realtime.cli import main
from genreal_errors import UserError
from tests.fakes import assert_one_line_error  # noqa: E402

SHIPPED = default_model_dir()
CFG = ModelConfig()


# -- specs ----------------------------------------------------------------------------------------
def test_static_specs_have_fixed_shapes_and_equal_profiles():
    specs = stage_specs(CFG, (640, 360), 1)
    assert tuple(specs) == STAGES
    enc = specs["encode"]
    assert isinstance(enc, ExportSpec) and enc.size == (640, 360) and enc.batch == 1
    assert [t.name for t in enc.inputs] == ["x", "norm"] and [t.name for t in enc.outputs] == ["zq", "skip", "ctx"]
    assert enc.inputs[1].shape == (1, 4)  # the whole frame's normalization
    assert enc.outputs[0].shape == (1, 6, 45, 80) and enc.outputs[1].shape == (1, CFG.skip_ch, 90, 160)
    assert enc.outputs[2].shape == (1, CFG.style_dim)  # the frame context
    old = stage_specs(ModelConfig(context=False, normalize=False), (640, 360), 1)  # models saved before them
    assert [t.name for t in old["encode"].outputs] == ["zq", "skip"] and [t.name for t in old["encode"].inputs] == ["x"]
    assert [t.name for t in old["decode"].inputs] == ["z", "skip", "x"]
    assert specs["embed"].inputs[0] == TensorSpec("levels", "int32", (1, 6, 45, 80), (1, 6, 45, 80),
                                                  (1, 6, 45, 80), (1, 6, 45, 80))
    assert [t.name for t in specs["refine_step"].inputs] == ["z", "emb", "cond"]
    assert specs["refine_step"].inputs[2].shape == (1, 64)
    assert [t.name for t in specs["decode"].inputs] == ["z", "skip", "x", "norm"]
    assert [t.name for t in specs["fused"].outputs] == ["rgb", "zq"]
    for spec in specs.values():
        assert spec.dynamic_axes() == {}
        for t in (*spec.inputs, *spec.outputs):
            assert t.is_static and t.min == t.opt == t.max == t.shape


def test_dynamic_specs_name_axes_and_profiles():
    specs = stage_specs(CFG, None, None)
    enc = specs["encode"]
    assert enc.inputs[0].shape == ("B", 3, "H", "W")
    assert enc.dynamic_axes() == {"x": {0: "B", 2: "H", 3: "W"}, "zq": {0: "B", 2: "H_8", 3: "W_8"},
                                  "skip": {0: "B", 2: "H_4", 3: "W_4"}, "ctx": {0: "B"},
                                  "norm": {0: "B"}}
    x = enc.inputs[0]
    assert x.min == (1, 3, 64, 64) and x.max == (2, 3, 2160, 3840) and x.opt == (1, 3, 720, 1280)
    cond = specs["refine_step"].inputs[2]
    assert cond.shape == ("B", 64) and cond.min == (1, 64) and cond.max == (2, 64)
    lv = specs["embed"].inputs[0]
    assert lv.min == (1, 6, 8, 8) and lv.max == (2, 6, 270, 480)


def test_stereo_preset_is_batch_two_and_bad_sizes_are_refused():
    (size, batch) = SIZE_PRESETS["stereo-1280x960"]
    spec = stage_specs(CFG, size, batch)["decode"]
    assert spec.outputs[0].shape == (2, 3, 960, 1280)
    with pytest.raises(ValueError):
        stage_specs(CFG, (642, 360), 1)


def test_preset_for_prefers_static_then_dynamic_then_none():
    assert preset_for((640, 360), 1, ALL_PRESETS) == "640x360"
    assert preset_for((1280, 960), 2, ALL_PRESETS) == "stereo-1280x960"
    assert preset_for((1280, 960), 1, ALL_PRESETS) == DYNAMIC
    assert preset_for((640, 360), 1, ["1280x720"]) is None
    assert preset_for((4000, 360), 1, ALL_PRESETS) is None  # beyond the dynamic profile
    assert "640x360 (batch 1)" in describe_presets(["640x360", DYNAMIC])


def test_metadata_hash_ignores_its_own_field():
    meta = {"a": 1, "b": [1, 2]}
    h = metadata_hash(meta)
    assert metadata_hash({**meta, "metadata_hash": h}) == h and metadata_hash({**meta, "a": 2}) != h


# -- export into a temporary folder -------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from models.export import export_model

    out = tmp_path_factory.mktemp("onnx")
    result = export_model(SHIPPED, out, presets=[DYNAMIC])
    return out, result


def test_export_writes_checked_opset17_graphs_with_metadata(exported):
    import onnx

    out, result = exported
    assert result.presets == (DYNAMIC,)
    weights = sha256_file(SHIPPED / "model.safetensors")
    names = json.loads((SHIPPED / "manifest.json").read_text())["styles"]
    for stage in STAGES:
        path = out / DYNAMIC / f"{stage}.onnx"
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto, full_check=True)
        assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == OPSET
        meta = read_artifact_metadata(path)["genreal"]
        assert meta["stage"] == stage and meta["preset"] == DYNAMIC and meta["opset"] == OPSET
        assert meta["weights_sha256"] == weights and meta["code_revision"]
        assert meta["style_names"] == [s["name"] for s in names]
        assert meta["metadata_hash"] == metadata_hash(meta)
        assert "float32" in meta["dtype"].values() and meta["shapes"]
    index = read_index(out)
    assert index["presets"] == [DYNAMIC] and index["weights_sha256"] == weights
    with np.load(out / "tables.npz") as t:
        assert t["styles"].shape == (8, 64) and t["step_emb"].shape == (4, 64) and list(t["fsq_levels"]) == [5] * 6


def test_dynamic_graphs_match_torch_at_another_size_and_batch(exported):
    """Parity at a size and batch the graphs were not traced at (B=2, 136x200): max abs diff <= 1e-3."""
    import onnxruntime as ort
    import torch

    from models.build import load_model
    from models.export import _stage_modules

    out, _ = exported
    model, _ = load_model(SHIPPED)
    mods = _stage_modules(model)  # the model's own modules
    specs = stage_specs(model.cfg, None, None)
    for stage in STAGES:
        spec = specs[stage]
        shapes = {"x": (2, 3, 136, 200), "levels": (2, 6, 17, 25), "emb": (2, 64, 17, 25), "z": (2, 64, 17, 25),
                  "cond": (2, 64), "skip": (2, model.cfg.skip_ch, 34, 50), "style": (2, 64), "norm": (2, 4)}
        rng = np.random.default_rng(7)
        ins = {k: (rng.integers(0, 5, shapes[k]).astype(np.int32) if k == "levels"
                   else rng.uniform(0.1, 0.6, shapes[k]).astype(np.float32) if k == "norm"
                   else rng.random(shapes[k], dtype=np.float32)) for k in spec.input_names}
        got = ort.InferenceSession(str(out / DYNAMIC / f"{stage}.onnx"), providers=["CPUExecutionProvider"]).run(None, ins)
        with torch.no_grad():
            ref = mods[stage](*(torch.from_numpy(ins[n]) for n in spec.input_names))
        ref = ref if isinstance(ref, tuple) else (ref,)
        for name, a, b in zip(spec.output_names, got, ref):
            assert a.shape == tuple(b.shape), (stage, name)
            if name == "rgb":
                a, b = np.clip(a, 0, 1), np.clip(b.numpy(), 0, 1)
            else:
                b = b.numpy()
            assert np.max(np.abs(a - b)) <= 1e-3, (stage, name)


def test_fused_graph_equals_the_stage_chain_at_default_steps(exported):
    """The fused graph = encode → FSQ round → embed → initial → K default refine steps (style + frame
    context) → decode."""
    import onnxruntime as ort

    out, _ = exported
    sess = {s: ort.InferenceSession(str(out / DYNAMIC / f"{s}.onnx"), providers=["CPUExecutionProvider"])
            for s in STAGES}
    with np.load(out / "tables.npz") as t:
        styles, step_emb = t["styles"], t["step_emb"]
    x = np.random.default_rng(0).random((1, 3, 64, 96), dtype=np.float32)
    style = styles[2:3]  # (1, E)
    from models.stages import frame_norm

    norm = {"norm": frame_norm(x)} if "norm" in {i.name for i in sess["encode"].get_inputs()} else {}
    zq, skip, *ctx = sess["encode"].run(None, {"x": x, **norm})  # + the frame context (B, E) for models with one
    cond = style + ctx[0] if ctx else style
    levels = np.rint(zq * 2 + 2).astype(np.int32)
    (emb,) = sess["embed"].run(None, {"levels": levels})
    (z,) = sess["initial"].run(None, {"emb": emb})
    default_steps = json.loads((out / "index.json").read_text())["default_steps"]  # the exported model's K
    for k in range(default_steps):
        (z,) = sess["refine_step"].run(None, {"z": z, "emb": emb, "cond": cond + step_emb[k]})
    (rgb,) = sess["decode"].run(None, {"z": z, "skip": skip, "x": x, **norm})
    rgb_f, zq_f = sess["fused"].run(None, {"x": x, "style": style})
    assert np.max(np.abs(zq_f - zq)) <= 1e-5
    assert np.max(np.abs(np.clip(rgb_f, 0, 1) - np.clip(rgb, 0, 1))) <= 1e-3


# -- the shipped graphs ---------------------------------------------------------------------------------
def test_shipped_graphs_exist_for_every_preset_and_match_the_shipped_weights():
    onnx_dir = SHIPPED / "onnx"
    index = read_index(onnx_dir)
    weights = sha256_file(SHIPPED / "model.safetensors")
    assert index["weights_sha256"] == weights
    assert set(index["presets"]) == set(ALL_PRESETS)
    for preset in ALL_PRESETS:
        for stage in STAGES:
            meta = read_artifact_metadata(onnx_dir / preset / f"{stage}.onnx")["genreal"]
            assert meta["weights_sha256"] == weights, f"{preset}/{stage} is stale: re-run 'genreal export'"
            assert meta["metadata_hash"] == index["graphs"][f"{preset}/{stage}"]
    shapes = read_artifact_metadata(onnx_dir / "stereo-1280x960" / "decode.onnx")["genreal"]["shapes"]
    assert shapes["rgb"] == [2, 3, 960, 1280]


def test_shipped_640x360_graphs_reproduce_the_torch_model():
    """A whole frame through the shipped static graphs vs torch's forward: max abs diff <= 1e-3 on [0, 1]."""
    import onnxruntime as ort
    import torch

    from models.build import load_model

    model, _ = load_model(SHIPPED)
    x = np.random.default_rng(1).random((1, 3, 360, 640), dtype=np.float32)
    style = model.style_embedding(torch.eye(8)[5]).detach()
    sess = ort.InferenceSession(str(SHIPPED / "onnx" / "640x360" / "fused.onnx"), providers=["CPUExecutionProvider"])
    rgb, _ = sess.run(None, {"x": x, "style": style.numpy()})
    with torch.no_grad():
        ref = model(torch.from_numpy(x), style).rgb.numpy()
    assert np.max(np.abs(np.clip(rgb, 0, 1) - np.clip(ref, 0, 1))) <= 1e-3


def test_half_resolution_decoder_is_exported_without_pixel_shuffles(exported):
    """The half-resolution decoder's pixel shuffles are exported as transposed convolutions (ONNX Runtime's
    DepthToSpace is a full reorder pass on the CPU), in the module's graphs and in the shipped ones."""
    import onnx

    out, _ = exported
    for path in (out / DYNAMIC / "decode.onnx", SHIPPED / "onnx" / "640x360" / "decode.onnx",
                 SHIPPED / "onnx" / DYNAMIC / "decode.onnx"):
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert "DepthToSpace" not in ops and "ConvTranspose" in ops, path


def test_shipped_model_folder_is_at_most_20_mb():
    total = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert total <= 20 * 2**20, total


def test_package_data_carries_the_onnx_graphs():
    """pyproject's package-data glob must match the nested onnx/<preset>/<stage>.onnx files."""
    import tomllib

    data = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    globs = data["tool"]["setuptools"]["package-data"]["models"]
    pkg = SHIPPED.parents[1]  # models/
    matched = {p for g in globs for p in pkg.glob(g) if p.is_file()}
    for f in (SHIPPED / "onnx").rglob("*.onnx"):
        assert f in matched, f


# -- genreal export -----------------------------------------------------------------------------------------
def test_export_cli_writes_one_preset(tmp_path, capsys):
    code = main(["export", "--out", str(tmp_path / "o"), "--preset", "640x360", "--no-parity"])
    assert code == 0, capsys.readouterr().err
    assert "exported 6 graphs" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "o" / "640x360").iterdir()) == sorted(f"{s}.onnx" for s in STAGES)


@pytest.mark.parametrize("argv,words", [
    (["export", "--preset", "800x600"], ["unknown --preset", "640x360"]),
    (["export", "--model", "/nonexistent/model"], ["no model at", "genreal distill"]),
])
def test_export_bad_args_are_one_line_exit_2(argv, words, capsys):
    assert_one_line_error(capsys, main(argv), *words)


def test_export_to_an_unwritable_out_is_one_line_exit_2(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert_one_line_error(capsys, main(["export", "--out", str(blocker / "sub"), "--preset", "640x360"]),
                          "cannot write to --out")
    assert_one_line_error(capsys, main(["export", "--out", str(blocker)]), "is a file")


def test_read_artifact_metadata_refuses_truncated_files(tmp_path):
    src = SHIPPED / "onnx" / "640x360" / "encode.onnx"
    bad = tmp_path / "encode.onnx"
    bad.write_bytes(src.read_bytes()[:1000])
    with pytest.raises(UserError, match="corrupt ONNX graph"):
        read_artifact_metadata(bad)
    with pytest.raises(UserError, match="missing ONNX graph"):
        read_artifact_metadata(tmp_path / "nope.onnx")


def test_cli_preset_names_match_the_exporter():
    from realtime.commands.export import PRESET_NAMES

    assert PRESET_NAMES == ALL_PRESETS


def test_fused_parity_ignores_only_pixels_near_tokens_that_rounded_differently():
    from models.export import _unflipped_pixels

    zq = np.zeros((1, 6, 12, 16), np.float32)
    other = zq.copy()
    other[0, 2, 6, 8] = 0.3  # one value across a level boundary (x2 = 0.6 rounds to 1, 0 to 0)
    keep = _unflipped_pixels(zq, zq + 1e-7, [5] * 6, (1, 3, 96, 128))
    assert keep.shape == (1, 1, 96, 128) and keep.min() == 1.0  # no flips: every pixel checked
    keep = _unflipped_pixels(zq, other, [5] * 6, (1, 3, 96, 128))
    assert keep[0, 0, 6 * 8, 8 * 8] == 0 and keep[0, 0, 2 * 8, 4 * 8] == 0  # the cell and 4 cells around
    assert keep[0, 0, 1 * 8, 3 * 8] == 1 and keep[0, 0, 95, 0] == 1  # beyond: still checked
    assert 0.3 < keep.mean() < 0.8

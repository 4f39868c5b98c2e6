"""CLI and runtime for our model: styles, stylize, distill errors, the torch backend, shipped weights."""
from __future__ import annotations

import builtins
import json

import cv2
import numpy as np
import pytest

from models.manifest import read_manifest
from realtime.cli import main
from realtime.config import BackendConfig
from genreal_errors import UserError

torch = pytest.importorskip("torch", reason="the torch backend needs the train extra (torch)")

from models.build import build_model, save_model  # noqa: E402
from models.model import ModelConfig  # noqa: E402
from realtime.backends.torch_backend import TorchBackend  # noqa: E402

SMALL = ModelConfig(num_styles=3, enc_ch=8, latent_ch=16, style_dim=8, skip_ch=8, dec_ch=8, out_ch=4)
NAMES = ["ink", "sun", "moss"]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def small_model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(SMALL)
    model.refiner.step.film_out.weight.data.normal_(0, 0.2)  # make styles differ in an untrained model
    d = tmp_path_factory.mktemp("model")
    styles = [{"name": n, "teacher": f"builtin:{i}", "psnr": 20.0 + i, "ssim": 0.5} for i, n in enumerate(NAMES)]
    save_model(model, d, {"styles": styles, "default_style": "sun"})
    return d




# -- shipped weights ------------------------------------------------------------------------

def test_shipped_model_meets_the_issue(shipped_model_dir):
    d = shipped_model_dir
    manifest = read_manifest(d)
    size = sum(p.stat().st_size for p in d.iterdir() if p.is_file())
    assert size <= 20 * 1024 * 1024
    styles = manifest["styles"]
    assert len(styles) >= 6 and len({s["name"] for s in styles}) == len(styles)
    for s in styles:
        assert s["teacher"] and isinstance(s["psnr"], float) and isinstance(s["ssim"], float)
    gentle = [s for s in styles if s.get("look") == "gentle"]
    bold = [s for s in styles if s.get("look") == "bold"]
    assert len(gentle) >= 3 and len(bold) >= 2
    tr = manifest["training"]
    assert tr["preset"] == "cpu" and tr["sources"]["photos"] and tr["sources"]["held_out"]
    assert manifest["code_revision"] and manifest["evaluation"]["fidelity"]["mean_psnr"] is not None
    speed = manifest["evaluation"]["speed"]
    assert speed["size"] == [640, 360] and speed["teacher_onnxruntime_cpu_ms"]["p50_ms"] > 0


def test_styles_json_lists_the_shipped_styles(cli):
    r = cli("styles", "--json")
    assert r.code == 0, r.err
    out = json.loads(r.out)
    manifest = read_manifest()
    assert [s["name"] for s in out["styles"]] == [s["name"] for s in manifest["styles"]]
    assert set(out["styles"][0]) == {"name", "teacher", "psnr", "ssim", "style_distance", "texture"}
    look = {s["name"]: s["ours_k1"] for s in manifest["evaluation"]["look"]["styles"]}
    assert all(s["style_distance"] == look[s["name"]]["style_distance"] for s in out["styles"] if s["name"] in look)
    assert out["steps"] == list(range(1, manifest["evaluation"]["steps"]["useful"] + 1))


def test_styles_table_and_bad_model(small_model_dir, tmp_path, cli):
    r = cli("styles", "--model", str(small_model_dir))
    assert r.code == 0 and all(n in r.out for n in NAMES) and "builtin:2" in r.out
    assert "--steps offers" not in r.out  # a model without evaluation.steps: no claim about its steps
    r = cli("styles")
    assert r.code == 0 and "style dist" in r.out and "--steps offers 1 to " in r.out
    cli("styles", "--model", str(tmp_path / "nothing")).assert_user_error("no model")


# -- stylize ----------------------------------------------------------------------------------

def test_stylize_writes_png_at_input_size(small_model_dir, tmp_path, capsys):
    rng = np.random.default_rng(0)
    a, b = tmp_path / "a.jpg", tmp_path / "b.png"
    cv2.imwrite(str(a), rng.integers(0, 255, (37, 53, 3), dtype=np.uint8))
    cv2.imwrite(str(b), rng.integers(0, 255, (24, 40, 3), dtype=np.uint8))
    out = tmp_path / "out"
    code = main(["stylize", str(a), str(b), "-o", str(out), "--style", "moss", "--steps", "1",
                 "--model", str(small_model_dir)])
    assert code == 0, capsys.readouterr().err
    ya, yb = cv2.imread(str(out / "a.png")), cv2.imread(str(out / "b.png"))
    assert ya.shape == (37, 53, 3) and yb.shape == (24, 40, 3)


@pytest.mark.parametrize("args,words", [
    (["--style", "nope"], ["unknown style", "ink"]),
    (["--steps", "9"], ["steps"]),
    (["--style", "ink:x"], ["weight"]),
])
def test_stylize_bad_options(small_model_dir, tmp_path, cli, args, words):
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), np.zeros((16, 16, 3), np.uint8))
    cli("stylize", str(img), "-o", str(tmp_path / "o"), "--model", str(small_model_dir), *args).assert_user_error(*words)


def test_stylize_missing_and_corrupt_images(small_model_dir, tmp_path, cli):
    cli("stylize", str(tmp_path / "missing.png"), "-o", str(tmp_path),
        "--model", str(small_model_dir)).assert_user_error("not found")
    bad = tmp_path / "bad.png"
    bad.write_text("no image")
    cli("stylize", str(bad), "-o", str(tmp_path), "--model", str(small_model_dir)).assert_user_error("cannot read")


# -- distill argument errors ---------------------------------------------------------------------

@pytest.mark.parametrize("teacher,words", [
    ("builtin:42", ["0-25"]), ("vangogh", ["bad teacher spec"]), ("image:/no/such.png", ["not found"]),
    ("onnx:/no/such.onnx", ["not found"]), ("pairs:/no/such", ["not found"]),
])
def test_distill_bad_teacher_specs(tmp_path, cli, teacher, words):
    cli("distill", "--teacher", teacher, "--out", str(tmp_path / "o"), "--preset", "tiny").assert_user_error(*words)


def test_distill_duplicate_names_and_resume_without_checkpoint(tmp_path, cli):
    cli("distill", "--teacher", "a=builtin:1", "--teacher", "a=builtin:2",
        "--out", str(tmp_path)).assert_user_error("unique")
    cli("distill", "--teacher", "builtin:1", "--out", str(tmp_path), "--resume").assert_user_error("resume")


# -- the torch backend ---------------------------------------------------------------------------

def test_backend_styles_blend_switch_and_stereo(small_model_dir):
    b = TorchBackend(BackendConfig(name="torch", style=None), model_dir=small_model_dir)
    assert b.styles() == NAMES and b.style == "sun" and b.device == "cpu"
    rng = np.random.default_rng(1)
    img = cv2.GaussianBlur(rng.integers(0, 255, (45, 61, 3), dtype=np.uint8), (0, 0), 2)
    first = b([img])[0]
    assert first.shape == img.shape and first.dtype == np.uint8
    b.set_style("ink")  # switching changes the look without rebuilding anything
    ink = b([img])[0]
    assert np.abs(ink.astype(int) - first.astype(int)).max() > 0
    b.set_style("ink:0.5,moss:0.5")
    both = b([img, img[:, ::-1].copy()])  # a stereo pair
    assert len(both) == 2 and both[1].shape == img.shape
    with pytest.raises(UserError, match="unknown style"):
        b.set_style("19")


def test_backend_matches_the_model_forward(small_model_dir):
    import torch

    from models.build import load_model

    b = TorchBackend(BackendConfig(name="torch", style="ink", steps=2, temporal=False), model_dir=small_model_dir)
    model, _ = load_model(small_model_dir)
    rng = np.random.default_rng(2)
    img = cv2.GaussianBlur(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), (0, 0), 2)
    ours = b([img])[0].astype(int)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        w = torch.zeros(len(NAMES))
        w[NAMES.index("ink")] = 1
        ref = model(x, model.style_embedding(w), steps=2).rgb.clamp(0, 1)
    ref = (ref[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(int)
    assert np.abs(ours - ref).max() <= 1


def test_backend_without_torch_says_how_to_install(monkeypatch, small_model_dir):
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(UserError, match=r"torch not installed: pip install 'generative-reality\[train\]'"):
        TorchBackend(BackendConfig(name="torch"), model_dir=small_model_dir)


def test_registry_and_auto_order():
    from realtime.backends import AUTO_ORDER, backend_names, create_backend

    assert "torch" in backend_names()
    assert AUTO_ORDER.index("onnxruntime:cpu") < AUTO_ORDER.index("torch")
    assert "teacher" not in AUTO_ORDER  # auto picks an engine for our model, never a different model
    backend = create_backend(BackendConfig(name="torch", style=None))
    assert backend.name == "torch" and backend.style == read_manifest()["default_style"]


def test_run_with_torch_backend(tmp_path, capsys):
    first = read_manifest()["styles"][0]["name"]
    js = tmp_path / "stats.json"
    code = main(["run", "--source", "demo", "--sink", "null", "--backend", "torch", "--style", first,
                 "--size", "160x96", "--max-frames", "4", "--stats-json", str(js)])
    assert code == 0, capsys.readouterr().err
    stats = json.loads(js.read_text())
    assert stats["backend"] == "torch" and stats["frames_out"] == 4

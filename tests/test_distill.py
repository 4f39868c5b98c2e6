"""Distillation: warp geometry, a loss that goes down, a tiny end-to-end run with checkpoints and resume."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="distillation needs the train extra (torch)")

from models.build import build_model, load_model  # noqa: E402
from models.model import ModelConfig  # noqa: E402
from models.distill import (PRESETS, DistillConfig, distill, random_affine,  # noqa: E402
                            training_step, valid_mask, warp)
from models.teachers import parse_teacher  # noqa: E402
from genreal_errors import UserError  # noqa: E402
from tests.fakes import pixel_terms  # noqa: E402


#: a very small model so the tests stay fast on a shared 2-core CPU
SMALL = ModelConfig(num_styles=2, enc_ch=8, latent_ch=16, style_dim=8, skip_ch=8, dec_ch=8, out_ch=4,
                    max_steps=2, default_steps=2)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def smooth_images(b: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, size // 8, size // 8, generator=g)
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def test_camera_motion_warp_matches_on_the_inner_crop():
    """Warping the big crop then cropping == cropping then warping with the small-crop theta."""
    margin, c = 8, 48
    big = smooth_images(3, c + 2 * margin)
    theta_big, theta = random_affine(3, c + 2 * margin, c, 0.8 * margin, np.random.default_rng(0))
    inner = (slice(None), slice(None), slice(margin, margin + c), slice(margin, margin + c))
    x2 = warp(big, theta_big)[inner]
    x2_from_small = warp(big[inner], theta)
    mask = valid_mask(theta, x2)[:, :, 2:-2, 2:-2]
    diff = (x2 - x2_from_small).abs()[:, :, 2:-2, 2:-2] * mask
    assert mask.mean() > 0.5
    assert float(diff.max()) < 1e-4
    # and the latent grid (1/8) uses the same theta: warping a constant latent keeps it constant inside
    z = torch.ones(3, 4, c // 8, c // 8)
    assert torch.allclose(warp(z, theta), z)


@pytest.mark.slow
def test_training_step_loss_goes_down():
    torch.manual_seed(0)
    model = build_model(SMALL)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = smooth_images(4, 48, seed=1)
    t = torch.stack([1.0 - x[0], x[1].flip(0), 1.0 - x[2], x[3].flip(0)])  # two "styles"
    styles = torch.tensor([0, 1, 0, 1])
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(30):
        loss, parts = training_step(model, x, t, styles, 8, pixel_terms(), rng)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(parts["loss"])
    assert set(parts) >= {"teacher", "temporal", "step_distill", "psnr"}
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3])


def test_latent_bound_pulls_saturated_encoder_values_back():
    """The FSQ bound term: zero while the encoder's pre-quantization values stay where tanh has a
    gradient, positive once they saturate (where every token of an image becomes the same), and its
    gradient shrinks them."""
    torch.manual_seed(0)
    model = build_model(SMALL)
    x = smooth_images(2, 48, seed=2)
    t, styles, rng = 1.0 - x, torch.tensor([0, 1]), np.random.default_rng(0)
    _, parts = training_step(model, x, t, styles, 8, pixel_terms(), rng)
    assert parts["bound"] == 0.0 and parts["tokens_per_crop"] >= 1
    with torch.no_grad():
        model.encoder.head.weight.mul_(200.0)
    before = float(model.encode(x[:, :, 8:-8, 8:-8]).z_cont.detach().abs().max())
    loss, parts = training_step(model, x, t, styles, 8, pixel_terms(latent_bound=1.0), rng)
    assert parts["bound"] > 0.1
    opt = torch.optim.SGD(model.encoder.head.parameters(), lr=0.05)
    for _ in range(5):
        loss, _ = training_step(model, x, t, styles, 8, pixel_terms(latent_bound=1.0), rng)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(model.encode(x[:, :, 8:-8, 8:-8]).z_cont.detach().abs().max()) < before


def test_frame_stats_are_whole_image_statistics_and_feed_the_context():
    """Training crops read the frame context from their whole image's statistics, as the runtime does."""
    from models.distill import FrameStats

    torch.manual_seed(0)
    model = build_model(replace(SMALL, context=True))
    rng_np = np.random.default_rng(0)
    images = [rng_np.integers(lo, hi, (64, 80, 3), dtype=np.uint8) for lo, hi in ((0, 60), (0, 255), (180, 255))]
    fs = FrameStats(images, "cpu", every=1)
    fs.refresh(model, 0)
    assert fs.table.shape == (3, 2 * SMALL.latent_ch)
    with torch.no_grad():
        x0 = torch.from_numpy(images[1]).permute(2, 0, 1)[None].float() / 255.0
        stats, norms = fs(np.array([1]))
        assert torch.allclose(norms, model.frame_norm(x0)) and norms.shape == (1, 4)
        feats = model.encoder.features(model.normalized(x0, None))
        assert torch.allclose(stats[0], model.context.stats(feats)[0], atol=1e-5)
        model.context.proj.weight.normal_(0, 1.0)
        model.refiner.step.film_out.weight.normal_(0, 0.5)
    x = smooth_images(2, 48, seed=3)
    t, styles = 1.0 - x, torch.tensor([0, 1])
    la, _ = training_step(model, x, t, styles, 8, pixel_terms(), np.random.default_rng(0), *fs(np.array([0, 0])))
    lb, _ = training_step(model, x, t, styles, 8, pixel_terms(), np.random.default_rng(0), *fs(np.array([2, 2])))
    assert abs(float(la.detach()) - float(lb.detach())) > 1e-5  # same crops and motion (same seed): only the frame differs


def test_crops_stay_on_the_8_pixel_grid_of_the_teacher_output():
    """Training crops start on multiples of 8 of the image the teacher ran on, unflipped (the teachers'
    strokes are locked to a 4-pixel grid), and remember which image they came from."""
    from models.data import CropSampler, Example, TrainingSet

    h, w = 100, 130
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([yy, xx, np.zeros_like(xx)], axis=2).astype(np.uint8)  # each pixel knows where it is
    data = TrainingSet([img, img[::-1].copy()], [Example(0, 0, img), Example(1, 1, img)], ["a", "b"])
    sampler = CropSampler(data, 32, seed=0)
    xs, ys, ss = sampler.sample(64)
    assert xs.shape == (64, 32, 32, 3) and np.array_equal(xs[ss == 0], ys[ss == 0])
    crops = xs[ss == 0]
    assert len(crops) > 10
    assert set(np.unique(crops[:, 0, 0, 0] % 8)) == {0} and set(np.unique(crops[:, 0, 0, 1] % 8)) == {0}
    assert (crops[:, 0, 1, 1] > crops[:, 0, 0, 1]).all()  # not flipped
    assert len({(int(c[0, 0, 0]), int(c[0, 0, 1])) for c in crops}) > 5  # but spread over the image
    assert np.array_equal(sampler.last_images, ss)  # example i uses image i here
    flipping = CropSampler(data, 32, seed=0, align=1, flips=True)
    xf, _, _ = flipping.sample(64)
    assert (xf[:, 0, 1, 1].astype(int) < xf[:, 0, 0, 1]).any()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    teachers = (parse_teacher("builtin:19"), parse_teacher("procedural:cel"))
    preset = replace(PRESETS["tiny"], iters=60, ckpt_every=25, batch=4, crop=32, lr=5e-3, eval_width=64)
    cfg = DistillConfig(teachers=teachers, names=("starry", "cel"), out=root / "run", preset=preset, model=SMALL,
                        losses=pixel_terms(), seed=1, cache_dir=root / "cache", progress=False)
    manifest = distill(cfg)
    return cfg, manifest


@pytest.mark.slow
def test_tiny_distill_writes_model_manifest_and_checkpoint(tiny_run):
    cfg, manifest = tiny_run
    out = cfg.out
    assert (out / "model.safetensors").is_file() and (out / "checkpoint.safetensors").is_file()
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    assert [s["name"] for s in manifest["styles"]] == ["starry", "cel"]
    assert [s["teacher"] for s in manifest["styles"]] == ["builtin:19", "procedural:cel"]
    for s in manifest["styles"]:
        assert isinstance(s["psnr"], float) and 0.0 < s["ssim"] <= 1.0
    tr = manifest["training"]
    assert tr["iterations"] == 60 and tr["preset"] == "tiny" and tr["seed"] == 1
    assert "skimage.data.coffee" in tr["sources"]["held_out"]
    assert not set(tr["sources"]["held_out"]) & set(tr["sources"]["photos"])
    assert tr["sources"]["downloaded"] == []
    # the tiny preset does not flip: the manifest must not say it does
    assert tr["sources"]["augmentation"]["flips"] is False
    assert not any("flip" in a for a in tr["sources"]["augment"])
    assert tr["sources"]["augmentation"]["crop_px"] == cfg.preset.crop + 2 * cfg.preset.margin
    assert manifest["evaluation"]["fidelity"]["images"] == tr["sources"]["held_out"]
    assert set(manifest["evaluation"]["fidelity"]["mean_psnr_blurred"]) == {"sigma2", "sigma8"}
    assert manifest["code_revision"]
    model, _ = load_model(out)  # strict
    assert model.cfg.num_styles == 2
    # the loss on a fixed batch of training crops went down over the run
    hist = tr["history"]
    assert len(hist) >= 10 and hist[-1]["probe_loss"] < 0.97 * hist[0]["probe_loss"]


@pytest.mark.slow
def test_tiny_distill_resume_and_refuse_overwrite(tiny_run):
    cfg, _ = tiny_run
    with pytest.raises(UserError, match="--resume"):
        distill(cfg)
    manifest = distill(replace(cfg, resume=True, iters=64))
    assert manifest["training"]["iterations"] == 64
    with pytest.raises(UserError, match="no checkpoint"):
        distill(replace(cfg, out=cfg.out.parent / "fresh", resume=True))


def test_gpu_preset_refuses_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present: the gpu preset would run")
    cfg = DistillConfig(teachers=(parse_teacher("procedural:cel"),), names=("cel",), out=tmp_path,
                        preset=PRESETS["gpu"], model=SMALL, progress=False)
    with pytest.raises(UserError, match="CUDA"):
        distill(cfg)


def test_margin_off_the_8_pixel_grid_is_refused(tmp_path):
    preset = replace(PRESETS["tiny"], margin=12)
    with pytest.raises(UserError, match="multiple of 8"):
        DistillConfig(teachers=(parse_teacher("procedural:cel"),), names=("cel",), out=tmp_path,
                      preset=preset, model=SMALL, progress=False)

"""The decoder's full-resolution texture head (ModelConfig.tex_ch): saved models unchanged, a no-op when
added under --init, exported graphs that match torch and run in ONNX Runtime, no 4-px lattice, and
crops that equal the whole frame inside."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the model needs the train extra (torch)")

from models.build import build_model, load_model, save_model  # noqa: E402
from models.distill import load_matching  # noqa: E402
from models.manifest import default_model_dir, read_manifest  # noqa: E402
from models.model import ModelConfig  # noqa: E402
from genreal_errors import UserError  # noqa: E402
from tests.fakes import pixel_terms, save_one_style_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SHIPPED = default_model_dir()
TINY = ModelConfig(num_styles=2, enc_ch=8, latent_ch=16, style_dim=16, skip_ch=8, dec_ch=8, out_ch=4, tex_ch=4)


def _active(cfg: ModelConfig, seed: int = 0):
    """A tiny model whose texture head and style FiLM draw something (untrained: the head starts at zero)."""
    torch.manual_seed(seed)
    m = build_model(cfg).eval()
    with torch.no_grad():
        m.refiner.step.film_out.weight.normal_(0, 0.2)
        if m.decoder.texture is not None:
            m.decoder.texture.out.weight.normal_(0, 0.3)
    return m


def grid_ratio(img: np.ndarray, border: int = 16) -> float:
    """A 4-px lattice's peak: the largest power of the grey image's spectrum at the lattice frequencies
    (fx, fy in {0, 1/4, 1/2} cycles/px, DC excluded) over the spectrum's median power."""
    g = np.asarray(img, np.float64).mean(0)[border:-border, border:-border]
    p = np.abs(np.fft.fft2(g - g.mean())) ** 2
    fy, fx = np.abs(np.fft.fftfreq(g.shape[0])), np.abs(np.fft.fftfreq(g.shape[1]))
    on = np.isin(np.round(fx, 6), (0.0, 0.25, 0.5))[None, :] & np.isin(np.round(fy, 6), (0.0, 0.25, 0.5))[:, None]
    on[0, 0] = False
    return float(p[on].max() / max(np.median(p), 1e-30))


# -- saved models -----------------------------------------------------------------------------------------
def test_the_shipped_model_has_a_trained_head_and_older_configs_load_without_one():
    cfg = ModelConfig.from_dict(read_manifest(SHIPPED)["config"])
    assert cfg.tex_ch == 6  # the fourth weights (issue 16)
    model, _ = load_model(SHIPPED)  # strict: no missing or unexpected tensors
    assert model.decoder.texture is not None and float(model.decoder.texture.out.weight.detach().abs().max()) > 0
    older = {k: v for k, v in cfg.to_dict().items() if k != "tex_ch"}  # a manifest written before the head
    assert ModelConfig.from_dict(older).tex_ch == 0
    assert build_model(ModelConfig.from_dict(older)).decoder.texture is None
    with pytest.raises(ValueError, match="tex_ch"):
        ModelConfig(tex_ch=-1)


def test_a_saved_head_round_trips_and_strict_loading_stays_strict(tmp_path):
    m = _active(TINY)
    save_model(m, tmp_path / "m", {"styles": [{"name": "a", "teacher": "builtin:1"}, {"name": "b", "teacher": "builtin:2"}]})
    back, _ = load_model(tmp_path / "m")
    assert back.cfg.tex_ch == 4
    x = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(2))
    s = m.style_embedding(torch.eye(2)[1])
    with torch.no_grad():
        assert torch.equal(m(x, s).rgb, back(x, s).rgb)
    headless = build_model(replace(TINY, tex_ch=0))
    with pytest.raises(RuntimeError):  # a head's tensors in a headless model: strict load refuses
        headless.load_state_dict(m.state_dict(), strict=True)


# -- --init: the head starts as a no-op -------------------------------------------------------------------
def test_init_into_the_new_decoder_gives_the_old_output_at_step_0():
    old = _active(replace(TINY, tex_ch=0, num_styles=8))  # a headless model (the third weights' decoder)
    new = build_model(replace(old.cfg, tex_ch=8)).eval()
    fresh = load_matching(new, old.state_dict())
    assert fresh and all(k.startswith("decoder.texture.") for k in fresh)
    x = torch.rand(1, 3, 72, 96, generator=torch.Generator().manual_seed(4))
    for style in (0, 6, 7):
        s = old.style_embedding(torch.eye(old.cfg.num_styles)[style])
        with torch.no_grad():
            a, b = old(x, s, 2), new(x, s, 2)
        assert torch.equal(a.rgb, b.rgb) and torch.equal(a.z, b.z)
    head = new.decoder.texture  # a no-op by its zero last layer only: the layers before it are live
    assert float(head.out.weight.detach().abs().max()) == 0.0 and float(head.pix.weight.detach().abs().max()) > 0.0


def test_init_refuses_a_model_of_another_architecture():
    small = build_model(replace(TINY, tex_ch=0))
    other = build_model(replace(TINY, tex_ch=0, dec_ch=4))
    with pytest.raises(UserError, match="another shape"):
        load_matching(small, other.state_dict())
    with pytest.raises(UserError, match="lacks"):  # dropping a trained head is not an --init
        load_matching(small, build_model(TINY).state_dict())


def test_distill_cli_rejects_a_bad_tex_ch(tmp_path, capsys):
    from realtime.cli import main
    from tests.fakes import assert_one_line_error

    code = main(["distill", "--teacher", "builtin:1", "--out", str(tmp_path / "o"), "--tex-ch", "-2"])
    assert_one_line_error(capsys, code, "--tex-ch")
    assert not (tmp_path / "o").exists()


# -- no 4-px lattice --------------------------------------------------------------------------------------
def test_the_head_draws_no_lattice_on_a_flat_dark_input():
    """A flat dark frame: the head adds one flat colour inside, while the pixel-shuffle path of the same
    untrained decoder draws a 4-px lattice (so the measure can fail). With sensor noise, the head's
    lattice peak is far below that path's; it is not zero: features upsampled from 1/4 have a variance
    that repeats every 4 px, which the head's nonlinearities turn into a faint peak (README)."""
    m = _active(TINY)
    s = m.style_embedding(torch.eye(2)[0])
    head = m.decoder.texture

    def both(x):
        with torch.no_grad():
            y = m(x, s, 2)
            m.decoder.texture = None
            base = m.decode(y.z, m.skip(x), x)
            m.decoder.texture = head
        return y.rgb.numpy()[0], base.numpy()[0]

    flat = torch.full((1, 3, 256, 288), 0.08)
    y, base = both(flat)
    e = 96  # away from the zero padding's reach (the encoder and refiner work at 1/8)
    inner = (y - base)[:, e:-e, e:-e]
    assert float(np.abs(y - base).max()) > 1e-3  # the head draws something (a flat tint)
    assert float(np.abs(inner - inner.mean(axis=(1, 2), keepdims=True)).max()) < 1e-5
    b = base[:, e:-e, e:-e]
    # the old path's lattice: a pattern that repeats every 8 px (its pixel shuffles at 1/4 and 1/2)
    assert float(b.std()) > 1e-4 and np.allclose(b[:, 8:], b[:, :-8], atol=1e-5)
    assert np.allclose(b[:, :, 8:], b[:, :, :-8], atol=1e-5)  # the old path's lattice on a flat frame

    rng = np.random.default_rng(0)
    noisy = torch.from_numpy((0.08 + 0.01 * rng.standard_normal((1, 3, 128, 160))).astype(np.float32))
    y, base = both(noisy)
    added, drawn = y - base, base - noisy.numpy()[0]
    assert float(np.abs(added).max()) > 1e-3
    assert grid_ratio(added) < grid_ratio(drawn) / 100, (grid_ratio(added), grid_ratio(drawn))


# -- crops ------------------------------------------------------------------------------------------------
def test_a_crop_decodes_to_the_whole_frames_pixels_inside():
    """The decoder reads only the latent, skip and x of its region: a crop (on the 8-px token grid) with
    the whole frame's latent, skip and norm gives the whole frame's pixels away from its border."""
    m = _active(TINY)
    x = torch.rand(1, 3, 128, 160, generator=torch.Generator().manual_seed(5))
    s = m.style_embedding(torch.eye(2)[1])
    with torch.no_grad():
        full = m(x, s, 2)
        norm = m.frame_norm(x)
        skip = m.skip(x, norm)
        y0, x0, hh, ww = 32, 40, 64, 80  # pixels; multiples of 8
        crop = m.decode(full.z[..., y0 // 8:(y0 + hh) // 8, x0 // 8:(x0 + ww) // 8],
                        skip[..., y0 // 4:(y0 + hh) // 4, x0 // 4:(x0 + ww) // 4],
                        x[..., y0:y0 + hh, x0:x0 + ww], norm)
    b = 24  # the decoder's reach with the head: 3 cells at 1/4 in the trunk, 1 in the head, 3 px
    got = crop[..., b:-b, b:-b]
    want = full.rgb[..., y0 + b:y0 + hh - b, x0 + b:x0 + ww - b]
    assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())


# -- export -----------------------------------------------------------------------------------------------
def test_export_of_the_new_decoder_matches_torch_and_runs_in_onnxruntime(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from realtime.backends import create_backend
    from realtime.cli import main
    from realtime.config import BackendConfig

    m = _active(TINY)
    d = tmp_path / "m"
    save_model(m, d, {"format": "genreal-model/1",
                      "styles": [{"name": "a", "teacher": "builtin:1"}, {"name": "b", "teacher": "builtin:2"}]})
    code = main(["export", "--model", str(d), "--preset", "dynamic"])  # parity checked: <= 1e-3 or it fails
    assert code == 0, capsys.readouterr().err
    assert (d / "onnx" / "dynamic" / "decode.onnx").is_file()
    backend = create_backend(BackendConfig(name="onnxruntime", device="cpu", style="b", temporal=False, model_dir=d))
    img = (np.random.default_rng(3).random((64, 96, 3)) * 255).astype(np.uint8)
    out = backend([img])[0]
    x = torch.from_numpy(img.astype(np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        ref = m(x, m.style_embedding(torch.eye(2)[1]), m.cfg.default_steps).rgb.clamp(0, 1)[0].permute(1, 2, 0).numpy()
    assert out.shape == (64, 96, 3)
    assert np.abs(out.astype(np.float32) / 255 - ref).max() <= 2 / 255 + 1e-6


def _headless_source(path):
    """A one-style TINY model without the head, saved at `path` as an --init source: (its config, the model)."""
    cfg = replace(TINY, num_styles=1, tex_ch=0)
    torch.manual_seed(3)
    src = build_model(cfg)
    save_one_style_model(src, path)
    return cfg, src


def test_distill_init_adds_the_head_and_trains_from_the_given_weights(tmp_path):
    from models.distill import PRESETS, DistillConfig, distill
    from models.teachers import parse_teacher

    cfg, src = _headless_source(tmp_path / "src")
    preset = replace(PRESETS["tiny"], lr=1e-6, iters=2)
    distill(DistillConfig(teachers=(parse_teacher("builtin:1"),), names=("a",), out=tmp_path / "out", preset=preset,
                          init=tmp_path / "src", tex_ch=3, losses=pixel_terms(), progress=False))
    got, manifest = load_model(tmp_path / "out")
    assert got.cfg == replace(cfg, tex_ch=3) and manifest["config"]["tex_ch"] == 3
    own = got.state_dict()
    assert max(float((own[k] - v).abs().max()) for k, v in src.state_dict().items() if v.is_floating_point()) < 1e-3
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    s = src.style_embedding(torch.eye(1)[0])
    with torch.no_grad():  # two steps at lr 1e-6: still (nearly) the model it started from
        assert float((got(x, s).rgb - src.eval()(x, s).rgb).abs().max()) < 1e-2


def test_distill_freeze_keeps_those_parameters_and_refuses_unknown_names(tmp_path):
    from models.distill import PRESETS, DistillConfig, distill
    from models.teachers import parse_teacher

    _, src = _headless_source(tmp_path / "src")
    preset = replace(PRESETS["tiny"], lr=1e-2, iters=3)
    common = dict(teachers=(parse_teacher("builtin:1"),), names=("a",), preset=preset, init=tmp_path / "src",
                  tex_ch=3, losses=pixel_terms(), progress=False, cache_dir=tmp_path / "cache")
    with pytest.raises(UserError, match="--freeze decoder.nope"):
        distill(DistillConfig(out=tmp_path / "bad", freeze=("decoder.nope",), **common))
    distill(DistillConfig(out=tmp_path / "out", freeze=("decoder.up4", "decoder.out"), **common))
    got, _ = load_model(tmp_path / "out")
    own, init = got.state_dict(), src.state_dict()
    for k in ("decoder.up4.weight", "decoder.up4.bias", "decoder.out.weight", "decoder.out.bias"):
        assert torch.equal(own[k], init[k]), k
    assert not torch.equal(own["decoder.coef.weight"], init["decoder.coef.weight"])  # the rest trains
    assert float(own["decoder.texture.out.weight"].abs().max()) > 0  # and the head leaves zero

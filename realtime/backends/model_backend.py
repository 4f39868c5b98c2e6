"""`ModelBackend`: our distilled model as a runtime `Backend`, on any engine that implements
`ModelStages` (torch, ONNX Runtime, TensorRT). The engine runs the stages; this class owns
pre/postprocessing (the `kernels` ops), styles and the per-frame stage order.

With temporal reuse on (the default), `infer` consults a `TemporalCache` (realtime/temporal.py) and
runs the stages only where the picture changed; with it off (`--no-temporal`) every frame runs the
full per-frame path, bit-identical to a fresh backend. The budget controller (realtime/budget.py)
may lower the refine steps and the internal resolution per frame through `apply_choice`.

What one step hands the next is a frozen dataclass: `preprocess` → `Prepared` (the model input, the
camera images it came from, their greys for the temporal cache, the valid size), `infer` →
`Inferred` (the output and the pixel rects that changed since the last one). Every frame and crop runs
the one stage chain `models.stages.run_frame`.

Styles are the model's named styles (`genreal styles`), or blends like ``cel:0.5,starry:0.5``
(blending = blending style embeddings; nothing is rebuilt on a switch).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np

from genreal_errors import UserError
from models.style_blend import blend_weights
from models.stages import FrameResult, ModelStages, condition, images_norm, run_frame, warm_first_step
from realtime.backends.base import Backend
from realtime.config import BackendConfig
from realtime.temporal import Plan, TemporalCache, TemporalConfig, grey_of, motion_change

log = logging.getLogger(__name__)

MIN_INTERNAL_PX = 64  # the budget's internal scale stops here (models.export.DYNAMIC_MIN)


Rect = tuple[int, int, int, int]  # (y0, y1, x0, x1) pixels


@dataclass(frozen=True)
class Prepared:
    """`ModelBackend.preprocess` → `infer`."""

    x: Any  # (B, 3, Hp, Wp) float32 model input
    images: tuple[np.ndarray, ...]  # the uint8 camera images x was made from (for the frame normalization)
    valid_hw: tuple[int, int]  # the size of x's content (the internal resolution), before padding
    greys: Optional[tuple[np.ndarray, ...]] = None  # each eye's grey at valid_hw (temporal reuse on)


@dataclass(frozen=True)
class Inferred:
    """`ModelBackend.infer` → `postprocess`."""

    y: Any  # (B, 3, Hp, Wp) unclamped model output
    valid_hw: tuple[int, int]
    #: pixel rects of `y` that changed since the last output (None: all of it, [] for none): a reused or
    #: cropped frame converts only what changed
    dirty: Optional[tuple[Rect, ...]] = None


class ModelBackend(Backend):
    """Our model, frame by frame, on the engine `stages`.

    Subclasses name the engine (`name`) and build the stages in their constructor. Temporal reuse
    hooks in at `infer` (see realtime/temporal.py).
    """

    name = "model"

    def __init__(self, stages: ModelStages, config: BackendConfig,
                 temporal_config: Optional[TemporalConfig] = None) -> None:
        super().__init__()
        import kernels

        self.stages = stages
        self.info = stages.info
        self.device = stages.kernel_device
        self.ops = kernels.get_ops(stages.kernel_device)
        if config.steps is not None:
            self.info.check_steps(config.steps)
        self.steps = config.steps or min(self.info.default_steps, self.info.offered_steps)
        self._base_steps = self.steps
        self.temporal = bool(config.temporal)
        self.scale = 1.0  # internal resolution scale (budget controller)
        self.cache = TemporalCache(temporal_config or TemporalConfig())
        # postprocess's last uint8 output (B, H, W, 3): a reused or cropped frame updates only its dirty rects
        self._shown: Optional[np.ndarray] = None
        self._style = ""
        self._style_vec: Any = None
        self.set_style(config.style if config.style is not None else self.info.default_style)

    # -- styles ------------------------------------------------------------------------
    def styles(self) -> Sequence[str]:
        return list(self.info.style_names)

    @property
    def style(self) -> str:
        return self._style

    def set_style(self, name: str) -> None:
        weights = blend_weights(name, self.info.style_names)
        self._style_vec = self.stages.style_vector(weights)  # (1, E)
        self._style = str(name)
        self.reset()

    # -- temporal state and budget choices -------------------------------------------------
    def reset(self) -> None:
        self.cache.reset()
        self._shown = None

    supports_choices = True

    def budget_steps(self) -> int:
        return self._base_steps

    def apply_choice(self, choice: Any) -> None:
        """Take the budget controller's per-frame choice (steps K, internal scale, reuse multiplier)."""
        self.steps = max(1, min(int(choice.steps), self.info.offered_steps))
        self.scale = float(choice.scale)
        self.cache.reuse = float(choice.reuse)

    # -- the three steps ----------------------------------------------------------------
    def preprocess(self, images: Sequence[np.ndarray]) -> Prepared:
        shapes = {img.shape for img in images}
        if len(shapes) != 1:
            raise ValueError(f"all eyes must have the same size, got {sorted(shapes)}")
        h, w = images[0].shape[:2]
        if self.scale == 1.0:
            valid = (h, w)
            x = self.ops.preprocess(list(images), fmt="rgb")  # (B, 3, Hp, Wp) float32
        else:
            # never below the smallest size the exported dynamic graphs take (64 px), nor above the input
            hs, ws = (max(min(n, MIN_INTERNAL_PX), round(n * self.scale)) for n in (h, w))
            valid = (hs, ws)
            x = self.ops.preprocess(list(images), fmt="rgb", out_size=(ws, hs))  # (B, 3, Hs_p, Ws_p)
        greys = tuple(_grey(img, valid) for img in images) if self.temporal else None
        return Prepared(x, tuple(images), valid, greys)

    def _norm_of(self, p: Prepared) -> Any:
        """The whole frame's normalization (B, 4), models with one: read from the uint8 camera images on the
        CPU (a third of the memory of x), from x on a GPU engine. Only full frames (and a crop with no key
        frame) need it: skips and crops reuse the key frame's."""
        if not self.info.normalize:
            return None
        return images_norm(p.images) if self.device == "cpu" else self.stages.frame_norm(p.x)

    def infer(self, p: Prepared) -> Inferred:
        if not self.temporal or p.greys is None:
            return Inferred(self._run(p).rgb, p.valid_hw)
        return self._infer_temporal(p)

    def _run(self, p: Prepared, x: Any = None, **kw: Any) -> FrameResult:
        """The stage chain on `x` (default: the whole frame), with this backend's style and steps."""
        norm = kw.pop("norm", None)
        if norm is None:
            norm = self._norm_of(p)
        return run_frame(self.stages, self.ops, p.x if x is None else x, self._style_vec, self.steps, norm, **kw)

    def _infer_temporal(self, p: Prepared) -> Inferred:
        cache, x = self.cache, p.x
        b, _, hp, wp = x.shape
        ntok = b * (hp // 8) * (wp // 8)
        plan, sigs, small = cache.plan(p.greys, hp, wp)
        if plan.mode == "skip":
            cache.record(plan, 0, ntok)
            return Inferred(cache.y, p.valid_hw, ())
        if plan.mode == "crop":
            out = self._infer_crop(p, plan, sigs, ntok)
            if plan.reason == "large":  # the whole frame was computed: the motion reference moves to it
                cache.rebase(p.greys, small)
            return out
        if plan.mode == "motion":
            if cache.config.motion == "output":
                out = self._infer_motion_output(p, plan, sigs, ntok)
            else:
                out = self._infer_motion_latent(p, plan, ntok)
            if isinstance(out, Inferred):
                return out
            plan = dataclasses.replace(plan, mode="full", reason=out)  # a new key frame: "cut" or "rekey"
        full = self._run(p)
        cache.store_full(full.levels, full.z, full.rgb, sigs, small, (b, hp, wp), p.greys, full.norm, full.ctx)
        cache.record(plan, ntok, ntok)
        return Inferred(full.rgb, p.valid_hw)

    def _crop(self, p: Prepared, box: tuple[int, int, int, int], prev_levels: Any) -> FrameResult:
        """The stage chain on the token box (y0, y1, x0, x1) of the frame, with the key frame's normalization
        and context (so a recomputed patch is styled as a part of the frame around it); FSQ hysteresis against
        `prev_levels` (the cached tokens of that box) when given."""
        ty0, ty1, tx0, tx1 = box
        xc = p.x[:, :, ty0 * 8:ty1 * 8, tx0 * 8:tx1 * 8]  # (B, 3, 8 (ty1-ty0), 8 (tx1-tx0))
        if isinstance(xc, np.ndarray):
            xc = np.ascontiguousarray(xc)
        cache = self.cache
        margin = cache.config.hysteresis_margin if prev_levels is not None else 0.0
        return self._run(p, xc, norm=cache.key_norm, prev_levels=prev_levels, margin=margin, ctx=cache.key_ctx)

    def _infer_crop(self, p: Prepared, plan: Plan, sigs: np.ndarray, ntok: int) -> Inferred:
        """Still camera, a few tiles changed: run the stages on each padded crop, paste its inner part."""
        cache = self.cache
        recomputed = 0
        done: dict[tuple[int, int, int, int], FrameResult] = {}  # regions may share a box (a "large" plan)
        for box, inner in plan.regions:
            ty0, ty1, tx0, tx1 = box
            crop = done.get(box)
            if crop is None:
                crop = done[box] = self._crop(p, box, cache.levels[:, :, ty0:ty1, tx0:tx1])
                recomputed += p.x.shape[0] * (ty1 - ty0) * (tx1 - tx0)
            cache.paste(inner, box, crop.levels, crop.z, crop.rgb, sigs)
        cache.record(plan, recomputed, ntok)
        return Inferred(cache.y, p.valid_hw, _rects(plan.regions))

    def _infer_motion_output(self, p: Prepared, plan: Plan, sigs: np.ndarray, ntok: int) -> Union[Inferred, str]:
        """Global motion since the key frame: the key output warped to this view, with crops recomputed
        where the warp cannot explain the input (new in view, moved on its own). When that is too much,
        the reason the caller computes a new key frame instead ("cut" or "rekey")."""
        cache, cfg = self.cache, self.cache.config
        masks = plan.masks or motion_change(p.greys, cache.key_greys, sigs, plan.affine, cfg.change_thresh * cache.reuse)
        regions = cache.motion_regions(masks)
        if isinstance(regions, str):
            return regions  # "cut" or "rekey"
        y = self.ops.warp_affine(cache.key_y, plan.affine, border="replicate")  # (B, 3, Hp, Wp)
        recomputed = 0
        for (ty0, ty1, tx0, tx1), (iy0, iy1, ix0, ix1) in regions:
            # the key tokens sit on a grid the camera moved off: quantize afresh, no hysteresis
            yc = self._crop(p, (ty0, ty1, tx0, tx1), None).rgb
            ry0, ry1, rx0, rx1 = iy0 - ty0, iy1 - ty0, ix0 - tx0, ix1 - tx0
            y[:, :, iy0 * 8:iy1 * 8, ix0 * 8:ix1 * 8] = yc[:, :, ry0 * 8:ry1 * 8, rx0 * 8:rx1 * 8]
            recomputed += p.x.shape[0] * (ty1 - ty0) * (tx1 - tx0)
        y = cache.show_motion(y)  # the key frame's tokens, latent and output stay as they are
        cache.record(plan, recomputed, ntok)
        return Inferred(y, p.valid_hw)

    def _infer_motion_latent(self, p: Prepared, plan: Plan, ntok: int) -> Union[Inferred, str]:
        """Global motion since the key frame: warp the key latent to this view, restart it where content
        newly came into view, warm-start the refiner from it with fewer steps. "rekey" when too much is
        new (the caller computes a new key frame)."""
        from kernels.spec import affine_to_latent

        st, cache, cfg, ops, x = self.stages, self.cache, self.cache.config, self.ops, p.x
        b = x.shape[0]
        a_lat = affine_to_latent(plan.affine)  # latent output px → key latent px
        ones = _ones_like(cache.z, (b, 1) + tuple(cache.z.shape[2:]))
        seen = ops.warp_affine(ones, a_lat, border="zeros")[:, 0] > 0.999  # (B, h, w) visible before
        mask = ops.dilate_mask(~seen, cfg.dilate)  # (B, h, w) restart here
        frac = float(mask.float().mean()) if hasattr(mask, "float") else float(mask.mean())
        if frac > cfg.rekey_frac:
            return "rekey"
        norm = self._norm_of(p)
        enc = st.encode(x, norm)
        # tokens on a grid that moved by a fraction of a cell are not comparable level by level: quantize
        # afresh (as the full path does) and restart the latent only where content newly came into view
        levels, _ = ops.fsq_hysteresis(enc.zq, None, self.info.fsq_levels, 0.0)
        emb = st.embed(levels)
        z0 = ops.warp_and_blend(cache.z, a_lat, st.initial(emb), mask)
        k = min(cfg.warm_steps, self.steps)
        z = st.refine(z0, emb, condition(self._style_vec, enc.ctx), k, warm_first_step(self.info, k))
        y = cache.show_motion(st.decode(z, enc.skip, x, norm))  # the key frame's tokens and latent stay
        cache.record(plan, int(round(frac * ntok)), ntok)
        return Inferred(y, p.valid_hw)

    def postprocess(self, out: Inferred, like: Sequence[np.ndarray]) -> list[np.ndarray]:
        h, w = like[0].shape[:2]
        y, shown, dirty = out.y, self._shown, out.dirty
        same = (dirty is not None and shown is not None and isinstance(y, np.ndarray)
                and out.valid_hw == (h, w) and shown.shape == (len(like), h, w, 3))
        if same:  # only the changed rects (elementwise conversion: the same bytes as converting it all)
            for y0, y1, x0, x1 in dirty:
                y1, x1 = min(y1, h), min(x1, w)
                if y1 > y0 and x1 > x0:
                    part = self.ops.postprocess(np.ascontiguousarray(y[:, :, y0:y1, x0:x1]), valid_hw=(y1 - y0, x1 - x0))
                    shown[:, y0:y1, x0:x1] = part if part.ndim == 4 else part[None]
            return [shown[i].copy() for i in range(len(like))]  # copies: the sinks may still hold the last ones
        if out.valid_hw == (h, w):
            img = self.ops.postprocess(y, valid_hw=(h, w))
        else:  # internal resolution below the input's: back to the input size
            img = self.ops.postprocess(y, valid_hw=out.valid_hw, out_size=(w, h))
        if getattr(img, "ndim", 0) == 3:
            img = img[None]
        if not isinstance(img, np.ndarray):  # a CUDA tensor: one copy back to the host
            img = img.cpu().numpy()
        if self.temporal:
            self._shown = np.array(img)  # kept for the next frame's rects (ours to update)
        return [np.ascontiguousarray(img[i]) for i in range(len(like))]

    def stats(self) -> dict[str, Any]:
        d: dict[str, Any] = {"engine": self.stages.engine, "steps": self.steps}
        if self.cache.stats.frames:
            d["temporal"] = self.cache.stats.to_dict()
        return d

    def close(self) -> None:
        self.reset()
        self.stages.close()


def _rects(regions: Sequence[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]) -> tuple[Rect, ...]:
    """The pixel rects of the inner token boxes of crop regions."""
    return tuple((iy0 * 8, iy1 * 8, ix0 * 8, ix1 * 8) for _, (iy0, iy1, ix0, ix1) in regions)


def _grey(image: np.ndarray, valid_hw: tuple[int, int]) -> np.ndarray:
    """An eye's grey image at the model's internal size."""
    g = grey_of(image)  # (H, W)
    if valid_hw != g.shape:
        import cv2

        g = cv2.resize(g, (valid_hw[1], valid_hw[0]), interpolation=cv2.INTER_AREA)
    return g


def _ones_like(a: Any, shape: tuple) -> Any:
    if isinstance(a, np.ndarray):
        return np.ones(shape, np.float32)
    return a.new_ones(shape, dtype=a.dtype).float()

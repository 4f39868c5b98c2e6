"""`ModelBackend`: our distilled model as a runtime `Backend`, on any engine that implements
`ModelStages` (torch, ONNX Runtime, TensorRT). The engine runs the stages; this class owns
pre/postprocessing (the `kernels` ops), styles and the per-frame stage order.

With temporal reuse on (the default), `infer` consults a `TemporalCache` (realtime/temporal.py) and
runs the stages only where the picture changed; with it off (`--no-temporal`) every frame runs the
full per-frame path, bit-identical to a fresh backend. The budget controller (realtime/budget.py)
may lower the refine steps and the internal resolution per frame through `apply_choice`.

Styles are the model's named styles (`genreal styles`), or blends like ``cel:0.5,starry:0.5``
(blending = blending style embeddings; nothing is rebuilt on a switch).
"""
from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import numpy as np

from realtime.backends.base import Backend
from realtime.backends.stages import ModelStages, condition, images_norm, warm_first_step
from realtime.config import BackendConfig
from realtime.errors import UserError
from realtime.temporal import TemporalCache, TemporalConfig, grey_of, motion_change

log = logging.getLogger(__name__)

MIN_INTERNAL_PX = 64  # the budget's internal scale stops here (models.export.DYNAMIC_MIN)


def parse_style_blend(spec: str, names: Sequence[str]) -> np.ndarray:
    """'cel' or 'cel:0.5,starry:0.5' → normalized (S,) float32 weights over `names`. Raises `UserError`."""
    w = np.zeros(len(names), dtype=np.float32)
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not parts:
        raise UserError(f"empty style {spec!r}: use one of {', '.join(names)}")
    for part in parts:
        name, sep, wt = part.rpartition(":") if ":" in part else (part, "", "")
        if name not in names:
            import difflib

            close = difflib.get_close_matches(name, names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UserError(f"unknown style {name!r}: {hint}use one of {', '.join(names)} (see 'genreal styles')")
        try:
            weight = float(wt) if sep else 1.0
        except ValueError:
            raise UserError(f"bad style weight in {spec!r}: use e.g. {names[0]}:0.5,{names[-1]}:0.5") from None
        if not np.isfinite(weight) or weight < 0:
            raise UserError(f"style weights must be finite and not negative: {spec!r}")
        w[names.index(name)] += weight
    if w.sum() <= 0:
        raise UserError(f"style weights must not all be zero: {spec!r}")
    return w / w.sum()


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
        if config.steps is not None and not 1 <= config.steps <= self.info.max_steps:
            raise UserError(f"bad --steps {config.steps}: this model runs 1 to {self.info.max_steps} steps")
        self.steps = config.steps or self.info.default_steps
        self._base_steps = self.steps
        self.temporal = bool(config.temporal)
        self.scale = 1.0  # internal resolution scale (budget controller)
        self.cache = TemporalCache(temporal_config or TemporalConfig())
        self._greys: Optional[list[np.ndarray]] = None
        # the last uint8 output and the pixel rects (y0, y1, x0, x1) of `infer`'s result that changed since
        # (None: all of it): a reused or cropped frame converts only what changed
        self._shown: Optional[np.ndarray] = None
        self._dirty: Optional[list[tuple[int, int, int, int]]] = None
        self._style = ""
        self._style_vec: Any = None
        # the frame normalization (B, 4) and frame context (B, E) of the last full frame (models with them;
        # else None): crops of later frames use them, so a recomputed patch is styled as a part of the
        # frame around it
        self._key_norm: Any = None
        self._key_ctx: Any = None
        self._input_images: Optional[tuple[Any, list[np.ndarray]]] = None  # (preprocessed x, its camera images)
        self._valid_hw: Optional[tuple[int, int]] = None
        self.set_style(config.style if config.style is not None else self.info.default_style)

    # -- styles ------------------------------------------------------------------------
    def styles(self) -> Sequence[str]:
        return list(self.info.style_names)

    @property
    def style(self) -> str:
        return self._style

    def set_style(self, name: str) -> None:
        weights = parse_style_blend(name, self.info.style_names)
        self._style_vec = self.stages.style_vector(weights)  # (1, E)
        self._style = str(name)
        self.reset()

    # -- temporal state and budget choices -------------------------------------------------
    def reset(self) -> None:
        self.cache.reset()
        self._shown, self._dirty = None, None
        self._key_norm, self._key_ctx = None, None

    supports_choices = True

    def budget_steps(self) -> int:
        return self._base_steps

    def apply_choice(self, choice: Any) -> None:
        """Take the budget controller's per-frame choice (steps K, internal scale, reuse multiplier)."""
        self.steps = max(1, min(int(choice.steps), self.info.max_steps))
        self.scale = float(choice.scale)
        self.cache.reuse = float(choice.reuse)

    # -- the three steps ----------------------------------------------------------------
    def preprocess(self, images: Sequence[np.ndarray]) -> Any:
        shapes = {img.shape for img in images}
        if len(shapes) != 1:
            raise ValueError(f"all eyes must have the same size, got {sorted(shapes)}")
        h, w = images[0].shape[:2]
        if self.scale == 1.0:
            self._valid_hw = (h, w)
            x = self.ops.preprocess(list(images), fmt="rgb")  # (B, 3, Hp, Wp) float32
        else:
            # never below the smallest size the exported dynamic graphs take (64 px), nor above the input
            hs, ws = (max(min(n, MIN_INTERNAL_PX), round(n * self.scale)) for n in (h, w))
            self._valid_hw = (hs, ws)
            x = self.ops.preprocess(list(images), fmt="rgb", out_size=(ws, hs))  # (B, 3, Hs_p, Ws_p)
        if self.temporal:
            self._greys = [self._grey(img) for img in images]
        if self.info.normalize and self.device == "cpu":
            # `infer` reads the frame normalization from these uint8 images, on the frames that need it
            self._input_images = (x, list(images))
        return x

    def _frame_norm(self, x: Any) -> Any:
        """`x`'s whole-frame normalization (B, 4): from its camera images when `preprocess` made x, else
        from x. Only full frames (and a crop with no key frame) need it: skips and crops reuse the key's."""
        if self._input_images is not None and self._input_images[0] is x:
            return images_norm(self._input_images[1])
        return self.stages.frame_norm(x)

    def _grey(self, image: np.ndarray) -> np.ndarray:
        g = grey_of(image)  # (H, W)
        if self._valid_hw != g.shape:
            import cv2

            g = cv2.resize(g, (self._valid_hw[1], self._valid_hw[0]), interpolation=cv2.INTER_AREA)
        return g

    def infer(self, x: Any) -> Any:
        self._dirty = None
        if not self.temporal or self._greys is None:
            return self._full(x)[2]
        return self._infer_temporal(x)

    def _full(self, x: Any) -> tuple[Any, Any, Any]:
        """The per-frame path → (levels (B, d, h, w), z (B, C, h, w), rgb (B, 3, Hp, Wp))."""
        st = self.stages
        norm = self._frame_norm(x)  # (B, 4) or None
        enc = st.encode(x, norm)
        levels, _ = self.ops.fsq_hysteresis(enc.zq, None, self.info.fsq_levels, 0.0)  # (B, d, h, w)
        emb = st.embed(levels)
        z = st.refine(st.initial(emb), emb, condition(self._style_vec, enc.ctx), self.steps, 0)
        self._key_norm, self._key_ctx = norm, enc.ctx
        return levels, z, st.decode(z, enc.skip, x, norm)  # (B, 3, Hp, Wp)

    def _infer_temporal(self, x: Any) -> Any:
        cache = self.cache
        b, _, hp, wp = x.shape
        ntok = b * (hp // 8) * (wp // 8)
        greys, self._greys = self._greys, None
        plan, sigs, small = cache.plan(greys, hp, wp)
        if plan.mode == "skip":
            cache.record(plan, 0, ntok)
            self._dirty = []
            return cache.y
        if plan.mode == "crop":
            return self._infer_crop(x, plan, sigs, ntok)
        if plan.mode == "motion":
            if cache.config.motion == "output":
                y = self._infer_motion_output(x, plan, greys, sigs, ntok)
            else:
                y = self._infer_motion_latent(x, plan, ntok)
            if y is not None:
                return y
            plan.mode, plan.reason = "full", plan.reason or "rekey"
        levels, z, y = self._full(x)
        cache.store_full(levels, z, y, sigs, small, (b, hp, wp), greys)
        cache.record(plan, ntok, ntok)
        return y

    def _crop(self, x: Any, box: tuple[int, int, int, int], prev_levels: Any) -> tuple[Any, Any, Any]:
        """The per-frame path on the token box (y0, y1, x0, x1) of `x` → (levels, z, rgb) of the crop;
        FSQ hysteresis against `prev_levels` (the cached tokens of that box) when given."""
        st = self.stages
        ty0, ty1, tx0, tx1 = box
        xc = x[:, :, ty0 * 8:ty1 * 8, tx0 * 8:tx1 * 8]  # (B, 3, 8 (ty1-ty0), 8 (tx1-tx0))
        if isinstance(xc, np.ndarray):
            xc = np.ascontiguousarray(xc)
        norm = self._key_norm if self._key_norm is not None else self._frame_norm(x)  # the whole frame's
        enc = st.encode(xc, norm)
        margin = self.cache.config.hysteresis_margin if prev_levels is not None else 0.0
        levels, _ = self.ops.fsq_hysteresis(enc.zq, prev_levels, self.info.fsq_levels, margin)
        emb = st.embed(levels)
        ctx = self._key_ctx if self._key_ctx is not None else enc.ctx  # the whole frame's context
        z = st.refine(st.initial(emb), emb, condition(self._style_vec, ctx), self.steps, 0)
        return levels, z, st.decode(z, enc.skip, xc, norm)  # (B, 3, crop h, crop w)

    def _infer_crop(self, x: Any, plan: Any, sigs: np.ndarray, ntok: int) -> Any:
        """Still camera, a few tiles changed: run the stages on each padded crop, paste its inner part."""
        cache = self.cache
        recomputed = 0
        for (ty0, ty1, tx0, tx1), (iy0, iy1, ix0, ix1) in plan.regions:
            levels, z, yc = self._crop(x, (ty0, ty1, tx0, tx1), cache.levels[:, :, ty0:ty1, tx0:tx1])
            ry0, ry1, rx0, rx1 = iy0 - ty0, iy1 - ty0, ix0 - tx0, ix1 - tx0  # inner box inside the crop, tokens
            cache.levels[:, :, iy0:iy1, ix0:ix1] = levels[:, :, ry0:ry1, rx0:rx1]
            cache.z[:, :, iy0:iy1, ix0:ix1] = z[:, :, ry0:ry1, rx0:rx1]
            cache.y[:, :, iy0 * 8:iy1 * 8, ix0 * 8:ix1 * 8] = yc[:, :, ry0 * 8:ry1 * 8, rx0 * 8:rx1 * 8]
            cache.sig_ref[:, iy0 * 2:iy1 * 2, ix0 * 2:ix1 * 2] = sigs[:, iy0 * 2:iy1 * 2, ix0 * 2:ix1 * 2]
            recomputed += x.shape[0] * (ty1 - ty0) * (tx1 - tx0)
        cache.record(plan, recomputed, ntok)
        self._dirty = [(iy0 * 8, iy1 * 8, ix0 * 8, ix1 * 8) for _, (iy0, iy1, ix0, ix1) in plan.regions]
        return cache.y

    def _infer_motion_output(self, x: Any, plan: Any, greys: list[np.ndarray], sigs: np.ndarray,
                             ntok: int) -> Any:
        """Global motion since the key frame: the key output warped to this view, with crops recomputed
        where the warp cannot explain the input (new in view, moved on its own). None when that is too
        much (the caller computes a new key frame)."""
        cache, cfg = self.cache, self.cache.config
        masks = motion_change(greys, cache.key_greys, sigs, plan.affine, cfg.change_thresh * cache.reuse)
        if masks[0].mean() > cfg.cut_frac:  # most of what stayed in view changed: not motion, a new scene
            plan.reason = "cut"
            return None
        unexplained = np.logical_or.reduce(masks)
        regions = cache.regions_for(*masks) if unexplained.mean() <= cfg.rekey_frac else None
        if regions is None:
            return None
        y = self.ops.warp_affine(cache.key_y, plan.affine, border="replicate")  # (B, 3, Hp, Wp)
        recomputed = 0
        for (ty0, ty1, tx0, tx1), (iy0, iy1, ix0, ix1) in regions:
            # the key tokens sit on a grid the camera moved off: quantize afresh, no hysteresis
            _, _, yc = self._crop(x, (ty0, ty1, tx0, tx1), None)
            ry0, ry1, rx0, rx1 = iy0 - ty0, iy1 - ty0, ix0 - tx0, ix1 - tx0
            y[:, :, iy0 * 8:iy1 * 8, ix0 * 8:ix1 * 8] = yc[:, :, ry0 * 8:ry1 * 8, rx0 * 8:rx1 * 8]
            recomputed += x.shape[0] * (ty1 - ty0) * (tx1 - tx0)
        cache.y = y  # the key frame's tokens, latent and output stay as they are
        cache.record(plan, recomputed, ntok)
        return y

    def _infer_motion_latent(self, x: Any, plan: Any, ntok: int) -> Any:
        """Global motion since the key frame: warp the key latent to this view, restart it where content
        newly came into view, warm-start the refiner from it with fewer steps. None when too much is
        new (the caller computes a new key frame)."""
        from kernels.spec import affine_to_latent

        st, cache, cfg, ops = self.stages, self.cache, self.cache.config, self.ops
        b = x.shape[0]
        a_lat = affine_to_latent(plan.affine)  # latent output px → key latent px
        ones = _ones_like(cache.z, (b, 1) + tuple(cache.z.shape[2:]))
        seen = ops.warp_affine(ones, a_lat, border="zeros")[:, 0] > 0.999  # (B, h, w) visible before
        mask = ops.dilate_mask(~seen, cfg.dilate)  # (B, h, w) restart here
        frac = float(mask.float().mean()) if hasattr(mask, "float") else float(mask.mean())
        if frac > cfg.rekey_frac:
            return None
        norm = self._frame_norm(x)
        enc = st.encode(x, norm)
        # tokens on a grid that moved by a fraction of a cell are not comparable level by level: quantize
        # afresh (as the full path does) and restart the latent only where content newly came into view
        levels, _ = ops.fsq_hysteresis(enc.zq, None, self.info.fsq_levels, 0.0)
        emb = st.embed(levels)
        z0 = ops.warp_and_blend(cache.z, a_lat, st.initial(emb), mask)
        k = min(cfg.warm_steps, self.steps)
        z = st.refine(z0, emb, condition(self._style_vec, enc.ctx), k, warm_first_step(self.info, k))
        y = st.decode(z, enc.skip, x, norm)
        cache.y = y  # the key frame's tokens and latent stay as they are
        cache.record(plan, int(round(frac * ntok)), ntok)
        return y

    def postprocess(self, y: Any, like: Sequence[np.ndarray]) -> list[np.ndarray]:
        h, w = like[0].shape[:2]
        shown, dirty, self._dirty = self._shown, self._dirty, None
        same = (dirty is not None and shown is not None and isinstance(y, np.ndarray)
                and self._valid_hw == (h, w) and shown.shape == (len(like), h, w, 3))
        if same:  # only the changed rects (elementwise conversion: the same bytes as converting it all)
            for y0, y1, x0, x1 in dirty:
                y1, x1 = min(y1, h), min(x1, w)
                if y1 > y0 and x1 > x0:
                    part = self.ops.postprocess(np.ascontiguousarray(y[:, :, y0:y1, x0:x1]), valid_hw=(y1 - y0, x1 - x0))
                    shown[:, y0:y1, x0:x1] = part if part.ndim == 4 else part[None]
            return [shown[i].copy() for i in range(len(like))]  # copies: the sinks may still hold the last ones
        if self._valid_hw is None or self._valid_hw == (h, w):
            out = self.ops.postprocess(y, valid_hw=(h, w))
        else:  # internal resolution below the input's: back to the input size
            out = self.ops.postprocess(y, valid_hw=self._valid_hw, out_size=(w, h))
        if getattr(out, "ndim", 0) == 3:
            out = out[None]
        if not isinstance(out, np.ndarray):  # a CUDA tensor: one copy back to the host
            out = out.cpu().numpy()
        if self.temporal:
            self._shown = np.array(out)  # kept for the next frame's rects (ours to update)
        return [np.ascontiguousarray(out[i]) for i in range(len(like))]

    def stats(self) -> dict[str, Any]:
        d: dict[str, Any] = {"engine": self.stages.engine, "steps": self.steps}
        if self.cache.stats.frames:
            d["temporal"] = self.cache.stats.to_dict()
        return d

    def close(self) -> None:
        self.reset()
        self.stages.close()


def _ones_like(a: Any, shape: tuple) -> Any:
    if isinstance(a, np.ndarray):
        return np.ones(shape, np.float32)
    return a.new_ones(shape, dtype=a.dtype).float()

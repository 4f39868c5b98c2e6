"""Global camera motion between two grey frames: an affine map (pan, roll, zoom) from small grey images,
phase correlation to start, Lucas-Kanade to refine (the temporal-reuse planner's motion estimate,
realtime/reuse.py). Pure image math on numpy arrays; nothing here keeps state."""
from __future__ import annotations

from typing import Optional

import numpy as np


def global_motion(ref: np.ndarray, cur: np.ndarray, full_w: int, conf: float,
                  init: Optional[np.ndarray] = None, still_px: float = 0.5,
                  max_residual: float = 12.0) -> Optional[np.ndarray]:
    """The affine (2, 3) mapping full-size output pixels to reference-frame pixels, from two small grey frames:
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
              for g in (ref, cur))
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
    a = refine_affine(ref, cur, a)
    if motion_residual(ref, cur, a) > max_residual:  # no motion explains the new frame: a cut, not a move
        return None
    return rescale_affine(a, s)


def motion_residual(ref: np.ndarray, cur: np.ndarray, a: np.ndarray, border: float = 0.1) -> float:
    """Mean |cur - ref warped by `a`| (grey levels) inside a `border` margin."""
    h, w = cur.shape
    by, bx = int(h * border), int(w * border)
    warped = warp_back(ref, a, w, h)
    return float(np.abs(cur[by:h - by, bx:w - bx] - warped[by:h - by, bx:w - bx]).mean())


def refine_affine(ref: np.ndarray, cur: np.ndarray, a: np.ndarray, iters: int = 3,
                  border: float = 0.1) -> np.ndarray:
    """Lucas-Kanade (additive, with the current frame's gradients, so the 6x6 system is built once):
    refine `a` (cur px → reference px) so that ref(a p) ≈ cur(p), on the frame less a `border` margin."""
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
        warped = warp_back(ref, a, w, h)
        r = (inner - warped[by:h - by, bx:w - bx]).reshape(-1)
        a = a + np.linalg.solve(hess, jac.T @ r).reshape(2, 3)
    return a


def warp_back(ref: np.ndarray, a: np.ndarray, w: int, h: int) -> np.ndarray:
    """The reference-frame grey seen from the current view: out(p) = ref(a p), edges replicated."""
    import cv2

    return cv2.warpAffine(ref, a, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
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
    size = (int(shape[0]), int(shape[1]))
    if size not in _HANN:
        import cv2

        _HANN[size] = cv2.createHanningWindow((size[1], size[0]), cv2.CV_64F)
    return _HANN[size]


__all__ = ["global_motion", "refine_affine", "motion_residual", "warp_back", "rescale_affine", "motion_px",
           "small_grey", "IDENTITY"]

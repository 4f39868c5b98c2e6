"""Synthetic camera motion over real photographs, with exact optical flow.

`VirtualCamera` renders the view of a photo seen by a camera at a `CameraPose` (centre,
zoom, roll) with one `cv2.warpAffine`. Because every view is an affine image of the same
photo, the motion between two views is an exact affine map (`flow_affine`), so benchmarks
get exact optical flow for free. Optional Gaussian sensor noise is seeded per frame.

`DemoClip` (the built-in `demo` source) sweeps such a camera slowly over photos bundled
inside scikit-image (read from the installed package's data folder, never downloaded),
cross-fading from one photo to the next; `StereoDemoClip` (`demo:stereo`) does the same
over the rectified Middlebury motorcycle pair. Both are deterministic.

Coordinates follow OpenCV: pixel (x, y) has its centre at integer x, y.
"""
from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence

import numpy as np

from realtime.config import Size

#: photos bundled in scikit-image's package data (name → file in skimage/data/)
BUNDLED_PHOTOS: dict[str, str] = {
    "astronaut": "astronaut.png",
    "coffee": "coffee.png",
    "chelsea": "chelsea.png",
    "rocket": "rocket.jpg",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "color": "color.png",
}
DEMO_PHOTOS: tuple[str, ...] = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left")
DEMO_SIZE: Size = (640, 360)
DEMO_FPS = 30.0
DEMO_FRAMES = 150


def skimage_data_dir() -> str:
    """The installed scikit-image's bundled data folder (found without importing skimage)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-image is not installed: pip install scikit-image")
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


@lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """The colour photo file `BUNDLED_PHOTOS[name]` from scikit-image's data folder (skimage is not imported)
    as read-only uint8 (H, W, 3) RGB. (Training data uses `models.data.skimage_data_image`, which calls
    `skimage.data.<name>()` and also takes grey and stereo images.)"""
    import cv2

    if name not in BUNDLED_PHOTOS:
        raise KeyError(f"unknown bundled photo {name!r}: use one of {', '.join(BUNDLED_PHOTOS)}")
    path = os.path.join(skimage_data_dir(), BUNDLED_PHOTOS[name])
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise RuntimeError(f"cannot read {path}: reinstall scikit-image")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    rgb.setflags(write=False)
    return rgb


def add_sensor_noise(image: np.ndarray, sigma: float, seed: int, t: int) -> np.ndarray:
    """`image` + Gaussian noise of std `sigma` (8-bit levels), drawn from an RNG seeded by (seed, t)."""
    if sigma <= 0:
        return image
    rng = np.random.default_rng((seed, t))
    noisy = image.astype(np.float32) + rng.normal(0.0, sigma, image.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The 2×3 affine `outer ∘ inner` (apply `inner`, then `outer`)."""
    return (_h(outer) @ _h(inner))[:2]


def invert_affine(m: np.ndarray) -> np.ndarray:
    return np.linalg.inv(_h(m))[:2]


def _h(m: np.ndarray) -> np.ndarray:
    return np.vstack([np.asarray(m, np.float64), [0.0, 0.0, 1.0]])


def _ease(u: float) -> float:
    """Smooth 0 → 1 with zero speed at both ends."""
    return 0.5 - 0.5 * math.cos(math.pi * min(max(u, 0.0), 1.0))


@dataclass(frozen=True)
class CameraPose:
    """Where the virtual camera looks: view centre in photo pixels, zoom (1 = the photo just
    covers the frame) and roll in degrees (counter-clockwise as seen in the frame)."""

    cx: float
    cy: float
    zoom: float = 1.0
    angle_deg: float = 0.0


class VirtualCamera:
    """Renders views of one photo at `size` = (width, height), optionally with sensor noise."""

    def __init__(self, photo: np.ndarray, size: Size = DEMO_SIZE, noise_sigma: float = 0.0, seed: int = 0) -> None:
        import cv2

        self.photo = photo  # (h, w, 3) uint8 RGB
        self.size = (int(size[0]), int(size[1]))
        self.noise_sigma = float(noise_sigma)
        self.seed = int(seed)
        ph, pw = photo.shape[:2]
        w, h = self.size
        self.cover = max(w / pw, h / ph)  # scale at which the photo just covers the frame
        # Sampling a big photo down would alias: keep a copy shrunk to the frame's scale.
        self._shrink = min(1.0, self.cover)
        if self._shrink < 1.0:
            small = (max(1, round(pw * self._shrink)), max(1, round(ph * self._shrink)))
            self._source = cv2.resize(photo, small, interpolation=cv2.INTER_AREA)
            fx, fy = pw / small[0], ph / small[1]
            # small pixel (xs, ys) → photo pixel ((xs + .5) fx - .5, (ys + .5) fy - .5)
            self._from_source = np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5]])
        else:
            self._source = photo
            self._from_source = np.array([[1.0, 0, 0], [0, 1.0, 0]])

    def matrix(self, pose: CameraPose) -> np.ndarray:
        """(2, 3) affine mapping photo pixel coordinates to frame pixel coordinates."""
        w, h = self.size
        s = pose.zoom * self.cover
        a = math.radians(pose.angle_deg)
        c, sn = math.cos(a) * s, math.sin(a) * s
        lin = np.array([[c, sn], [-sn, c]])  # rotate by +angle as seen with y pointing down
        centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
        t = centre - lin @ np.array([pose.cx, pose.cy])
        return np.hstack([lin, t[:, None]])

    def flow_affine(self, prev: CameraPose, cur: CameraPose) -> np.ndarray:
        """(2, 3) affine mapping frame pixel coordinates of the view at `prev` to those at `cur`.

        Forward flow at frame-`prev` pixel p is `M @ [p, 1] - p`; `cv2.warpAffine(view_prev, M, size)`
        predicts the view at `cur` (where it is visible in `prev`).
        """
        return compose_affine(self.matrix(cur), invert_affine(self.matrix(prev)))

    def view(self, pose: CameraPose) -> np.ndarray:
        """The noise-free view: uint8 (H, W, 3) RGB."""
        import cv2

        m = compose_affine(self.matrix(pose), self._from_source)
        return cv2.warpAffine(self._source, m, self.size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)

    def render(self, pose: CameraPose, t: int = 0) -> np.ndarray:
        """The view with this camera's sensor noise for frame `t` (deterministic per seed and t)."""
        return add_sensor_noise(self.view(pose), self.noise_sigma, self.seed, t)

    def centre_range(self, zoom: float, angle_deg: float) -> tuple[tuple[float, float], tuple[float, float]]:
        """((x_lo, x_hi), (y_lo, y_hi)): view centres for which the frame stays inside the photo."""
        ph, pw = self.photo.shape[:2]
        w, h = self.size
        s = zoom * self.cover
        a = math.radians(angle_deg)
        hx = (abs(math.cos(a)) * w / 2 + abs(math.sin(a)) * h / 2) / s + 1.0
        hy = (abs(math.sin(a)) * w / 2 + abs(math.cos(a)) * h / 2) / s + 1.0

        def span(half: float, n: int) -> tuple[float, float]:
            lo, hi = half - 0.5, n - 0.5 - half
            return (lo, hi) if lo <= hi else ((n - 1) / 2.0,) * 2  # type: ignore[return-value]

        return span(hx, pw), span(hy, ph)

    def sweep(self, n: int, pan_from: tuple[float, float] = (0.15, 0.3), pan_to: tuple[float, float] = (0.85, 0.7),
              zoom: tuple[float, float] = (1.1, 1.25), angle_deg: tuple[float, float] = (-1.5, 1.5)) -> list[CameraPose]:
        """`n` poses of a smooth move: pan between fractions of the free centre range, zoom and roll.

        The frame never leaves the photo (zoom ≥ 1 keeps it covered).
        """
        poses = []
        for i in range(n):
            e = _ease(i / max(1, n - 1))
            z = zoom[0] + (zoom[1] - zoom[0]) * e
            ang = angle_deg[0] + (angle_deg[1] - angle_deg[0]) * e
            (x0, x1), (y0, y1) = self.centre_range(z, ang)
            fx = pan_from[0] + (pan_to[0] - pan_from[0]) * e
            fy = pan_from[1] + (pan_to[1] - pan_from[1]) * e
            poses.append(CameraPose(x0 + (x1 - x0) * fx, y0 + (y1 - y0) * fy, z, ang))
        return poses


# Sweeps alternate direction from one photo to the next: (pan_from, pan_to, zoom, roll).
_SWEEPS = (
    ((0.15, 0.2), (0.85, 0.45), (1.1, 1.25), (-1.5, 1.5)),
    ((0.85, 0.55), (0.15, 0.35), (1.25, 1.1), (1.5, -1.5)),
)


class DemoClip:
    """The built-in demo clip: `n_frames` at `size` and `fps`, deterministic.

    Each photo is shown for `seconds_per_photo` while the camera sweeps over it; the next
    photo cross-fades in over `fade_s` (0 = a cut). Frames are rendered on demand.
    """

    def __init__(self, size: Size = DEMO_SIZE, fps: float = DEMO_FPS, n_frames: int = DEMO_FRAMES,
                 seconds_per_photo: float = 2.0, fade_s: float = 0.3, photos: Sequence[str] = DEMO_PHOTOS,
                 noise_sigma: float = 0.0, seed: int = 0) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.fps = float(fps)
        self.n_frames = int(n_frames)
        self.segment = max(2, round(seconds_per_photo * self.fps))  # frames per photo
        self.fade = min(self.segment - 1, max(0, round(fade_s * self.fps)))
        self.noise_sigma, self.seed = float(noise_sigma), int(seed)
        n_photos = max(1, math.ceil(self.n_frames / self.segment))
        names = [photos[k % len(photos)] for k in range(n_photos)]
        self.cameras = [VirtualCamera(load_photo(name), self.size) for name in names]
        # photo k is on screen for frames [k*segment, (k+1)*segment + fade): it keeps moving while it fades out
        self.paths = []
        for k, cam in enumerate(self.cameras):
            pan_from, pan_to, zoom, roll = _SWEEPS[k % len(_SWEEPS)]
            self.paths.append(cam.sweep(self.segment + self.fade, pan_from, pan_to, zoom, roll))

    def __len__(self) -> int:
        return self.n_frames

    def views(self, t: int) -> list[tuple[int, CameraPose, float]]:
        """What frame `t` shows: (photo index, pose, blend weight) for one or two photos."""
        if not 0 <= t < self.n_frames:
            raise IndexError(f"frame {t} is outside the clip (0..{self.n_frames - 1})")
        k, i = divmod(t, self.segment)
        cur = (k, self.paths[k][i], 1.0)
        if k == 0 or i >= self.fade:
            return [cur]
        w = (i + 1) / (self.fade + 1)  # weight of the incoming photo
        return [(k - 1, self.paths[k - 1][self.segment + i], 1.0 - w), (k, cur[1], w)]

    def frame(self, t: int) -> np.ndarray:
        """Frame `t`: uint8 (H, W, 3) RGB."""
        import cv2

        views = self.views(t)
        image = self.cameras[views[0][0]].view(views[0][1])
        if len(views) == 2:
            (_, _, wa), (k, pose, wb) = views
            image = cv2.addWeighted(image, wa, self.cameras[k].view(pose), wb, 0.0)
        return add_sensor_noise(image, self.noise_sigma, self.seed, t)

    def flow_affine(self, t: int) -> Optional[np.ndarray]:
        """(2, 3) affine mapping frame t-1 pixel coordinates to frame t; None at t = 0 and
        wherever t-1 and t are not single views of the same photo (cross-fades, cuts)."""
        if t <= 0:
            return None
        a, b = self.views(t - 1), self.views(t)
        if len(a) != 1 or len(b) != 1 or a[0][0] != b[0][0]:
            return None
        return self.cameras[b[0][0]].flow_affine(a[0][1], b[0][1])


class StereoDemoClip:
    """A stereo demo: the same slow pan and zoom (no roll, so the pair stays rectified) over the
    Middlebury motorcycle pair bundled with scikit-image. `frame(t)` → (left, right)."""

    def __init__(self, size: Size = DEMO_SIZE, fps: float = DEMO_FPS, n_frames: int = DEMO_FRAMES,
                 noise_sigma: float = 0.0, seed: int = 0) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.fps = float(fps)
        self.n_frames = int(n_frames)
        self.noise_sigma, self.seed = float(noise_sigma), int(seed)
        self.left = VirtualCamera(load_photo("motorcycle_left"), self.size)
        self.right = VirtualCamera(load_photo("motorcycle_right"), self.size)
        self.poses = self.left.sweep(self.n_frames, (0.2, 0.35), (0.8, 0.65), (1.05, 1.2), (0.0, 0.0))

    def __len__(self) -> int:
        return self.n_frames

    def frame(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        pose = self.poses[t]
        return (add_sensor_noise(self.left.view(pose), self.noise_sigma, self.seed, 2 * t),
                add_sensor_noise(self.right.view(pose), self.noise_sigma, self.seed, 2 * t + 1))

    def flow_affine(self, t: int) -> Optional[np.ndarray]:
        """Frame t-1 → t affine, the same for both eyes (None at t = 0)."""
        if t <= 0:
            return None
        return self.left.flow_affine(self.poses[t - 1], self.poses[t])

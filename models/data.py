"""Training data for distillation: real photographs that installed packages ship, procedural
images, multi-scale / colour-jittered variants, cached teacher outputs and crop sampling.

Nothing is downloaded. Real photographs come from scikit-image's bundled data
(`skimage.data`); a few of them are held out for evaluation (`HELD_OUT_PHOTOS`).

Each *variant* is a source image at one width with one colour jitter. Teachers run on the
whole variant at its full resolution (so stroke scale matches deployment) and the outputs are
cached on disk; training then samples random crops (flipped only when `DataConfig.flips`) from
(variant, teacher output) pairs. Camera-motion pairs for the temporal loss are made in the training loop by warping
those crops with known affine transforms (see `models/distill.py`).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from models.teachers import Teacher

log = logging.getLogger(__name__)

#: scikit-image photographs used for training (grayscale ones are expanded to RGB and tinted by jitter)
TRAIN_PHOTOS: tuple[str, ...] = (
    "astronaut", "chelsea", "immunohistochemistry", "hubble_deep_field", "retina",
    "camera", "brick", "grass", "gravel", "coins", "clock", "moon",
)
#: scikit-image photographs never used in training: the fidelity evaluation set
HELD_OUT_PHOTOS: tuple[str, ...] = ("coffee", "rocket", "stereo_motorcycle")

_CACHE_VERSION = "v1"


def skimage_data_image(name: str) -> np.ndarray:
    """The image `skimage.data.<name>()` returns, as uint8 (H, W, 3) RGB: grey ones repeated to three
    channels, float ones scaled from 0..1, the left view of stereo pairs. (Not
    `realtime.sources.synthetic.load_photo`, which reads a bundled colour photo file by a short key.)"""
    import skimage.data

    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo_motorcycle → (left, right, disparity)
        img = img[0]
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = (np.clip(img.astype(np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def procedural_image(seed: int, size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """A random synthetic scene (gradient sky, textured shapes, lines), uint8 (H, W, 3) RGB."""
    import cv2

    w, h = size
    rng = np.random.default_rng(seed)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    img = (c0 * (1 - t) + c1 * t) * np.ones((h, w, 3), np.float32)  # (H, W, 3) vertical gradient
    for _ in range(int(rng.integers(6, 14))):
        color = tuple(float(v) for v in rng.uniform(0, 255, 3))
        kind = rng.integers(0, 3)
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        if kind == 0:
            cv2.circle(img, (cx, cy), int(rng.integers(10, min(w, h) // 3)), color, -1, cv2.LINE_AA)
        elif kind == 1:
            pts = rng.integers(-120, 120, size=(int(rng.integers(3, 7)), 2)) + np.array([cx, cy])
            cv2.fillPoly(img, [pts.astype(np.int32)], color, cv2.LINE_AA)
        else:
            x2, y2 = int(rng.integers(0, w)), int(rng.integers(0, h))
            cv2.line(img, (cx, cy), (x2, y2), color, int(rng.integers(1, 8)), cv2.LINE_AA)
    # smooth value noise as texture
    for scale in (8, 32):
        noise = rng.normal(0.0, 1.0, (h // scale + 2, w // scale + 2, 1)).astype(np.float32)
        img += cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)[:, :, None] * rng.uniform(4, 18)
    img = cv2.GaussianBlur(img, (0, 0), 0.8)
    return np.clip(img, 0, 255).astype(np.uint8)


def color_jitter(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Random brightness, contrast, saturation, hue shift and (for gray images) a colour tint."""
    import cv2

    x = img.astype(np.float32) / 255.0
    gray_src = bool(np.all(img[:, :, 0] == img[:, :, 1]))
    if gray_src:
        x = x * rng.uniform(0.6, 1.0, 3).astype(np.float32) + rng.uniform(0.0, 0.25, 3).astype(np.float32) * (1 - x)
    x = x * (1.0 + strength * rng.uniform(-0.25, 0.25))  # brightness
    mean = x.mean()
    x = (x - mean) * (1.0 + strength * rng.uniform(-0.25, 0.25)) + mean  # contrast
    hsv = cv2.cvtColor(np.clip(x, 0, 1), cv2.COLOR_RGB2HSV)  # H in [0, 360)
    hsv[:, :, 0] = (hsv[:, :, 0] + strength * rng.uniform(-18, 18)) % 360.0
    hsv[:, :, 1] = np.clip(hsv[:, :, 1] * (1.0 + strength * rng.uniform(-0.3, 0.3)), 0, 1)
    x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


@dataclass(frozen=True)
class DataConfig:
    photos: tuple[str, ...] = TRAIN_PHOTOS
    widths: tuple[int, ...] = (512, 960)  # each real photo is resized to each width (multi-scale)
    jitters: int = 1  # colour-jittered copies per (photo, width), besides the original
    procedural: int = 12  # number of procedural images
    procedural_size: tuple[int, int] = (640, 480)
    max_aspect: Optional[float] = 0.6  # height / width above this is centre-cropped (None: keep)
    seed: int = 0
    crop_align: int = 8  # training crops start on this pixel grid of the teacher's output (CropSampler)
    flips: bool = False  # horizontal flips (they move the teacher's stroke grid: see CropSampler)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Variant:
    """One source image at one width with one jitter (0 = none)."""

    source: str  # "skimage:NAME" or "procedural:SEED"
    width: int
    jitter: int

    @property
    def key(self) -> str:
        return f"{self.source}@{self.width}#{self.jitter}"


def build_variants(cfg: DataConfig) -> list[Variant]:
    out = [Variant(f"skimage:{p}", w, j) for p in cfg.photos for w in cfg.widths for j in range(cfg.jitters + 1)]
    out += [Variant(f"procedural:{cfg.seed * 1000 + i}", cfg.procedural_size[0], 0) for i in range(cfg.procedural)]
    return out


def render_variant(v: Variant, cfg: DataConfig) -> np.ndarray:
    """The variant's input image, uint8 (H, W, 3) RGB, H and W multiples of 8."""
    import cv2

    kind, _, arg = v.source.partition(":")
    if kind == "skimage":
        img = skimage_data_image(arg)
    elif kind == "procedural":
        img = procedural_image(int(arg), cfg.procedural_size)
    else:
        raise ValueError(f"unknown source {v.source}")
    h, w = img.shape[:2]
    nw, nh = v.width // 8 * 8, max(8, round(h * v.width / w) // 8 * 8)
    if (nw, nh) != (w, h):
        interp = cv2.INTER_AREA if nw < w else cv2.INTER_CUBIC
        img = cv2.resize(img, (nw, nh), interpolation=interp)
    if cfg.max_aspect and nh > nw * cfg.max_aspect:  # a video-like frame: centre crop tall images
        ch = int(nw * cfg.max_aspect) // 8 * 8
        top = (nh - ch) // 2 // 8 * 8
        img = img[top : top + ch]
    if v.jitter:
        seed = int(hashlib.sha1(f"{cfg.seed}:{v.key}".encode()).hexdigest()[:8], 16)
        img = color_jitter(img, np.random.default_rng(seed))
    return np.ascontiguousarray(img)


class TeacherCache:
    """Teacher outputs on disk as PNG, keyed by teacher fingerprint + a hash of the input image."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, teacher: Teacher, image: np.ndarray) -> Path:
        digest = hashlib.sha1(image.tobytes() + str(image.shape).encode()).hexdigest()[:20]
        return self.root / f"{teacher.fingerprint}-{_CACHE_VERSION}" / f"{digest}.png"

    def get(self, teacher: Teacher, image: np.ndarray) -> np.ndarray:
        import cv2

        path = self.path(teacher, image)
        if path.is_file():
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is not None and bgr.shape == image.shape:
                return np.ascontiguousarray(bgr[:, :, ::-1])
            log.warning("cache entry %s is unreadable; recomputing", path)
        out = teacher(image)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.png")
        cv2.imwrite(str(tmp), np.ascontiguousarray(out[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1])
        tmp.replace(path)
        return out


@dataclass
class Example:
    image: int  # index into TrainingSet.images
    style: int  # style index
    target: np.ndarray  # uint8 (H, W, 3), the teacher's output on that image


@dataclass
class TrainingSet:
    images: list[np.ndarray]  # uint8 (H, W, 3) inputs
    examples: list[Example]
    sources: list[str]  # one line per input image, for the manifest


def build_training_set(teachers: Sequence[Teacher], cfg: DataConfig, cache: TeacherCache,
                       progress: bool = True) -> TrainingSet:
    """Render every variant, run (or load) every teacher on it; paired teachers add their pairs."""
    from tqdm import tqdm

    variants = build_variants(cfg)
    images = [render_variant(v, cfg) for v in variants]
    sources = [v.key for v in variants]
    examples: list[Example] = []
    unpaired = [(i, t) for i, t in enumerate(teachers) if not t.paired]
    jobs = [(vi, si, t) for vi in range(len(images)) for si, t in unpaired]
    for vi, si, t in tqdm(jobs, desc="teacher outputs", unit="img", disable=not progress):
        examples.append(Example(vi, si, cache.get(t, images[vi])))
    for si, t in enumerate(teachers):
        if t.paired:
            for name, photo, styl in t.pairs():
                images.append(_crop8(photo))
                sources.append(f"{t.spec}/{name}")
                examples.append(Example(len(images) - 1, si, _crop8(styl)))
    return TrainingSet(images, examples, sources)


def _crop8(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    return np.ascontiguousarray(img[: h // 8 * 8, : w // 8 * 8])


class CropSampler:
    """Random square crops (multi-scale comes from the variants) on an `align`-pixel grid, optionally
    flipped.

    The teachers' strided layers lock their strokes to a 4-pixel grid of the image they ran on: the
    same photo shifted by 1 or 2 pixels comes out 14-33 dB different, by 4 pixels 44-56 dB alike
    (`builtin:19` / `builtin:14`, 960 px). Crops on an 8-pixel grid (the student's own) keep the
    teacher's grid where the student can see it; a flip would put it on the other phase, so flips
    are off by default.
    """

    def __init__(self, data: TrainingSet, size: int, seed: int, align: int = 8, flips: bool = False) -> None:
        self.data = data
        self.size = size
        self.align = max(1, int(align))
        self.flips = flips
        self.rng = np.random.default_rng(seed)
        usable = [e for e in data.examples if min(data.images[e.image].shape[:2]) >= size]
        if not usable:
            raise ValueError(f"no training image is at least {size}px on its short side")
        self.examples = usable
        self.last_images = np.zeros(0, dtype=np.int64)  # TrainingSet.images index of each crop of the last batch

    def sample(self, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """→ inputs (B, size, size, 3) uint8, targets (B, size, size, 3) uint8, styles (B,) int64."""
        xs, ys, ss, ims = [], [], [], []
        for _ in range(batch):
            e = self.examples[int(self.rng.integers(len(self.examples)))]
            ims.append(e.image)
            img = self.data.images[e.image]
            h, w = img.shape[:2]
            a = self.align
            top = int(self.rng.integers((h - self.size) // a + 1)) * a
            left = int(self.rng.integers((w - self.size) // a + 1)) * a
            x = img[top : top + self.size, left : left + self.size]
            y = e.target[top : top + self.size, left : left + self.size]
            if self.flips and self.rng.random() < 0.5:
                x, y = x[:, ::-1], y[:, ::-1]
            xs.append(x)
            ys.append(y)
            ss.append(e.style)
        self.last_images = np.asarray(ims, dtype=np.int64)
        return np.stack(xs), np.stack(ys), np.asarray(ss, dtype=np.int64)


def heldout_images(width: int = 960, names: Optional[Sequence[str]] = None) -> list[tuple[str, np.ndarray]]:
    """The held-out evaluation photographs at `width` (height to keep the aspect, multiple of 8)."""
    cfg = DataConfig()
    return [(n, render_variant(Variant(f"skimage:{n}", width, 0), cfg)) for n in (names or HELD_OUT_PHOTOS)]

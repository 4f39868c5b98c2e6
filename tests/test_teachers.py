"""Teachers: every kind on a small input, spec parsing, errors, the output cache, data variants."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from models.data import (DataConfig, TeacherCache, Variant, build_variants, color_jitter, procedural_image,
                         render_variant)
from models.teachers import (BuiltinTeacher, CelTeacher, ImageStyleTeacher, OnnxTeacher, PairsTeacher,
                             parse_teacher, parse_teachers)
from genreal_errors import UserError


@pytest.fixture(scope="module")
def img() -> np.ndarray:
    return procedural_image(3, (72, 56))  # (56, 72, 3): sides not multiples of 8 on purpose → crop below
    # (the teachers accept any size)


def _check(out: np.ndarray, like: np.ndarray) -> None:
    assert out.shape == like.shape and out.dtype == np.uint8 and out.flags.c_contiguous


def test_builtin_teacher_and_blend(img):
    odd = img[:53, :70]
    t = parse_teacher("builtin:19")
    assert isinstance(t, BuiltinTeacher)
    y19 = t(odd)
    _check(y19, odd)
    assert np.abs(y19.astype(int) - odd.astype(int)).mean() > 5  # it really restyles
    blend = parse_teacher("builtin:3:0.5,12:0.5")
    assert blend.weights[3] == pytest.approx(0.5) and blend.weights[12] == pytest.approx(0.5)
    _check(blend(odd), odd)
    assert blend.fingerprint != t.fingerprint


def test_cel_teacher(img):
    t = parse_teacher("procedural:cel")
    assert isinstance(t, CelTeacher) and isinstance(parse_teacher("cel"), CelTeacher)
    y = t(img)
    _check(y, img)
    assert np.array_equal(y, t(img))  # deterministic
    # a flat palette: far fewer distinct colours than the input
    assert len(np.unique(y.reshape(-1, 3), axis=0)) < len(np.unique(img.reshape(-1, 3), axis=0))


def test_image_style_teacher(tmp_path, img):
    style = procedural_image(7, (90, 70))
    path = tmp_path / "style.png"
    cv2.imwrite(str(path), style[:, :, ::-1])
    t = parse_teacher(f"image:{path}")
    assert isinstance(t, ImageStyleTeacher) and t.style_vec.shape == (1, 1, 1, 100)
    _check(t(img), img)
    big = procedural_image(8, (400, 120))  # wider than one 384 tile: tiled and blended
    _check(t(big), big)


def _onnx_invert(path, nhwc: bool, fixed: bool) -> None:
    import onnx
    from onnx import TensorProto, helper

    dims = [1, 24, 32, 3] if nhwc else [1, 3, 24, 32]
    if not fixed:
        dims = [1, "h", "w", 3] if nhwc else [1, 3, "h", "w"]
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph([helper.make_node("Sub", ["one", "x"], ["y"])], "invert", [inp], [out], [one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.mark.parametrize("nhwc,fixed", [(False, False), (True, False), (False, True)])
def test_onnx_teacher_layouts(tmp_path, img, nhwc, fixed):
    pytest.importorskip("onnx", reason="building a test ONNX model needs the onnx package")
    path = tmp_path / "invert.onnx"
    _onnx_invert(path, nhwc, fixed)
    t = parse_teacher(f"onnx:{path}")
    assert isinstance(t, OnnxTeacher) and t.nchw == (not nhwc)
    y = t(img)
    _check(y, img)
    if not fixed:
        assert np.abs(y.astype(int) - (255 - img.astype(int))).max() <= 1
    else:  # resized to 32×24 and back: still an inverted image
        assert np.corrcoef(y.ravel().astype(float), 255.0 - img.ravel())[0, 1] > 0.8


def test_pairs_teacher(tmp_path, img):
    (tmp_path / "photo").mkdir()
    (tmp_path / "stylized").mkdir()
    for i in range(2):
        cv2.imwrite(str(tmp_path / "photo" / f"p{i}.png"), img)
        cv2.imwrite(str(tmp_path / "stylized" / f"p{i}.jpg"), 255 - img)
    cv2.imwrite(str(tmp_path / "photo" / "lonely.png"), img)  # no partner: ignored
    t = parse_teacher(f"pairs:{tmp_path}")
    assert isinstance(t, PairsTeacher) and t.paired and t.names == ["p0", "p1"]
    pairs = t.pairs()
    assert len(pairs) == 2 and pairs[0][1].shape == pairs[0][2].shape == img.shape
    with pytest.raises(UserError, match="cannot stylize"):
        t(img)


@pytest.mark.parametrize("spec,match", [
    ("builtin:26", "0-25"), ("builtin:x", "unknown style"), ("builtin:", "bad teacher spec"),
    ("nonsense", "bad teacher spec"), ("procedural:watercolor", "bad teacher spec"),
    ("image:/no/such/style.png", "file not found"), ("onnx:/no/such/model.onnx", "file not found"),
    ("pairs:/no/such/dir", "folder not found"),
])
def test_bad_specs(spec, match):
    with pytest.raises(UserError, match=match):
        parse_teacher(spec)


def test_bad_files(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx")
    with pytest.raises(UserError, match="cannot load ONNX model"):
        parse_teacher(f"onnx:{junk}")
    notimg = tmp_path / "style.png"
    notimg.write_text("hello")
    with pytest.raises(UserError, match="cannot read image"):
        parse_teacher(f"image:{notimg}")
    (tmp_path / "pairs").mkdir()
    with pytest.raises(UserError, match="photo/ and stylized/"):
        parse_teacher(f"pairs:{tmp_path / 'pairs'}")
    with pytest.raises(UserError, match="no --teacher"):
        parse_teachers([])


def test_cache_round_trip(tmp_path, img):
    calls = []

    class Counting(CelTeacher):
        def __call__(self, image):
            calls.append(1)
            return super().__call__(image)

    cache = TeacherCache(tmp_path)
    t = Counting()
    a = cache.get(t, img)
    b = cache.get(t, img)
    assert np.array_equal(a, b) and len(calls) == 1  # second call read the PNG
    assert cache.get(t, color_jitter(img, np.random.default_rng(0))).shape == img.shape and len(calls) == 2


def test_variants_multiscale_and_jitter():
    cfg = DataConfig(photos=("astronaut",), widths=(96, 160), jitters=1, procedural=1, procedural_size=(64, 48))
    vs = build_variants(cfg)
    assert len(vs) == 2 * 2 + 1
    a0 = render_variant(Variant("skimage:astronaut", 96, 0), cfg)
    a1 = render_variant(Variant("skimage:astronaut", 96, 1), cfg)
    big = render_variant(Variant("skimage:astronaut", 160, 0), cfg)
    assert a0.shape[1] == 96 and big.shape[1] == 160 and a0.shape[0] % 8 == 0
    assert a0.shape[0] <= 0.6 * 96 + 8  # tall photos are centre-cropped to a video-like frame
    assert not np.array_equal(a0, a1)  # jittered
    assert np.array_equal(a1, render_variant(Variant("skimage:astronaut", 96, 1), cfg))  # deterministic
    assert np.array_equal(procedural_image(5), procedural_image(5))

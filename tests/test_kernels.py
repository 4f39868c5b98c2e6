"""kernels/: every fast path against the float64 numpy reference (kernels/reference.py).

- CPU (OpenCV/numpy) paths: random inputs, odd sizes, 1×1 and 4K.
- Triton kernels: under Triton's interpreter on CPU tensors (small inputs: it is slow), and on a
  CUDA GPU when there is one (``-m gpu``).
- The torch-op chain the GPU benchmark compares against: same semantics, small inputs.
- A few anchors that pin the reference itself to independent facts (OpenCV's resize convention,
  BT.601 colours, integer shifts, hysteresis behaviour).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import kernels
from kernels import cpu, reference as ref, spec

from tests.fakes import load_triton_interpreted

REPO = Path(__file__).resolve().parents[1]
FMTS = ("rgb", "bgr", "nv12", "yuyv")
# CPU-path tolerances (see kernels/cpu.py docstrings): OpenCV rounds through uint8
CPU_TOL = {"rgb": 1.0 / 255, "bgr": 1.0 / 255, "nv12": 2.0 / 255, "yuyv": 2.0 / 255}
F16_TOL = 1e-3


def camera(rng: np.random.Generator, fmt: str, w: int, h: int) -> np.ndarray:
    """A random camera buffer of `fmt` for a w×h picture."""
    if fmt == "nv12":
        return rng.integers(0, 256, (h * 3 // 2, w), np.uint8)
    if fmt == "yuyv":
        return rng.integers(0, 256, (h, 2 * w), np.uint8)
    return rng.integers(0, 256, (h, w, 3), np.uint8)


def min_size(fmt: str, w: int, h: int) -> tuple[int, int]:
    """Round a requested picture size up to what the format allows (NV12: even×even, YUYV: even width)."""
    if fmt == "nv12":
        return w + w % 2, h + h % 2
    if fmt == "yuyv":
        return w + w % 2, h
    return w, h


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="module")
def interp():
    """TritonOps from a private copy of kernels/triton_kernels.py decorated under TRITON_INTERPRET=1
    (Triton picks interpreter vs compiler per @triton.jit at decoration time), on CPU tensors."""
    pytest.importorskip("torch")
    pytest.importorskip("triton", reason="triton not installed: pip install 'generative-reality[kernels]'")
    module = load_triton_interpreted(REPO / "kernels" / "triton_kernels.py", "kernels._triton_interpreted")
    return module.TritonOps("cpu")


@pytest.fixture(scope="module")
def chain():
    torch_chain = pytest.importorskip("kernels.torch_chain")
    return torch_chain.TorchChainOps("cpu")


def _cuda_ops():
    torch = pytest.importorskip("torch")
    pytest.importorskip("triton", reason="triton not installed")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from kernels.triton_kernels import TritonOps

    return TritonOps("cuda")


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _t(x: np.ndarray, device: str = "cpu"):
    import torch

    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


def _check_pre(got, want: np.ndarray, tol: float) -> None:
    got = _np(got)
    assert got.shape == want.shape and got.dtype == want.dtype
    err = np.abs(got.astype(np.float64) - want.astype(np.float64)).max()
    assert err <= tol + (F16_TOL if want.dtype == np.float16 else 1e-6), err


def _check_u8(got, want: np.ndarray, max_frac: float = 0.35) -> None:
    """uint8 images equal to within 1 (double rounding), and mostly exactly."""
    got = _np(got)
    assert got.shape == want.shape and got.dtype == np.uint8
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1, diff.max()
    assert (diff > 0).sum() <= max(2, max_frac * diff.size)


# --- the reference pinned to independent facts -------------------------------------------------


def test_reference_resize_matches_opencv_convention(rng):
    import cv2

    img = rng.random((23, 37, 3)).astype(np.float32)
    for w, h in [(61, 17), (8, 40), (1, 1), (37, 23), (18, 11)]:
        want = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        assert np.abs(ref.resize_bilinear(img, w, h) - want).max() < 1e-5


def test_reference_bt601_anchors():
    def nv12(y, u, v):
        buf = np.empty((3, 2), np.uint8)
        buf[:2], buf[2, 0], buf[2, 1] = y, u, v
        return ref.decode_rgb(buf, "nv12")[0, 0]

    np.testing.assert_allclose(nv12(235, 128, 128), [1, 1, 1], atol=1e-4)
    np.testing.assert_allclose(nv12(16, 128, 128), [0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(nv12(5, 128, 128), [0, 0, 0], atol=1e-6)  # footroom is black
    np.testing.assert_allclose(nv12(81, 90, 240), [1, 0, 0], atol=0.01)  # BT.601 red
    np.testing.assert_allclose(nv12(145, 54, 34), [0, 1, 0], atol=0.01)  # BT.601 green
    yuyv = np.array([[81, 90, 145, 240]], np.uint8)  # Y0 U Y1 V: two pixels sharing chroma
    px = ref.decode_rgb(yuyv, "yuyv")[0]
    np.testing.assert_allclose(px[0], [1, 0, 0], atol=0.01)
    assert px[1, 1] > px[0, 1]  # brighter second pixel, same chroma


def test_reference_preprocess_pads_by_edge_replication(rng):
    img = camera(rng, "rgb", 13, 5)
    x = ref.preprocess(img, "rgb", out_size=(13, 5), dtype="float32")
    assert x.shape == (1, 3, 8, 16)
    np.testing.assert_allclose(x[0, :, :5, :13], img.transpose(2, 0, 1) / 255.0, atol=1e-7)
    assert (x[0, :, 5:, :13] == x[0, :, 4:5, :13]).all() and (x[0, :, :, 13:] == x[0, :, :, 12:13]).all()


def test_reference_warp_integer_shift_and_borders(rng):
    lat = rng.standard_normal((1, 2, 6, 9)).astype(np.float32)
    A = np.array([[1.0, 0, 2], [0, 1, 1]])  # out(x, y) = in(x + 2, y + 1)
    out = ref.warp_affine(lat, A)
    np.testing.assert_allclose(out[0, :, :5, :7], lat[0, :, 1:, 2:], atol=1e-6)
    np.testing.assert_allclose(out[0, :, 5, :7], lat[0, :, 5, 2:], atol=1e-6)  # replicated bottom row
    zeros = ref.warp_affine(lat, A, border="zeros")
    assert np.abs(zeros[0, :, :, 7:]).max() == 0 and np.abs(zeros[0, :, 5]).max() == 0
    np.testing.assert_allclose(ref.warp_affine(lat, [[1, 0, 0], [0, 1, 0]]), lat, atol=1e-6)


def test_reference_fsq_hysteresis_behaviour():
    levels = (5,)  # values -1, -0.5, 0, 0.5, 1 → spacing 0.5
    z = np.array([-1.0, -0.74, 0.1, 0.3, 0.95], np.float32).reshape(1, 1, 1, 5)
    k, changed = ref.fsq_hysteresis(z, None, levels, 0.3)
    assert k.ravel().tolist() == [0, 1, 2, 3, 4] and changed.all()
    # previous level 2 (value 0); z = 0.3 is 0.6 spacings from it, 0.4 from level 3: closer by 0.2
    prev = np.full((1, 1, 1, 1), 2, np.int32)
    z1 = np.full((1, 1, 1, 1), 0.3, np.float32)
    assert ref.fsq_hysteresis(z1, prev, levels, margin=0.3)[0].item() == 2  # within the margin: keep
    k2, ch2 = ref.fsq_hysteresis(z1, prev, levels, margin=0.1)
    assert k2.item() == 3 and ch2.all()  # beyond the margin: switch
    k3, ch3 = ref.fsq_hysteresis(z1, prev, levels, margin=0.0)
    assert k3.item() == 3 and ch3.item()


def test_fsq_hysteresis_absorbs_noise(rng):
    levels = (3, 5, 7, 8)
    z = np.tanh(rng.standard_normal((1, 4, 20, 30))).astype(np.float32)
    k0, _ = ref.fsq_hysteresis(z, None, levels, 0.25)
    noisy = np.clip(z + rng.normal(0, 0.01, z.shape), -1, 1).astype(np.float32)
    flips_plain = (ref.fsq_hysteresis(noisy, None, levels, 0)[0] != k0).mean()
    k1, changed = ref.fsq_hysteresis(noisy, k0, levels, 0.25)
    assert flips_plain > 0 and (k1 != k0).mean() < flips_plain / 5
    assert (changed == (k1 != k0).any(axis=1)).all()


def test_affine_to_latent_conjugates_the_image_motion():
    A_img = np.array([[0.98, 0.03, 5.5], [-0.02, 1.01, -3.25]])
    A_lat = kernels.affine_to_latent(A_img, 8)
    p_lat = np.array([3.0, 7.0])
    to_img = lambda p: 8 * p + 3.5  # noqa: E731  centre of latent pixel p in image pixels
    want = (A_img[:, :2] @ to_img(p_lat) + A_img[:, 2] - 3.5) / 8
    np.testing.assert_allclose(A_lat[:, :2] @ p_lat + A_lat[:, 2], want)
    np.testing.assert_allclose(kernels.affine_to_latent([[1, 0, 16], [0, 1, -8]], 8), [[1, 0, 2], [0, 1, -1]])


# --- preprocess ---------------------------------------------------------------------------------

PRE_CASES_CPU = [((1, 1), (1, 1)), ((1, 1), (9, 5)), ((37, 23), (61, 17)), ((61, 35), (18, 11)),
                 ((640, 360), (1280, 720))]


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("src,dst", PRE_CASES_CPU)
def test_cpu_preprocess_matches_reference(rng, fmt, src, dst):
    w, h = min_size(fmt, *src)
    img = camera(rng, fmt, w, h)
    assert ref.preprocess(img, fmt, dst).shape == (1, 3, -(-dst[1] // 8) * 8, -(-dst[0] // 8) * 8)
    for dtype in ("float32", "float16"):
        _check_pre(cpu.preprocess(img, fmt, dst, dtype), ref.preprocess(img, fmt, dst, dtype), CPU_TOL[fmt])


@pytest.mark.parametrize("fmt,src,dst", [("rgb", (3840, 2160), (1917, 1081)), ("nv12", (3840, 2160), (640, 360)),
                                         ("bgr", (960, 540), (3840, 2160))])
@pytest.mark.slow
def test_cpu_preprocess_4k(rng, fmt, src, dst):
    img = camera(rng, fmt, *src)
    _check_pre(cpu.preprocess(img, fmt, dst, "float32"), ref.preprocess(img, fmt, dst, "float32"), CPU_TOL[fmt])


@pytest.mark.parametrize("fmt", FMTS)
def test_interp_preprocess_matches_reference(interp, rng, fmt):
    for src, dst in [((1, 1), (1, 1)), ((2, 2), (5, 3)), ((37, 23), (17, 11)), ((30, 20), (64, 40))]:
        w, h = min_size(fmt, *src)
        img = camera(rng, fmt, w, h)
        for dtype in ("float32", "float16"):
            _check_pre(interp.preprocess(_t(img), fmt, dst, dtype), ref.preprocess(img, fmt, dst, dtype), 1e-5)


def test_preprocess_stereo_batch_and_padding_multiple(interp, rng):
    eyes = [camera(rng, "rgb", 21, 13), camera(rng, "rgb", 21, 13)]
    want = ref.preprocess(eyes, "rgb", (19, 9), "float32", pad_multiple=4)
    assert want.shape == (2, 3, 12, 20)
    np.testing.assert_allclose(want[1:], ref.preprocess(eyes[1], "rgb", (19, 9), "float32", 4))
    _check_pre(cpu.preprocess(eyes, "rgb", (19, 9), "float32", 4), want, CPU_TOL["rgb"])
    _check_pre(cpu.preprocess(np.stack(eyes), "rgb", (19, 9), "float32", 4), want, CPU_TOL["rgb"])
    _check_pre(interp.preprocess([_t(e) for e in eyes], "rgb", (19, 9), "float32", 4), want, 1e-5)
    _check_pre(interp.preprocess(_t(np.stack(eyes)), "rgb", (19, 9), "float32", 4), want, 1e-5)
    assert cpu.preprocess(eyes[0], "rgb", None, "float32", pad_multiple=1).shape == (1, 3, 13, 21)


def test_preprocess_yuyv_layouts_and_stacks(rng):
    flat = camera(rng, "yuyv", 6, 4)  # (H, 2W)
    want = ref.preprocess(flat, "yuyv", (5, 3))
    np.testing.assert_array_equal(ref.preprocess(flat.reshape(4, 6, 2), "yuyv", (5, 3)), want)
    assert ref.preprocess(np.stack([flat, flat]), "yuyv", (5, 3)).shape == (2, 3, 8, 8)
    assert ref.preprocess(np.stack([flat.reshape(4, 6, 2)] * 3), "yuyv", (5, 3)).shape == (3, 3, 8, 8)
    _check_pre(cpu.preprocess(np.stack([flat, flat]), "yuyv", (5, 3))[1:], want, CPU_TOL["yuyv"])


@pytest.mark.parametrize("fmt,shape", [("nv12", (5, 4)), ("nv12", (6, 3)), ("yuyv", (4, 6)), ("yuyv", (4, 3, 2)),
                                       ("rgb", (4, 4)), ("rgba", (4, 4, 3))])
def test_preprocess_rejects_malformed_buffers(fmt, shape):
    with pytest.raises(ValueError):
        cpu.preprocess(np.zeros(shape, np.uint8), fmt)


def test_preprocess_rejects_bad_arguments():
    img = np.zeros((4, 4, 3), np.uint8)
    for kwargs in ({"dtype": "int8"}, {"out_size": (0, 4)}, {"pad_multiple": 0}):
        with pytest.raises(ValueError):
            cpu.preprocess(img, **kwargs)


# --- postprocess --------------------------------------------------------------------------------

# (B, Hp, Wp, valid h, valid w, out W, out H, stereo_pack); the blend with the camera image ("strength")
# is the frame driver's (realtime/driver.py, tests/test_driver.py), not a kernel's
POST_CASES = [
    (1, 8, 8, 1, 1, 1, 1, False),
    (1, 8, 8, 1, 1, 7, 5, False),
    (1, 8, 16, 3, 13, 7, 3, False),
    (2, 24, 40, 21, 37, 64, 33, True),
    (2, 16, 16, 9, 9, 9, 9, False),
    (2, 16, 24, 13, 17, 11, 7, True),
]


def _post_inputs(rng, case):
    b, hp, wp, h, w, wo, ho, pack = case
    x = (rng.random((b, 3, hp, wp), dtype=np.float32) * 1.4 - 0.2)  # model output overshoots [0, 1]
    return x, (h, w), (wo, ho), pack


@pytest.mark.parametrize("case", POST_CASES)
def test_cpu_postprocess_matches_reference(rng, case):
    x, valid, size, pack = _post_inputs(rng, case)
    _check_u8(cpu.postprocess(x, valid, size, pack), ref.postprocess(x, valid, size, pack))
    _check_u8(cpu.postprocess(x.astype(np.float16), valid, size, pack),
              ref.postprocess(x.astype(np.float16), valid, size, pack))


@pytest.mark.slow
def test_cpu_postprocess_4k(rng):
    x, valid, size, pack = _post_inputs(rng, (1, 1088, 1920, 1080, 1917, 3840, 2160, False))
    _check_u8(cpu.postprocess(x, valid, size, pack), ref.postprocess(x, valid, size, pack))


@pytest.mark.parametrize("case", POST_CASES)
def test_interp_postprocess_matches_reference(interp, rng, case):
    x, valid, size, pack = _post_inputs(rng, case)
    got = interp.postprocess(_t(x), valid, size, pack)
    _check_u8(got, ref.postprocess(x, valid, size, pack), max_frac=0.01)


def test_postprocess_stereo_pack_is_the_two_eyes_side_by_side(interp, rng):
    x, valid, size, _ = _post_inputs(rng, (2, 16, 16, 10, 12, 12, 10, True))
    want = ref.postprocess(x, valid, size, True)
    assert want.shape == (10, 24, 3)
    np.testing.assert_array_equal(want[:, :12], ref.postprocess(x[:1], valid, size))
    for impl, xx in ((cpu, x), (interp, _t(x))):
        _check_u8(impl.postprocess(xx, valid, size, True), want)


def test_postprocess_rejects_bad_arguments():
    x = np.zeros((1, 3, 8, 8), np.float32)
    for args, kwargs in [(((9, 8),), {}), (((8, 8),), {"stereo_pack": True})]:
        with pytest.raises(ValueError):
            cpu.postprocess(x, *args, **kwargs)


# --- cache kernels ------------------------------------------------------------------------------


def _fsq_inputs(rng, shape, levels):
    z = np.tanh(rng.standard_normal(shape) * 1.5).astype(np.float32)
    z[..., 0, 0] = [1.0, -1.0, 1.3, -7.0][: shape[1]] + [0.0] * max(0, shape[1] - 4)  # range ends, out of range
    prev, _ = ref.fsq_hysteresis(z, None, levels, 0.0)
    z2 = np.clip(z + rng.normal(0, 0.08, z.shape), -1, 1).astype(np.float32)
    return z, prev, z2


@pytest.mark.parametrize("shape,levels", [((1, 1, 1, 1), (2,)), ((2, 5, 17, 23), (3, 5, 7, 8, 2)),
                                          ((1, 4, 135, 240), (7, 5, 5, 5))])
def test_cpu_fsq_hysteresis_is_bit_exact(rng, shape, levels):
    z, prev, z2 = _fsq_inputs(rng, shape, levels)
    for zz, pp in ((z, None), (z2, prev)):
        for margin in (0.0, 0.3):
            k, ch = cpu.fsq_hysteresis(zz, pp, levels, margin)
            k_ref, ch_ref = ref.fsq_hysteresis(zz, pp, levels, margin)
            assert k.dtype == np.int32 and ch.dtype == bool
            np.testing.assert_array_equal(k, k_ref)
            np.testing.assert_array_equal(ch, ch_ref)


@pytest.mark.parametrize("shape,levels", [((1, 1, 1, 1), (2,)), ((2, 5, 17, 23), (3, 5, 7, 8, 2))])
def test_interp_fsq_hysteresis_is_bit_exact(interp, rng, shape, levels):
    z, prev, z2 = _fsq_inputs(rng, shape, levels)
    for zz, pp in ((z, None), (z2, prev)):
        k, ch = interp.fsq_hysteresis(_t(zz), None if pp is None else _t(pp.astype(np.int64)), levels, 0.3)
        k_ref, ch_ref = ref.fsq_hysteresis(zz, pp, levels, 0.3)
        np.testing.assert_array_equal(_np(k), k_ref)
        np.testing.assert_array_equal(_np(ch), ch_ref)


def test_dilate_reference_square():
    m = np.zeros((1, 7, 9), bool)
    m[0, 0, 4] = True
    m[0, 6, 8] = True
    out = ref.dilate_mask(m, 2)
    want = np.zeros_like(m)
    want[0, 0:3, 2:7] = True
    want[0, 4:7, 6:9] = True
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 13, 17), (1, 2160, 3840)])
def test_cpu_dilate_matches_reference(rng, shape):
    m = rng.random(shape) < 0.02
    for r in (0, 1, 3):
        np.testing.assert_array_equal(cpu.dilate_mask(m, r), ref.dilate_mask(m, r))


def test_interp_dilate_matches_reference(interp, rng):
    for shape in [(1, 1, 1), (2, 13, 17), (1, 9, 140)]:
        m = rng.random(shape) < 0.05
        for r in (0, 1, 2):
            got = interp.dilate_mask(_t(m), r)
            assert got.dtype.is_floating_point is False
            np.testing.assert_array_equal(_np(got), ref.dilate_mask(m, r))


WARP_A = [np.array([[0.9, 0.1, -2.3], [0.05, 1.1, 1.7]]),  # one matrix for the batch
          np.array([[[1.2, -0.3, 4.0], [0.2, 0.8, -3.0]], [[1.0, 0.0, 0.5], [0.0, 1.0, -0.25]]])]


def _warp_inputs(rng, shape):
    lat = rng.standard_normal(shape).astype(np.float32)
    new = rng.standard_normal(shape).astype(np.float32)
    b, _, h, w = shape
    return lat, new, rng.random((b, h, w)) < 0.4, rng.random((b, h, w)).astype(np.float32)


@pytest.mark.parametrize("shape", [(2, 1, 1, 1), (2, 3, 13, 19), (2, 8, 135, 240)])
@pytest.mark.parametrize("border", spec.BORDERS)
def test_cpu_warps_and_blends_match_reference(rng, shape, border):
    lat, new, mask, alpha = _warp_inputs(rng, shape)
    for A in WARP_A:
        for out_hw in (None, (shape[2] + 2, max(1, shape[3] - 3))):
            got = cpu.warp_affine(lat, A, out_hw, border)
            assert np.abs(got - ref.warp_affine(lat, A, out_hw, border)).max() < 1e-4
    np.testing.assert_array_equal(cpu.masked_blend(lat, new, mask), ref.masked_blend(lat, new, mask))
    assert np.abs(cpu.masked_blend(lat, new, alpha) - ref.masked_blend(lat, new, alpha)).max() < 1e-6


def test_cpu_numpy_warp_fallback_is_exact(rng):
    lat = rng.standard_normal((3, 11, 14)).astype(np.float32)
    for border in spec.BORDERS:
        got = cpu._warp_numpy(lat, WARP_A[0], 9, 16, border)
        assert np.abs(got - ref.warp_affine(lat[None], WARP_A[0], (9, 16), border)[0]).max() < 1e-5


@pytest.mark.parametrize("shape", [(2, 1, 1, 1), (2, 3, 13, 19), (1, 4, 20, 64)])
@pytest.mark.parametrize("border", spec.BORDERS)
def test_interp_warps_and_blends_match_reference(interp, rng, shape, border):
    lat, new, mask, alpha = _warp_inputs(rng, shape)
    for A in WARP_A[: 1 if shape[0] == 1 else 2]:
        got = interp.warp_affine(_t(lat), A, (shape[2] + 1, shape[3] + 2), border)
        assert np.abs(_np(got) - ref.warp_affine(lat, A, (shape[2] + 1, shape[3] + 2), border)).max() < 1e-4
        got = interp.warp_affine(_t(lat), _t(A.astype(np.float32)), None, border)  # A as a tensor
        assert np.abs(_np(got) - ref.warp_affine(lat, A, None, border)).max() < 1e-4
    got = interp.masked_blend(_t(lat), _t(new), _t(mask))
    np.testing.assert_array_equal(_np(got), ref.masked_blend(lat, new, mask))
    got = interp.masked_blend(_t(lat), _t(new), _t(alpha))
    assert np.abs(_np(got) - ref.masked_blend(lat, new, alpha)).max() < 1e-6


def test_interp_latent_float16(interp, rng):
    lat, new, mask, _ = _warp_inputs(rng, (1, 2, 9, 12))
    lat16, new16 = lat.astype(np.float16), new.astype(np.float16)
    got = interp.warp_affine(_t(lat16), WARP_A[0])
    assert got.dtype.itemsize == 2
    assert np.abs(_np(got).astype(np.float32) - ref.warp_affine(lat16, WARP_A[0]).astype(np.float32)).max() < 2e-3
    got = interp.masked_blend(_t(lat16), _t(new16), _t(mask))
    assert got.dtype.itemsize == 2
    np.testing.assert_array_equal(_np(got), ref.masked_blend(lat16, new16, mask))


# --- the compiled path, without a GPU ------------------------------------------------------------

_PRE_SIG = dict(src_ptr="*u8", out_ptr="*fp16", h_in="i32", w_in="i32", src_stride_b="i32", row_stride="i32",
                H="i32", W="i32", Hp="i32", Wp="i32", scale_y="fp32", scale_x="fp32", max_sy="fp32", max_sx="fp32")
_POST_SIG = dict(x_ptr="*fp16", out_ptr="*u8", H="i32", W="i32", Hp="i32", Wp="i32", Ho="i32",
                 Wo="i32", scale_y="fp32", scale_x="fp32", max_sy="fp32", max_sx="fp32", out_stride_b="i32",
                 out_stride_y="i32")
_WARP_SIG = dict(src_ptr="*fp16", a_ptr="*fp32", out_ptr="*fp16", C="i32", h_in="i32", w_in="i32", H="i32",
                 W="i32", a_stride_b="i32")
_COMPILE_CASES = [
    ("_preprocess_kernel", _PRE_SIG, dict(FMT=0, BLOCK_H=8, BLOCK_W=128)),
    ("_preprocess_kernel", _PRE_SIG, dict(FMT=2, BLOCK_H=8, BLOCK_W=128)),
    ("_preprocess_kernel", dict(_PRE_SIG, out_ptr="*fp32"), dict(FMT=3, BLOCK_H=8, BLOCK_W=128)),
    ("_postprocess_kernel", _POST_SIG, dict(BLOCK_H=8, BLOCK_W=128)),
    ("_fsq_kernel", dict(z_ptr="*fp16", prev_ptr="*i32", levels_ptr="*i32", out_ptr="*i32", changed_ptr="*u8",
                         C="i32", HW="i32", margin="fp32"), dict(HAS_PREV=True, BLOCK=1024)),
    ("_dilate_kernel", dict(m_ptr="*u8", out_ptr="*u8", H="i32", W="i32", R="i32"), dict(BLOCK_H=8, BLOCK_W=64)),
    ("_warp_kernel", _WARP_SIG, dict(BORDER_ZEROS=True, BLOCK=1024)),
    ("_warp_kernel", dict(_WARP_SIG, src_ptr="*fp32", out_ptr="*fp32"), dict(BORDER_ZEROS=False, BLOCK=1024)),
    ("_blend_kernel", dict(a_ptr="*fp32", b_ptr="*fp32", mask_ptr="*u8", out_ptr="*fp32", C="i32", HW="i32"),
     dict(MASK_FLOAT=False, BLOCK=1024)),
]


def test_triton_kernels_compile_for_h100():
    """The real compiler (not the interpreter) turns every kernel into sm_90 code: Triton ships ptxas,
    so type and lowering errors the interpreter would let through show up without a GPU."""
    pytest.importorskip("torch")
    triton = pytest.importorskip("triton", reason="triton not installed: pip install 'generative-reality[kernels]'")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 is set globally: the kernels are interpreted functions")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kernels import triton_kernels

    for name, sig, constexprs in _COMPILE_CASES:
        fn = getattr(triton_kernels, name)
        src = ASTSource(fn, {**sig, **{k: "constexpr" for k in constexprs}}, constexprs)
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                  options={"num_warps": 4, "enable_fp_fusion": name != "_fsq_kernel"})
        assert ".entry " + name in compiled.asm["ptx"] and compiled.asm["cubin"], name


# --- the torch chain the GPU benchmark compares against ------------------------------------------


def test_torch_chain_matches_reference(chain, rng):
    for fmt in FMTS:
        img = camera(rng, fmt, *min_size(fmt, 37, 23))
        _check_pre(chain.preprocess(_t(img), fmt, (19, 30), "float32"), ref.preprocess(img, fmt, (19, 30)), 1e-5)
    for case in POST_CASES:
        x, valid, size, pack = _post_inputs(rng, case)
        got = chain.postprocess(_t(x), valid, size, pack)
        _check_u8(got, ref.postprocess(x, valid, size, pack), max_frac=0.01)
    z, prev, z2 = _fsq_inputs(rng, (2, 4, 9, 11), (3, 5, 8, 2))
    for k, want in zip(chain.fsq_hysteresis(_t(z2), _t(prev), (3, 5, 8, 2), 0.3),
                       ref.fsq_hysteresis(z2, prev, (3, 5, 8, 2), 0.3)):
        np.testing.assert_array_equal(_np(k), want)
    m = rng.random((2, 13, 17)) < 0.05
    np.testing.assert_array_equal(_np(chain.dilate_mask(_t(m), 2)), ref.dilate_mask(m, 2))
    lat, new, mask, alpha = _warp_inputs(rng, (2, 3, 13, 19))
    for border in spec.BORDERS:
        got = chain.warp_affine(_t(lat), WARP_A[1], None, border)
        assert np.abs(_np(got) - ref.warp_affine(lat, WARP_A[1], None, border)).max() < 1e-4
    for m in (mask, alpha):
        got = chain.masked_blend(_t(lat), _t(new), _t(m))
        assert np.abs(_np(got) - ref.masked_blend(lat, new, m)).max() < 1e-6


# --- the interface ------------------------------------------------------------------------------


def test_get_ops_cpu_never_imports_torch():
    code = (
        "import sys, numpy as np, kernels\n"
        "ops = kernels.get_ops('cpu')\n"
        "x = ops.preprocess(np.zeros((12, 20, 3), np.uint8), 'rgb', (10, 6), 'float16')\n"
        "y = ops.postprocess(x, (6, 10), (20, 12))\n"
        "k, ch = ops.fsq_hysteresis(np.zeros((1, 2, 3, 4), np.float32), None, (5, 5), 0.2)\n"
        "m = ops.dilate_mask(ch, 1)\n"
        "w = ops.masked_blend(ops.warp_affine(np.zeros((1, 2, 3, 4), np.float32), [[1, 0, 0], [0, 1, 0]]),"
        " np.ones((1, 2, 3, 4), np.float32), m)\n"
        "assert x.shape == (1, 3, 8, 16) and y.shape == (12, 20, 3) and w.shape == (1, 2, 3, 4)\n"
        "assert 'torch' not in sys.modules and 'triton' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


def test_get_ops_picks_by_device():
    assert kernels.get_ops("cpu").name == "cpu-opencv"
    with pytest.raises(ValueError):
        kernels.get_ops("tpu")
    if "cuda" not in kernels.available_devices():
        with pytest.raises(RuntimeError):
            kernels.get_ops("cuda")


# --- on a GPU -----------------------------------------------------------------------------------


@pytest.mark.gpu
def test_gpu_kernels_match_reference(rng):
    ops = _cuda_ops()
    for fmt in FMTS:
        for src, dst in [((1, 1), (1, 1)), ((37, 23), (61, 17)), ((1920, 1080), (1280, 720)),
                         ((3840, 2160), (1921, 1079))]:
            img = camera(rng, fmt, *min_size(fmt, *src))
            for dtype in ("float32", "float16"):
                got = ops.preprocess(_t(img, "cuda"), fmt, dst, dtype)
                _check_pre(got, ref.preprocess(img, fmt, dst, dtype), 1e-5)
    for case in POST_CASES + [(1, 1088, 1920, 1080, 1917, 3840, 2160, False)]:
        x, valid, size, pack = _post_inputs(rng, case)
        got = ops.postprocess(_t(x, "cuda"), valid, size, pack)
        _check_u8(got, ref.postprocess(x, valid, size, pack), max_frac=0.01)
    z, prev, z2 = _fsq_inputs(rng, (2, 8, 135, 240), (7, 5, 5, 5, 8, 8, 3, 3))
    k, ch = ops.fsq_hysteresis(_t(z2, "cuda"), _t(prev, "cuda"), (7, 5, 5, 5, 8, 8, 3, 3), 0.3)
    k_ref, ch_ref = ref.fsq_hysteresis(z2, prev, (7, 5, 5, 5, 8, 8, 3, 3), 0.3)
    np.testing.assert_array_equal(_np(k), k_ref)  # launched without FMA contraction: bit-exact
    np.testing.assert_array_equal(_np(ch), ch_ref)
    m = rng.random((2, 135, 240)) < 0.02
    for r in (0, 1, 3):
        np.testing.assert_array_equal(_np(ops.dilate_mask(_t(m, "cuda"), r)), ref.dilate_mask(m, r))
    lat, new, mask, _ = _warp_inputs(rng, (2, 8, 135, 240))
    for border in spec.BORDERS:
        for A in WARP_A:
            got = ops.warp_affine(_t(lat, "cuda"), A, None, border)
            assert np.abs(_np(got) - ref.warp_affine(lat, A, None, border)).max() < 1e-4
        np.testing.assert_array_equal(_np(ops.masked_blend(_t(lat, "cuda"), _t(new, "cuda"), _t(mask, "cuda"))),
                                      ref.masked_blend(lat, new, mask))

"""The detail layer's pass (kernels/detail.py, kernels/detail_triton.py) against its numpy reference, the way
tests/test_kernels.py checks the other kernels: the CPU version here, the Triton one under the interpreter
on CPU tensors, and compiled for sm_90 without a GPU."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from kernels.detail import detail_add, detail_add_reference, warp_blend, warp_blend_reference

from tests.fakes import load_triton_interpreted

REPO = Path(__file__).resolve().parents[1]
CASES = [((48, 64), (24, 32), 2.0), ((90, 160), (45, 80), 2.0), ((37, 51), (19, 26), 51 / 26)]


def _inputs(rng, hw, fhw, amp=6.0):
    h, w = hw
    student = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    # a residual with strokes (steep, but not white noise: the CPU path samples on a 1/32 px grid)
    residual = cv2.GaussianBlur(rng.normal(0, 60, (h, w, 3)).astype(np.float32), (0, 0), 1.2)
    disp = cv2.GaussianBlur(rng.normal(0, amp, fhw + (2,)).astype(np.float32), (0, 0), 2.0)
    conf = np.clip(cv2.GaussianBlur(rng.random(fhw).astype(np.float32), (0, 0), 1.5) * 1.6 - 0.3, 0, 1)
    return student, residual, disp, conf


@pytest.mark.parametrize("hw, fhw, scale", CASES)
def test_cpu_detail_add_matches_reference(hw, fhw, scale):
    rng = np.random.default_rng(7)
    args = _inputs(rng, hw, fhw) + (scale,)
    got, want = detail_add(*args).astype(int), detail_add_reference(*args).astype(int)
    diff = np.abs(got - want)
    assert diff.mean() < 0.35 and diff.max() <= 4, (diff.mean(), diff.max())  # OpenCV's 1/32 px remap


def test_detail_add_identity_map_and_zero_confidence_are_exact():
    rng = np.random.default_rng(8)
    student, residual, disp, conf = _inputs(rng, (40, 56), (20, 28))
    zero = np.zeros_like(disp)
    ones = np.ones_like(conf)
    want = np.clip(np.rint(student.astype(np.float64) + residual), 0, 255).astype(np.uint8)
    assert np.array_equal(detail_add(student, residual, zero, ones, 2.0), want)
    assert np.array_equal(detail_add_reference(student, residual, zero, ones, 2.0), want)
    assert np.array_equal(detail_add(student, residual, disp, np.zeros_like(conf), 2.0), student)


def test_detail_add_rejects_bad_shapes():
    rng = np.random.default_rng(9)
    student, residual, disp, conf = _inputs(rng, (40, 56), (20, 28))
    with pytest.raises(ValueError):
        detail_add(student, residual[:-1], disp, conf, 2.0)
    with pytest.raises(ValueError):
        detail_add(student, residual, disp, conf[:-1], 2.0)
    with pytest.raises(ValueError):
        detail_add(student.astype(np.float32), residual, disp, conf, 2.0)


def _blend_inputs(rng, hw, fhw, amp=4.0):
    h, w = hw
    shown = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    last = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 1.2)
    flow = cv2.GaussianBlur(rng.normal(0, amp, fhw + (2,)).astype(np.float32), (0, 0), 2.0)
    weight = np.clip(cv2.GaussianBlur(rng.random(fhw).astype(np.float32), (0, 0), 1.5) * 1.6 - 0.3, 0, 0.95)
    return shown, last, flow, weight


@pytest.mark.parametrize("hw, fhw, scale", CASES)
def test_cpu_warp_blend_matches_reference(hw, fhw, scale):
    rng = np.random.default_rng(11)
    args = _blend_inputs(rng, hw, fhw) + (scale,)
    diff = np.abs(warp_blend(*args).astype(int) - warp_blend_reference(*args).astype(int))
    assert diff.mean() < 0.35 and diff.max() <= 4, (diff.mean(), diff.max())  # OpenCV's 1/32 px remap


def test_warp_blend_still_and_zero_weight_are_exact():
    rng = np.random.default_rng(12)
    shown, last, flow, weight = _blend_inputs(rng, (40, 56), (20, 28))
    assert np.array_equal(warp_blend(shown, last, flow, np.zeros_like(weight), 4.0), shown)
    half = np.full_like(weight, 0.5)
    want = warp_blend_reference(shown, last, np.zeros_like(flow), half, 4.0)
    got = warp_blend(shown, last, np.zeros_like(flow), half, 4.0)
    assert np.abs(got.astype(int) - want).max() <= 1  # no resampling at all: only the rounding of .5
    with pytest.raises(ValueError):
        warp_blend(shown, last[:-1], flow, weight, 4.0)


@pytest.fixture(scope="module")
def interpreted():
    """kernels/detail_triton.py decorated under TRITON_INTERPRET=1 (a private copy), on CPU tensors."""
    pytest.importorskip("torch")
    pytest.importorskip("triton", reason="triton not installed: pip install 'generative-reality[kernels]'")
    return load_triton_interpreted(REPO / "kernels" / "detail_triton.py", "kernels._detail_triton_interpreted")


@pytest.mark.parametrize("hw, fhw, scale", CASES[:2])
def test_interpreted_triton_detail_add_matches_reference(interpreted, hw, fhw, scale):
    import torch

    rng = np.random.default_rng(10)
    args = _inputs(rng, hw, fhw)
    got = interpreted.detail_add_cuda(*(torch.from_numpy(np.ascontiguousarray(a)) for a in args), scale, block=256)
    want = detail_add_reference(*args, scale).astype(int)
    diff = np.abs(got.numpy().astype(int) - want)
    assert diff.max() <= 1 and diff.mean() < 0.01, (diff.mean(), diff.max())  # float32 vs float64, half-up


@pytest.mark.parametrize("hw, fhw, scale", CASES[:2])
def test_interpreted_triton_warp_blend_matches_reference(interpreted, hw, fhw, scale):
    import torch

    rng = np.random.default_rng(13)
    args = _blend_inputs(rng, hw, fhw)
    got = interpreted.warp_blend_cuda(*(torch.from_numpy(np.ascontiguousarray(a)) for a in args), scale, block=256)
    diff = np.abs(got.numpy().astype(int) - warp_blend_reference(*args, scale).astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01, (diff.mean(), diff.max())  # float32 vs float64, half-up


def test_triton_detail_kernel_compiles_for_h100():
    pytest.importorskip("torch")
    triton = pytest.importorskip("triton", reason="triton not installed: pip install 'generative-reality[kernels]'")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 is set globally: the kernels are interpreted functions")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kernels import detail_triton

    sig = dict(s_ptr="*u8", r_ptr="*fp32", d_ptr="*fp32", c_ptr="*fp32", out_ptr="*u8", H="i32", W="i32",
               h="i32", w="i32", sy="fp32", sx="fp32", disp_scale="fp32", BLOCK="constexpr")
    src = ASTSource(detail_triton._detail_add_kernel, sig, {"BLOCK": 512})
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    assert ".entry _detail_add_kernel" in compiled.asm["ptx"] and compiled.asm["cubin"]
    sig = dict(s_ptr="*u8", l_ptr="*u8", f_ptr="*fp32", a_ptr="*fp32", out_ptr="*u8", H="i32", W="i32",
               h="i32", w="i32", sy="fp32", sx="fp32", disp_scale="fp32", BLOCK="constexpr")
    src = ASTSource(detail_triton._warp_blend_kernel, sig, {"BLOCK": 512})
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    assert ".entry _warp_blend_kernel" in compiled.asm["ptx"] and compiled.asm["cubin"]

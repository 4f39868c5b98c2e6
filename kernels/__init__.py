"""Pre/post-processing and temporal-cache kernels behind one interface.

    ops = kernels.get_ops("cpu")    # OpenCV/numpy, numpy arrays in and out, never imports torch
    ops = kernels.get_ops("cuda")   # Triton kernels, torch CUDA tensors in and out

    x = ops.preprocess(frame, fmt="rgb", out_size=(640, 360), dtype="float16")   # (1, 3, 360, 640)
    img = ops.postprocess(y, valid_hw=(360, 640), out_size=(1280, 720))

Every `Ops` has the same methods (exact semantics, conventions and tolerances: `kernels.spec`):

- ``preprocess(images, fmt="rgb", out_size=None, dtype="float32", pad_multiple=8)``
  → (B, 3, Hp, Wp); `images` is one camera buffer (B=1) or a sequence (e.g. two stereo eyes).
- ``postprocess(x, valid_hw, out_size=None, stereo_pack=False)``
  → uint8 (Ho, Wo, 3), (Ho, 2 Wo, 3) when stereo-packed, else (B, Ho, Wo, 3).
- ``fsq_hysteresis(z, prev_levels, levels, margin)`` → (int32 levels (B, C, H, W), bool changed (B, H, W)).
- ``dilate_mask(mask, radius)`` → bool (B, H, W).
- ``warp_affine(latent, A, out_hw=None, border="replicate")`` → (B, C, Ho, Wo).
- ``masked_blend(a, b, mask)``.

Nothing heavy is imported here: cv2 on the first CPU call, torch/triton only for "cuda".
"""
from __future__ import annotations

from typing import Any, Optional, Protocol, Sequence

from kernels.spec import affine_to_latent, padded_hw

__all__ = ["Ops", "get_ops", "available_devices", "affine_to_latent", "padded_hw"]


class Ops(Protocol):
    """The kernel interface the runtime calls (numpy arrays on CPU, torch tensors on CUDA)."""

    name: str
    device: Any

    def preprocess(self, images: Any, fmt: str = "rgb", out_size: Optional[tuple[int, int]] = None,
                   dtype: Any = "float32", pad_multiple: int = 8) -> Any: ...

    def postprocess(self, x: Any, valid_hw: tuple[int, int], out_size: Optional[tuple[int, int]] = None,
                    stereo_pack: bool = False) -> Any: ...

    def fsq_hysteresis(self, z: Any, prev_levels: Any, levels: Sequence[int], margin: float) -> tuple[Any, Any]: ...

    def dilate_mask(self, mask: Any, radius: int) -> Any: ...

    def warp_affine(self, latent: Any, A: Any, out_hw: Optional[tuple[int, int]] = None,
                    border: str = "replicate") -> Any: ...

    def masked_blend(self, a: Any, b: Any, mask: Any) -> Any: ...


def available_devices() -> list[str]:
    """'cpu', plus 'cuda' when torch sees a GPU and triton is installed (imports torch if present)."""
    devices = ["cpu"]
    try:
        import torch
        import triton  # noqa: F401
    except ImportError:
        return devices
    if torch.cuda.is_available():
        devices.append("cuda")
    return devices


def get_ops(device: str = "cpu") -> Ops:
    """The kernels for `device`: "cpu" → `kernels.cpu.CpuOps` (the fastest measured CPU paths,
    see `benchmarks/kernels.py`); "cuda" or "cuda:N" → `kernels.triton_kernels.TritonOps`.

    Raises ValueError for an unknown device and RuntimeError when CUDA kernels are asked for but
    torch with CUDA or triton is missing (the message says what to install).
    """
    if device == "cpu":
        from kernels.cpu import CpuOps

        return CpuOps()
    if device == "cuda" or device.startswith("cuda:"):
        try:
            import torch
            import triton  # noqa: F401
        except ImportError as exc:
            raise RuntimeError(f"CUDA kernels need torch and triton ({exc.name} is missing): "
                               "pip install 'generative-reality[kernels]'") from exc
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA kernels asked for, but torch sees no CUDA GPU: use device 'cpu'")
        from kernels.triton_kernels import TritonOps

        return TritonOps(device)
    raise ValueError(f"unknown kernel device {device!r}: use 'cpu' or 'cuda'")

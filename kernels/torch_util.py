"""Small torch helpers shared by the Triton launchers and the torch-op chain (imports torch)."""
from __future__ import annotations

from typing import Any, Sequence, Union

import numpy as np
import torch

from kernels import spec

Tensors = Union[torch.Tensor, np.ndarray, Sequence[Union[torch.Tensor, np.ndarray]]]

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def as_tensor(x: Any, device: torch.device) -> torch.Tensor:
    """A tensor on `device` (numpy arrays are uploaded; tensors elsewhere are copied over)."""
    if isinstance(x, torch.Tensor):
        return x if x.device == device else x.to(device)
    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


def batch_tensor(images: Tensors, fmt: str, device: torch.device) -> torch.Tensor:
    """One camera buffer → (1, ...); a stacked (B, ...) one as is (no copy when already contiguous on
    device); a sequence of equal-shaped ones → stacked. Contiguous, on device."""
    if isinstance(images, (torch.Tensor, np.ndarray)):
        t = as_tensor(images, device).contiguous()
        return t if spec.is_batched(t.shape, fmt) else t.unsqueeze(0)
    items = [as_tensor(im, device) for im in images]
    if not items:
        raise ValueError("no images given")
    if any(im.shape != items[0].shape for im in items):
        raise ValueError(f"batched images differ in shape: {[tuple(im.shape) for im in items]}")
    return torch.stack(items).contiguous()



"""Backend registry: name → factory, imported lazily so nothing heavy loads at import.

Register a backend by adding an entry to `_REGISTRY` ("module:Class"). The class is built as
``cls(config)`` with a `BackendConfig`; it raises `UserError` when it cannot run here
(missing package, no GPU, missing weights). ``--backend auto`` tries `AUTO_ORDER` in turn.

`AUTO_ORDER` entries are ``name`` or ``name:device``: the device an entry is tried on (with
``--device auto``; an explicit ``--device`` skips entries for the other device). Nothing is
silently changed for an explicit ``--backend``: it runs as asked or fails with a `UserError`.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
from typing import Callable

from realtime.backends.base import Backend, next_style
from realtime.config import BackendConfig
from genreal_errors import UserError

log = logging.getLogger(__name__)

_REGISTRY: dict[str, str] = {
    "teacher": "realtime.backends.teacher:TeacherBackend",
    "identity": "realtime.backends.identity:IdentityBackend",
    "torch": "realtime.backends.torch_backend:TorchBackend",
    "onnxruntime": "realtime.backends.onnxruntime_backend:OnnxRuntimeBackend",
    "tensorrt": "realtime.backends.tensorrt_backend:TensorRTBackend",
}

#: what --backend auto tries, best first: TensorRT, ONNX Runtime on CUDA, torch on CUDA, ONNX Runtime on
#: the CPU (the default here); then torch on --device (a model folder without exported graphs) and the teacher
AUTO_ORDER: tuple[str, ...] = ("tensorrt:cuda", "onnxruntime:cuda", "torch:cuda", "onnxruntime:cpu", "torch",
                               "teacher")


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def _load(name: str) -> Callable[[BackendConfig], Backend]:
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown --backend {name!r}: choose auto or one of {', '.join(backend_names())}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def create_backend(config: BackendConfig) -> Backend:
    """Build the configured backend. For ``auto``, log what was chosen and why."""
    if config.name != "auto":
        return _load(config.name)(config)
    reasons = []
    for entry in AUTO_ORDER:
        name, _, device = entry.partition(":")
        if name not in _REGISTRY:
            reasons.append(f"{entry}: not available in this install")
            continue
        if device and config.device not in ("auto", device):
            continue  # the user pinned the other device
        try:
            backend = _load(name)(dataclasses.replace(config, name=name, device=device or config.device))
        except UserError as exc:
            reasons.append(f"{entry}: {exc}")
            continue
        why = f"; skipped {' | '.join(reasons)}" if reasons else ""
        log.info("backend auto: chose %s on %s (first of %s that starts here%s)", name, backend.device,
                 " > ".join(AUTO_ORDER), why)
        return backend
    raise UserError("no backend can run here: " + "; ".join(reasons))


__all__ = ["Backend", "create_backend", "backend_names", "next_style", "AUTO_ORDER"]

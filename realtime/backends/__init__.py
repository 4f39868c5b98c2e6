"""Backend registry: name → factory, imported lazily so nothing heavy loads at import.

Register a backend by adding an entry to `_REGISTRY` ("module:Class"). The class is built as
``cls(config)`` with a `BackendConfig`; it raises `BackendUnavailable` when its engine cannot run
here (package not installed, no such device, no graphs exported for it) and a plain `UserError` for
anything about the model, the style or the options. ``--backend auto`` tries `AUTO_ORDER` in turn,
skipping a backend only for `BackendUnavailable`: every other error ends the run (exit 2), so auto
picks an engine, never a different model (the teacher is not in `AUTO_ORDER`).

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
from genreal_errors import BackendUnavailable, UserError

log = logging.getLogger(__name__)

_REGISTRY: dict[str, str] = {
    "teacher": "realtime.backends.teacher:TeacherBackend",
    "identity": "realtime.backends.identity:IdentityBackend",
    "torch": "realtime.backends.torch_backend:TorchBackend",
    "onnxruntime": "realtime.backends.onnxruntime_backend:OnnxRuntimeBackend",
    "tensorrt": "realtime.backends.tensorrt_backend:TensorRTBackend",
}

#: what --backend auto tries, best first: TensorRT, ONNX Runtime on CUDA, torch on CUDA, ONNX Runtime on
#: the CPU (the default here); then torch on --device (a model folder without exported graphs). Never the
#: teacher: it is a different model (ask for it with --backend teacher).
AUTO_ORDER: tuple[str, ...] = ("tensorrt:cuda", "onnxruntime:cuda", "torch:cuda", "onnxruntime:cpu", "torch")


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
    """Build the configured backend, with the keyframe detail layer after it when ``--detail`` asks
    (realtime/backends/detail_backend.py; ``off`` wraps nothing)."""
    backend = _create(config)
    if config.detail.mode == "off":
        return backend
    from realtime.backends.detail_backend import wrap_detail

    try:
        return wrap_detail(backend, config.detail, config.model_dir)
    except BaseException:
        backend.close()
        raise


def _create(config: BackendConfig) -> Backend:
    """The configured backend. For ``auto``, log the choice in one line (the reasons at debug level)."""
    if config.name != "auto":
        return _load(config.name)(config)
    skipped: list[str] = []
    reasons: list[str] = []
    for entry in AUTO_ORDER:
        name, _, device = entry.partition(":")
        if device and config.device not in ("auto", device):
            continue  # the user pinned the other device
        try:
            backend = _load(name)(dataclasses.replace(config, name=name, device=device or config.device))
        except BackendUnavailable as exc:  # this engine cannot run here: try the next
            skipped.append(entry)
            reasons.append(f"{entry} ({_short(str(exc))})")
            log.debug("backend auto: skipped %s: %s", entry, exc)
            continue
        why = f" (not available here: {', '.join(skipped)}; -v says why)" if skipped else ""
        log.info("backend auto: chose %s on %s%s", name, backend.device, why)
        return backend
    where = f" on --device {config.device}" if config.device != "auto" else ""
    raise BackendUnavailable(f"no backend can run{where} here: {', '.join(reasons)}"
                             f"{'; use --device cpu' if config.device == 'cuda' else ''} (-v says more)")


def _short(reason: str) -> str:
    """The first clause of a reason ('tensorrt not installed: pip install ...' → 'tensorrt not installed')."""
    return reason.split(":")[0].split(" (")[0].strip()


__all__ = ["Backend", "create_backend", "backend_names", "next_style", "AUTO_ORDER"]

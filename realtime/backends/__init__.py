"""Backend registry: name → factory, imported lazily so nothing heavy loads at import.

Register a backend by adding an entry to `_REGISTRY` ("module:Class"). The class is built as
``cls(config)`` with a `BackendConfig`; it raises `UserError` when it cannot run here
(missing package, no GPU, missing weights). ``--backend auto`` tries `AUTO_ORDER` in turn.
"""
from __future__ import annotations

import importlib
import logging
from typing import Callable

from realtime.backends.base import Backend, next_style
from realtime.config import BackendConfig
from realtime.errors import UserError

log = logging.getLogger(__name__)

_REGISTRY: dict[str, str] = {
    "teacher": "realtime.backends.teacher:TeacherBackend",
    "identity": "realtime.backends.identity:IdentityBackend",
    "torch": "realtime.backends.torch_backend:TorchBackend",
}

#: what --backend auto tries, best first (later issues put our model's backends in front)
AUTO_ORDER: tuple[str, ...] = ("torch", "teacher")


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
    for name in AUTO_ORDER:
        try:
            backend = _load(name)(config)
        except UserError as exc:
            reasons.append(f"{name}: {exc}")
            continue
        why = f" (skipped {'; '.join(reasons)})" if reasons else ""
        log.info("backend auto: chose %s on %s%s", name, backend.device, why)
        return backend
    raise UserError("no backend can run here: " + "; ".join(reasons))


__all__ = ["Backend", "create_backend", "backend_names", "next_style", "AUTO_ORDER"]

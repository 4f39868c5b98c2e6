"""models package: the student model, teachers, training data, distillation and shipped weights.

Importing this package loads nothing heavy; `build_model` / `load_model` import torch on use.
"""
from __future__ import annotations

from typing import Any

__all__ = ["build_model", "load_model", "save_model"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from models import build

        return getattr(build, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")

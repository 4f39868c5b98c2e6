"""Factories for the student model: `build_model`, `load_model`, `save_model` (sam2-style:
apart from the model class, strict weight loading)."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import torch

from models.manifest import MANIFEST_FILE, WEIGHTS_FILE, read_manifest, resolve_model_dir
from models.model import GenrealModel, ModelConfig
from genreal_errors import UserError

log = logging.getLogger(__name__)


def build_model(config: Optional[ModelConfig] = None, **overrides: Any) -> GenrealModel:
    """A freshly initialized model; `overrides` replace fields of `config` (default `ModelConfig()`)."""
    cfg = config or ModelConfig()
    if overrides:
        cfg = ModelConfig.from_dict({**cfg.to_dict(), **overrides})
    return GenrealModel(cfg)


def save_model(model: GenrealModel, out_dir: Path, manifest: dict[str, Any], dtype: torch.dtype = torch.float32) -> Path:
    """Write ``model.safetensors`` (+ the config in its metadata) and ``manifest.json`` into `out_dir`."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    meta = {"genreal_config": json.dumps(model.cfg.to_dict()), "format": "genreal-model/1"}
    tmp = out_dir / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(out_dir / WEIGHTS_FILE)
    manifest = {**manifest, "config": model.cfg.to_dict()}
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return out_dir


def load_model(path: Optional[str | Path] = None, strict: bool = True, device: str = "cpu") -> tuple[GenrealModel, dict]:
    """Load a model folder (default: the shipped model) → (model in eval mode, manifest).

    With `strict` (the default), missing, unexpected or mis-shaped tensors are an error.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model_dir = resolve_model_dir(path)
    manifest = read_manifest(model_dir)
    try:
        cfg = ModelConfig.from_dict(manifest["config"])
    except (TypeError, KeyError, ValueError) as exc:
        raise UserError(f"corrupt model manifest in {model_dir}: bad config ({exc})") from None
    if cfg.num_styles != len(manifest["styles"]):
        raise UserError(f"corrupt model manifest in {model_dir}: {len(manifest['styles'])} styles for a "
                        f"{cfg.num_styles}-style model")
    model = GenrealModel(cfg)
    try:
        state = load_file(str(model_dir / WEIGHTS_FILE))
    except (SafetensorError, OSError) as exc:
        raise UserError(f"corrupt model weights {model_dir / WEIGHTS_FILE}: {exc}") from None
    state = {k: v.to(torch.float32) for k, v in state.items()}
    try:
        result = model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "mismatch"
        raise UserError(f"model weights {model_dir / WEIGHTS_FILE} do not match its config: {first}") from None
    if not strict and (result.missing_keys or result.unexpected_keys):
        log.warning("non-strict load: missing %s, unexpected %s", result.missing_keys, result.unexpected_keys)
    return model.to(device).eval(), manifest

"""Model manifests (`manifest.json` next to `model.safetensors`): read without torch.

A shipped model is a folder ``models/weights/<name>/`` with ``model.safetensors`` and
``manifest.json``. The manifest lists the styles (name, teacher spec, fidelity figures), the
model config, the training sources and settings, the code revision and the evaluation.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from genreal_errors import UserError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_MODEL = "genreal-v1"
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"


def default_model_dir() -> Path:
    """The shipped multi-style model's folder (it may not exist in a fresh checkout)."""
    return WEIGHTS_DIR / DEFAULT_MODEL


def resolve_model_dir(path: Optional[str | Path] = None) -> Path:
    """A model folder (or its model.safetensors) → the folder; `UserError` when it is incomplete."""
    p = Path(path) if path is not None else default_model_dir()
    if p.is_file() and p.name == WEIGHTS_FILE:
        p = p.parent
    if not (p / WEIGHTS_FILE).is_file() or not (p / MANIFEST_FILE).is_file():
        raise UserError(
            f"no model at {p}: it needs {WEIGHTS_FILE} and {MANIFEST_FILE} (train one with 'genreal distill --out DIR')"
        )
    return p


def read_manifest(path: Optional[str | Path] = None) -> dict[str, Any]:
    """The manifest of a model folder; `UserError` when missing or corrupt."""
    p = resolve_model_dir(path) / MANIFEST_FILE
    try:
        manifest = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"corrupt model manifest {p}: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("styles"), list) or "config" not in manifest:
        raise UserError(f"corrupt model manifest {p}: it needs 'styles' and 'config'")
    return manifest


def update_manifest(path: Optional[str | Path], **sections: Any) -> Path:
    """Set top-level keys of a model folder's manifest (a key "evaluation.steps" sets that nested key),
    written atomically (a temporary file renamed over it). Returns the manifest's path."""
    import os

    p = resolve_model_dir(path) / MANIFEST_FILE
    manifest = read_manifest(p.parent)
    for key, value in sections.items():
        parts = key.split(".")
        node = manifest
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, p)
    return p


def style_names(manifest: dict[str, Any]) -> list[str]:
    return [str(s["name"]) for s in manifest["styles"]]

"""`torch` backend: our distilled token + decoder model in PyTorch (CPU; CUDA when present).

Styles are the model's named styles (`genreal styles`), or blends like ``cel:0.5,starry:0.5``
(blending = blending style embeddings; nothing is rebuilt on a switch).

Temporal reuse (when `temporal` is on): each frame is encoded to content tokens; if few tokens
changed since the previous frame (at most `REUSE_MAX_CHANGED`), the previous latent is the warm
start and ONE refiner step runs; otherwise K steps run from the learned start. The latent is
not warped here (that is the runtime's temporal cache, a later stage). Only this module
imports torch, and only when the backend is built.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from realtime.backends.base import Backend
from realtime.config import BackendConfig
from realtime.errors import UserError

log = logging.getLogger(__name__)

#: the largest fraction of changed content tokens for which the previous latent is reused
REUSE_MAX_CHANGED = 0.2


def parse_style_blend(spec: str, names: Sequence[str]) -> np.ndarray:
    """'cel' or 'cel:0.5,starry:0.5' → normalized (S,) float32 weights over `names`. Raises `UserError`."""
    w = np.zeros(len(names), dtype=np.float32)
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not parts:
        raise UserError(f"empty style {spec!r}: use one of {', '.join(names)}")
    for part in parts:
        name, sep, wt = part.rpartition(":") if ":" in part else (part, "", "")
        if name not in names:
            raise UserError(f"unknown style {name!r}: use one of {', '.join(names)} (see 'genreal styles'), "
                            f"or a blend like {names[0]}:0.5,{names[-1]}:0.5")
        try:
            weight = float(wt) if sep else 1.0
        except ValueError:
            raise UserError(f"bad style weight in {spec!r}: use e.g. {names[0]}:0.5,{names[-1]}:0.5") from None
        if weight < 0:
            raise UserError(f"style weights must not be negative: {spec!r}")
        w[names.index(name)] += weight
    if w.sum() <= 0:
        raise UserError(f"style weights must not all be zero: {spec!r}")
    return w / w.sum()


def _pad8(img: np.ndarray, h8: int, w8: int) -> np.ndarray:
    h, w = img.shape[:2]
    ph, pw = h8 - h, w8 - w
    if ph or pw:
        mode = "reflect" if h > ph and w > pw else "edge"
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode=mode)
    return img


class TorchBackend(Backend):
    """Our model in PyTorch, per frame or with latent reuse between frames."""

    name = "torch"

    def __init__(self, config: BackendConfig, model_dir: Optional[str | Path] = None) -> None:
        super().__init__()
        try:
            import torch
        except ImportError:
            raise UserError("torch not installed: pip install 'generative-reality[train]'") from None
        from models.build import load_model

        self._torch = torch
        if config.device == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda asked for, but torch sees no CUDA device: use --device cpu")
        self.device = "cuda" if config.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
        self.model, self.manifest = load_model(model_dir, strict=True, device=self.device)
        self._names = [str(s["name"]) for s in self.manifest["styles"]]
        cfg = self.model.cfg
        if config.steps is not None and not 1 <= config.steps <= cfg.max_steps:
            raise UserError(f"bad --steps {config.steps}: this model runs 1 to {cfg.max_steps} steps")
        self.steps = config.steps or cfg.default_steps
        self.temporal = bool(config.temporal)
        self._style = ""
        self._style_vec = None
        self._prev_z = None
        self._prev_tokens = None
        self._counts = {"frames": 0, "warm": 0, "cold": 0}
        self.set_style(config.style if config.style is not None else self.manifest.get("default_style", self._names[0]))

    # -- styles ------------------------------------------------------------------------
    def styles(self) -> Sequence[str]:
        return list(self._names)

    @property
    def style(self) -> str:
        return self._style

    def set_style(self, name: str) -> None:
        weights = parse_style_blend(name, self._names)
        with self._torch.inference_mode():
            self._style_vec = self.model.style_embedding(self._torch.from_numpy(weights).to(self.device))  # (1, E)
        self._style = str(name)
        self.reset()

    # -- the three steps ----------------------------------------------------------------
    def preprocess(self, images: Sequence[np.ndarray]) -> Any:
        torch = self._torch
        h8 = max(-(-img.shape[0] // 8) * 8 for img in images)
        w8 = max(-(-img.shape[1] // 8) * 8 for img in images)
        batch = np.stack([_pad8(img, h8, w8) for img in images])  # (B, H8, W8, 3) uint8
        x = torch.from_numpy(batch).to(self.device)
        return x.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H8, W8)

    def infer(self, x: Any) -> Any:
        torch = self._torch
        model = self.model
        with torch.inference_mode():
            enc = model.encode(x)
            skip = model.skip(x)
            warm = (self.temporal and self._prev_z is not None and self._prev_z.shape[0] == x.shape[0]
                    and self._prev_tokens.shape == enc.tokens.shape
                    and float((self._prev_tokens != enc.tokens).float().mean()) <= REUSE_MAX_CHANGED)
            if warm:
                z = model.refine(self._prev_z, enc.emb, self._style_vec, 1, first_step=model.cfg.max_steps - 1)
            else:
                z = model.refine(model.initial_latent(enc.emb), enc.emb, self._style_vec, self.steps)
            rgb = model.decode(z, skip, x)  # (B, 3, H8, W8)
        self._counts["frames"] += 1
        self._counts["warm" if warm else "cold"] += 1
        if self.temporal:
            self._prev_z, self._prev_tokens = z, enc.tokens
        return rgb

    def postprocess(self, y: Any, like: Sequence[np.ndarray]) -> list[np.ndarray]:
        arr = (y.clamp(0, 1) * 255.0 + 0.5).to(self._torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # (B, H8, W8, 3)
        return [np.ascontiguousarray(arr[i, : img.shape[0], : img.shape[1]]) for i, img in enumerate(like)]

    # -- temporal state -------------------------------------------------------------------
    def reset(self) -> None:
        self._prev_z = None
        self._prev_tokens = None

    def stats(self) -> dict[str, Any]:
        return {"steps": self.steps, "frames_warm_start": self._counts["warm"], "frames_cold_start": self._counts["cold"]}

    def close(self) -> None:
        self.reset()

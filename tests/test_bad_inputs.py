"""A table of bad inputs: each exits 2 with one line on stderr, no traceback, and loses nothing
already written (the input file and an earlier output are byte-for-byte unchanged)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from realtime.cli import main
from tests.fakes import encode_video

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "weights" / "genreal-v1"


def _clip(path: Path, n: int = 6) -> None:
    encode_video(path, (np.full((64, 64, 3), 20 * i, np.uint8) for i in range(n)), codec="ffv1", pix_fmt="bgr0")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Files the cases point at: {in} a video, {keep} an earlier output, {stats} earlier stats, models."""
    d = tmp_path_factory.mktemp("bad")
    _clip(d / "in.mkv")
    (d / "keep.mkv").write_bytes((d / "in.mkv").read_bytes())
    (d / "stats.json").write_text('{"earlier": true}\n')
    os.link(d / "in.mkv", d / "hard.mkv")
    (d / "soft.mkv").symlink_to(d / "in.mkv")
    (d / "folder").mkdir()
    (d / "notvideo.mp4").write_text("hello, not a video\n")
    (d / "empty.mp4").write_bytes(b"")
    encode_video(d / "whole.mp4", (np.full((64, 64, 3), 20 * i, np.uint8) for i in range(6)), codec="mpeg4")
    whole = (d / "whole.mp4").read_bytes()
    (d / "cut.mp4").write_bytes(whole[: whole.index(b"moov") - 4])  # a recording cut before its index (moov)
    models = {}
    for name, damage in (("trunc", "truncate"), ("garbage", "manifest"), ("noint8", None)):
        m = d / f"model-{name}"
        shutil.copytree(SHIPPED, m, ignore=shutil.ignore_patterns("*.int8.onnx"))
        if damage == "truncate":
            w = m / "model.safetensors"
            w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
        elif damage == "manifest":
            (m / "manifest.json").write_text("{not json")
        models[name] = m
    return d


RUN = ["run", "--source", "{in}", "--max-frames", "2", "--stats-json", "{stats}"]
IDENT = ["--backend", "identity"]

#: (id, argv, words the error must contain)
CASES: list[tuple[str, list[str], list[str]]] = [
    # outputs that would destroy the input
    ("sink-is-input", RUN + IDENT + ["--sink", "{in}"], ["destroy the input"]),
    ("sink-is-hard-link", RUN + IDENT + ["--sink", "{dir}/hard.mkv"], ["destroy the input"]),
    ("sink-is-symlink", RUN + IDENT + ["--sink", "{dir}/soft.mkv"], ["destroy the input"]),
    ("sink-is-input-relative", RUN + IDENT + ["--sink", "{dir}/./folder/../in.mkv"], ["destroy the input"]),
    ("stats-is-input", ["run", "--source", "{in}", "--sink", "null", "--stats-json", "{in}"] + IDENT,
     ["destroy the input"]),
    ("sbs-sink-is-input", ["run", "--source", "sbs:{in}", "--sink", "{in}", "--stats-json", "{stats}"] + IDENT,
     ["destroy the input"]),
    ("two-sinks-same-file", RUN + IDENT + ["--sink", "{dir}/o.mkv", "--sink", "{dir}/o.mkv"], ["same file"]),
    # auto never switches model; model / style / option errors are the user's
    ("auto-missing-model", RUN + ["--sink", "{keep}", "--model", "/nonexistent/model"], ["/nonexistent/model"]),
    ("auto-truncated-weights", RUN + ["--sink", "{keep}", "--model", "{model-trunc}"], ["model"]),
    ("auto-garbage-manifest", RUN + ["--sink", "{keep}", "--model", "{model-garbage}"], ["manifest"]),
    # the range is the manifest's offered steps (evaluation.steps: 1 to 3), as every steps message says
    ("auto-steps-beyond-model", RUN + ["--sink", "{keep}", "--steps", "5"], ["--steps 5", "use --steps 1 to 3"]),
    ("auto-steps-zero", RUN + ["--sink", "{keep}", "--steps", "0"], ["--steps 0", "use --steps 1 to 3"]),
    ("auto-int8-uncalibrated", RUN + ["--sink", "{keep}", "--precision", "int8", "--model", "{model-noint8}"],
     ["int8", "calibrate"]),
    ("auto-fp16-on-cpu", RUN + ["--sink", "{keep}", "--precision", "fp16", "--device", "cpu"], ["fp16"]),
    ("auto-unknown-style", RUN + ["--sink", "{keep}", "--style", "vangogh"], ["unknown style", "vangogh"]),
    ("identity-on-cuda", RUN + ["--sink", "{keep}", "--backend", "identity", "--device", "cuda"], ["cpu"]),
    ("device-cuda-without-gpu", RUN + ["--sink", "{keep}", "--device", "cuda"], ["--device cuda", "--device cpu"]),
    ("unknown-backend", RUN + ["--sink", "{keep}", "--backend", "warp9"], ["unknown --backend"]),
    # blend weights
    ("weight-nan", RUN + ["--sink", "{keep}", "--style", "cel:nan"], ["weight", "finite"]),
    ("weight-inf", RUN + ["--sink", "{keep}", "--style", "cel:inf"], ["weight", "finite"]),
    ("weight-overflow", RUN + ["--sink", "{keep}", "--style", "cel:1e308,frost:1e308"], ["add up"]),
    ("weight-negative", RUN + ["--sink", "{keep}", "--style", "cel:-1,frost:2"], ["positive"]),
    ("weight-zero", RUN + ["--sink", "{keep}", "--style", "cel:0"], ["positive"]),
    ("weight-teacher-nan", RUN + ["--sink", "{keep}", "--backend", "teacher", "--style", "3:nan"], ["finite"]),
    # sizes and numbers, rejected by the option parser before any work
    ("size-too-small", RUN + ["--sink", "{keep}", "--size", "32x32"], ["64"]),
    ("size-too-big", RUN + ["--sink", "{keep}", "--size", "4000x100"], ["3840"]),
    ("size-garbage", RUN + ["--sink", "{keep}", "--size", "big"], ["--size"]),
    ("size-zero", RUN + ["--sink", "{keep}", "--size", "0x10"], ["--size"]),
    ("steps-zero", RUN + ["--sink", "{keep}", "--steps", "0"], ["steps"]),
    ("steps-not-int", RUN + ["--sink", "{keep}", "--steps", "two"], ["steps"]),
    ("budget-negative", RUN + ["--sink", "{keep}", "--budget-ms", "-5"], ["budget"]),
    ("budget-nan", RUN + ["--sink", "{keep}", "--budget-ms", "nan"], ["budget"]),
    ("budget-word", RUN + ["--sink", "{keep}", "--budget-ms", "soon"], ["budget"]),
    ("max-frames-zero", ["run", "--source", "{in}", "--sink", "{keep}", "--max-frames", "0"], ["max-frames"]),
    ("stall-negative", RUN + ["--sink", "{keep}", "--stall-s", "-1"], ["stall"]),
    ("stall-nan", RUN + ["--sink", "{keep}", "--stall-s", "nan"], ["stall"]),
    ("reconnect-negative", RUN + ["--sink", "{keep}", "--reconnect", "-2"], ["reconnect"]),
    ("precision-unknown", RUN + ["--sink", "{keep}", "--precision", "fp8"], ["precision"]),
    ("device-unknown", RUN + ["--sink", "{keep}", "--device", "tpu"], ["device"]),
    # --stats-json and sinks checked before the run
    ("stats-in-missing-folder", ["run", "--source", "{in}", "--sink", "null", "--stats-json", "{dir}/no/such/s.json"]
     + IDENT, ["does not exist"]),
    ("stats-is-folder", ["run", "--source", "{in}", "--sink", "null", "--stats-json", "{dir}/folder"] + IDENT,
     ["folder"]),
    ("stats-is-a-sink", ["run", "--source", "{in}", "--sink", "{dir}/o2.mkv", "--stats-json", "{dir}/o2.mkv"] + IDENT,
     ["same file"]),
    ("sink-unknown-extension", RUN + IDENT + ["--sink", "{dir}/out.xyz"], ["unknown output file type"]),
    ("sink-missing-folder", RUN + IDENT + ["--sink", "{dir}/no/such/out.mp4"], ["does not exist"]),
    ("sink-is-folder", RUN + IDENT + ["--sink", "{dir}/folder"], ["directory"]),
    ("sink-stream-url", RUN + IDENT + ["--sink", "rtmp://127.0.0.1/live"], ["not supported"]),
    ("sink-empty", RUN + IDENT + ["--sink", ""], ["empty --sink"]),
    ("sink-unknown-kind", RUN + IDENT + ["--sink", "foo"], ["unknown --sink", "window", "null", "vcam", "web", ".mp4"]),
    ("sink-folder-takes-no-files", RUN + IDENT + ["--sink", "/proc/genreal-test.mp4"], ["/proc", "cannot be created"]),
    # sources
    ("source-missing", ["run", "--source", "{dir}/nope.mp4", "--sink", "{keep}"] + IDENT, ["no such video file"]),
    ("source-folder", ["run", "--source", "{dir}/folder", "--sink", "{keep}"] + IDENT, ["folder"]),
    ("source-not-video", ["run", "--source", "{dir}/notvideo.mp4", "--sink", "{keep}"] + IDENT,
     ["notvideo", "not a video", "text"]),
    ("source-cut-mp4", ["run", "--source", "{dir}/cut.mp4", "--sink", "{keep}"] + IDENT, ["cut.mp4", "untrunc"]),
    ("source-empty-file", ["run", "--source", "{dir}/empty.mp4", "--sink", "{keep}"] + IDENT, ["empty.mp4"]),
    ("source-bad-scheme", ["run", "--source", "gopher://x/y", "--sink", "{keep}"] + IDENT, ["not supported"]),
    ("source-bad-camera", ["run", "--source", "webcam:abc", "--sink", "{keep}"] + IDENT, ["camera index"]),
    ("source-unknown-demo", ["run", "--source", "demo:moon", "--sink", "{keep}"] + IDENT, ["unknown demo"]),
    ("source-empty-images", ["run", "--source", "images:{dir}/none-*.png", "--sink", "{keep}"] + IDENT, ["images"]),
    # other commands
    ("stylize-missing-image", ["stylize", "{dir}/none.png", "-o", "{dir}/st"], ["image not found"]),
    ("stylize-out-is-file", ["stylize", "{in}", "-o", "{keep}"], ["is a file"]),
    ("stylize-nan-weight", ["stylize", "{in}", "-o", "{dir}/st2", "--style", "cel:nan"], ["finite"]),
    ("distill-resume-nothing", ["distill", "--teacher", "builtin:1", "--out", "{dir}/fresh", "--resume"],
     ["no checkpoint"]),
    ("distill-out-read-only-fs", ["distill", "--teacher", "builtin:1", "--out", "/proc/genreal-test"], ["--out"]),
    ("calibrate-bad-source", ["calibrate", "--source", "{dir}/nope.mp4", "--out", "{dir}/cal"],
     ["no such video file"]),
    ("option-after-command-unknown", ["run", "--source", "demo", "--sink", "null", "--frobnicate"],
     ["unrecognized"]),
]


def _fill(arg: str, d: Path) -> str:
    out = arg.replace("{in}", str(d / "in.mkv")).replace("{keep}", str(d / "keep.mkv"))
    out = out.replace("{stats}", str(d / "stats.json")).replace("{dir}", str(d))
    for name in ("trunc", "garbage", "noint8"):
        out = out.replace(f"{{model-{name}}}", str(d / f"model-{name}"))
    return out


def _snapshot(d: Path) -> dict[str, bytes]:
    return {name: (d / name).read_bytes() for name in ("in.mkv", "keep.mkv", "stats.json")}


def test_the_table_is_big_enough():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case,argv,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_loses_nothing(world, capsys, case, argv, words):
    if case == "device-cuda-without-gpu":
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            pytest.skip("this machine can run on CUDA")
    before = _snapshot(world)
    code = main([_fill(a, world) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("genreal: error:") and "\n" not in err and "Traceback" not in err, err
    assert len(err) < 400, f"an error line should be short, got {len(err)} characters: {err}"
    for word in words:
        assert word.lower() in err.lower(), err
    if case.startswith("auto-"):
        assert "teacher" not in err.lower() and "no backend can run" not in err, "auto names the model's own error"
    assert _snapshot(world) == before, "an input or an earlier output was changed"
    assert not list(world.glob("*.partial.*")), "a refused run left its partial output file"
    assert not (world / "cal").exists() and not (world / "fresh").exists(), "a failed command left a folder"
    assert json.loads((world / "stats.json").read_text()) == {"earlier": True}


def test_a_bad_style_is_refused_before_any_output_is_made(world, caplog, capsys):
    """The backend (which checks the style) is made before the sinks: no 'no frames were written' line first."""
    out = world / "styled.mp4"
    code = main(["run", "--source", str(world / "in.mkv"), "--sink", str(out), "--style", "vangogh"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "unknown style" in err, err
    logged = [r.getMessage() for r in caplog.records if r.levelno >= 30]
    assert not logged, f"lines before the error: {logged}"
    assert not out.exists() and not list(world.glob("styled*"))

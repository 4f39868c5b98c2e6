"""`genreal` end to end: exit codes, one-line errors, file round trips, Ctrl-C."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from realtime.cli import main
from realtime.sinks._partial import partial_path
from tests.fakes import assert_one_line_error, decode_video, encode_video  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def write_clip(path: Path, n: int = 12, w: int = 64, h: int = 48, fps: int = 10, codec: str = "ffv1") -> None:
    """`n` frames of a bar growing 5 px per frame, its colour changing with the frame index."""
    def frames() -> Iterator[np.ndarray]:
        for i in range(n):
            img = np.zeros((h, w, 3), np.uint8)
            img[:, : (i * 5) % w + 1] = (200, (40 + i * 10) % 256, 90)
            yield img

    encode_video(path, frames(), fps, codec, pix_fmt="yuv420p" if codec != "ffv1" else "bgr0")


read_clip = decode_video


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "realtime.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("demo", "run"):
        assert cmd in out


def test_file_round_trip_keeps_every_frame_and_pts(tmp_path, capsys):
    src, dst, js = tmp_path / "in.mkv", tmp_path / "out.mkv", tmp_path / "stats.json"
    write_clip(src, n=12)
    code = main(["run", "--source", str(src), "--sink", str(dst), "--sink", "null", "--backend", "identity",
                 "--stats-json", str(js)])
    assert code == 0, capsys.readouterr().err
    frames_in, pts_in = read_clip(src)
    frames_out, pts_out = read_clip(dst)
    assert len(frames_out) == 12
    assert pts_out == pytest.approx(pts_in)
    assert all(np.array_equal(a, b) for a, b in zip(frames_in, frames_out)), "FFV1 + identity is lossless"
    stats = json.loads(js.read_text())
    assert stats["frames_in"] == stats["frames_out"] == 12 and stats["dropped"] == 0
    assert stats["backend"] == "identity" and stats["size"] == "64x48"
    assert "capture→display" in capsys.readouterr().out


def test_teacher_backend_restyles_a_clip_to_mp4(tmp_path, capsys):
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    write_clip(src, n=4, codec="libx264")
    code = main(["run", "--source", str(src), "--sink", str(dst), "--backend", "teacher", "--style", "19",
                 "--size", "96x64"])
    assert code == 0, capsys.readouterr().err
    frames, _ = read_clip(dst)
    src_frames, _ = read_clip(src)
    assert len(frames) == 4 and frames[0].shape == (64, 96, 3)
    import cv2
    resized = cv2.resize(src_frames[0], (96, 64), interpolation=cv2.INTER_AREA)
    assert np.abs(frames[0].astype(int) - resized).mean() > 10, "the teacher changed the look"


def test_images_glob_stereo_sbs(tmp_path, capsys):
    import cv2
    for i in range(3):
        img = np.zeros((40, 100, 3), np.uint8)
        img[:, :50] = (255, 0, 0)  # left half red (RGB)
        img[:, 50:] = (0, 0, 255)  # right half blue
        cv2.imwrite(str(tmp_path / f"f{i}.png"), img[..., ::-1])
    dst = tmp_path / "sbs.mkv"
    code = main(["run", "--source", f"sbs:images:{tmp_path}/f*.png", "--sink", str(dst), "--backend", "identity"])
    assert code == 0, capsys.readouterr().err
    frames, _ = read_clip(dst)
    assert len(frames) == 3 and frames[0].shape == (40, 100, 3)
    assert frames[0][20, 10].tolist() == [255, 0, 0] and frames[0][20, 90].tolist() == [0, 0, 255]


@pytest.mark.parametrize("argv, words", [
    (["run", "--source", "/no/such/file.mp4", "--sink", "null"], ["/no/such/file.mp4"]),
    (["run", "--source", "foo://bar", "--sink", "null"], ["foo://bar"]),
    (["run", "--source", "webcam:97", "--sink", "null"], ["webcam:97"]),
    (["run", "--source", "images:/no/such/dir/*.png", "--sink", "null"], ["images"]),
    (["run", "--source", "demo", "--sink", "null", "--size", "big"], ["--size"]),
    (["run", "--source", "demo", "--sink", "null", "--size", "0x10"], ["--size"]),
    (["run", "--source", "demo", "--sink", "null", "--backend", "teacher", "--style", "99"], ["style"]),
    (["run", "--source", "demo", "--sink", "null", "--backend", "teacher", "--style", "starry"], ["style"]),
    (["run", "--source", "demo", "--sink", "null", "--backend", "nope"], ["--backend"]),
    (["run", "--source", "demo", "--sink", "/no/such/dir/out.mp4"], ["/no/such/dir"]),
    (["run", "--source", "demo", "--sink", "out.xyz"], ["out.xyz"]),
    (["run", "--source", "demo", "--sink", "null", "--budget-ms", "fast"], ["--budget-ms"]),
    (["run", "--source", "demo", "--sink", "null", "--budget-ms", "-3"], ["--budget-ms"]),
    (["run", "--source", "demo", "--sink", "null", "--max-frames", "0"], ["--max-frames"]),
    (["run", "--source", "demo", "--sink", "null", "--steps", "0"], ["--steps"]),
    (["run", "--sink", "null"], ["--source"]),
    (["run", "--source", "demo", "--sink", "null", "--frobnicate"], ["--frobnicate"]),
    (["nosuchcommand"], ["nosuchcommand"]),
])
def test_bad_input_is_one_line_exit_2(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(capsys, main(argv), *words)


def test_corrupt_video_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video" * 100)
    assert_one_line_error(capsys, main(["run", "--source", str(bad), "--sink", "null"]), "bad.mp4")


def test_truncated_video_keeps_what_decodes(tmp_path, capsys, caplog):
    src, dst = tmp_path / "in.mkv", tmp_path / "out.mkv"
    write_clip(src, n=40, w=160, h=120, codec="libx264")
    data = src.read_bytes()
    src.write_bytes(data[: len(data) * 2 // 3])
    code = main(["run", "--source", str(src), "--sink", str(dst), "--backend", "identity"])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err
    assert "truncated" in caplog.text
    frames, _ = read_clip(dst)
    assert 0 < len(frames) < 40


def test_truncated_mp4_without_index_is_a_one_line_error(tmp_path, capsys):
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mkv"
    write_clip(src, n=40, w=160, h=120, codec="libx264")
    data = src.read_bytes()
    src.write_bytes(data[: len(data) * 2 // 3])  # the moov index sits at the end: it is gone
    code = main(["run", "--source", str(src), "--sink", str(dst), "--backend", "identity"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err
    assert len(err.splitlines()) == 1 and "no index" in err


def test_demo_writes_a_restyled_clip(tmp_path):
    # --source demo keeps every frame (the default paces the clip like a camera, which may drop some)
    proc = run_cli("demo", "--source", "demo", "--backend", "identity", "--max-frames", "20", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    frames, _ = read_clip(tmp_path / "genreal-demo.mp4")
    assert len(frames) == 20 and frames[0].shape == (360, 640, 3)
    assert "capture→display" in proc.stdout
    assert "counts the time frames waited in the queue" in proc.stdout  # says what its figure means


def test_demo_paces_the_clip_like_a_camera_and_says_what_its_latency_means(tmp_path):
    """Issue 29: plain `genreal demo` measures capture→display as a webcam would see it: the clip is paced at
    30 fps (one pass of it), not read ahead into a queue, and the summary says so in one line."""
    t0 = time.time()
    proc = run_cli("demo", "--backend", "identity", "--size", "160x90", "--stats-json", "stats.json", cwd=tmp_path)
    took = time.time() - t0
    assert proc.returncode == 0, proc.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["frames_in"] == 150 and took >= 150 / 30, "one pass of the clip at 30 fps"
    frames, _ = read_clip(tmp_path / "genreal-demo.mp4")
    assert len(frames) == stats["frames_out"] > 0
    note = proc.stdout.strip().splitlines()[-1]
    assert note.startswith(f"capture→display p50 {stats['end_to_end']['p50_ms']:.0f} ms") and "30 fps camera" in note
    # paced frames do not wait behind one another: the queue wait stays far below a frame read ahead by
    # dozens (what `--source demo` measures)
    assert stats["stages"]["queue"]["p50_ms"] < 33.3, stats["stages"]["queue"]


@pytest.mark.slow
def test_ctrl_c_finalizes_the_output_and_prints_the_summary(tmp_path):
    out = tmp_path / "live.mkv"
    proc = subprocess.Popen(
        # demo:live is paced at 30 fps and loops like a camera, so Ctrl-C lands mid-run, never in the
        # shutdown of a run that already finished
        [sys.executable, "-m", "realtime.cli", "run", "--source", "demo:live", "--sink", str(out), "--backend",
         "teacher", "--size", "128x72"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    partial = partial_path(out)  # the run writes here until it ends, then renames it to `out`
    while time.time() < deadline and not (partial.exists() and partial.stat().st_size > 0):
        time.sleep(0.1)
    time.sleep(1.0)
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert time.time() - t0 < 5, "stops promptly"
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "capture→display" in stdout
    frames, _ = read_clip(out)
    assert 0 < len(frames) < 150, "the partial file is finalized and playable"


def test_ice_connectivity_lines_only_with_verbose():
    """Issue 29: aioice logs every ICE candidate pair's state change at INFO (dozens per WebRTC session);
    at normal verbosity only its warnings show, with -v all of them."""
    import logging

    from realtime.cli import _setup_logging

    ice = logging.getLogger("aioice.ice")
    saved = {name: logging.getLogger(name).level for name in ("aioice", "aiortc")}
    try:
        _setup_logging(0, False)
        assert ice.getEffectiveLevel() == logging.WARNING
        assert logging.getLogger("aiortc.rtcpeerconnection").getEffectiveLevel() == logging.WARNING
        _setup_logging(1, False)
        assert logging.getLogger("aioice").level == logging.NOTSET  # follows the root again
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)

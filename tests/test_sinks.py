"""Output sinks: null, video files (PyAV), window (OpenCV, under Xvfb) and virtual camera (faked)."""
from __future__ import annotations

import logging
import os
import select
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pytest

from genreal_errors import UserError
from realtime.frame import Frame, StereoFrame
from realtime.sinks import FileSink, NullSink, Overlay, VcamSink, WindowSink, make_sink

av = pytest.importorskip("av")

OVERLAY = Overlay(style="mosaic", backend="onnxruntime", fps=29.7, latency_ms=41.0, temporal=True)
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def smooth(w: int, h: int, i: int) -> np.ndarray:
    """A smooth moving gradient (compresses well, so lossy round trips stay close)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([(x * 3 + i * 5) % 256, (y * 4 + i * 3) % 256, np.full_like(x, 40 + i * 10)], axis=-1)
    return img.astype(np.uint8)


def noise(w: int, h: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def frame(img: np.ndarray, i: int, pts: Optional[float] = None, capture_ns: Optional[int] = None) -> Frame:
    return Frame(img, i, capture_ns if capture_ns is not None else time.monotonic_ns(), pts=pts)


def read_video(path: Path) -> tuple[list[np.ndarray], list[float], object]:
    """Decoded RGB frames, their times (seconds) and the stream's codec name / rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = types.SimpleNamespace(codec=stream.codec_context.name, rate=stream.average_rate)
        images, times = [], []
        for f in container.decode(stream):
            images.append(f.to_ndarray(format="rgb24"))
            times.append(float(f.pts * f.time_base))
    return images, times, info


# -- null ---------------------------------------------------------------------------------
def test_null_counts_frames():
    sink = make_sink("null")
    assert isinstance(sink, NullSink)
    for i in range(5):
        sink.write(frame(noise(8, 8, i), i), OVERLAY)
    assert sink.frames == 5 and sink.poll_keys() == []
    sink.close()
    sink.close()


# -- files --------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", [".mp4", ".mov"])
@pytest.mark.parametrize("w,h", [(64, 48), (65, 49)])
def test_h264_round_trip_keeps_count_size_and_pts(tmp_path, ext, w, h):
    path = tmp_path / f"out{ext}"
    sink = make_sink(str(path), fps=25.0)
    assert isinstance(sink, FileSink) and not path.exists()  # opened lazily
    src = [smooth(w, h, i) for i in range(8)]
    pts = [0.5 + i / 25 for i in range(8)]
    for i, img in enumerate(src):
        sink.write(frame(img, i, pts=pts[i]), OVERLAY)
    sink.close()
    images, times, info = read_video(path)
    assert info.codec == "h264" and info.rate == 25
    assert len(images) == 8
    assert images[0].shape == (h + h % 2, w + w % 2, 3)  # odd sizes padded to even
    np.testing.assert_allclose(times, [t - pts[0] for t in pts], atol=1e-4)  # rebased: the file starts at 0
    for got, want in zip(images, src):
        assert np.abs(got[:h, :w].astype(int) - want).mean() < 6
    if w % 2:  # the padding repeats the last column
        assert np.abs(images[0][:h, w].astype(int) - images[0][:h, w - 1]).mean() < 6


def test_ffv1_mkv_is_pixel_exact_with_odd_size(tmp_path):
    path = tmp_path / "out.mkv"
    src = [noise(65, 49, i) for i in range(6)]
    pts = [i / 30 for i in range(6)]
    with make_sink(str(path)) as sink:
        for i, img in enumerate(src):
            sink.write(frame(img, i, pts=pts[i]), OVERLAY)
    images, times, info = read_video(path)
    assert info.codec == "ffv1" and info.rate == 30  # default frame rate
    assert len(images) == 6
    for got, want in zip(images, src):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(times, pts, atol=1e-3)  # Matroska stores milliseconds


@pytest.mark.parametrize("ext,codec", [(".avi", "mjpeg"), (".webm", "vp9")])
def test_other_containers_write_every_frame(tmp_path, ext, codec):
    path = tmp_path / f"out{ext}"
    with make_sink(str(path), fps=20) as sink:
        for i in range(5):
            sink.write(frame(smooth(65, 49, i), i, pts=i / 20), OVERLAY)
    images, times, info = read_video(path)
    assert info.codec == codec and len(images) == 5
    np.testing.assert_allclose(times, [i / 20 for i in range(5)], atol=1e-3)


def test_capture_time_used_without_pts_and_forced_increasing(tmp_path):
    path = tmp_path / "live.mkv"
    t0 = 1_000_000_000
    capture_ms = [0, 40, 40, 30, 120]  # a repeated and a backwards capture time
    with make_sink(str(path)) as sink:
        for i, ms in enumerate(capture_ms):
            sink.write(frame(noise(16, 16, i), i, pts=None, capture_ns=t0 + ms * 1_000_000), OVERLAY)
    images, times, _ = read_video(path)
    assert len(images) == 5
    np.testing.assert_allclose(times, [0.0, 0.040, 0.041, 0.042, 0.120], atol=1e-6)


def test_close_after_exception_leaves_playable_file(tmp_path):
    path = tmp_path / "crash.mp4"
    sink = make_sink(str(path))
    with pytest.raises(RuntimeError, match="boom"):
        with sink:
            for i in range(5):
                sink.write(frame(smooth(64, 48, i), i, pts=i / 30), OVERLAY)
            with pytest.raises(AttributeError):
                sink.write(None, OVERLAY)  # type: ignore[arg-type]  # a bad item mid-stream
            raise RuntimeError("boom")
    images, _, _ = read_video(path)
    assert len(images) == 5
    sink.close()  # idempotent
    with pytest.raises(RuntimeError, match="after close"):
        sink.write(frame(smooth(64, 48, 9), 9), OVERLAY)
    assert len(read_video(path)[0]) == 5


def test_close_without_frames_is_harmless(tmp_path):
    path = tmp_path / "empty.mp4"
    sink = make_sink(str(path))
    sink.close()
    sink.close()
    assert not path.exists()


# -- one output per run (issue 29) --------------------------------------------------------------------
def test_target_is_never_half_written(tmp_path):
    """Frames go to the partial file beside the target; the target is replaced only when the sink closes."""
    from realtime.sinks._partial import partial_path

    path = tmp_path / "out.mp4"
    with make_sink(str(path)) as sink:
        for i in range(3):
            sink.write(frame(smooth(64, 48, i), i, pts=i / 30), OVERLAY)
    earlier = path.read_bytes()
    sink = make_sink(str(path))
    partial = partial_path(path)
    assert partial == tmp_path / "out.partial.mp4"
    for i in range(7):
        sink.write(frame(smooth(64, 48, i), i, pts=i / 30), OVERLAY)
    assert path.read_bytes() == earlier, "the earlier output is untouched while the run writes"
    assert partial.stat().st_size > 0
    sink.close()
    assert not partial.exists()
    assert len(read_video(path)[0]) == 7


def test_a_target_another_run_is_writing_is_refused(tmp_path):
    from realtime.sinks import validate_sink

    path = tmp_path / "out.mkv"
    first = make_sink(str(path))
    first.write(frame(smooth(32, 24, 0), 0, pts=0.0), OVERLAY)
    for check in (make_sink, validate_sink):
        with pytest.raises(UserError, match="being written by another genreal run"):
            check(str(path))
    first.close()
    assert len(read_video(path)[0]) == 1
    second = make_sink(str(path))  # free again once the first has finished
    second.close()
    assert len(read_video(path)[0]) == 1, "a run that wrote nothing leaves the earlier output alone"


def test_a_partial_file_left_by_a_killed_run_is_named_and_replaced(tmp_path, caplog):
    from realtime.sinks._partial import partial_path

    path = tmp_path / "out.mkv"
    partial_path(path).write_bytes(b"frames of a run that was killed")
    with caplog.at_level(logging.WARNING), make_sink(str(path)) as sink:
        sink.write(frame(smooth(32, 24, 0), 0, pts=0.0), OVERLAY)
    assert any("out.partial.mkv" in r.getMessage() and "killed" in r.getMessage() for r in caplog.records)
    assert len(read_video(path)[0]) == 1 and not partial_path(path).exists()


def test_a_symlinked_target_stays_a_link(tmp_path):
    real = tmp_path / "real.mkv"
    link = tmp_path / "link.mkv"
    link.symlink_to(real)
    with make_sink(str(link)) as sink:
        sink.write(frame(smooth(32, 24, 0), 0, pts=0.0), OVERLAY)
    assert link.is_symlink() and len(read_video(real)[0]) == 1
    assert not (tmp_path / "real.partial.mkv").exists()


def test_a_folder_that_takes_no_files_is_refused_before_the_first_frame():
    from realtime.sinks import validate_sink

    for check in (make_sink, validate_sink):
        with pytest.raises(UserError, match="files cannot be created in /proc"):
            check("/proc/x.mp4")


@pytest.mark.parametrize("spec", ["foo", "{tmp}/out.xyz"])
def test_an_unknown_sink_lists_every_kind(tmp_path, spec):
    with pytest.raises(UserError) as err:
        make_sink(spec.format(tmp=tmp_path))
    for kind in ("window", "null", "vcam", "web", ".mp4", ".mkv"):
        assert kind in str(err.value), err.value


def test_size_change_is_resized_to_first_size(tmp_path, caplog):
    path = tmp_path / "sizes.mkv"
    with caplog.at_level(logging.WARNING, logger="realtime.sinks"):
        with make_sink(str(path)) as sink:
            for i, (w, h) in enumerate([(64, 48), (32, 24), (81, 61), (64, 48)]):
                sink.write(frame(smooth(w, h, 0), i, pts=i / 30), OVERLAY)
    images, _, _ = read_video(path)
    assert [im.shape for im in images] == [(48, 64, 3)] * 4
    assert sum("differs from the first frame" in r.getMessage() for r in caplog.records) == 1


def test_stereo_frame_written_side_by_side(tmp_path):
    path = tmp_path / "stereo.mkv"
    left, right = noise(32, 24, 1), noise(32, 24, 2)
    item = StereoFrame(Frame(left, 0, 1, pts=0.0, eye="left"), Frame(right, 0, 1, pts=0.0, eye="right"))
    with make_sink(str(path)) as sink:
        sink.write(item, OVERLAY)
    (image,), _, _ = read_video(path)
    assert image.shape == (24, 64, 3)
    np.testing.assert_array_equal(image[:, :32], left)
    np.testing.assert_array_equal(image[:, 32:], right)


@pytest.mark.parametrize("spec,needle", [
    ("/nonexistent_dir/out.mp4", "does not exist"),
    ("{tmp}/out.xyz", ".mp4"),
    ("{tmp}/out", ".mkv"),
    ("{tmp}", "is a directory"),
    ("rtmp://example.com/live", "not supported"),
    ("   ", "empty --sink"),
])
def test_bad_file_sinks_fail_at_make_sink(tmp_path, spec, needle):
    with pytest.raises(UserError, match=needle):
        make_sink(spec.format(tmp=tmp_path))


@pytest.mark.skipif(IS_ROOT, reason="root ignores permission bits, so a read-only directory is writable")
def test_read_only_directory_and_file_fail_at_make_sink(tmp_path):
    ro_dir = tmp_path / "ro"
    ro_dir.mkdir()
    ro_dir.chmod(0o555)
    ro_file = tmp_path / "ro.mp4"
    ro_file.write_bytes(b"")
    ro_file.chmod(0o444)
    try:
        with pytest.raises(UserError, match="no write permission"):
            make_sink(str(ro_dir / "out.mp4"))
        with pytest.raises(UserError, match="read-only"):
            make_sink(str(ro_file))
    finally:
        ro_dir.chmod(0o755)


# -- virtual camera ------------------------------------------------------------------------
class FakeCamera:
    """Stands in for `pyvirtualcam.Camera`: records what the sink sends."""

    instances: list["FakeCamera"] = []
    fail: Optional[str] = None

    def __init__(self, width, height, fps, *, fmt=None, device=None, **kw):
        if FakeCamera.fail:
            raise RuntimeError(FakeCamera.fail)
        self.args = dict(width=width, height=height, fps=fps, fmt=fmt, device=device)
        self.device = device or "/dev/video7"
        self.frames: list[np.ndarray] = []
        self.closed = 0
        FakeCamera.instances.append(self)

    def send(self, frame: np.ndarray) -> None:
        assert frame.shape == (self.args["height"], self.args["width"], 3) and frame.dtype == np.uint8
        self.frames.append(frame.copy())

    def sleep_until_next_frame(self) -> None:
        raise AssertionError("the sink must not pace itself")

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def fake_pyvirtualcam(monkeypatch, tmp_path):
    """A fake `pyvirtualcam` module plus a fake sysfs listing one loopback device, /dev/video7."""
    module = types.ModuleType("pyvirtualcam")
    module.Camera = FakeCamera
    module.PixelFormat = types.SimpleNamespace(RGB="RGB", BGR="BGR")
    monkeypatch.setitem(sys.modules, "pyvirtualcam", module)
    sysfs = tmp_path / "video4linux"
    (sysfs / "video7").mkdir(parents=True)
    (sysfs / "video7" / "name").write_text("Dummy video device (0x0000)\n")
    monkeypatch.setattr("realtime.sinks.vcam.V4L2_SYSFS", sysfs)
    monkeypatch.setattr(FakeCamera, "instances", [])
    monkeypatch.setattr(FakeCamera, "fail", None)
    return module


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="v4l2loopback is Linux only")
def test_vcam_without_loopback_device_names_modprobe(fake_pyvirtualcam, monkeypatch, tmp_path):
    monkeypatch.setattr("realtime.sinks.vcam.V4L2_SYSFS", tmp_path / "no-such-dir")
    with pytest.raises(UserError, match="modprobe v4l2loopback"):
        make_sink("vcam")


def test_vcam_without_pyvirtualcam_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyvirtualcam", None)  # makes `import pyvirtualcam` fail
    with pytest.raises(UserError, match=r"generative-reality\[vcam\]"):
        make_sink("vcam")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sysfs device check is Linux only")
def test_vcam_sends_every_frame_at_first_size(fake_pyvirtualcam):
    sink = make_sink("vcam", fps=24.0)
    assert isinstance(sink, VcamSink) and FakeCamera.instances == []  # opened lazily
    imgs = [noise(40, 30, i) for i in range(3)]
    for i, img in enumerate(imgs):
        sink.write(frame(img, i), OVERLAY)
    sink.write(frame(noise(20, 16, 9), 3), OVERLAY)  # another size: resized, no crash
    left, right = noise(20, 30, 5), noise(20, 30, 6)
    sink.write(StereoFrame(Frame(left, 4, 1, eye="left"), Frame(right, 4, 1, eye="right")), OVERLAY)
    sink.close()
    sink.close()
    (cam,) = FakeCamera.instances
    assert cam.args == dict(width=40, height=30, fps=24.0, fmt="RGB", device=None)
    assert len(cam.frames) == 5 and sink.frames == 5 and cam.closed == 1
    for got, want in zip(cam.frames, imgs):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(cam.frames[4], np.concatenate([left, right], axis=1))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sysfs device check is Linux only")
def test_vcam_open_failure_and_unknown_device_are_user_errors(fake_pyvirtualcam):
    with pytest.raises(UserError, match="not a v4l2loopback device"):
        make_sink("vcam:/dev/video3")
    sink = make_sink("vcam:/dev/video7")
    FakeCamera.fail = "device busy"
    with pytest.raises(UserError, match="device busy.*modprobe"):
        sink.write(frame(noise(8, 8, 0), 0), OVERLAY)
    sink.close()


# -- window ------------------------------------------------------------------------------
def test_window_without_display_is_a_user_error(monkeypatch):
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(var, raising=False)
    if sys.platform.startswith("linux"):
        with pytest.raises(UserError, match=r"no display for --sink window.*--sink null"):
            make_sink("window")
    monkeypatch.setattr("realtime.sinks.window.gui_backend", lambda: "NONE")  # a headless OpenCV
    with pytest.raises(UserError, match="no GUI support"):
        make_sink("window")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="X11 displays are checked on Linux only")
def test_window_with_dead_x_display_is_a_user_error(monkeypatch):
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.setattr("realtime.sinks.window.gui_backend", lambda: "QT5")
    dead = next(n for n in range(917, 999) if not Path(f"/tmp/.X11-unix/X{n}").exists())
    monkeypatch.setenv("DISPLAY", f":{dead}")
    with pytest.raises(UserError, match="cannot connect to the X server"):
        make_sink("window")


def test_hud_draws_on_the_copy_only():
    from realtime.sinks.window import draw_hud

    for w, h in [(320, 180), (8, 8)]:  # a tiny frame must not crash
        bgr = np.full((h, w, 3), 200, np.uint8)
        draw_hud(bgr, OVERLAY)
        assert (bgr[: min(h, 12), : min(w, 40)] != 200).any()


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies (a killed pytest leaves no Xvfb behind)."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@pytest.fixture(scope="module")
def xvfb_display() -> Iterator[str]:
    """A private X server (Xvfb picks a free display number itself: -displayfd)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("Xvfb tests run on Linux only")
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb not installed (apt-get install xvfb xdotool)")
    from realtime.sinks.window import gui_backend

    if gui_backend() == "NONE":
        pytest.skip("this OpenCV build has no GUI (opencv-python-headless)")
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "640x480x24", "-nolisten", "tcp"],
                            pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=_die_with_parent)
    os.close(write_fd)
    number, deadline = b"", time.monotonic() + 10
    while not number.endswith(b"\n") and time.monotonic() < deadline and proc.poll() is None:
        if select.select([read_fd], [], [], 0.2)[0]:
            chunk = os.read(read_fd, 16)
            if not chunk:
                break
            number += chunk
    os.close(read_fd)
    if not number.strip().isdigit():
        proc.kill()
        pytest.fail(f"Xvfb did not start (exit code {proc.poll()})")
    try:
        yield f":{number.decode().strip()}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def window_env(monkeypatch, xvfb_display) -> str:
    monkeypatch.setenv("DISPLAY", xvfb_display)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    return xvfb_display


# The GUI runs in a child interpreter: Qt binds a process to the first X server it talks to,
# and an `import av` earlier in this test session (other test modules) would make an OpenCV
# window hang (see realtime/_xlibs.py). The child inherits DISPLAY from os.environ.
_GUI_PRELUDE = """
import subprocess, sys, time
import numpy as np
from realtime.frame import Frame, StereoFrame
from realtime.sinks import Overlay, WindowSink, make_sink

OVERLAY = Overlay(style="mosaic", backend="onnxruntime", fps=29.7, latency_ms=41.0, temporal=True)
rng = np.random.default_rng(0)
img = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)

def frame(image, i=0):
    return Frame(image, i, time.monotonic_ns())

def keys_within(sink, seconds=3.0):
    keys, deadline = [], time.monotonic() + seconds
    while not keys and time.monotonic() < deadline:
        sink.write(frame(img), OVERLAY)
        keys += sink.poll_keys()
    return keys

def xdotool(*args):
    subprocess.run(["xdotool", "search", "--sync", "--name", "^genreal$", "windowfocus", "--sync", *args],
                   check=True, timeout=10, capture_output=True)
"""


def _run_gui(body: str) -> str:
    """Run `_GUI_PRELUDE + body` in a fresh interpreter; return its stdout (it must exit 0)."""
    proc = subprocess.run([sys.executable, "-c", _GUI_PRELUDE + body], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ), cwd=Path(__file__).resolve().parent.parent)
    noise_free = "\n".join(line for line in proc.stderr.splitlines() if "font" not in line.lower())
    assert proc.returncode == 0, f"GUI child failed ({proc.returncode}):\n{proc.stdout}\n{noise_free}"
    return proc.stdout


def test_window_shows_frames_and_reports_closing_as_q(window_env):
    out = _run_gui("""
import cv2
sink = make_sink("window")
assert isinstance(sink, WindowSink)
before = img.copy()
for i in range(3):
    sink.write(frame(img, i), OVERLAY)
assert np.array_equal(img, before), "the HUD must be drawn on a copy"
left, right = img[:60, :80].copy(), img[60:, 80:].copy()
sink.write(StereoFrame(Frame(left, 3, 1, eye="left"), Frame(right, 3, 1, eye="right")), OVERLAY)
assert sink.frames == 4 and sink.poll_keys() == []
assert cv2.getWindowProperty(sink.title, cv2.WND_PROP_VISIBLE) >= 1
cv2.destroyWindow(sink.title)  # as if the user closed it
assert sink.poll_keys() == ["q"]
sink.write(frame(img, 5), OVERLAY)  # no longer shown, no error
assert sink.poll_keys() == []
sink.close(); sink.close()
print("OK")
""")
    assert out.strip().endswith("OK")


@pytest.mark.skipif(shutil.which("xdotool") is None, reason="xdotool not installed (apt-get install xdotool)")
def test_window_keys_reach_poll_keys(window_env):
    out = _run_gui("""
sink = make_sink("window")
sink.write(frame(img), OVERLAY)
xdotool("key", "n")
print("n:", keys_within(sink))
xdotool("key", "t")
print("t:", keys_within(sink))
xdotool("key", "Escape")
print("esc:", keys_within(sink))
sink.close()
""")
    assert out.split("\n")[:3] == ["n: ['n']", "t: ['t']", "esc: ['q']"]


def test_window_refuses_instead_of_hanging_when_av_was_imported_first(window_env):
    from realtime import _xlibs

    if not _xlibs._shared_libs()[2]:
        pytest.skip("these PyAV and OpenCV wheels bundle no clashing xcb libraries")
    # a fresh child that imports av before realtime.sinks: a UserError, not a hang
    proc = subprocess.run([sys.executable, "-c", "import av\nfrom realtime.sinks import make_sink\n"
                           "try:\n    make_sink('window')\nexcept Exception as e:\n    print(type(e).__name__, e)\n"],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert proc.returncode == 0 and proc.stdout.startswith("UserError") and "clash" in proc.stdout

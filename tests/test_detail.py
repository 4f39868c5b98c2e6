"""The keyframe detail layer (realtime/detail.py) and its one point of contact with the runtime
(realtime/backends/detail_backend.py, `--detail`, `--keyframe-every`). Synthetic frames with exact motion."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from realtime.detail import DetailConfig, DetailLayer

ROOT = Path(__file__).resolve().parents[1]


def _texture(h: int, w: int, seed: int = 0, sigma: float = 2.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3)).astype(np.uint8), (0, 0), sigma)
    return cv2.normalize(t, None, 0, 255, cv2.NORM_MINMAX)


def student(img: np.ndarray) -> np.ndarray:
    """A fake student: the picture without its fine detail."""
    return cv2.GaussianBlur(img, (0, 0), 3)


def teacher(img: np.ndarray) -> np.ndarray:
    """A fake teacher: strokes that are a function of the content (so they move with it)."""
    s = student(img).astype(np.float32)
    return np.clip(s + 2.5 * (img.astype(np.float32) - s), 0, 255).astype(np.uint8)


def _err(a: np.ndarray, b: np.ndarray, m: int = 12) -> float:
    d = np.abs(a.astype(np.float32) - b.astype(np.float32))
    return float((d[m:-m, m:-m] if m else d).mean())


def test_config_rejects_bad_values():
    from genreal_errors import UserError

    with pytest.raises(UserError, match="--detail"):
        DetailConfig(mode="sometimes")
    with pytest.raises(UserError, match="--keyframe-every"):
        DetailConfig(mode="on", keyframe_every=0)


def test_strokes_stay_on_a_translating_texture():
    """One keyframe, then 12 frames of exact 2 px/frame motion: the carried strokes match the teacher's on
    each frame far better than the student alone, without a new keyframe."""
    big = _texture(200, 340)
    frames = [np.ascontiguousarray(big[20:180, 10 + 2 * t:10 + 2 * t + 240]) for t in range(14)]
    layer = DetailLayer(DetailConfig(mode="on", synchronous=True, keyframe_every=1000, max_age=1000,
                                     low_conf_frac=1.0), teacher)
    errs_on, errs_off = [], []
    for t, x in enumerate(frames):
        (out,), st = layer.apply([x], [student(x)])
        assert st.keyframe == (t == 0)
        if t >= 6:  # after the fade-in
            errs_on.append(_err(out, teacher(x)))
            errs_off.append(_err(student(x), teacher(x)))
            assert st.confidence > 0.8
    assert np.mean(errs_on) < 0.5 * np.mean(errs_off), (errs_on, errs_off)


def test_a_disocclusion_shows_the_students_look_not_a_ghost():
    """A textured square slides right over a flat background: where it uncovered the background, the
    output is the student's (the square's strokes are not dragged along)."""
    h, w, x0, side, v = 120, 200, 40, 60, 3
    tex = _texture(side, side, seed=3, sigma=1.5)
    frames = []
    for t in range(12):
        img = np.full((h, w, 3), 128, np.uint8)
        img[30:30 + side, x0 + v * t:x0 + v * t + side] = tex
        frames.append(img)
    layer = DetailLayer(DetailConfig(mode="on", synchronous=True, keyframe_every=1000, max_age=1000,
                                     low_conf_frac=1.0), teacher)
    ghost = float(np.abs(teacher(frames[0]).astype(np.float32) - student(frames[0]))[30:90, x0:x0 + side].mean())
    for t, x in enumerate(frames):
        s = student(x)
        (out,), _ = layer.apply([x], [s])
    t = len(frames) - 1
    # the strip the square uncovered (away from its blurred edges)
    strip = (slice(36, 84), slice(x0 + 4, x0 + v * t - 4))
    shown = float(np.abs(out.astype(np.float32) - s.astype(np.float32))[strip].mean())
    assert shown < 0.25 * ghost, (shown, ghost)
    # … while the square itself still carries strokes closer to the teacher's than the student's (DIS
    # underestimates this motion by ~6%: after 33 px the strokes sit ~2 px behind, hence the loose bound)
    inside = (slice(40, 80), slice(x0 + v * t + 10, x0 + v * t + side - 10))
    assert _err(out[inside], teacher(x)[inside], 0) < 0.85 * _err(s[inside], teacher(x)[inside], 0)


def test_a_still_scene_settles():
    """A still camera with sensor noise and a student that no longer changes: once the keyframe faded in
    (5 frames) and the temporal filter caught up (it halves the gap each frame: 8 more), the output stops
    changing, bit for bit; the noise moves nothing (no flow is even computed)."""
    from realtime.sources.synthetic import add_sensor_noise

    base = _texture(120, 160, seed=5)
    s = student(base)
    # the keyframe lands 6 frames after it was taken (a slow teacher): its fade-in is not "low confidence"
    layer = DetailLayer(DetailConfig(mode="on", synchronous=True, keyframe_every=4, latency_frames=6), teacher)
    outs = []
    calls = []  # DIS calls from frame 13 on
    for t in range(30):
        (out,), st = layer.apply([add_sensor_noise(base, 2.0, 1, t)], [s])
        outs.append(out)
        if t == 12:
            eye = layer._eyes[0]
            real = eye.dis
            eye.dis = type("Counting", (), {"calc": lambda self, *a: calls.append(1) or real.calc(*a)})()
    assert not np.array_equal(outs[-1], s)  # the detail is shown
    for a, b in zip(outs[20:], outs[21:]):
        assert np.array_equal(a, b)
    assert not calls  # a frame where nothing changed skips the flow
    assert sum(st.keyframe for st in layer.history) == 1


def test_the_run_figures_keep_fixed_memory(monkeypatch):
    """A live run of any length: the per-frame records are bounded, and the run's figures (--stats-json) are
    totals over every frame, not over the records kept."""
    import realtime.detail as detail

    monkeypatch.setattr(detail, "HISTORY", 5)
    base = _texture(64, 96, seed=3)
    s = student(base)
    layer = DetailLayer(DetailConfig(mode="on", synchronous=True, keyframe_every=4, latency_frames=0), teacher)
    for _ in range(12):
        layer.apply([base], [s])
    assert len(layer.history) == 5
    summary = layer.summary()
    assert summary["frames"] == 12 and summary["ms"]["n"] == 12
    assert summary["keyframes"] == 1 and summary["teacher_ms"]["n"] == 1


def test_the_teacher_thread_never_blocks_the_frame():
    """A teacher that waits for a signal: frames go on with the student alone; once released, the keyframe
    lands on a later frame, where its content now is."""
    release = threading.Event()
    calls = []

    def slow_teacher(img: np.ndarray) -> np.ndarray:
        calls.append(1)
        assert release.wait(20.0)
        return teacher(img)

    big = _texture(160, 300)
    frames = [np.ascontiguousarray(big[10:130, 10 + t:10 + t + 200]) for t in range(40)]
    layer = DetailLayer(DetailConfig(mode="on", keyframe_every=1000, max_age=1000, low_conf_frac=1.0), slow_teacher)
    try:
        for x in frames[:6]:
            (out,), st = layer.apply([x], [student(x)])
            assert _err(out, student(x)) == 0 and not st.keyframe  # no detail yet, no wait
        assert layer.history[0].requested and calls
        release.set()
        landed = None
        for t, x in enumerate(frames[6:], start=6):
            (out,), st = layer.apply([x], [student(x)])
            if st.keyframe:
                landed = t
            if landed is not None and t >= landed + 6:
                break
            threading.Event().wait(0.02)
        assert landed is not None
        assert _err(out, teacher(x)) < 0.8 * _err(student(x), teacher(x))  # it landed where its content is now
    finally:
        release.set()
        layer.close()


def test_stereo_one_keyframe_decision_for_both_eyes():
    big = _texture(160, 300)
    layer = DetailLayer(DetailConfig(mode="on", synchronous=True, keyframe_every=3), teacher)
    for t in range(8):
        left = np.ascontiguousarray(big[10:130, 10 + t:210 + t])
        right = np.ascontiguousarray(big[10:130, 14 + t:214 + t])
        outs, st = layer.apply([left, right], [student(left), student(right)])
        assert len(outs) == 2 and all(o.shape == left.shape for o in outs)
    assert all(e.residual is not None for e in layer._eyes)


# -- the runtime's side ----------------------------------------------------------------------------

def _ort_available() -> bool:
    try:
        from realtime.backends import create_backend
        from realtime.config import BackendConfig

        create_backend(BackendConfig(name="onnxruntime", device="cpu")).close()
        return True
    except Exception:
        return False


needs_model = pytest.mark.skipif(not _ort_available(), reason="the shipped model's ONNX graphs are not here")


def test_the_budget_halves_keyframes_then_pauses_them():
    """Pressure 0: keyframes at full size, at most one every N frames; 1: painted on a half-size frame (a
    quarter of the teacher's work), at most one every 2N; 2: none asked for, the carried detail stays."""
    sizes = []

    def recording_teacher(img: np.ndarray) -> np.ndarray:
        sizes.append(img.shape[:2])
        return cv2.resize(teacher(img), (img.shape[1], img.shape[0]))

    big = _texture(160, 300)
    frames = [np.ascontiguousarray(big[20:140, 2 * t:2 * t + 160]) for t in range(40)]
    # low_conf_frac 0.001: a keyframe is wanted on every frame, so the cap decides
    layer = DetailLayer(DetailConfig(mode="on", synchronous=True, keyframe_every=2, low_conf_frac=0.001, rise=1.0),
                        recording_teacher)

    def asked(level: int, n: int) -> list[int]:
        layer.set_pressure(level)
        out = []
        for i in range(n):
            x = frames.pop(0)
            _, st = layer.apply([x], [student(x)])
            assert st.level == level
            if st.requested:
                out.append(i)
        return out

    full = asked(0, 8)
    assert full and all(b - a >= 2 for a, b in zip(full, full[1:]))
    assert sizes and all(s == (120, 160) for s in sizes)
    sizes.clear()
    half = asked(1, 12)
    assert half and all(b - a >= 4 for a, b in zip(half, half[1:]))
    assert sizes and all(s == (60, 80) for s in sizes)
    assert asked(2, 10) == []
    assert "keyframes paused" in layer.readout()
    by = layer.summary()["frames_by_pressure"]
    assert (by["full"], by["half_size_keyframes"], by["paused"]) == (8, 12, 10)


def test_pressure_follows_the_budget_ladder():
    from realtime.backends.detail_backend import pressure_of
    from realtime.budget import Choice, ladder

    rungs = ladder(2)  # K=2, K=1 at full size, then smaller sizes
    assert [pressure_of(c, 2) for c in rungs] == [0, 1, 1] + [2] * (len(rungs) - 3)
    assert pressure_of(Choice(1, 1.0), 1) == 0 and pressure_of(Choice(1, 0.75), 1) == 1


def test_the_hud_shows_the_detail_line():
    from realtime.sinks.base import Overlay
    from realtime.sinks.window import draw_hud

    layer = DetailLayer(DetailConfig(mode="on", synchronous=True), teacher)
    assert layer.readout() == ""
    x = _texture(120, 160)
    layer.apply([x], [student(x)])
    line = layer.readout()
    assert line.startswith("detail: keyframe 0f ago") and "conf" in line and "ms" in line
    one, two = (np.full((200, 640, 3), 200, np.uint8) for _ in range(2))
    draw_hud(one, Overlay("starry", "onnxruntime", 30.0, 20.0))
    draw_hud(two, Overlay("starry", "onnxruntime", 30.0, 20.0, detail=line))
    rows = lambda img: int(np.count_nonzero((img < 200).any(axis=(1, 2))))  # noqa: E731 (rows the HUD touched)
    assert rows(two) > 1.6 * rows(one)


@needs_model
def test_detail_off_is_the_plain_backend_bit_for_bit():
    from realtime.backends import create_backend
    from realtime.backends.detail_backend import DetailBackend
    from realtime.config import BackendConfig

    frames = [np.ascontiguousarray(_texture(96, 128, seed=i)) for i in range(3)]
    plain = create_backend(BackendConfig(name="onnxruntime", device="cpu", style="starry"))
    off = create_backend(BackendConfig(name="onnxruntime", device="cpu", style="starry", detail=DetailConfig("off")))
    try:
        assert not isinstance(off, DetailBackend)
        for x in frames:
            assert np.array_equal(plain([x])[0], off([x])[0])
    finally:
        plain.close()
        off.close()


@needs_model
def test_detail_on_wraps_our_model_and_reports_its_figures():
    from realtime.backends import create_backend
    from realtime.backends.detail_backend import DetailBackend
    from realtime.config import BackendConfig

    cfg = DetailConfig(mode="on", synchronous=True, keyframe_every=2)
    b = create_backend(BackendConfig(name="onnxruntime", device="cpu", style="starry", detail=cfg))
    try:
        assert isinstance(b, DetailBackend) and b.teacher_spec("starry") == "builtin:19"
        big = _texture(120, 200)
        outs = [b([np.ascontiguousarray(big[:96, t:t + 128])])[0] for t in range(4)]
        d = b.stats()["detail"]
        assert d["frames"] == 4 and d["keyframes"] >= 1 and "ms" in d and d["teacher"] == "builtin:19"
        assert all(o.shape == (96, 128, 3) for o in outs)
        b.set_style("cel:0.5,starry:0.5")  # a blend has no single teacher: the student alone
        assert b.teacher_spec(b.style) is None and b.stats()["detail"]["teacher"] is None
        n = len(b.layer.history)
        assert b([np.ascontiguousarray(big[:96, :128])])[0].shape == (96, 128, 3)
        assert len(b.layer.history) == n  # the layer did not run
    finally:
        b.close()


@needs_model
def test_auto_steps_aside_when_the_budget_cannot_hold_it():
    """`--detail auto` under the ladder's heaviest pressure shows the student alone (no flow, no keyframes)
    and says so on the HUD; back on the top rung it starts over (what it carried went stale)."""
    from realtime.backends import create_backend
    from realtime.budget import Choice
    from realtime.config import BackendConfig

    b = create_backend(BackendConfig(name="onnxruntime", device="cpu", style="starry",
                                     detail=DetailConfig(mode="auto", synchronous=True, keyframe_every=2)))
    big = _texture(120, 220)
    frame = lambda t: np.ascontiguousarray(big[:96, 2 * t:2 * t + 128])  # noqa: E731
    try:
        for t in range(3):
            b.apply_choice(Choice(1, 1.0))
            b([frame(t)])
        n = len(b.layer.history)
        assert n == 3 and b.readout().startswith("detail: keyframe")
        for t in range(3, 6):
            b.apply_choice(Choice(1, 0.5))
            assert b([frame(t)])[0].shape == (96, 128, 3)
        assert len(b.layer.history) == n and b.readout() == "detail: paused (budget)"
        b.apply_choice(Choice(1, 1.0))
        b([frame(6)])
        assert len(b.layer.history) == n + 1 and b.layer.history[-1].keyframe  # a fresh start
    finally:
        b.close()


@needs_model
def test_serve_offers_and_checks_the_models_steps_with_detail_on():
    """serve reads a session backend's `info` for the refine steps the page offers and a config may set:
    the detail wrapper passes its model's on (else no steps were offered and any K passed unchecked)."""
    from genreal_errors import UserError
    from realtime.backends import create_backend
    from realtime.config import BackendConfig
    from realtime.serve.session import Session, offered_steps

    b = create_backend(BackendConfig(name="onnxruntime", device="cpu", style="starry",
                                     detail=DetailConfig(mode="on", synchronous=True)))
    session = Session("websocket", b)
    try:
        offered = offered_steps(b)
        assert offered and offered == offered_steps(b.inner)
        assert session.configure({"steps": offered[-1]}).steps == offered[-1]
        with pytest.raises(UserError, match="this model offers"):
            session.configure({"steps": offered[-1] + 1})
    finally:
        session.close()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "realtime.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


@pytest.mark.parametrize("argv, words", [
    (["--detail", "sometimes"], ["--detail"]),
    (["--detail", "on", "--keyframe-every", "0"], ["--keyframe-every"]),
    (["--detail", "on", "--keyframe-every", "x"], ["--keyframe-every"]),
    (["--detail", "on", "--backend", "identity"], ["--detail on", "--backend identity"]),
])
def test_bad_detail_options_exit_2(argv, words):
    r = _cli("run", "--source", "demo", "--sink", "null", "--max-frames", "1", *argv)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in r.stderr


@needs_model
def test_run_with_detail_writes_its_stats(tmp_path):
    stats = tmp_path / "s.json"
    r = _cli("run", "--source", "demo", "--sink", "null", "--size", "128x96", "--max-frames", "4",
             "--style", "starry", "--detail", "on", "--keyframe-every", "2", "--stats-json", str(stats))
    assert r.returncode == 0, r.stderr
    d = json.loads(stats.read_text())["backend_stats"]["detail"]
    assert d["mode"] == "on" and d["frames"] == 4 and d["requested"] >= 1
    assert {"keyframe_rate", "confidence_mean", "keyframe_age_mean", "ms", "frames_by_pressure"} <= set(d)


def test_keyframes_that_land_late_are_painted_at_half_size():
    """No budget needed: a keyframe that took longer than the cap to land makes the next ones half-size
    (a quarter of the teacher's work), and full size comes back once that would land within the cap."""
    sizes = []

    def recording_teacher(img: np.ndarray) -> np.ndarray:
        sizes.append(img.shape[1])
        return cv2.resize(teacher(img), (img.shape[1], img.shape[0]))

    big = _texture(160, 400)
    frames = [np.ascontiguousarray(big[20:140, 2 * t:2 * t + 160]) for t in range(100)]
    layer = DetailLayer(DetailConfig(mode="on", synchronous=True, keyframe_every=4, latency_frames=6,
                                     low_conf_frac=0.001), recording_teacher)
    for x in frames[:40]:
        layer.apply([x], [student(x)])
    assert sizes[0] == 160 and set(sizes[1:]) == {80}  # the first landed 6 frames late (> 4): half size since
    assert "half-size keyframes" in layer.readout()
    assert layer.summary()["keyframes_half_size"] >= 2
    from dataclasses import replace

    n = len(sizes)
    layer.config = replace(layer.config, latency_frames=0)  # the teacher got fast: half-size ones land at once
    for x in frames[40:80]:
        layer.apply([x], [student(x)])
    assert sizes[n] == 80 and sizes[-1] == 160  # full size is back

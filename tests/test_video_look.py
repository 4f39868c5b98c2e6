"""benchmarks/video_look.py's own parts (the full run is a benchmark: `python -m benchmarks.video_look`)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from benchmarks.steadiness import InputFlow
from benchmarks.video_look import border_ratio, detail_overrides, glued, summarize
from genreal_errors import UserError


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3)).astype(np.uint8), (0, 0), 2.0)


def test_border_ratio_sees_a_line_along_the_edge():
    img = cv2.resize(_texture(90, 160), (320, 180), interpolation=cv2.INTER_CUBIC)
    assert border_ratio(img) < 3
    lined = img.copy()
    lined[0] = 255
    lined[:, -1] = 0
    assert border_ratio(lined) > 5


def test_detail_overrides_are_typed_and_checked():
    assert detail_overrides(["blend=0", "fb-check=true", "flow_preset=fast", "keyframe_every=4"]) == {
        "blend": 0.0, "fb_check": True, "flow_preset": "fast", "keyframe_every": 4}
    for bad in ("blend", "nonsense=1", "mode=off", "blend=much"):
        with pytest.raises(UserError, match="--set"):
            detail_overrides([bad])


def test_glued_detail_moves_with_the_picture_and_is_as_steady_as_the_metric_allows():
    """A pan: the first frame's detail carried along the metric's flow lands where the content went (it
    matches a detail that is a function of the content), and scores far steadier than detail that re-rolls."""
    big = _texture(140, 260)
    frames = [np.ascontiguousarray(big[10:130, 3 * t:3 * t + 200]) for t in range(6)]
    student = [cv2.GaussianBlur(f, (0, 0), 3) for f in frames]
    detail = [np.clip(s.astype(np.int16) + 2 * (f.astype(np.int16) - s), 0, 255).astype(np.uint8)
              for f, s in zip(frames, student)]
    flow = InputFlow(frames, snap_still=True)
    out = glued(frames, student, detail[0], flow)
    assert len(out) == len(frames) and np.array_equal(out[0], detail[0])
    inner = (slice(12, -12), slice(12, -30))  # away from the edge the pan uncovers
    err = [np.abs(o[inner].astype(np.float32) - d[inner]).mean() for o, d in zip(out[1:], detail[1:])]
    base = [np.abs(s[inner].astype(np.float32) - d[inner]).mean() for s, d in zip(student[1:], detail[1:])]
    assert np.mean(err) < 0.5 * np.mean(base)
    rng = np.random.default_rng(0)
    reroll = [np.clip(s.astype(np.int16) + rng.integers(-25, 26, s.shape), 0, 255).astype(np.uint8) for s in student]
    assert flow.e_warp(out) < 0.5 * flow.e_warp(reroll)


def test_summarize_averages_each_output_over_clips_and_styles():
    row = lambda d, s: {"style_distance": d, "steadiness": s, "steadiness_snapped": s / 2, "border": 1.0}  # noqa: E731
    clips = {"a": {"styles": [{"style": "x", "on": row(0.2, 10), "off": row(0.6, 4), "layer": 3}]},
             "b": {"styles": [{"style": "x", "on": row(0.4, 30), "off": row(0.6, 8)}]}}
    s = summarize(clips)
    assert s["on"] == {"style_distance": 0.3, "steadiness": 20.0, "steadiness_snapped": 10.0, "border": 1.0}
    assert s["off"]["steadiness"] == 6.0 and set(s) == {"on", "off"}


def test_detail_trials_parse_a_trial():
    from benchmarks.detail_trials import TRIALS, parse_trial

    assert parse_trial("half-flow:flow_scale=0.5,blend=0") == ("half-flow", {"flow_scale": 0.5, "blend": 0.0})
    assert all(parse_trial(t)[1] for t in TRIALS)  # the built-in trials are well formed
    for bad in ("noname", ":blend=0", "x:", "x:nonsense=1"):
        with pytest.raises(UserError):
            parse_trial(bad)

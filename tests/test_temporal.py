"""Temporal reuse (realtime/reuse.py) through our model's default backend (ONNX Runtime,
CPU): deterministic still / noisy / moving-object / pan / scene-cut sequences over real photographs,
and `--no-temporal` against the full-compute path."""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.temporal import psnr
from realtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from realtime.cli import main
from realtime.config import BackendConfig
from realtime.sources.synthetic import add_sensor_noise, load_photo
from realtime.motion import IDENTITY
from realtime.reuse import TemporalConfig, crop_regions

W, H = 384, 224  # not a preset: the dynamic graphs, 48 x 28 tokens (room for crops: an output change reaches 5 tokens)
TOK = (W // 8) * (H // 8)


def photo(name: str = "coffee", w: int = 600, h: int = 400) -> np.ndarray:
    import cv2

    return cv2.resize(load_photo(name), (w, h), interpolation=cv2.INTER_AREA)


def window(img: np.ndarray, x: int, y: int = 60) -> np.ndarray:
    """The W x H view whose top-left corner is at (x, y): moving x by -d moves the content by +d."""
    return np.ascontiguousarray(img[y:y + H, x:x + W])


@pytest.fixture(scope="module")
def backends():
    """(temporal, full-compute) backends on the same shipped model and style."""
    tmp = OnnxRuntimeBackend(BackendConfig(name="onnxruntime", style="cel", temporal=True))
    full = OnnxRuntimeBackend(BackendConfig(name="onnxruntime", style="cel", temporal=False))
    yield tmp, full
    tmp.close()
    full.close()


def run(backend, frames: list[np.ndarray]) -> tuple[list[np.ndarray], list[str]]:
    """Outputs and the cache's mode per frame, from a fresh temporal state."""
    backend.reset()
    outs, modes = [], []
    for f in frames:
        outs.append(backend([f])[0])
        modes.append(backend.reuse.last_plan.action.value if backend.temporal else "off")
    return outs, modes


def last_affine(backend) -> np.ndarray:
    """The affine (output px -> reference px) of the last frame: its camera motion, else the identity."""
    plan = backend.reuse.last_plan
    return plan.affine if plan.affine is not None else IDENTITY


def counters(backend) -> dict:
    return dict(vars(backend.reuse.stats))


def delta(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in before}


def test_still_camera_with_sensor_noise_reuses_the_previous_output(backends):
    tmp, full = backends
    base = window(photo("rocket"), 100)
    frames = [add_sensor_noise(base, 3.0, 7, t) for t in range(6)]
    before = counters(tmp)
    outs, modes = run(tmp, frames)
    assert modes == ["full"] + ["skip"] * 5
    assert all(np.array_equal(o, outs[0]) for o in outs)  # no flicker at all
    d = delta(before, counters(tmp))
    assert d["skips"] == 5 and d["full"] == 1 and d["resets"] == 0
    assert d["tokens_recomputed"] == TOK and d["tokens_total"] == 6 * TOK
    # the per-frame path does flicker on the same noise: the skip is doing something
    per_frame, _ = run(full, frames)
    assert not all(np.array_equal(o, per_frame[0]) for o in per_frame)


def test_noise_reaching_the_quantizer_does_not_flip_tokens(backends):
    """The cache's FSQ hysteresis on the model's own pre-quantization values plus noise of a quarter
    level spacing (a value in mid-range, where camera noise alone can move it across a boundary)."""
    tmp, _ = backends
    st, ops, info = tmp.stages, tmp.ops, tmp.info
    zq = st.encode(tmp.preprocess([window(photo("rocket"), 100)]).x).zq
    spacing = 2.0 / (np.asarray(info.fsq_levels, np.float32) - 1).reshape(1, -1, 1, 1)
    rng = np.random.default_rng(5)
    zq = np.clip(zq, -0.9, 0.9) + rng.uniform(-0.5, 0.5, zq.shape).astype(np.float32) * spacing  # mid-range
    levels0, _ = ops.fsq_hysteresis(zq, None, info.fsq_levels, 0.0)
    plain, held = [], []
    for _ in range(4):
        noisy = zq + rng.normal(0, 0.25, zq.shape).astype(np.float32) * spacing
        plain.append(float((ops.fsq_hysteresis(noisy, None, info.fsq_levels, 0.0)[0] != levels0).mean()))
        margin = tmp.reuse.config.hysteresis_margin
        held.append(float((ops.fsq_hysteresis(noisy, levels0, info.fsq_levels, margin)[0] != levels0).mean()))
    assert min(plain) > 0.1  # without hysteresis the noise flips many tokens...
    assert np.mean(held) < 0.5 * np.mean(plain)  # ...with it, far fewer (means over the 4 draws)


def test_a_moving_object_is_recomputed_only_around_itself(backends):
    tmp, full = backends
    base = window(photo("rocket"), 100)
    patch = photo("coffee")[100:116, 150:166]  # 16 x 16 px of another photo
    moved = base.copy()
    moved[40:56, 48:64] = patch
    before = counters(tmp)
    outs, modes = run(tmp, [base, moved])
    assert modes == ["full", "crop"]
    d = delta(before, counters(tmp))
    assert d["crops"] == 1 and 0 < d["tokens_recomputed"] - TOK < 0.5 * TOK
    # the changed tokens (rows 5-6, cols 6-7) grown by the output's reach (5 tokens) are the pasted region;
    # far away nothing moved
    changed = np.any(outs[1] != outs[0], axis=-1)
    ys, xs = np.nonzero(changed)
    r = tmp.reuse.config.reach
    assert changed.any() and ys.max() < (7 + r) * 8 and xs.min() >= (6 - r) * 8 and xs.max() < (8 + r) * 8
    ref, _ = run(full, [moved])
    # close to computing the whole frame (cel: 31.8 dB with the fifth weights, 30.0 with the sixth; 22-32 dB
    # over five styles for both, the crop styled with the key frame's statistics)
    assert psnr(outs[1], ref[0]) >= 29.0


def test_crop_regions_one_per_group_merged_where_one_crop_costs_less():
    m = np.zeros((14, 24), bool)
    m[2:4, 2:4] = True
    m[9:11, 18:21] = True
    regions = crop_regions(m, margin=2)
    assert [inner for _, inner in regions] == [(2, 4, 2, 4), (9, 11, 18, 21)]
    assert [box for box, _ in regions] == [(0, 6, 0, 6), (7, 13, 16, 23)]
    m[4:6, 6:8] = True  # close to the first group: crops of 6x6 and 6x6 tokens, or one of 8x10 over both
    regions = crop_regions(m, margin=2)  # without a per-crop cost two crops are cheaper (72 < 80 tokens)
    assert [inner for _, inner in regions] == [(2, 4, 2, 4), (4, 6, 6, 8), (9, 11, 18, 21)]
    regions = crop_regions(m, margin=2, overhead=8)  # 80 <= 72 + 8: one crop
    assert [inner for _, inner in regions] == [(2, 6, 2, 8), (9, 11, 18, 21)]
    for (b, inner) in regions:  # the box holds its inner part and stays inside the frame
        assert b[0] <= inner[0] < inner[1] <= b[1] <= 14 and b[2] <= inner[2] < inner[3] <= b[3] <= 24
    # a big per-crop cost gathers everything into one crop; the far group joins last
    assert [inner for _, inner in crop_regions(m, margin=2, overhead=1000)] == [(2, 11, 2, 21)]
    assert crop_regions(np.zeros((14, 24), bool), 2) == ()


def test_scattered_changes_get_small_crops_not_one_box_over_the_frame():
    m = np.zeros((34, 80), bool)  # bikes.mp4's token grid at 640 px: a few riders and noise tiles far apart
    for y, x in ((3, 5), (30, 40), (4, 70), (16, 24)):
        m[y, x] = True
    regions = crop_regions(m, margin=2, min_side=8, overhead=150)
    area = sum((b[1] - b[0]) * (b[3] - b[2]) for b, _ in regions)
    assert len(regions) == 4 and area == 4 * 64  # four 8x8 crops, not the 34x80 bounding box of them all
    m[30, 8] = True  # near (3, 5) in x: one 32x8 crop (256 tokens) costs less than two 8x8 ones + 150
    assert ((3, 31, 5, 9) in [inner for _, inner in crop_regions(m, margin=2, min_side=8, overhead=150)])
    assert all(b[0] <= i[0] < i[1] <= b[1] and b[2] <= i[2] < i[3] <= b[3] for b, i in regions)


def test_a_scene_cut_resets_the_cache_and_equals_full_compute(backends):
    tmp, full = backends
    a, b = window(photo("rocket"), 100), window(photo("coffee"), 100)
    before = counters(tmp)
    outs, modes = run(tmp, [a, b])
    assert modes == ["full", "full"]
    assert delta(before, counters(tmp))["resets"] == 1
    ref, _ = run(full, [a, b])
    assert np.array_equal(outs[1], ref[1])


def test_a_pan_warps_the_key_output_recomputes_the_new_edge_and_a_stop_makes_a_new_key_frame(backends):
    tmp, full = backends
    big = photo("coffee")
    xs = [100, 97, 94, 91, 91]  # content moves 3 px right per frame, then the camera stops
    frames = [window(big, x) for x in xs]
    before = counters(tmp)
    outs, modes = run(tmp, frames[:2])
    assert modes == ["full", "motion"]
    a = last_affine(tmp)  # output px -> key px: the content moved 3 px right, nothing else
    np.testing.assert_allclose(a, [[1, 0, -3], [0, 1, 0]], atol=0.1)
    d = delta(before, counters(tmp))
    assert 0 < d["tokens_recomputed"] - TOK < 0.5 * TOK  # a strip at the left edge, not the frame
    # away from the new edge the output is the key output moved by 3 px: what the viewer sees holds still
    assert np.abs(outs[1][:, 80:].astype(int) - outs[0][:, 77:-3].astype(int)).max() <= 2
    outs, modes = run(tmp, frames)
    assert modes == ["full", "motion", "motion", "motion", "full"]  # at rest: recompute, new key frame
    assert np.array_equal(last_affine(tmp), IDENTITY)  # measured from the new key frame
    ref, _ = run(full, frames)
    for o, r in zip(outs[1:4], ref[1:4]):
        assert psnr(o, r) >= 30.0  # close to computing each frame
    # the previous output left in place would be far worse: the warp is doing the work
    assert psnr(outs[0], ref[3]) < psnr(outs[3], ref[3]) - 3.0


def test_a_large_object_passing_a_still_camera_is_cropped_not_taken_for_camera_motion(backends):
    """Real footage (a still street camera, a bus roof sliding through the view): the global motion
    estimate locks onto a large textured object over a plain background. The still camera explains more
    of the frame, so the planner keeps it: the object is recomputed in crops, the background stays."""
    import cv2

    from realtime.motion import global_motion, motion_px, small_grey
    from realtime.reuse import grey_of

    tmp, _ = backends
    bg = cv2.GaussianBlur(window(photo("coffee"), 100), (0, 0), 15)  # a plain, slightly shaded street
    obj = photo("astronaut", 400, 300)[40:40 + H, 150:198]  # 48 px wide, full height
    frames = []
    for t in range(4):
        f = bg.copy()
        f[:, 40 + 8 * t:88 + 8 * t] = obj  # the object slides 8 px right per frame
        frames.append(f)
    cfg = tmp.reuse.config
    key, cur = (small_grey(grey_of(f), cfg.grey_width) for f in frames[:2])
    fooled = global_motion(key, cur, W, cfg.motion_conf, None, cfg.motion_min_px)
    assert fooled is not None and motion_px(fooled, IDENTITY, W, H) > 6  # the estimate follows the object
    outs, modes = run(tmp, frames)
    assert modes == ["full", "crop", "crop", "crop"]
    assert np.array_equal(last_affine(tmp), IDENTITY)
    # columns the object never came near (crops and their margins stay left of them) are the key frame's
    assert all(np.array_equal(o[:, 176:], outs[0][:, 176:]) for o in outs[1:])


def test_scattered_changes_too_many_for_crops_compute_the_frame_once_and_paste_only_them(backends):
    """Real footage (bikes.mp4: riders, a bus, compression noise at edges) changes small groups of tiles all
    over a still view; their minimum-size crops would cover most of the frame. The frame is computed once,
    whole, and pasted only over the changed groups: what did not change keeps its output."""
    tmp, _ = backends
    base = window(photo("rocket"), 100)
    moved = base.copy()
    spots = [(8 + 192 * i, 8 + 160 * j) for i in range(2) for j in range(3)]  # 6 spots 8 px a side, 48 x 28 tokens
    other = photo("rocket")[::-1]  # the same statistics (a patch of another photo moves this dark frame's)
    for y, x in spots:  # 8 x 8 px of another photo each
        moved[y:y + 8, x:x + 8] = other[100 + y:108 + y, 100 + x:108 + x]
    before = counters(tmp)
    outs, modes = run(tmp, [base, moved])
    assert modes == ["full", "crop"]
    d = delta(before, counters(tmp))
    assert d["crops"] == 1 and d["large"] == 1 and d["full"] == 1
    assert d["tokens_recomputed"] == 2 * TOK  # the whole frame once, not once per spot
    r = tmp.reuse.config.reach
    kept = np.ones((H, W), bool)  # pixels farther than the output's reach from every changed spot
    for y, x in spots:
        kept[max(0, (y // 8 - r) * 8):((y + 15) // 8 + r) * 8, max(0, (x // 8 - r) * 8):((x + 15) // 8 + r) * 8] = False
    assert kept.mean() > 0.2 and np.array_equal(outs[1][kept], outs[0][kept])  # unchanged: the key output
    assert tmp([moved])[0] is not None and tmp.reuse.last_plan.action.value == "skip"  # the reference input is this frame's
    for y, x in spots[:2]:  # each spot as a crop around it alone would have styled it (the key frame's statistics)
        one = base.copy()
        one[y:y + 8, x:x + 8] = moved[y:y + 8, x:x + 8]
        alone, modes = run(tmp, [base, one])
        assert modes == ["full", "crop"] and psnr(outs[1][y:y + 8, x:x + 8], alone[1][y:y + 8, x:x + 8]) >= 35.0


def test_a_motion_that_needs_a_new_key_frame_loses_to_still_camera_crops(backends, monkeypatch):
    """The estimate follows a moving object (bikes: the bus) and that motion would recompute everything,
    while the still camera needs crops only: the crops win."""
    from realtime import reuse

    tmp, _ = backends
    base = window(photo("rocket"), 100)
    moved = base.copy()
    moved[40:56, 48:64] = photo("coffee")[100:116, 150:166]  # 16 x 16 px of another photo
    shift = np.array([[1.0, 0.0, -6.0], [0.0, 1.0, 0.0]])
    monkeypatch.setattr(reuse, "global_motion", lambda *a, **k: shift.copy())
    every = np.ones((H // 8, W // 8), bool)
    # the motion explains as much as the still camera (nothing unexplained by its `changed` mask), but its
    # edge band is too wide: a new key frame
    monkeypatch.setattr(reuse, "warp_masks", lambda *a, **k: (~every, ~every, (every, ~every, ~every, ~every)))
    outs, modes = run(tmp, [base, moved])
    assert modes == ["full", "crop"]
    assert np.array_equal(last_affine(tmp), IDENTITY)
    assert np.array_equal(outs[1][:, 120:], outs[0][:, 120:])  # far from the change: the key output


def test_an_object_moving_during_a_pan_is_recomputed(backends):
    tmp, full = backends
    big = photo("coffee")
    a = np.ascontiguousarray(big[40:300, 60:540])  # 480 x 260: room for an edge strip and an object crop
    b = np.ascontiguousarray(big[40:300, 57:537])
    b[104:128, 230:254] = photo("rocket")[100:124, 100:124]  # something that was not there, mid-frame
    outs, modes = run(tmp, [a, b])
    assert modes == ["full", "motion"]
    ref, _ = run(full, [b])
    patch = (slice(104, 128), slice(230, 254))
    assert psnr(outs[1][patch], ref[0][patch]) >= 30.0  # the new object is styled, not the warped key


def test_much_new_content_in_view_makes_a_new_key_frame(backends):
    tmp, _ = backends
    big = photo("coffee")
    outs, modes = run(tmp, [window(big, 150), window(big, 90)])  # 60 px of 192 newly in view
    assert modes == ["full", "full"]


def test_no_temporal_matches_the_full_compute_path_exactly(backends):
    tmp, full = backends
    big = photo("coffee")
    frames = [window(big, x) for x in (100, 97, 97, 94)]
    frames[2] = frames[2].copy()
    frames[2][40:56, 48:64] = 0
    ref = [run(full, [f])[0][0] for f in frames]  # each frame alone, from nothing
    seq, modes = run(full, frames)
    assert modes == ["off"] * 4
    assert all(np.array_equal(a, b) for a, b in zip(seq, ref))
    tmp.set_temporal(False)
    try:
        off, _ = run(tmp, frames)
    finally:
        tmp.set_temporal(True)
    assert all(np.array_equal(a, b) for a, b in zip(off, ref))
    on, _ = run(tmp, frames[:1])
    assert np.array_equal(on[0], ref[0])  # temporal on: the first frame is the full-compute frame


def test_size_change_and_style_switch_start_from_a_cold_cache(backends):
    tmp, _ = backends
    img = window(photo("rocket"), 100)
    run(tmp, [img, img])
    assert tmp.reuse.last_plan.action.value == "skip"
    tmp.set_style("pastel")
    try:
        tmp([img])
        assert tmp.reuse.last_plan.action.value == "full"  # the cached output had the old style
        tmp([np.ascontiguousarray(img[:96, :160])])
        assert tmp.reuse.last_plan.action.value == "full"
    finally:
        tmp.set_style("cel")


def test_stereo_eyes_share_one_decision(backends):
    tmp, _ = backends
    left, right = window(photo("rocket"), 100), window(photo("rocket"), 92)
    right2 = right.copy()
    right2[40:56, 48:64] = photo("coffee")[100:116, 150:166]  # only the right eye sees the change
    tmp.reset()
    before = counters(tmp)
    first = tmp([left, right])
    second = tmp([left, right2])
    assert tmp.reuse.last_plan.action.value == "crop"
    d = delta(before, counters(tmp))
    per_eye = (d["tokens_recomputed"] - 2 * TOK) / 2
    assert per_eye > 0 and d["tokens_recomputed"] % 2 == 0  # the same region on both eyes
    assert not np.array_equal(second[1], first[1])
    tmp([left, right2])
    assert tmp.reuse.last_plan.action.value == "skip"  # both eyes still: one shared skip


def test_run_stats_report_tokens_recomputed_skips_and_resets(tmp_path, capsys):
    out = tmp_path / "stats.json"
    rc = main(["run", "--source", "demo", "--sink", "null", "--max-frames", "12", "--size", "160x96",
               "--stats-json", str(out)])
    assert rc == 0
    t = json.loads(out.read_text())["temporal"]
    assert t["frames"] == 12 and 0 < t["tokens_recomputed_frac"] <= 1
    assert {"skips", "resets", "crop_frames", "large_crop_frames", "motion_frames", "full_frames"} <= set(t)
    assert "tokens recomputed" in capsys.readouterr().out
    rc = main(["run", "--source", "demo", "--sink", "null", "--max-frames", "4", "--size", "160x96",
               "--no-temporal", "--stats-json", str(out)])
    assert rc == 0 and "temporal" not in json.loads(out.read_text())


def test_temporal_config_is_frozen():
    cfg = TemporalConfig()
    with pytest.raises(Exception):
        cfg.change_thresh = 1.0  # type: ignore[misc]


def test_crops_are_at_least_the_dynamic_graphs_smallest_size():
    from models.export import DYNAMIC_MIN

    assert TemporalConfig().min_crop * 8 == min(DYNAMIC_MIN[1])
    m = np.zeros((14, 24), bool)
    m[0, 23] = True  # a corner token
    ((box, inner),) = crop_regions(m, margin=1, min_side=8)
    assert inner == (0, 1, 23, 24) and box == (0, 8, 16, 24)
    m = np.zeros((5, 6), bool)
    m[2, 2] = True  # a frame smaller than the minimum: the whole frame
    assert crop_regions(m, margin=1, min_side=8)[0][0] == (0, 5, 0, 6)


def test_signature_is_the_exact_4x4_block_mean_with_edge_padding():
    from realtime.reuse import signature

    rng = np.random.default_rng(3)
    g = rng.uniform(0, 255, (37, 45)).astype(np.float32)
    padded = np.pad(g, ((0, 3), (0, 3)), mode="edge")  # to 40 x 48
    ref = padded.reshape(10, 4, 12, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(signature(g, 40, 48), ref, rtol=0, atol=1e-4)


def test_camera_roll_and_zoom_are_followed_by_the_affine_motion(backends):
    from realtime.sources.synthetic import CameraPose, VirtualCamera, invert_affine

    tmp, full = backends
    cam = VirtualCamera(load_photo("coffee"), (640, 360))  # room for crops along all four edges
    (x0, x1), (y0, y1) = cam.centre_range(1.3, 2.0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    poses = [CameraPose(cx + 2 * i, cy + i, 1.2 + 0.005 * i, 0.2 * i) for i in range(4)]
    frames = [cam.view(p) for p in poses]
    # the roll and zoom move every edge: the bands the warp leaves to recompute along them may exceed the
    # crop budget, and the frame becomes a new reference frame; the motion is measured from the last one
    outs, modes, affines = [], [], []
    tmp.reset()
    for f in frames:
        outs.append(tmp([f])[0])
        modes.append(tmp.reuse.last_plan.action.value)
        affines.append(last_affine(tmp))
    assert modes[0] == "full" and "motion" in modes
    ref, _ = run(full, frames)
    corners = np.array([[0, 639, 0, 639], [0, 0, 359, 359], [1, 1, 1, 1]], float)
    for i in range(1, 4):
        if modes[i] == "motion":
            key = max(j for j in range(i) if modes[j] == "full")
            truth = invert_affine(cam.flow_affine(poses[key], poses[i]))  # frame i px -> reference px
            assert np.abs((affines[i] - truth) @ corners).max() < 0.3  # px at the frame corners
            assert psnr(outs[i], ref[i]) >= 30.0


def test_reused_and_cropped_frames_convert_only_what_changed_to_the_same_bytes(backends):
    tmp, _ = backends
    base = window(photo("rocket"), 100)
    moved = base.copy()
    moved[40:56, 48:64] = photo("coffee")[100:116, 150:166]  # 16 x 16 px of another photo
    outs, modes = run(tmp, [base, base, moved])
    assert modes == ["full", "skip", "crop"]
    again = tmp.infer(tmp.preprocess([moved]))  # a reused frame: the same output, converted whole here
    assert again.dirty == ()
    whole = tmp.ops.postprocess(again.y, valid_hw=(H, W))
    assert np.array_equal(outs[2], whole[0] if whole.ndim == 4 else whole)
    assert outs[1] is not outs[0] and np.array_equal(outs[1], outs[0])  # a reused frame is a new array
    outs[1][:] = 0  # a sink scribbling on a frame it was given changes nothing in the next one
    assert np.array_equal(tmp([moved])[0], outs[2])


def test_a_crop_is_normalized_and_conditioned_like_its_key_frame(backends, monkeypatch):
    """The shipped model normalizes each frame and adds a whole-frame context to the style: a crop
    gets its key frame's norm and context, not numbers from the crop itself (which would restyle the
    patch as if it were a whole frame)."""
    from models.stages import images_norm

    tmp, _ = backends
    base = window(photo("rocket"), 100)
    moved = base.copy()
    moved[40:56, 48:64] = 255 - moved[40:56, 48:64]  # a bright change: the crop's own stats differ a lot
    seen = {"encode": [], "refine": []}
    st = tmp.stages
    encode, refine = st.encode, st.refine
    monkeypatch.setattr(st, "encode", lambda x, norm=None: seen["encode"].append(norm) or encode(x, norm))
    monkeypatch.setattr(st, "refine", lambda z, emb, cond, *a: seen["refine"].append(cond) or refine(z, emb, cond, *a))
    _, modes = run(tmp, [base, moved])
    assert modes == ["full", "crop"]
    key_norm, crop_norm = seen["encode"]
    assert np.array_equal(crop_norm, key_norm) and np.allclose(key_norm, images_norm([base]))
    assert np.array_equal(seen["refine"][1], seen["refine"][0])  # style + the key frame's context
    assert not np.allclose(images_norm([moved[32:64, 40:72]]), key_norm, atol=0.02)  # its own would differ

"""Look metrics (texture ratio, style distance, the half-size teacher peer) and the steadiness benchmark's
E_warp on input flow (synthetic clips with known behaviour; the packaged real clips are the benchmark's)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

pytest.importorskip("torch", reason="models.evaluate needs the train extra (torch)")

from benchmarks.steadiness import InputFlow, read_clip  # noqa: E402
from models.data import skimage_data_image as load_photo  # noqa: E402
from models.evaluate import half_size  # noqa: E402
from models.metrics import StyleMeter, texture_ratio  # noqa: E402
from models.teachers import parse_teacher  # noqa: E402
from genreal_errors import UserError  # noqa: E402


@pytest.fixture(scope="module")
def photo():
    return np.ascontiguousarray(cv2.resize(load_photo("coffee"), (320, 240), interpolation=cv2.INTER_AREA))


def test_texture_ratio(photo):
    assert texture_ratio(photo, photo) == pytest.approx(1.0)
    blurred = cv2.GaussianBlur(photo, (0, 0), 2.0)
    assert texture_ratio(blurred, photo) < 0.7
    assert texture_ratio(photo, blurred) > 1.4


def test_style_distance_is_zero_for_the_teacher_and_one_for_the_photo(photo):
    teacher = parse_teacher("builtin:19")(photo)
    meter = StyleMeter(threads=1)
    assert meter.distance(teacher, teacher, photo) == pytest.approx(0.0, abs=1e-9)
    assert meter.distance(photo, teacher, photo) == pytest.approx(1.0)
    # a blurred teacher output has lost some of its look
    assert 0.0 < meter.distance(cv2.GaussianBlur(teacher, (0, 0), 3.0), teacher, photo) < 1.5


def test_half_size_teacher_is_full_size_and_softer(photo):
    teacher = parse_teacher("builtin:19")
    full = teacher(photo)
    half = half_size(teacher, photo)
    assert half.shape == photo.shape and half.dtype == np.uint8
    assert texture_ratio(half, full) < 0.9


def _pan(n: int = 6, step: int = 2) -> list[np.ndarray]:
    big = cv2.resize(load_photo("chelsea"), (400, 300), interpolation=cv2.INTER_AREA)
    return [np.ascontiguousarray(big[40:200, 20 + step * i:260 + step * i]) for i in range(n)]


def test_e_warp_on_input_flow_ranks_steady_above_flicker():
    frames = _pan()
    flow = InputFlow(frames)
    assert flow.valid_fraction > 0.7
    e_in = flow.e_warp(frames)
    # a per-pixel recolouring of the scene moves with it: about as steady as the input
    tinted = [np.ascontiguousarray(255 - f) for f in frames]
    assert flow.e_warp(tinted) == pytest.approx(e_in, rel=0.05)
    # independent noise every frame (texture that re-rolls) is far less steady
    rng = np.random.default_rng(0)
    noisy = [np.clip(f.astype(np.int16) + rng.integers(-30, 31, f.shape), 0, 255).astype(np.uint8) for f in frames]
    assert flow.e_warp(noisy) > 5 * e_in
    # a frozen output (not following the motion) is worse than following it
    assert flow.e_warp([frames[0]] * len(frames)) > 2 * e_in


def test_snapped_e_warp_scores_a_frozen_output_on_a_still_camera_as_steady():
    """A still camera (one photo, fresh sensor noise each frame): DIS on the noise returns sub-pixel flow, so
    plain E_warp scores a sharp output that never changes as unsteady; with the flow snapped to none where
    the input did not change, it scores 0. A pan keeps its flow (nothing snapped where the picture moves)."""
    from realtime.sources.synthetic import add_sensor_noise

    h, w = 180, 320  # a wall-like view: smooth shading, two shapes (DIS drifts on the flat parts' noise)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.dstack([80 + 60 * xx / w, 100 + 40 * yy / h, np.full((h, w), 120.0)]).astype(np.uint8)
    cv2.rectangle(base, (40, 40), (120, 120), (200, 60, 60), -1)
    cv2.circle(base, (230, 90), 40, (40, 160, 40), -1)
    still = [add_sensor_noise(base, 2.0, 3, t) for t in range(6)]
    rng = np.random.default_rng(0)  # an output with strokes: sharp detail all over
    sharp = np.clip(base.astype(np.int16) + rng.integers(-60, 61, (h, w, 1)), 0, 255).astype(np.uint8)
    plain, snapped = InputFlow(still), InputFlow(still, snap_still=True)
    assert np.mean(snapped.snapped) > 0.95
    assert plain.e_warp([sharp] * 6) > 2 * plain.e_warp(still)  # the artefact
    assert snapped.e_warp([sharp] * 6) == 0.0
    flicker = [add_sensor_noise(sharp, 6.0, 9, t) for t in range(6)]
    assert snapped.e_warp(flicker) > 5 * snapped.e_warp(still)  # a changing output still counts
    pan = InputFlow(_pan(), snap_still=True)
    assert np.mean(pan.snapped) < 0.05


def test_e_warp_split_puts_shimmer_on_a_moving_object_where_it_is():
    """A still view with one square moving across it: the split finds the square's pixels as moving, and
    noise re-rolled only on them lands in the moving part (its share near 1), the still part untouched."""
    base = cv2.resize(load_photo("chelsea"), (240, 160), interpolation=cv2.INTER_AREA)
    patch = cv2.resize(load_photo("coffee"), (40, 40), interpolation=cv2.INTER_AREA)
    frames, boxes = [], []
    for i in range(5):
        f = base.copy()
        f[60:100, 40 + 6 * i:80 + 6 * i] = patch
        frames.append(f)
        boxes.append((slice(60, 100), slice(40 + 6 * i, 80 + 6 * i)))
    flow = InputFlow(frames)
    assert 0.02 < flow.moving_fraction < 0.2  # the square (40 x 40 of 240 x 160) and its trail, not the view
    rng = np.random.default_rng(1)
    shimmer = []
    for f, box in zip(frames, boxes):
        g = f.astype(np.int16)
        g[box] += rng.integers(-40, 41, g[box].shape)
        shimmer.append(np.clip(g, 0, 255).astype(np.uint8))
    sp_in, sp = flow.e_warp_split(frames), flow.e_warp_split(shimmer)
    assert sp["moving_share"] > 0.8 and sp["still"] == pytest.approx(sp_in["still"], rel=0.05, abs=1e-6)
    assert sp["moving"] > 3 * sp_in["moving"]


def test_read_clip_resizes_and_refuses_bad_files(tmp_path):
    import av

    path = tmp_path / "clip.mkv"
    with av.open(str(path), "w") as c:
        s = c.add_stream("ffv1", rate=10)
        s.width, s.height, s.pix_fmt = 160, 120, "yuv420p"
        for f in _pan(4):
            for pkt in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f[:120, :160]), format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    frames = read_clip(path, 3, 80)
    assert len(frames) == 3 and frames[0].shape == (64, 80, 3)  # 60 rounded to a multiple of 8
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(UserError):
        read_clip(bad, 3, 80)


def test_steadiness_cli_bad_style_is_exit_2(capsys):
    from benchmarks.steadiness import main

    assert main(["--styles", "no-such-style", "--clips", "bikes"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "steadiness: error" in err[0]


def _look(per_k: dict[int, tuple[float, float]]) -> dict:
    """An evaluate_look-shaped result: K → (style distance, sigma-2 PSNR)."""
    mean = {f"ours_k{k}": {"style_distance": d, "texture": 0.9, "psnr_blurred": {"sigma2": p, "sigma8": p + 2}}
            for k, (d, p) in per_k.items()}
    return {"steps": sorted(per_k), "mean": mean, "images": ["skimage.data.coffee"]}


@pytest.mark.parametrize("per_k,useful", [
    ({1: (0.60, 21.0), 2: (0.595, 21.05), 3: (0.59, 21.1), 4: (0.58, 21.12)}, 1),  # small gains: only K=1
    ({1: (0.60, 21.0), 2: (0.55, 21.0), 3: (0.545, 21.3), 4: (0.544, 21.33)}, 3),  # K=2 by distance, K=3 by PSNR
    ({1: (0.60, 21.0), 2: (0.60, 21.0), 3: (0.40, 23.0)}, 1),  # a step that does nothing ends the run of useful ones
    ({1: (0.60, 21.0)}, 1),
])
def test_useful_steps_offers_only_steps_that_each_help(per_k, useful):
    from models.evaluate import useful_steps

    u = useful_steps(_look(per_k))
    assert u["useful"] == useful and set(u["per_k"]) == {str(k) for k in per_k}
    assert "style distance 0.600" in u["evidence"] and "rule" in u


def test_useful_steps_needs_every_k_from_one():
    from models.evaluate import useful_steps

    with pytest.raises(ValueError, match="K = 1, 2"):
        useful_steps(_look({1: (0.6, 21.0), 4: (0.5, 22.0)}))

"""Frame sources: files, image sequences, the demo clips, stereo forms, errors, close()."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np
import pytest

from realtime.config import SourceConfig
from genreal_errors import UserError
from realtime.frame import Frame, StereoFrame
from realtime.sources import make_source
from realtime.sources.base import Source
from realtime.sources.common import ThreadedSource
from realtime.sources.stereo import NearestPairer, PairSource
from realtime.sources.synthetic import CameraPose, DemoClip, VirtualCamera, load_photo
from tests.fakes import encode_video

pytestmark = pytest.mark.timeout(60)


# -- helpers ------------------------------------------------------------------------------------

def colour(i: int) -> tuple[int, int, int]:
    """A distinct RGB colour per frame index."""
    return (20 + 10 * i) % 256, (230 - 9 * i) % 256, (40 + 37 * i) % 256


def write_video(path: Path, n: int = 20, size: tuple[int, int] = (64, 48), fps: int = 10,
                codec: str = "ffv1", texture: bool = False) -> Path:
    """n frames of a flat colour per frame (plus a fixed texture when asked) at `fps`."""
    w, h = size
    rng = np.random.default_rng(0)
    noise = rng.integers(-40, 40, (h, w, 3)) if texture else 0
    images = (np.clip(np.full((h, w, 3), colour(i), np.int32) + noise, 0, 255).astype(np.uint8) for i in range(n))
    return encode_video(path, images, fps, codec)


def read_all(spec: str, **cfg) -> tuple[Source, list]:
    source = make_source(SourceConfig(spec, **cfg))
    source.open()
    try:
        items = list(source)
    finally:
        source.close()
    return source, items


def check_frames(items: list, size: Optional[tuple[int, int]] = None) -> None:
    """The Frame contract every source keeps: indices 0.., uint8 RGB, C-contiguous, capture time set."""
    for i, item in enumerate(items):
        assert item.index == i
        frames = [item.left, item.right] if isinstance(item, StereoFrame) else [item]
        for f in frames:
            assert f.image.dtype == np.uint8 and f.image.ndim == 3 and f.image.shape[2] == 3
            assert f.image.flags["C_CONTIGUOUS"]
            assert f.capture_ns > 0
            if size is not None:
                assert f.size == size


def mean_rgb(image: np.ndarray) -> np.ndarray:
    return image.reshape(-1, 3).mean(0)


# -- video files --------------------------------------------------------------------------------

def test_video_file_every_frame_in_order_with_pts(tmp_path):
    path = write_video(tmp_path / "clip.mkv", n=20, fps=10)
    source, frames = read_all(str(path))
    assert not source.live and not source.stereo
    assert source.fps == pytest.approx(10)
    assert len(frames) == 20
    check_frames(frames, (64, 48))
    for i, f in enumerate(frames):
        assert f.pts == pytest.approx(i / 10)
        assert np.abs(mean_rgb(f.image) - colour(i)).max() < 6, i
    assert [f.capture_ns for f in frames] == sorted(f.capture_ns for f in frames)
    assert source.skipped == 0


def test_video_file_resize_and_max_frames(tmp_path):
    path = write_video(tmp_path / "clip.mkv", n=20)
    _, small = read_all(str(path), size=(32, 24), max_frames=3)
    assert len(small) == 3
    check_frames(small, (32, 24))
    assert np.abs(mean_rgb(small[2].image) - colour(2)).max() < 6
    _, big = read_all(str(path), size=(100, 70), max_frames=1)
    check_frames(big, (100, 70))


def test_truncated_video_yields_the_decodable_frames(tmp_path, caplog):
    path = write_video(tmp_path / "clip.mkv", n=20, codec="ffv1", texture=True)
    data = path.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING):
        source, frames = read_all(str(cut))
    assert 1 <= len(frames) < 20
    assert any("truncated" in r.getMessage() for r in caplog.records)
    check_frames(frames, (64, 48))
    for i, f in enumerate(frames):  # a prefix of the clip, in order
        assert f.pts == pytest.approx(i / 10)
        assert np.abs(mean_rgb(f.image) - colour(i)).max() < 12, i


def test_corrupt_packets_are_skipped_and_counted(tmp_path, caplog):
    path = write_video(tmp_path / "clip.mp4", n=20, codec="mpeg4", texture=True)
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid: mid + 300] = np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        source, frames = read_all(str(bad))
    check_frames(frames, (64, 48))
    assert source.skipped > 0
    assert 10 <= len(frames) < 20
    assert len(frames) + source.skipped >= 18
    assert any("skipped" in r.getMessage() for r in caplog.records)


def test_mp4_cut_before_its_index_is_a_user_error(tmp_path):
    path = write_video(tmp_path / "clip.mp4", n=20, codec="mpeg4")
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])  # the moov index is written last
    with pytest.raises(UserError, match="cut.mp4"):
        make_source(SourceConfig(str(cut))).open()


def test_not_a_video_missing_file_folder_and_audio_only(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    with pytest.raises(UserError, match="notes.mp4.*not a readable video"):
        make_source(SourceConfig(str(text))).open()
    with pytest.raises(UserError, match="no such video file.*missing.mp4"):
        make_source(SourceConfig(str(tmp_path / "missing.mp4"))).open()
    with pytest.raises(UserError, match="folder"):
        make_source(SourceConfig(str(tmp_path))).open()

    import av

    wav = tmp_path / "tone.wav"
    with av.open(str(wav), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(UserError, match="no video stream"):
        make_source(SourceConfig(str(wav))).open()


# -- image sequences ----------------------------------------------------------------------------

def test_images_glob_mixed_sizes_grey_rgba_and_corrupt(tmp_path, caplog):
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:, :32] = (255, 0, 0)  # left half red (RGB)
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "b.png"), np.full((30, 20), 128, np.uint8))  # grey, other size
    (tmp_path / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")  # corrupt
    bgra = np.zeros((60, 80, 4), np.uint8)
    bgra[..., 0] = 255  # blue (BGR order), half transparent
    bgra[..., 3] = 128
    cv2.imwrite(str(tmp_path / "d.png"), bgra)
    (tmp_path / "e.txt").write_text("not matched")

    with caplog.at_level(logging.WARNING):
        source, frames = read_all(f"images:{tmp_path}/*.png")
    assert not source.live and source.fps == 30
    assert source.skipped == 1
    assert any("c.png" in r.getMessage() for r in caplog.records)
    assert len(frames) == 3
    check_frames(frames, (64, 48))  # the first image's size
    assert [f.pts for f in frames] == pytest.approx([0, 1 / 30, 2 / 30])
    assert tuple(frames[0].image[10, 5]) == (255, 0, 0) and tuple(frames[0].image[10, 50]) == (0, 0, 0)
    assert np.all(frames[1].image == 128)
    assert tuple(frames[2].image[20, 20]) == (0, 0, 255)

    _, sized = read_all(f"images:{tmp_path}/*.png", size=(40, 30), fps=10)
    check_frames(sized, (40, 30))
    assert sized[1].pts == pytest.approx(0.1)


def test_images_no_match_and_nothing_readable(tmp_path):
    with pytest.raises(UserError, match="no files match"):
        make_source(SourceConfig(f"images:{tmp_path}/*.png")).open()
    (tmp_path / "x.png").write_text("garbage")
    with pytest.raises(UserError, match="readable image"):
        make_source(SourceConfig(f"images:{tmp_path}/*.png")).open()


# -- demo clips and the virtual camera ----------------------------------------------------------

def test_demo_clip_size_length_and_determinism():
    source, frames = read_all("demo")
    assert not source.live and not source.stereo and source.fps == 30
    assert len(frames) == 150
    check_frames(frames, (640, 360))
    assert frames[-1].pts == pytest.approx(149 / 30)
    clip = DemoClip()
    for t in (0, 61, 149):  # a fresh render gives the same pixels
        assert np.array_equal(clip.frame(t), frames[t].image)
    # the camera moves and the photos change
    assert np.abs(frames[0].image.astype(int) - frames[10].image).mean() > 2
    assert np.abs(mean_rgb(frames[0].image) - mean_rgb(frames[140].image)).max() > 10


def test_demo_max_frames_and_size():
    _, frames = read_all("demo", size=(160, 90), max_frames=5)
    assert len(frames) == 5
    check_frames(frames, (160, 90))


def test_demo_live_is_paced_like_a_camera_and_drops_when_slow():
    src = make_source(SourceConfig("demo:live", size=(64, 36), fps=200.0))  # 150 frames in 0.75 s
    src.open()
    try:
        assert src.live
        t0 = time.monotonic()
        got, last_pts = [], 0.0
        for item in src:  # demo:live never ends by itself, like a camera: stop after 0.75 s
            got.append(item.index)
            last_pts = item.pts
            time.sleep(0.02)  # a consumer four times slower than the camera
            if time.monotonic() - t0 >= 0.75:
                break
        elapsed = time.monotonic() - t0
    finally:
        src.close()
    assert last_pts <= elapsed + 0.02  # frames arrive at the camera's rate, not faster
    assert last_pts >= 0.5  # ... and the camera kept its pace while the consumer was slow
    assert len(got) < 100 and got == sorted(got) and src.dropped > 0  # newer frames replaced old ones


def _interior_error(a: np.ndarray, b: np.ndarray, margin: int = 8) -> float:
    return float(np.abs(a.astype(np.float64) - b)[margin:-margin, margin:-margin].mean())


def test_virtual_camera_exact_affine():
    cam = VirtualCamera(load_photo("astronaut"), (320, 180))
    poses = cam.sweep(30)
    for t in (10, 15, 20):  # mid-sweep, where the camera moves fastest
        prev, cur = cam.view(poses[t - 1]), cam.view(poses[t])
        m = cam.flow_affine(poses[t - 1], poses[t])
        warped = cv2.warpAffine(prev, m, cam.size, flags=cv2.INTER_LINEAR)
        err, still = _interior_error(warped, cur), _interior_error(prev, cur)
        # what remains is bilinear resampling error (about 1 level), far below the motion itself
        assert err < 1.5 and err < 0.2 * still, (t, err, still)
    # a bigger move, with zoom and roll, is predicted exactly too
    a, b = CameraPose(250, 250, 1.1, -2.0), CameraPose(262, 244, 1.2, 1.0)
    warped = cv2.warpAffine(cam.view(a), cam.flow_affine(a, b), cam.size, flags=cv2.INTER_LINEAR)
    assert _interior_error(warped, cam.view(b), margin=20) < 2.0 < _interior_error(cam.view(a), cam.view(b))


def test_demo_clip_flow_affine_and_noise():
    clip = DemoClip(size=(320, 180))
    assert clip.flow_affine(0) is None
    assert clip.flow_affine(clip.segment) is None  # the first frame of a cross-fade
    m = clip.flow_affine(30)
    warped = cv2.warpAffine(clip.frame(29), m, clip.size, flags=cv2.INTER_LINEAR)
    assert _interior_error(warped, clip.frame(30)) < 1.5

    noisy = DemoClip(size=(160, 90), noise_sigma=3.0, seed=7)
    again = DemoClip(size=(160, 90), noise_sigma=3.0, seed=7)
    clean = DemoClip(size=(160, 90))
    assert np.array_equal(noisy.frame(5), again.frame(5))
    n5 = noisy.frame(5).astype(float) - clean.frame(5)
    n6 = noisy.frame(6).astype(float) - clean.frame(6)
    assert 2.0 < n5.std() < 4.0
    assert np.abs(n5 - n6).mean() > 1.0  # fresh noise every frame


def test_demo_stereo():
    source, frames = read_all("demo:stereo", size=(160, 90), max_frames=4)
    assert source.stereo and not source.live
    assert len(frames) == 4 and all(isinstance(f, StereoFrame) for f in frames)
    check_frames(frames, (160, 90))
    f = frames[0]
    assert f.left.eye == "left" and f.right.eye == "right"
    assert not np.array_equal(f.left.image, f.right.image)  # a real disparity
    assert f.display_image().shape == (90, 320, 3)


# -- stereo forms -------------------------------------------------------------------------------

def _two_colour_images(folder: Path, n: int, vertical: bool) -> None:
    """n images, red | blue side by side (or red over blue), brightness rising with the index."""
    folder.mkdir()
    for i in range(n):
        img = np.zeros((40, 80, 3), np.uint8)
        v = 100 + 10 * i
        if vertical:
            img[:20], img[20:] = (v, 0, 0), (0, 0, v)
        else:
            img[:, :40], img[:, 40:] = (v, 0, 0), (0, 0, v)
        cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


@pytest.mark.parametrize("layout", ["sbs", "tb"])
def test_split_stereo_eyes(tmp_path, layout):
    _two_colour_images(tmp_path / "img", 3, vertical=layout == "tb")
    spec = f"{layout}:images:{tmp_path}/img/*.png"
    source, frames = read_all(spec)
    assert source.stereo and not source.live
    assert len(frames) == 3
    eye = (40, 40) if layout == "sbs" else (80, 20)
    check_frames(frames, eye)
    for i, f in enumerate(frames):
        v = 100 + 10 * i
        assert f.left.eye == "left" and f.right.eye == "right"
        assert np.all(f.left.image == (v, 0, 0)) and np.all(f.right.image == (0, 0, v))
        assert f.pts == pytest.approx(i / 30)
    _, sized = read_all(spec, size=(16, 12), max_frames=2)
    assert len(sized) == 2
    check_frames(sized, (16, 12))  # cfg.size is per eye


def test_pair_of_files_by_index(tmp_path):
    a = write_video(tmp_path / "a.mkv", n=12)
    b = tmp_path / "b"
    b.mkdir()
    for i in range(8):  # a shorter right eye, flat grey with rising brightness
        cv2.imwrite(str(b / f"{i:02d}.png"), np.full((48, 64, 3), 30 + 20 * i, np.uint8))
    source, frames = read_all(f"pair:{a},images:{b}/*.png")
    assert source.stereo and not source.live
    assert len(frames) == 8  # ends with the shorter eye
    check_frames(frames, (64, 48))
    for i, f in enumerate(frames):
        assert np.abs(mean_rgb(f.left.image) - colour(i)).max() < 6
        assert np.all(f.right.image == 30 + 20 * i)


class FakeLive(Source):
    """A live source yielding frames with given capture times (ms), `period_s` apart in real time."""

    live = True

    def __init__(self, times_ms: list[float], value: int, period_s: float = 0.0, endless: bool = False) -> None:
        super().__init__()
        self.times_ms, self.value, self.period_s, self.endless = times_ms, value, period_s, endless
        self._closed = threading.Event()

    def open(self) -> None:
        pass

    def close(self) -> None:
        self._closed.set()

    def __iter__(self) -> Iterator[Frame]:
        for i, t in enumerate(self.times_ms):
            if self._closed.wait(self.period_s):
                return
            yield Frame(np.full((8, 8, 3), self.value, np.uint8), i, int(1e9 + t * 1e6))
        while self.endless and not self._closed.wait(0.05):
            pass


def test_nearest_pairer_orders():
    def ms(t: float) -> Frame:
        return Frame(np.zeros((2, 2, 3), np.uint8), 0, int(t * 1e6))

    pairer = NearestPairer(tolerance_ns=int(16.7e6))
    assert pairer.push("right", ms(20)) == []
    assert pairer.push("right", ms(38)) == []
    (pair,) = pairer.push("left", ms(33))  # 20 is older and 38 is closer to 33: drop 20
    assert (pair[0].capture_ns, pair[1].capture_ns) == (33e6, 38e6)
    assert pairer.unmatched == 1
    assert pairer.push("left", ms(100)) == []
    assert pairer.push("right", ms(60)) == []  # 40 ms apart: wait for the next right frame
    (pair,) = pairer.push("right", ms(103))
    assert (pair[0].capture_ns, pair[1].capture_ns) == (100e6, 103e6)
    assert pairer.unmatched == 2


def test_pair_live_sources_by_capture_time():
    left = FakeLive([0, 100, 150, 200, 300], value=10)
    right = FakeLive([3, 60, 103, 203, 303], value=20)
    source = PairSource(SourceConfig("pair:fake,fake"), left, right)
    assert source.live and source.stereo
    source.live_queue_size = 16  # the fakes deliver instantly: keep every pair for the check
    source.open()
    frames = list(source)
    source.close()
    pairs = [((f.left.capture_ns - 1e9) / 1e6, (f.right.capture_ns - 1e9) / 1e6) for f in frames]
    assert pairs == [(0, 3), (100, 103), (200, 203), (300, 303)]
    check_frames(frames, (8, 8))
    assert source.unpaired == 2  # left 150 and right 60
    assert all(f.left.image[0, 0, 0] == 10 and f.right.image[0, 0, 0] == 20 for f in frames)


def test_pair_rejects_mixed_and_nested(tmp_path):
    video = write_video(tmp_path / "a.mkv", n=2)
    with pytest.raises(UserError, match="live"):
        PairSource(SourceConfig("pair"), FakeLive([0], 1), make_source(SourceConfig(str(video))))
    with pytest.raises(UserError, match="stereo"):
        make_source(SourceConfig("pair:demo:stereo,demo"))
    with pytest.raises(UserError, match="already stereo"):
        make_source(SourceConfig("sbs:demo:stereo"))
    with pytest.raises(UserError, match="comma"):
        make_source(SourceConfig("pair:demo"))


# -- spec errors --------------------------------------------------------------------------------

def test_no_camera_is_a_user_error():
    source = make_source(SourceConfig("webcam:99"))
    assert source.live
    with pytest.raises(UserError, match="no camera at webcam:99"):
        source.open()
    source.close()
    with pytest.raises(UserError, match="camera index"):
        make_source(SourceConfig("webcam:abc"))


@pytest.mark.parametrize("spec", ["foo://x", "foo:bar", ""])
def test_unknown_specs(spec):
    with pytest.raises(UserError, match="webcam:N"):
        make_source(SourceConfig(spec))


def test_url_specs_are_live_without_opening():
    assert make_source(SourceConfig("rtsp://127.0.0.1:1/stream")).live
    assert make_source(SourceConfig("http://127.0.0.1:1/video.mp4")).live


# -- close() and errors from the reader ---------------------------------------------------------

class SlowSource(ThreadedSource):
    """Blocks in an uninterruptible call (like a camera read) before each frame."""

    def __init__(self, delay_s: float = 5.0, fail: bool = False) -> None:
        super().__init__(SourceConfig("slow"))
        self.delay_s, self.fail, self.releases = delay_s, fail, 0

    def _open(self) -> None:
        pass

    def _produce(self) -> Iterator[Frame]:
        if self.fail:
            raise UserError("corrupt input")
        yield Frame(np.zeros((4, 4, 3), np.uint8), 0, time.monotonic_ns())
        time.sleep(self.delay_s)
        yield Frame(np.zeros((4, 4, 3), np.uint8), 0, time.monotonic_ns())

    def _release(self) -> None:
        self.releases += 1


def test_close_from_another_thread_unblocks_iteration():
    source = SlowSource(delay_s=3.0)
    source.open()
    got = []
    timer = threading.Timer(0.3, source.close)
    start = time.monotonic()
    timer.start()
    for item in source:
        got.append(item)
    elapsed = time.monotonic() - start
    assert len(got) == 1 and elapsed < 1.5
    source.close()  # idempotent
    time.sleep(0.1)
    assert source.releases <= 1


def test_close_unblocks_a_live_pair_and_a_demo():
    pair = PairSource(SourceConfig("pair"), FakeLive([0], 1, endless=True), FakeLive([1], 2, endless=True))
    pair.open()
    threading.Timer(0.3, pair.close).start()
    start = time.monotonic()
    assert len(list(pair)) == 1
    assert time.monotonic() - start < 1.5

    demo = make_source(SourceConfig("demo"))
    demo.open()
    it = iter(demo)
    next(it)
    demo.close()
    assert len(list(it)) < 150
    demo.close()


def test_close_before_iterating_and_reader_errors():
    source = SlowSource()
    source.open()
    source.close()
    assert list(source) == [] and source.releases == 1
    failing = SlowSource(fail=True)
    failing.open()
    with pytest.raises(UserError, match="corrupt input"):
        list(failing)
    failing.close()
    assert failing.releases == 1


def test_video_up_to_1080p_decodes_on_the_capture_thread_alone():
    from realtime.sources.media import decoder_threading

    assert decoder_threading(640, 360) == "NONE" and decoder_threading(1920, 1080) == "NONE"
    assert decoder_threading(3840, 2160) == "AUTO" and decoder_threading(0, 0) == "AUTO"

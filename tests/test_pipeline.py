"""Pipeline threads: ordering, drop policy, budget, shutdown, errors, keys, stereo."""
from __future__ import annotations

import queue
import threading
import time

import numpy as np
import pytest

from realtime.backends.identity import IdentityBackend
from realtime.config import BackendConfig
from genreal_errors import UserError
from realtime.frame import StereoFrame
from realtime.pipeline import LatestSlot, Pipeline
from tests.fakes import FakeSource, RecordingSink, make_image


def identity(delay_s: float = 0.0, style: str = "identity") -> IdentityBackend:
    return IdentityBackend(BackendConfig(name="identity", style=style), delay_s=delay_s)


def test_file_source_never_drops_even_with_a_slow_stylizer():
    sink = RecordingSink()
    stats = Pipeline(FakeSource(n=25), identity(delay_s=0.01), [sink]).run()
    assert [it.index for it in sink.items] == list(range(25))
    assert stats.frames_in == stats.frames_out == 25 and stats.dropped == 0
    assert np.array_equal(sink.items[7].image, make_image(7))
    assert sink.closed == 1


def test_live_source_drops_old_frames_and_keeps_order():
    sink = RecordingSink()
    stats = Pipeline(FakeSource(n=60, period_s=0.002, live=True), identity(delay_s=0.02), [sink]).run()
    idx = [it.index for it in sink.items]
    assert stats.dropped > 0, "a stylizer 10× slower than the camera must drop frames"
    assert idx == sorted(set(idx)), "output stays in capture order"
    assert stats.frames_in == 60
    assert stats.frames_out + stats.dropped == stats.frames_in
    assert idx[-1] == 59, "the newest frame wins"


class ChoiceBackend(IdentityBackend):
    """The identity backend with budget knobs: records the choice each frame ran with."""

    supports_choices = True

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__(BackendConfig(name="identity"), delay_s=delay_s)
        self.choices: list = []

    def budget_steps(self) -> int:
        return 2

    def apply_choice(self, choice) -> None:
        self.choices.append(choice)


def test_the_newest_live_frame_is_computed_however_old_and_the_budget_lowers_quality_instead():
    """Issue 29: a frame older than the budget was dropped before inference although it was the newest there
    was, so nothing was shown. Now it is computed (a deadline miss), and the budget walks down its ladder."""
    backend = ChoiceBackend()
    stats = Pipeline(FakeSource(n=30, live=True, period_s=0.01, age_ms=80), backend, [RecordingSink()],
                     budget_ms=50).run()
    assert stats.frames_out + stats.dropped == 30 and stats.frames_out >= 20
    assert backend.calls == stats.frames_out == stats.deadline_misses
    assert set(stats.drops) == {"superseded", "superseded_output"}  # the only reasons a frame is dropped
    assert backend.choices[0].steps == 2 and backend.choices[-1].scale < 1.0, "quality lowered, frames kept"


def test_drops_are_counted_by_reason_in_the_json_and_the_summary():
    stats = Pipeline(FakeSource(n=60, period_s=0.002, live=True), identity(delay_s=0.02), [RecordingSink()]).run()
    d = stats.to_dict()
    assert d["drops"]["superseded"] > 0 and sum(d["drops"].values()) == d["dropped"] == stats.dropped
    assert f"superseded {d['drops']['superseded']}" in stats.summary()


def test_a_file_frame_meets_the_budget_from_its_turn_not_from_the_read_ahead_queue():
    """Issue 29: on a file every frame is kept and read ahead; the wait in that queue was counted, so every
    frame missed and the budget dropped the quality. A file frame's deadline runs from its turn."""
    backend = ChoiceBackend()
    stats = Pipeline(FakeSource(n=25, age_ms=80), backend, [RecordingSink()], budget_ms=50).run()
    assert stats.frames_out == 25 and stats.dropped == 0
    assert stats.deadline_misses == 0 and stats.end_to_end.summary()["p50_ms"] > 50  # capture→display still says it
    assert {(c.steps, c.scale) for c in backend.choices} == {(2, 1.0)}, "no quality lost to a queue wait"


def test_deadline_misses_counted_against_budget():
    stats = Pipeline(FakeSource(n=6), identity(delay_s=0.01), [RecordingSink()], budget_ms=2).run()
    assert stats.frames_out == 6 and stats.deadline_misses == 6 and stats.dropped == 0
    stats = Pipeline(FakeSource(n=6), identity(), [RecordingSink()], budget_ms=10_000).run()
    assert stats.deadline_misses == 0


def test_stop_ends_an_endless_live_run_within_a_second():
    sink = RecordingSink()
    p = Pipeline(FakeSource(n=None, period_s=0.005, live=True), identity(delay_s=0.005), [sink])
    threading.Timer(0.3, p.stop).start()
    t0 = time.perf_counter()
    stats = p.run()
    assert time.perf_counter() - t0 < 1.5
    assert stats.frames_out > 0 and sink.closed == 1


def test_q_key_quits_and_n_t_keys_switch_style_and_temporal():
    backend = identity()
    sink = RecordingSink(keys={2: "n", 4: "t", 6: "q"})
    stats = Pipeline(FakeSource(n=None, period_s=0.01, live=True), backend, [sink]).run()
    assert backend.style == "invert", "n moves to the next style"
    assert backend.temporal is False, "t toggles temporal reuse"
    assert 6 <= stats.frames_out <= 12, "q stops promptly"
    styles = [o.style for o in sink.overlays]
    assert styles[0] == "identity" and "invert" in styles


def test_ctrl_c_finalizes_sinks_and_reports():
    sink = RecordingSink(interrupt_at=3)
    other = RecordingSink()
    stats = Pipeline(FakeSource(n=None, period_s=0.002), identity(), [sink, other]).run()
    assert stats.interrupted and stats.frames_out == 3
    assert sink.closed == 1 and other.closed == 1


def test_source_error_mid_stream_keeps_frames_already_written():
    sink = RecordingSink()
    p = Pipeline(FakeSource(n=20, fail_after=5), identity(), [sink])
    with pytest.raises(UserError, match="corrupt input"):
        p.run()
    assert len(sink.items) == 5 and sink.closed == 1
    assert p.stats.frames_out == 5


def test_backend_error_is_raised_after_closing_sinks():
    class Broken(IdentityBackend):
        def infer(self, x):
            raise RuntimeError("model exploded")

    sink = RecordingSink()
    with pytest.raises(RuntimeError, match="model exploded"):
        Pipeline(FakeSource(n=5), Broken(BackendConfig(name="identity")), [sink]).run()
    assert sink.closed == 1


def test_stereo_frames_go_through_as_pairs():
    sink = RecordingSink()
    stats = Pipeline(FakeSource(n=4, stereo=True), identity(style="invert"), [sink]).run()
    assert stats.frames_out == 4 and stats.stereo
    item = sink.items[2]
    assert isinstance(item, StereoFrame)
    assert np.array_equal(item.left.image, 255 - make_image(2))
    assert np.array_equal(item.right.image, 255 - make_image(102))
    assert item.display_image().shape == (24, 64, 3)


def test_stats_dict_has_the_documented_keys():
    stats = Pipeline(FakeSource(n=5), identity(), [RecordingSink()]).run()
    d = stats.to_dict()
    for key in ("frames_in", "frames_out", "dropped", "deadline_misses", "backend", "device", "size",
                "stages", "end_to_end"):
        assert key in d
    assert set(d["stages"]) >= {"capture", "preprocess", "stylize", "postprocess", "output"}
    assert set(d["end_to_end"]) == {"p50_ms", "p95_ms", "p99_ms", "mean_ms", "min_ms", "n"}
    assert d["size"] == "32x24" and d["backend"] == "identity"
    assert "capture→display" in stats.summary()


def test_latest_slot_replaces_unread_item_but_never_the_end():
    from realtime.pipeline import _End

    slot = LatestSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True
    assert slot.get(0.1) == 2
    with pytest.raises(queue.Empty):
        slot.get(0.01)
    slot.put(4)
    end = _End()
    slot.put(end)
    assert slot.get(0.1) == 4, "the pending frame comes before the end"
    assert slot.put(5) is False and slot.get(0.1) is end and slot.get(0.1) is end

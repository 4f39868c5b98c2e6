"""The latency-budget controller (realtime/budget.py) with a fake clock, and in the pipeline with our model."""
from __future__ import annotations

import json

import numpy as np
import pytest

from realtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from realtime.budget import BUDGET_PRESETS, BudgetController, Choice, ladder
from realtime.commands.run import parse_budget
from realtime.config import BackendConfig
from realtime.pipeline import Pipeline
from tests.fakes import FakeSource, RecordingSink


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def frame(ctl: BudgetController, clock: FakeClock, cost_ms: dict[str, float], load: float = 1.0) -> Choice:
    """One frame whose work costs `cost_ms[choice.label] * load`."""
    choice = ctl.start_frame()
    clock.t += cost_ms[choice.label] * load / 1e3
    ctl.end_frame()
    return choice


COST = {"K=2,scale=1": 40.0, "K=1,scale=1": 30.0, "K=1,scale=0.75": 20.0, "K=1,scale=0.5": 12.0}


def test_the_ladder_lowers_steps_first_then_resolution_with_more_reuse():
    assert ladder(2) == [Choice(2, 1.0, 1.0), Choice(1, 1.0, 1.0), Choice(1, 0.75, 1.5), Choice(1, 0.5, 2.0),
                         Choice(1, 0.35, 2.3), Choice(1, 0.25, 2.5)]
    assert [c.steps for c in ladder(4)] == [4, 3, 2, 1, 1, 1, 1, 1]
    assert ladder(1, scales=(1.0,)) == [Choice(1, 1.0, 1.0)]


def test_under_load_it_lowers_k_and_resolution_then_raises_them_again():
    clock = FakeClock()
    ctl = BudgetController(33.3, 2, clock=clock, patience=10)
    seen = [frame(ctl, clock, COST) for _ in range(30)]
    assert seen[0] == Choice(2, 1.0, 1.0)
    # 40 ms misses, 30 ms is over the 85 % headroom, 20 ms fits: it settles on the first rung that fits.
    # The first frame at each rung (a full frame for the temporal cache, maybe new shapes) is not judged.
    assert ctl.choice == Choice(1, 0.75, 1.5)
    assert [c.label for c in seen[:6]] == ["K=2,scale=1"] * 2 + ["K=1,scale=1"] * 2 + ["K=1,scale=0.75"] * 2
    assert ctl.misses == 2 and all(c == ctl.choice for c in seen[4:])
    # the load goes away (every rung 4x cheaper): back up, one rung at a time, to the full-quality rung
    up = [frame(ctl, clock, COST, load=0.25) for _ in range(40)]
    assert ctl.choice == Choice(2, 1.0, 1.0)
    labels = [c.label for c in up]
    assert labels.index("K=1,scale=1") < labels.index("K=2,scale=1")
    assert ctl.misses == 2
    # heavy load again: straight back down, two frames a rung
    for _ in range(6):
        frame(ctl, clock, COST, load=1.5)
    assert ctl.choice.scale < 1.0


def test_a_rung_predicted_not_to_fit_is_not_tried_and_nothing_oscillates():
    clock = FakeClock()
    ctl = BudgetController(33.3, 2, clock=clock, patience=5)
    for _ in range(30):
        frame(ctl, clock, COST)
    assert ctl.choice.scale == 0.75 and ctl.ratio[1] == pytest.approx(1.5)  # 30 ms / 20 ms, measured
    changes, misses = ctl.changes, ctl.misses
    # 19 ms is calm (< 60 % of the budget), but the rung above would take 19 * 1.5 = 28.5 ms, over the
    # 85 % headroom (28.3 ms): the controller stays put instead of bouncing up and down
    for _ in range(40):
        frame(ctl, clock, COST, load=0.95)
    assert ctl.changes == changes and ctl.choice.scale == 0.75 and ctl.misses == misses
    # a little more room (17 ms -> 25.5 ms predicted) and it goes up once, and stays there
    for _ in range(40):
        frame(ctl, clock, COST, load=0.85)
    assert ctl.choice == Choice(1, 1.0, 1.0) and ctl.changes == changes + 1 and ctl.misses == misses


def test_the_output_stage_counts_in_every_frames_latency():
    clock = FakeClock()
    ctl = BudgetController(33.3, 1, scales=(1.0,), clock=clock)
    ctl.observe_stage("output", 5.0)
    assert ctl.stage_ema == {"output": 5.0}
    ctl.observe_stage("output", 10.0)
    assert ctl.stage_ema["output"] == pytest.approx(6.0)  # a moving average (alpha 0.2)


def test_misses_and_bad_use():
    clock = FakeClock()
    ctl = BudgetController(10.0, 1, scales=(1.0,), clock=clock)
    ctl.start_frame()
    clock.t += 0.004
    assert ctl.end_frame(extra_ms=7.0) == pytest.approx(11.0)
    assert ctl.misses == 1 and ctl.stats()["misses"] == 1 and ctl.stats()["final"] == "K=1,scale=1"
    with pytest.raises(RuntimeError):
        ctl.end_frame()
    with pytest.raises(ValueError):
        BudgetController(0, 2)


def test_presets_and_parsing():
    assert BUDGET_PRESETS == {"30fps": 33.3, "vr72": 13.9, "vr90": 11.1, "vr120": 8.3}
    assert parse_budget("vr90") == 11.1 and parse_budget("25") == 25.0 and parse_budget(None) is None


def test_pipeline_with_an_impossible_budget_runs_our_model_at_its_cheapest_rung():
    """A file source never drops, so every frame runs: the controller must walk down the ladder, and the
    lower internal resolution must still give outputs at the input's size."""
    backend = OnnxRuntimeBackend(BackendConfig(name="onnxruntime", style="cel", temporal=False))
    sink = RecordingSink()
    try:
        stats = Pipeline(_PhotoSource(10), backend, [sink], budget_ms=0.01).run()  # 2 frames per rung
    finally:
        backend.close()
    b = stats.to_dict()["budget"]
    assert b["final"] == "K=1,scale=0.25" and b["misses"] == 10
    assert set(b["choices"]) == {c.label for c in ladder(backend.budget_steps())}  # every rung, best to cheapest
    assert len(sink.items) == 10 and all(item.image.shape == (96, 160, 3) for item in sink.items)
    assert "budget choices" in stats.summary()


def test_backend_internal_scale_keeps_the_output_size_and_stays_close(photo):
    from models.metrics import PSNR_CAP_DB, psnr

    img = photo("coffee", 320, 192)
    backend = OnnxRuntimeBackend(BackendConfig(name="onnxruntime", style="cel", temporal=False))
    try:
        full = backend([img])[0]
        backend.apply_choice(Choice(1, 0.5, 2.0))
        half = backend([img])[0]
        backend.apply_choice(Choice(1, 0.1, 2.0))  # floored at 64 px, the smallest graph input
        tiny = backend([img])[0]
    finally:
        backend.close()
    assert half.shape == tiny.shape == img.shape
    assert backend.steps == 1 and backend.reuse.change_scale == 2.0
    assert 15.0 < psnr(half, full) < PSNR_CAP_DB  # a softer rendition of the same picture, not the same one


class _PhotoSource(FakeSource):
    """FakeSource frames replaced by 160 x 96 views of a photo (the model needs ≥ 64 px)."""

    def __iter__(self):
        from realtime.sources.synthetic import load_photo

        import cv2

        img = cv2.resize(load_photo("rocket"), (160, 96), interpolation=cv2.INTER_AREA)
        for item in super().__iter__():
            yield type(item)(np.ascontiguousarray(img), item.index, item.capture_ns, item.pts)


def test_a_climb_that_does_not_hold_doubles_the_wait_before_the_next_try():
    """A rung that fits on average but not in its peaks: every 4th frame at full size costs 40 ms."""
    clock = FakeClock()
    ctl = BudgetController(33.3, 1, scales=(1.0, 0.5), clock=clock, patience=5)
    tries, n, t = [], 0, 0
    for t in range(400):
        choice = ctl.choice
        heavy = choice.scale == 1.0 and n % 4 == 3
        n = n + 1 if choice.scale == 1.0 else 0
        frame(ctl, clock, {"K=1,scale=1": 40.0 if heavy else 12.0, "K=1,scale=0.5": 5.0})
        if choice.scale == 0.5 and ctl.choice.scale == 1.0:
            tries.append(t)
    gaps = np.diff(tries)
    assert len(tries) >= 5 and all(b > a for a, b in zip(gaps[:4], gaps[1:4]))  # ever longer waits...
    assert all(b >= a for a, b in zip(gaps, gaps[1:]))  # ...up to the cap (16 x patience)
    assert ctl.stats()["backoff"]["K=1,scale=1"] == 16


@pytest.mark.timeout(120)
def test_budget_load_benchmark_runs_the_cli_with_busy_processes(tmp_path):
    from benchmarks.budget_load import main as budget_load

    out = tmp_path / "budget_load.json"
    assert budget_load(["--busy", "1", "--runs", "1", "--frames", "15", "--size", "160x90", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    run = result["runs"]["this"][0]
    assert run["frames_in"] == 15 and run["frames_out"] + sum(run["drops"].values()) == 15
    assert set(run["drops"]) == {"superseded", "superseded_output"} and run["frames_out"] >= 1
    assert result["summary"]["this"]["delivered"] == [run["frames_out"]] and "goal_met" in result

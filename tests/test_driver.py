"""The one frame path (realtime/driver.py) that `genreal run` and `genreal serve` share."""
from __future__ import annotations

import numpy as np
import pytest

from realtime.backends.identity import IdentityBackend
from realtime.config import BackendConfig, PipelineConfig, SourceConfig
from realtime.driver import FrameDriver, blend_strength
from realtime.pipeline import Pipeline
from realtime.serve.session import Session
from genreal_errors import UserError
from tests.fakes import FakeSource, RecordingSink, make_image


def invert() -> IdentityBackend:
    return IdentityBackend(BackendConfig(name="identity", style="invert"))


def test_strength_blends_restyled_and_input_by_the_documented_rounding():
    img = make_image(40)
    out = FrameDriver(invert(), strength=0.25).process([img]).images[0]
    want = np.floor((255 - img).astype(np.float32) * 0.25 + img.astype(np.float32) * 0.75 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(FrameDriver(invert(), strength=0.0).process([img]).images[0], img)
    np.testing.assert_array_equal(FrameDriver(invert()).process([img]).images[0], 255 - img)
    with pytest.raises(ValueError):
        blend_strength([img], [img], 1.5)


def test_run_and_serve_give_the_same_picture_for_the_same_frame_and_strength():
    sink = RecordingSink()
    Pipeline(FakeSource(n=3), invert(), [sink], strength=0.4).run()
    session = Session("ws", invert())
    session.configure({"strength": 0.4})
    for item in sink.items:
        np.testing.assert_array_equal(session.process(make_image(item.index)), item.image)
    assert not np.array_equal(sink.items[0].image, 255 - make_image(0))  # the strength did something


def test_the_budget_counts_the_age_and_the_output_stage():
    driver = FrameDriver(invert(), budget_ms=10.0)
    driver.observe_output(4.0)
    driver.process([make_image(1)], age_ms=7.0)  # 7 + 4 + work > 10: a miss
    driver.process([make_image(2)], age_ms=0.0)  # work + 4 < 10
    assert driver.budget is not None and driver.budget.misses == 1 and driver.budget.frames == 2
    driver.set_budget(None)
    assert driver.budget is None


def test_pipeline_config_refuses_a_strength_outside_0_to_1():
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(UserError, match="--strength"):
            PipelineConfig(source=SourceConfig("demo"), sinks=("null",), strength=bad)

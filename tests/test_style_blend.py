"""The one style-blend parser (models/style_blend.py): run, serve, the teacher and distillation use it."""
from __future__ import annotations

import numpy as np
import pytest

from genreal_errors import UserError
from models.style_blend import blend_terms, blend_weights
from models.teacher_net import parse_blend
from realtime.config import BackendConfig

NAMES = ("cel", "frost", "starry")


def test_plain_names_and_blends_are_normalized():
    np.testing.assert_array_equal(blend_weights("frost", NAMES), np.array([0, 1, 0], np.float32))
    w = blend_weights("cel:1, starry:3", NAMES)
    assert w.dtype == np.float32 and w.tolist() == [0.25, 0.0, 0.75]
    assert blend_terms("cel:0.5,frost") == [("cel", 0.5), ("frost", 1.0)]
    assert parse_blend("3:0.5,12:0.5")[[3, 12]].tolist() == [0.5, 0.5]  # the teacher's indices


@pytest.mark.parametrize("spec, words", [
    ("cel:nan", "finite"), ("cel:inf", "finite"), ("cel:-1,frost:2", "positive"), ("cel:0", "positive"),
    ("cel:0,frost:0", "positive"), ("cel:1e308,frost:1e308", "add up"), ("cel:abc", "number"), ("", "empty"),
    (":0.5", "no style name"),
])
def test_bad_weights_are_refused_everywhere(spec, words):
    """Serve took 'cel:1e308,frost:1e308' (the picture turned white): every path now refuses it."""
    for parse in (blend_terms, lambda s: blend_weights(s, NAMES), parse_blend, lambda s: BackendConfig(style=s)):
        with pytest.raises(UserError, match=words):
            parse(spec)


def test_weights_beyond_float32_still_normalize():
    assert blend_weights("cel:1e39,frost:3e39", NAMES).tolist() == [0.25, 0.75, 0.0]
    assert blend_weights("cel:1e-50,frost:3e-50", NAMES).tolist() == [0.25, 0.75, 0.0]


def test_unknown_names_get_a_hint():
    with pytest.raises(UserError, match="did you mean 'frost'"):
        blend_weights("forst:1", NAMES)
    with pytest.raises(UserError, match="0-25"):
        parse_blend("26")


def test_serve_refuses_an_overflowing_blend_and_keeps_its_style():
    """The browser's style box went straight to the backend: 'cel:1e308,frost:1e308' was taken and the
    picture turned white. The page is told; the session keeps its style."""
    from realtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from realtime.serve.session import Session

    session = Session("websocket", OnnxRuntimeBackend(BackendConfig(name="onnxruntime", style="cel")))
    try:
        with pytest.raises(UserError, match="add up"):
            session.configure({"style": "cel:1e308,frost:1e308"})
        assert session.backend.style == "cel" and session.settings.style == "cel"
        with pytest.raises(UserError, match="this model offers 1 to "):
            session.configure({"steps": 99})
    finally:
        session.close()

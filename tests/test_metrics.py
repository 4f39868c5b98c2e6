"""models/metrics.py: one PSNR (one cap), SSIM, blurred PSNR, one timing loop and key schema, run facts;
and the manifest's data section written from the DataConfig that ran."""
from __future__ import annotations

import ast
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models import metrics as mt

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"p50_ms", "p95_ms", "p99_ms", "mean_ms", "min_ms", "n"}


def test_psnr_is_capped_once_and_matches_scikit_image() -> None:
    from skimage.metrics import peak_signal_noise_ratio

    a = np.zeros((4, 4, 3), np.uint8)
    assert mt.psnr(a, a) == mt.PSNR_CAP_DB == 100.0
    assert mt.psnr(a, a + 1) == pytest.approx(10 * math.log10(255 ** 2))
    rng = np.random.default_rng(0)
    x, y = (rng.integers(0, 256, (32, 48, 3), dtype=np.uint8) for _ in range(2))
    assert mt.psnr(x, y) == pytest.approx(peak_signal_noise_ratio(x, y, data_range=255), abs=1e-9)
    assert mt.psnr_from_mse(0.0) == mt.PSNR_CAP_DB and mt.psnr_from_mse(1e-12) == mt.PSNR_CAP_DB
    with pytest.raises(ValueError, match="shapes differ"):
        mt.psnr(x, y[:, :-1])


def test_ssim_is_one_for_identical_images_and_lower_for_noise() -> None:
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(1)
    ramp = np.linspace(40, 200, 64)
    a = np.stack([ramp[None, :] * np.ones((64, 1)), ramp[:, None] * np.ones((1, 64)), 120 * np.ones((64, 64))],
                 axis=2).astype(np.uint8)  # a smooth image: noise shows in its structure
    noisy = np.clip(a.astype(int) + rng.normal(0, 30, a.shape), 0, 255).astype(np.uint8)
    assert mt.ssim(a, a) == pytest.approx(1.0)
    p, s = mt.psnr_ssim(noisy, a)
    assert s < 0.5 and p == mt.psnr(noisy, a)
    assert s == structural_similarity(noisy, a, channel_axis=2, data_range=255)
    assert mt.ssim(a[..., 0], a[..., 0]) == pytest.approx(1.0)  # grey images too


def test_blurred_psnr_tells_fine_from_coarse_errors() -> None:
    """Blurring forgives a fine checkerboard error, not a colour offset of the same size."""
    a = (np.random.default_rng(0).random((64, 96, 3)) * 150 + 50).astype(np.uint8)
    checker = ((np.indices((64, 96)).sum(0) % 2) * 40 - 20)[:, :, None]
    fine = (a.astype(int) + checker).astype(np.uint8)
    coarse = (a.astype(int) + 20).astype(np.uint8)
    plain = mt.psnr(fine, a)
    assert plain == pytest.approx(mt.psnr(coarse, a), abs=0.01)  # the same error energy
    s2, s8 = mt.blurred_psnr(fine, a)
    assert s8 >= s2 > plain + 15
    assert mt.blurred_psnr(coarse, a) == pytest.approx([plain, plain], abs=0.05)
    assert mt.blurred_psnr(a, a) == [mt.PSNR_CAP_DB] * len(mt.BLUR_SIGMAS)


def test_percentiles_have_one_schema() -> None:
    p = mt.percentiles([1.0, 2.0, 3.0, 4.0, 100.0])
    assert set(p) == KEYS and p["n"] == 5
    assert p["p50_ms"] == 3.0 and p["min_ms"] == 1.0 and p["mean_ms"] == 22.0
    assert p["p50_ms"] <= p["p95_ms"] <= p["p99_ms"] <= 100.0
    assert mt.percentiles([]) == {k: 0 for k in KEYS}
    assert mt.percentiles([1 / 3], digits=2)["p50_ms"] == 0.33


def test_repeat_warms_up_then_counts_or_runs_out_of_time() -> None:
    calls: list[int] = []
    out = mt.repeat(lambda: calls.append(len(calls)) or len(calls), warmup=3, iters=5)
    assert len(calls) == 8 and out == [4, 5, 6, 7, 8]  # the warm-up results are not returned
    # with max_s: stop once the time is up, but not before min_iters
    out = mt.repeat(lambda: None, warmup=0, iters=10_000, min_iters=4, max_s=0.0)
    assert len(out) == 4
    out = mt.repeat(lambda: None, warmup=0, iters=7, min_iters=2, max_s=60.0)
    assert len(out) == 7  # iters is the ceiling


def test_time_ms_calls_sync_inside_the_timed_span() -> None:
    import time

    events: list[str] = []
    t = mt.time_ms(lambda: events.append("fn"), warmup=1, iters=3,
                   sync=lambda: (events.append("sync"), time.sleep(0.01)))
    assert events == ["fn", "sync"] * 4  # warm-up included
    assert set(t) == KEYS and t["n"] == 3 and t["min_ms"] >= 9.0  # the sync's wait is timed


def test_time_pair_alternates_and_ratio_uses_p50() -> None:
    order: list[str] = []
    a, b = mt.time_pair_ms(lambda: order.append("a"), lambda: order.append("b"), warmup=1, iters=3)
    assert order == ["a", "b"] * 4 and a["n"] == b["n"] == 3
    assert mt.ratio_p50({"p50_ms": 6.0}, {"p50_ms": 2.0}) == 3.0
    assert math.isnan(mt.ratio_p50({"p50_ms": 6.0}, {"p50_ms": 0.0}))


def test_machine_and_code_revision() -> None:
    m = mt.describe_machine()
    assert {"cpu", "cores", "ram_gib", "gpu", "os", "versions"} <= set(m)
    assert m["versions"]["python"] and m["versions"]["numpy"] == np.__version__
    rev = mt.code_revision()
    if (ROOT / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}(\+dirty\(models/\))?", rev), rev
    else:
        assert rev == "unknown"


def test_metrics_module_is_torch_free_and_imports_no_later_room() -> None:
    tree = ast.parse((ROOT / "models" / "metrics.py").read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not names & {"torch", "realtime", "benchmarks", "calibration", "onnxruntime"}, names
    code = ("import sys; import models.metrics as m; m.describe_machine(); m.psnr_ssim(*[__import__('numpy')"
            ".zeros((8, 8, 3), 'uint8')] * 2); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# -- the manifest's data section comes from the DataConfig that ran ------------------------------------


def test_data_section_claims_flips_only_when_the_run_flipped() -> None:
    from models.data import DataConfig
    from models.distill import data_section

    off = data_section(DataConfig(flips=False, crop_align=8), crop=128, margin=16, variants=["v"])
    assert off["augmentation"]["flips"] is False and not any("flip" in a for a in off["augment"])
    assert off["augmentation"]["crop_px"] == 160 and off["augmentation"]["crop_align_px"] == 8
    assert off["augmentation"]["camera_motion"]["shift_px"] == pytest.approx(12.8)
    on = data_section(DataConfig(flips=True, crop_align=4, jitters=0), crop=64, margin=8, variants=[])
    assert on["augmentation"]["flips"] is True and "horizontal flips" in on["augment"]
    assert "multiples of 4 px" in on["augment"][0] and not any("jitter" in a for a in on["augment"])


def test_shipped_manifest_states_what_its_config_did() -> None:
    from models.data import DataConfig
    from models.distill import data_section

    manifest = json.loads((ROOT / "models" / "weights" / "genreal-v1" / "manifest.json").read_text())
    tr = manifest["training"]
    src = tr["sources"]
    # the run's DataConfig, rebuilt from what the manifest recorded (crop alignment, flips and max aspect
    # were the defaults when genreal-v1 trained: see models/data.py at its code_revision)
    ran = DataConfig(photos=tuple(p.removeprefix("skimage.data.") for p in src["photos"]),
                     widths=tuple(src["widths"]), jitters=src["color_jitter_copies"],
                     procedural=src["procedural"]["count"], procedural_size=tuple(src["procedural"]["size"]),
                     seed=src["procedural"]["seed"])
    crop, margin = tr["settings"]["crop"], tr["settings"]["margin"]
    assert src == data_section(ran, crop, margin, src["variants"])
    assert not any("flip" in a for a in tr["sources"]["augment"])
    # the evaluation's timings use the one key schema
    speed = manifest["evaluation"]["speed"]
    for key in ("student_torch_cpu_ms", "student_warm_k1_torch_cpu_ms", "teacher_onnxruntime_cpu_ms"):
        assert {"p50_ms", "p95_ms", "mean_ms"} <= set(speed[key])

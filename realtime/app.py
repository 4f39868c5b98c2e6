"""Builds a pipeline from a validated `PipelineConfig`, runs it and reports the run.

Shared by `genreal run` and `genreal demo`.
"""
from __future__ import annotations

import logging
from contextlib import ExitStack
from typing import Callable, Optional

from realtime.backends import create_backend
from realtime.config import PipelineConfig
from realtime.pipeline import Pipeline
from realtime.sinks import make_sink
from realtime.sources import make_source
from realtime.stats import RunStats

log = logging.getLogger(__name__)


def run_pipeline(config: PipelineConfig, report: Optional[Callable[[RunStats], None]] = None) -> RunStats:
    """Open the source, sinks and backend (failing fast with `UserError`), run, and report.

    `report` is called with the final stats whether the run ended normally, by Ctrl-C or
    with an error; `--stats-json` is written in every case too.
    """
    with ExitStack() as stack:
        source = make_source(config.source)
        source.open()
        stack.callback(source.close)
        sinks = []
        for spec in config.sinks:
            sink = make_sink(spec, fps=source.fps)
            stack.callback(sink.close)
            sinks.append(sink)
        backend = create_backend(config.backend)
        stack.callback(backend.close)
        log.info("source %s → backend %s (%s, style %s) → %s", config.source.spec, backend.name,
                 backend.device, backend.style, ", ".join(config.sinks))
        pipeline = Pipeline(source, backend, sinks, budget_ms=config.budget_ms, queue_size=config.queue_size)
        try:
            return pipeline.run()
        finally:
            if config.stats_json is not None:
                pipeline.stats.write_json(config.stats_json)
            if report is not None:
                report(pipeline.stats)

"""`genreal`: the command-line entry point.

Each subcommand lives in `realtime/commands/<name>.py` with two functions:
``add_parser(subparsers) -> argparse.ArgumentParser`` and ``run(args) -> int``.
Command modules import heavy packages inside `run`, so `genreal --help` stays fast.

Exit codes: 0 done; 2 an error the user can fix (`UserError`: one line on stderr, no traceback);
3 a live source was lost and every reconnect failed (`StreamLost`); 130 / 143 / 129 stopped by
SIGINT (Ctrl-C) / SIGTERM / SIGHUP, after the command has finalized its outputs and written its
summary and statistics (all three stop a run the same way); 141 the standard output was closed
early (e.g. piped into ``head``), after the command finished its work.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Any, Iterator, Optional, Sequence

from realtime import __version__
from genreal_errors import UserError

#: subcommands, in the order `--help` lists them
COMMANDS: tuple[str, ...] = ("demo", "run", "serve", "distill", "styles", "stylize", "export", "calibrate", "bench")


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad options as our one-line error with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message} (see '{self.prog} --help')")


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread: stops a run exactly like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


#: the signals that stop a run gracefully (finalized files, summary, stats); exit code 128 + the number
STOP_SIGNALS: tuple[str, ...] = ("SIGINT", "SIGTERM", "SIGHUP")


@contextmanager
def _stop_signals() -> Iterator[dict[str, Any]]:
    """Turn the first SIGINT / SIGTERM / SIGHUP into a `KeyboardInterrupt` in the main thread.

    Later signals while the run finalizes its outputs are noted and ignored, so a second Ctrl-C
    cannot cut a file short; SIGKILL still ends everything (fragmented MP4s stay playable).
    """
    state: dict[str, Any] = {"signum": None}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum: int, frame: Optional[FrameType]) -> None:
        if state["signum"] is not None:
            logging.getLogger(__name__).warning("%s: already stopping, finalizing the outputs",
                                                signal.Signals(signum).name)
            return
        state["signum"] = signum
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Interrupted(signum)

    previous = {}
    for name in STOP_SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None:
            previous[sig] = signal.signal(sig, handler)
    try:
        yield state
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _add_log_options(p: argparse.ArgumentParser, default: Any) -> None:
    p.add_argument("-v", "--verbose", action="count", default=default,
                   help="more log output: why --backend auto chose its engine, per-packet decode notes (-vv: "
                        "every library's debug output)")
    p.add_argument("-q", "--quiet", action="store_true", default=default, help="only warnings and errors")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="genreal",
        description="Restyle live camera frames, video files and VR passthrough in real time.",
        epilog="Start with 'genreal demo' (no camera or GPU needed). Each command has its own --help.",
    )
    parser.add_argument("--version", action="version", version=f"genreal {__version__}")
    _add_log_options(parser, default=None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        module = importlib.import_module(f"realtime.commands.{name}")
        p = module.add_parser(sub)
        _add_log_options(p, default=argparse.SUPPRESS)  # also accepted after the command
        p.set_defaults(_run=module.run)
    return parser


#: libraries whose INFO lines are a developer's (aioice logs every ICE candidate pair's state change)
CHATTY_LIBRARIES: tuple[str, ...] = ("aioice", "aiortc")


def _setup_logging(verbose: int, quiet: bool) -> None:
    """Default: our INFO lines (aioice's and aiortc's only from WARNING). -q: warnings and errors. -v: our
    DEBUG lines and the libraries' INFO lines too. -vv: everyone's DEBUG."""
    root_level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(level=root_level,
                        format="%(message)s" if verbose == 0 else "%(levelname)s %(name)s: %(message)s")
    if verbose == 1 and not quiet:
        for name in ("realtime", "models", "calibration", "kernels", "benchmarks"):
            logging.getLogger(name).setLevel(logging.DEBUG)
    for name in CHATTY_LIBRARIES:  # dozens of ICE connectivity-check lines per WebRTC session: shown with -v
        logging.getLogger(name).setLevel(logging.WARNING if not verbose else logging.NOTSET)


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the interpreter's final flush stays silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    with _stop_signals() as state:
        code = _main(argv)
        if state["signum"] is not None and code == 130:  # stopped by a signal: 128 + its number
            code = 128 + int(state["signum"])
        return code


def _main(argv: Optional[Sequence[str]]) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "_run", None):
            parser.print_help()
            return 2
        _setup_logging(int(args.verbose or 0), bool(args.quiet))
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"genreal: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        what = f"stopped by {exc.args[0]}" if isinstance(exc, Interrupted) else "interrupted"
        print(f"genreal: {what}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed early (`genreal ... | head -1`): end quietly
        _quiet_stdout()
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

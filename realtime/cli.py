"""`genreal`: the command-line entry point.

Each subcommand lives in `realtime/commands/<name>.py` with two functions:
``add_parser(subparsers) -> argparse.ArgumentParser`` and ``run(args) -> int``.
Command modules import heavy packages inside `run`, so `genreal --help` stays fast.

Errors a user can cause (`UserError`) become one line on stderr and exit code 2; Ctrl-C
exits 130 after the command has flushed its outputs.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Optional, Sequence

from realtime import __version__
from genreal_errors import UserError

#: subcommands, in the order `--help` lists them
COMMANDS: tuple[str, ...] = ("demo", "run", "serve", "distill", "styles", "stylize", "export", "calibrate", "bench")


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad options as our one-line error with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="genreal",
        description="Restyle live camera frames, video files and VR passthrough in real time.",
        epilog="Start with 'genreal demo' (no camera or GPU needed). Each command has its own --help.",
    )
    parser.add_argument("--version", action="version", version=f"genreal {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        module = importlib.import_module(f"realtime.commands.{name}")
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(level=level, format="%(message)s" if verbose == 0 else "%(levelname)s %(name)s: %(message)s")


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "_run", None):
            parser.print_help()
            return 2
        _setup_logging(args.verbose, args.quiet)
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"genreal: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("genreal: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

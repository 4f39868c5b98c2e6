"""`genreal serve`: the browser preview page and the WebXR headset page."""
from __future__ import annotations

import argparse
import logging
import threading
from pathlib import Path
from typing import Any

from realtime.commands.run import SOURCE_HELP, add_pipeline_options, detail_config, parse_budget
from genreal_errors import UserError

log = logging.getLogger(__name__)

EPILOG = """\
pages:  /    preview: your browser's camera restyled beside the input, style / strength / steps /
             temporal / budget controls, latency p50/p95, fps, drops; WebSocket or WebRTC
        /xr  headset: immersive-ar with Raw Camera Access (Quest Browser), else immersive-vr
             with the browser's camera, else the server's --source (a stereo one for both eyes)

headset over USB (no TLS needed: the page is on 'localhost' for the headset):
  genreal serve                      then on the laptop:  adb reverse tcp:8765 tcp:8765
  and open http://localhost:8765/xr in Quest Browser
headset over the LAN (cameras and WebXR need a secure context off localhost):
  genreal serve --host 0.0.0.0 --tls   and open the printed https://...?token=... URL
  (accept the self-signed certificate once; it is kept under $GENREAL_CACHE/serve)
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="serve the browser preview (/) and the WebXR headset page (/xr)",
                       description="Serve a preview page that restyles the browser's camera and a WebXR page "
                                   "for headsets. Loopback by default; any other --host needs --tls and an "
                                   "access token (made at start and printed in the URL).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--tls", action="store_true",
                   help="HTTPS/WSS with a self-signed certificate made on first use under the cache dir")
    p.add_argument("--cert", type=Path, default=None, help="your own TLS certificate (PEM); with --key")
    p.add_argument("--key", type=Path, default=None, help="the private key of --cert (PEM)")
    p.add_argument("--token", action="store_true",
                   help="require the access token on loopback too (it is always required off loopback)")
    p.add_argument("--no-token", action="store_true", help="no access token (only allowed on loopback)")
    p.add_argument("--source", default=None, metavar="SRC",
                   help="also stream this source, restyled, to every page (" + SOURCE_HELP + ")")
    p.add_argument("--max-clients", type=int, default=4, metavar="N", help="camera sessions at once (default 4)")
    p.add_argument("--max-frame-mb", type=float, default=8.0, metavar="MB",
                   help="largest frame a page may send (default 8 MB)")
    add_pipeline_options(p)
    return p


def serve_config(args: argparse.Namespace) -> Any:
    from realtime.config import BackendConfig
    from realtime.serve.app import ServeConfig
    from realtime.serve.protocol import Limits
    from realtime.serve.security import is_loopback, make_token

    if args.token and args.no_token:
        raise UserError("--token and --no-token contradict each other: pick one")
    if args.max_clients < 1:
        raise UserError(f"bad --max-clients {args.max_clients}: it must be at least 1")
    if not 0.01 <= args.max_frame_mb <= 256:
        raise UserError(f"bad --max-frame-mb {args.max_frame_mb}: use 0.01 to 256")
    want_token = args.token or (not is_loopback(args.host) and not args.no_token)
    return ServeConfig(
        host=args.host, port=args.port, tls=args.tls, cert=args.cert, key=args.key,
        token=make_token() if want_token else None,
        backend=BackendConfig(name=args.backend, device=args.device, style=args.style, steps=args.steps,
                              temporal=not args.no_temporal, precision=args.precision, model_dir=args.model,
                              detail=detail_config(args)),
        limits=Limits(max_bytes=int(args.max_frame_mb * (1 << 20)), max_clients=args.max_clients))


class _SourceThread:
    """`--source`: a pipeline (its own backend) whose sink feeds every page's watch view. The source and
    the backend are opened here, before the thread starts, so a bad one is a one-line error (exit 2)."""

    def __init__(self, args: argparse.Namespace, server: Any) -> None:
        from realtime.backends import create_backend
        from realtime.commands.run import pipeline_config
        from realtime.pipeline import Pipeline
        from realtime.serve.broadcast import HubSink
        from realtime.sources import make_source

        config = pipeline_config(args, args.source, ["null"])
        self.spec = args.source
        self.hub = server.state.broadcast
        self.hub.label = args.source
        self.source = make_source(config.source)
        self.source.open()
        try:
            self.backend = create_backend(config.backend)
        except BaseException:
            self.source.close()
            raise
        self.pipeline = Pipeline(self.source, self.backend, [HubSink(self.hub)], budget_ms=config.budget_ms)
        self.hub.active = True
        self.thread = threading.Thread(target=self._run, name="serve-source", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.pipeline.run()
            log.info("source %s ended; the pages keep their last frame", self.spec)
        except UserError as exc:
            log.error("--source %s: %s", self.spec, exc)
        finally:
            self.hub.active = False
            self.backend.close()
            self.source.close()

    def stop(self) -> None:
        self.pipeline.stop()
        self.thread.join(timeout=10)


def run(args: argparse.Namespace) -> int:
    from realtime.serve.app import ServerThread

    parse_budget(args.budget_ms)
    config = serve_config(args)
    if config.camera_sessions:  # every page gets its own backend: check now that one starts (exit 2 if not)
        from realtime.backends import create_backend

        probe = create_backend(config.backend)
        styles = list(probe.styles())
        probe.close()
        log.info("pages get their own %s backend (styles: %s)", config.backend.name, ", ".join(styles))
    server = ServerThread(config).start()
    try:
        source = _SourceThread(args, server) if args.source else None
    except BaseException:
        server.stop()
        raise
    print(f"genreal serve: preview  {server.url('/')}", flush=True)
    print(f"genreal serve: headset  {server.url('/xr')}", flush=True)
    if config.host == "127.0.0.1":
        print(f"genreal serve: a headset on USB: adb reverse tcp:{server.port} tcp:{server.port}, "
              f"then open http://localhost:{server.port}/xr", flush=True)
    print("genreal serve: Ctrl-C stops", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("genreal serve: stopping", flush=True)
        return 130
    finally:
        if source is not None:
            source.stop()
        sessions = server.state.sessions
        final = {"sessions": sessions.stats(), "ended": sessions.ended, "source": server.state.broadcast.label or None}
        server.stop()
        if args.stats_json is not None:
            _write_stats(args.stats_json, final)
    return 0


def _write_stats(path: Path, stats: dict[str, Any]) -> None:
    """--stats-json: every session's final stats (the ones still open at exit and those that ended)."""
    import json

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(stats, indent=2))
    except OSError as exc:
        log.error("cannot write --stats-json %s: %s", path, exc.strerror)

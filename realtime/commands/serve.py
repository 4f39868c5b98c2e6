"""`genreal serve`: the browser preview page and the WebXR headset page."""
from __future__ import annotations

import argparse
import logging
import threading
from pathlib import Path
from typing import Any

from realtime.commands.run import SOURCE_HELP, add_pipeline_options, parse_budget
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
    p.add_argument("--max-watchers", type=int, default=32, metavar="N",
                   help="pages watching the server's --source at once (default 32; at most half of them, "
                        "and 16, from one address)")
    p.add_argument("--max-frame-mb", type=float, default=8.0, metavar="MB",
                   help="largest frame a page may send (default 8 MB)")
    cl = p.add_argument_group("many viewers (the cluster extra: pip install \"generative-reality[cluster]\")")
    cl.add_argument("--cluster", default=None, metavar="auto|ray://HOST:PORT|HOST:PORT",
                    help="run each camera session's backend in a Ray actor: auto starts a local Ray here, "
                         "ray://HOST:PORT (Ray Client) or HOST:PORT (the head's GCS) joins a running cluster")
    cl.add_argument("--session-cpus", type=float, default=1.0, metavar="N",
                    help="CPUs each session's actor asks for (default 1; fractions allowed)")
    cl.add_argument("--session-gpus", type=float, default=0.0, metavar="F",
                    help="GPUs each session's actor asks for (default 0; 0.25 puts four on a GPU)")
    cl.add_argument("--session-timeout-s", type=float, default=5.0, metavar="S",
                    help="replace a session's actor that does not answer for this long (default 5)")
    cl.add_argument("--spare-sessions", type=int, default=1, metavar="N",
                    help="actors started ahead of need, so that a new or restarted session gets one at once "
                         "(default 1; each holds --session-cpus/--session-gpus while it waits)")
    add_pipeline_options(p)
    return p


def serve_config(args: argparse.Namespace) -> Any:
    from realtime.commands.run import backend_config
    from realtime.serve.app import ServeConfig
    from realtime.serve.protocol import Limits
    from realtime.serve.security import is_loopback, make_token

    if args.token and args.no_token:
        raise UserError("--token and --no-token contradict each other: pick one")
    if args.max_clients < 1:
        raise UserError(f"bad --max-clients {args.max_clients}: it must be at least 1")
    if args.max_watchers < 1:
        raise UserError(f"bad --max-watchers {args.max_watchers}: it must be at least 1")
    if not 0.01 <= args.max_frame_mb <= 256:
        raise UserError(f"bad --max-frame-mb {args.max_frame_mb}: use 0.01 to 256")
    want_token = args.token or (not is_loopback(args.host) and not args.no_token)
    cluster = None
    if args.cluster is not None:
        from realtime.serve.cluster import ClusterConfig

        cluster = ClusterConfig(address=args.cluster, session_cpus=args.session_cpus,
                                session_gpus=args.session_gpus, session_timeout_s=args.session_timeout_s,
                                spares=args.spare_sessions)
    return ServeConfig(
        cluster=cluster,
        host=args.host, port=args.port, tls=args.tls, cert=args.cert, key=args.key,
        token=shared_token() or make_token() if want_token else None,
        backend=backend_config(args),
        limits=Limits(max_bytes=int(args.max_frame_mb * (1 << 20)), max_clients=args.max_clients,
                      max_watchers=args.max_watchers,
                      max_watchers_per_address=min(16, max(1, (args.max_watchers + 1) // 2))))


TOKEN_ENV = "GENREAL_SERVE_TOKEN"


def shared_token() -> Any:
    """$GENREAL_SERVE_TOKEN: one access token for every front end behind a load balancer (else each makes its own)."""
    import os

    token = os.environ.get(TOKEN_ENV)
    if token is not None and (len(token) < 16 or not token.isascii() or not token.isprintable() or " " in token):
        raise UserError(f"${TOKEN_ENV} must be at least 16 printable ASCII characters without spaces "
                        f"(e.g. python -c 'import secrets; print(secrets.token_urlsafe(18))')")
    return token


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
        self.pipeline = Pipeline(self.source, self.backend, [HubSink(self.hub)], budget_ms=config.budget_ms,
                                 strength=config.strength)
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


def start_server(config: Any) -> Any:
    """The started `ServerThread`. With camera sessions every page gets its own backend: one is built first to
    check that it starts (a `UserError`, exit 2, if not), and its styles and steps are what ``/api/styles``
    answers (it built a second backend for them on the first page load)."""
    from realtime.serve.app import ServerThread

    catalog = None
    if config.camera_sessions:
        from realtime.backends import create_backend
        from realtime.serve.session import offered_steps

        probe = create_backend(config.backend)
        try:
            catalog = list(probe.styles()), offered_steps(probe)
        finally:
            probe.close()
        log.info("pages get their own %s backend (styles: %s)", config.backend.name, ", ".join(catalog[0]))
    server = ServerThread(config)
    if catalog is not None:
        server.state.styles, server.state.steps = catalog
    return server.start()


def run(args: argparse.Namespace) -> int:
    from realtime.serve.security import is_loopback

    parse_budget(args.budget_ms)
    config = serve_config(args)
    server = start_server(config)
    try:
        source = _SourceThread(args, server) if args.source else None
    except BaseException:
        server.stop()
        raise
    print(f"genreal serve: preview  {server.url('/')}", flush=True)
    print(f"genreal serve: headset  {server.url('/xr')}", flush=True)
    if is_loopback(config.host):
        print(f"genreal serve: a headset on USB: adb reverse tcp:{server.port} tcp:{server.port}, "
              f"then open {server.url('/xr')}", flush=True)
    if config.cluster is not None:
        print(f"genreal serve: each camera session runs in a Ray actor (--cluster {config.cluster.address})", flush=True)
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

"""`--sink web` / `web:PORT`: stream the run's output to the browser preview page.

Starts `genreal serve`'s server on 127.0.0.1 (default port 8765) in a background thread when the
sink is made; every page that opens http://localhost:PORT/ watches the restyled stream (pages do
not send their own camera here: that is `genreal serve`). aiohttp is imported only here.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

from genreal_errors import UserError
from realtime.frame import Item
from realtime.sinks.base import Overlay, Sink

log = logging.getLogger(__name__)

DEFAULT_PORT = 8765


def parse_port(arg: str) -> int:
    if not arg:
        return DEFAULT_PORT
    if not arg.isdigit() or not 0 <= int(arg) <= 65535:
        raise UserError(f"bad --sink web:{arg}: give a port number, e.g. web:8765")
    return int(arg)


class WebSink(Sink):
    name = "web"

    def __init__(self, port: int = DEFAULT_PORT) -> None:
        from realtime.serve.app import ServeConfig, ServerThread
        from realtime.serve.broadcast import HubSink

        self.server: Optional[Any] = ServerThread(ServeConfig(port=port, camera_sessions=False)).start()
        hub = self.server.state.broadcast
        hub.active, hub.label = True, "genreal run"
        self._hub = HubSink(hub)
        self.url = self.server.url("/")
        log.info("web sink: open %s", self.url)

    def write(self, item: Item, overlay: Overlay) -> None:
        self._hub.write(item, overlay)

    def close(self) -> None:
        if self.server is not None:
            self._hub.close()
            self.server.stop()
            self.server = None

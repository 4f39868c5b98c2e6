"""The aiohttp application key under which the server's shared `State` is stored."""
from __future__ import annotations

from typing import Any

from aiohttp import web

STATE_KEY: web.AppKey[Any] = web.AppKey("genreal", object)

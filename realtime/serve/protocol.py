"""The binary WebSocket frame: what a page sends up and gets back.

Layout (all integers big-endian)::

    b"GRF1" | uint32 header length N | N bytes of UTF-8 JSON header | payload

Header keys (page → server): ``id`` (int, the page's frame number), ``t`` (the page's capture
time in ms, echoed back untouched), ``fmt`` ("jpeg" or "rgba"), ``w``/``h`` (the image size),
``stereo`` (true: the image holds both eyes side by side, left | right), optional ``pose``
(the head pose at capture: echoed back untouched). The server answers with the same header plus
``server_ms`` (its receive → send time) and the restyled image in the requested ``fmt``.

Control messages are WebSocket *text* messages holding one JSON object with a ``type``: ``config``
(``style``, ``strength``, ``steps``, ``temporal``, ``budget``), ``rtt`` (``ms``: a number or a list),
``stats``, ``bye`` (WebRTC's data channel).

Every message is checked against a small schema before anything uses it: JSON nested at most
`MAX_DEPTH` deep (counted before parsing), no NaN or Infinity, each known key of the right type. An
image's size and format are read from its header bytes (`probe`) and refused before it is decoded.
`FrameError` is raised for anything malformed; the server closes only that client (code 1008) with a
`short_reason`.
"""
from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from realtime.serve import probe

MAGIC = b"GRF1"
_HEAD = struct.Struct(">4sI")
MAX_HEADER_BYTES = 4096
MAX_CONTROL_BYTES = 65536
MAX_DEPTH = 8  # JSON nesting (a pose is 4 deep: {views: [{transform: [...]}]})
MAX_SCANS = 64  # JPEG scans; a progressive JPEG has about 10
MIN_SIDE = 8
FORMATS = ("jpeg", "rgba")
_ECHO_KEYS = ("id", "t", "pose", "stereo")


class FrameError(ValueError):
    """A malformed message from a client (the reason sent when its connection is closed)."""


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 8 << 20  # one message
    max_side: int = 4096  # one image side (a stereo image: both eyes together)
    max_pixels: int = 3840 * 2160  # one image (a stereo image: both eyes together)
    max_rate: float = 240.0  # messages per second: a token bucket refilled at this rate, one second deep
    max_clients: int = 4
    max_watchers: int = 32  # watch sockets (``/ws?mode=watch``) at once
    max_watchers_per_address: int = 16
    offers_per_minute: float = 12.0  # WebRTC offers per client address (a bucket of that many) ...
    all_offers_per_minute: float = 60.0  # ... and from all addresses together ...
    all_offer_burst: int = 12  # ... of which this many at once (at most all_offers_per_minute)
    sessions_per_minute: float = 30.0  # new camera sessions per client address (each builds a backend) ...
    session_burst: int = 8  # ... of which this many at once
    all_sessions_per_minute: float = 60.0  # new camera sessions from all addresses together ...
    all_session_burst: int = 12  # ... of which this many at once
    first_frame_s: float = 8.0  # a WebRTC session with no camera frame this long after its offer ends
    idle_s: float = 15.0  # a WebRTC session whose camera frames stopped this long ends

    def check_size(self, w: int, h: int) -> None:
        """Raise `FrameError` unless a w x h image is within these limits."""
        if not (MIN_SIDE <= w <= self.max_side and MIN_SIDE <= h <= self.max_side):
            raise FrameError(f"impossible frame size {w}x{h}: each side must be {MIN_SIDE} to {self.max_side}")
        if w * h > self.max_pixels:
            raise FrameError(f"frame of {w}x{h} is over the limit of {self.max_pixels} pixels")


@dataclass(frozen=True)
class UpFrame:
    header: dict[str, Any]
    image: np.ndarray  # (H, W, 3) uint8 RGB; a stereo image holds both eyes side by side
    fmt: str
    stereo: bool


def pack(header: dict[str, Any], payload: bytes) -> bytes:
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    return _HEAD.pack(MAGIC, len(head)) + head + payload


def short_reason(text: str, limit: int = 120) -> str:
    """A close reason for a client: no filesystem paths, at most `limit` UTF-8 bytes (WebSocket: 123)."""
    text = _PATH.sub("<path>", " ".join(text.split()))
    raw = text.encode()
    return text if len(raw) <= limit else raw[:limit - 3].decode(errors="ignore") + "..."


_PATH = re.compile(r"(?<![\w.:/<])(?:[A-Za-z]:)?(?:~|\.{1,2})?[\\/](?:[^\s\\/:,;'\"()]+[\\/])+[^\s\\/:,;'\"()]*")


def _depth(text: str | bytes) -> int:
    """How deep the JSON in `text` nests (brackets inside strings do not count)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    opens = text.count("[") + text.count("{")
    if opens <= MAX_DEPTH:
        return opens
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text)).encode()
    steps = np.frombuffer(brackets, np.uint8)
    return int(np.cumsum(np.where((steps == ord("[")) | (steps == ord("{")), 1, -1)).max(initial=0))


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def _not_finite(token: str) -> float:
    raise FrameError(f"{token} is not JSON: numbers must be finite")


def _finite_float(token: str) -> float:
    v = float(token)
    if not math.isfinite(v):
        raise FrameError(f"number {token[:20]} is out of range")
    return v


def load_json(text: str | bytes, what: str) -> Any:
    """`text` parsed as JSON: nested at most `MAX_DEPTH`, finite numbers only. Raises `FrameError`."""
    if _depth(text) > MAX_DEPTH:
        raise FrameError(f"{what} nests deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(text, parse_constant=_not_finite, parse_float=_finite_float)
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, FrameError):
            raise
        raise FrameError(f"{what} is not JSON") from None


# the schema: key -> (check, what it must be). Keys not listed are ignored (and never echoed).
Check = Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_str(v: Any) -> bool:
    return isinstance(v, str) and len(v) <= 256


_HEADER_SCHEMA: dict[str, tuple[Check, str]] = {
    "id": (_is_int, "an integer"),
    "t": (_is_number, "a number"),
    "fmt": (lambda v: v in FORMATS, " or ".join(FORMATS)),
    "w": (_is_int, "an integer"),
    "h": (_is_int, "an integer"),
    "stereo": (lambda v: isinstance(v, bool), "true or false"),
    "pose": (lambda v: v is None or isinstance(v, dict), "an object"),
}
_CONTROL_SCHEMA: dict[str, dict[str, tuple[Check, str]]] = {
    "config": {
        "style": (lambda v: _is_str(v) and v != "", "a style name (or a blend like cel:0.5,frost:0.5)"),
        "strength": (_is_number, "a number from 0 to 1"),
        "steps": (lambda v: v is None or _is_int(v), "an integer or null"),
        "temporal": (lambda v: isinstance(v, bool), "true or false"),
        "budget": (lambda v: v is None or _is_str(v), "a budget preset name or off"),
    },
    "rtt": {"ms": (lambda v: _is_number(v) or (isinstance(v, list) and len(v) <= 600 and all(map(_is_number, v))),
                   "a number or a list of numbers")},
    "stats": {},
    "bye": {},
}


def _check(msg: Mapping[str, Any], schema: Mapping[str, tuple[Check, str]], what: str) -> None:
    for key, (ok, must) in schema.items():
        if key in msg and not ok(msg[key]):
            raise FrameError(f"{what} {key!r} must be {must}")


def parse_header(data: bytes, limits: Limits) -> tuple[dict[str, Any], memoryview]:
    if len(data) > limits.max_bytes:
        raise FrameError(f"frame of {len(data)} bytes is over the limit of {limits.max_bytes}")
    if len(data) < _HEAD.size or data[:4] != MAGIC:
        raise FrameError("binary message is not a GRF1 frame")
    (_, n) = _HEAD.unpack_from(data)
    if n > MAX_HEADER_BYTES or _HEAD.size + n > len(data):
        raise FrameError(f"bad frame header length {n}")
    header = load_json(bytes(data[_HEAD.size:_HEAD.size + n]), "frame header")
    if not isinstance(header, dict):
        raise FrameError("frame header is not a JSON object")
    _check(header, _HEADER_SCHEMA, "frame header")
    for key in ("w", "h"):
        if key not in header:
            raise FrameError(f"frame header {key!r} must be an integer")
    limits.check_size(header["w"], header["h"])
    if header.get("stereo") and header["w"] % 2:
        raise FrameError(f"a side-by-side stereo frame needs an even width, got {header['w']}")
    return header, memoryview(data)[_HEAD.size + n:]


def decode_frame(data: bytes, limits: Limits) -> UpFrame:
    """Parse and decode one page → server frame. Raises `FrameError`. A JPEG's size and format are
    read from its header bytes and must match the frame header before anything is decoded."""
    import cv2

    header, payload = parse_header(data, limits)
    fmt = header.get("fmt", "jpeg")
    w, h = header["w"], header["h"]
    stereo = bool(header.get("stereo", False))
    if fmt == "rgba":
        if len(payload) != w * h * 4:
            raise FrameError(f"raw frame of {len(payload)} bytes does not match {w}x{h} RGBA")
        image = np.frombuffer(payload, np.uint8).reshape(h, w, 4)[:, :, :3]
    else:
        try:
            jw, jh = probe.jpeg_size(payload)
        except probe.ProbeError as exc:
            raise FrameError(str(exc)) from None
        if (jw, jh) != (w, h):
            raise FrameError(f"JPEG is {jw}x{jh}, header says {w}x{h}")
        if probe.jpeg_scans(payload) > MAX_SCANS:
            raise FrameError(f"JPEG has more than {MAX_SCANS} scans")
        rgb = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.10 decodes straight to RGB (one copy less)
        flags = (cv2.IMREAD_COLOR if rgb is None else rgb) | cv2.IMREAD_IGNORE_ORIENTATION
        image = cv2.imdecode(np.frombuffer(payload, np.uint8), flags)
        if image is None:
            raise FrameError("frame payload is not a decodable JPEG")
        if rgb is None:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        if image.shape[:2] != (h, w):  # pragma: no cover - the SOF says what the decoder makes
            raise FrameError(f"JPEG is {image.shape[1]}x{image.shape[0]}, header says {w}x{h}")
    return UpFrame(header=header, image=np.ascontiguousarray(image), fmt=fmt, stereo=stereo)


def encode_frame(up_header: dict[str, Any], image: np.ndarray, fmt: str, server_ms: float,
                 quality: int = 85) -> bytes:
    """The server → page answer: the page's tag echoed, plus the restyled image."""
    import cv2

    h, w = image.shape[:2]
    header = {k: up_header[k] for k in _ECHO_KEYS if k in up_header}
    header.update(fmt=fmt, w=w, h=h, server_ms=round(server_ms, 3))
    if fmt == "rgba":
        rgba = np.empty((h, w, 4), np.uint8)
        rgba[:, :, :3] = image
        rgba[:, :, 3] = 255
        return pack(header, rgba.tobytes())
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
        raise RuntimeError("JPEG encoding failed")
    return pack(header, buf.tobytes())


def parse_control(text: str) -> dict[str, Any]:
    """A text control message, checked against its type's schema. Raises `FrameError`."""
    if len(text) > MAX_CONTROL_BYTES:
        raise FrameError(f"control message over {MAX_CONTROL_BYTES // 1024} KiB")
    msg = load_json(text, "control message")
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise FrameError("control message must be a JSON object with a 'type'")
    schema = _CONTROL_SCHEMA.get(msg["type"])
    if schema is None:
        raise FrameError(f"unknown control message type {short_reason(msg['type'], 40)!r}")
    _check(msg, schema, msg["type"])
    return msg

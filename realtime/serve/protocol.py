"""The binary WebSocket frame: what a page sends up and gets back.

Layout (all integers big-endian)::

    b"GRF1" | uint32 header length N | N bytes of UTF-8 JSON header | payload

Header keys (page → server): ``id`` (int, the page's frame number), ``t`` (the page's capture
time in ms, echoed back untouched), ``fmt`` ("jpeg" or "rgba"), ``w``/``h`` (the image size),
``stereo`` (true: the image holds both eyes side by side, left | right), optional ``pose``
(the head pose at capture: echoed back untouched). The server answers with the same header plus
``server_ms`` (its receive → send time) and the restyled image in the requested ``fmt``.

Control messages are WebSocket *text* messages holding one JSON object with a ``type``.
`FrameError` is raised for anything malformed; the server closes only that client.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

MAGIC = b"GRF1"
_HEAD = struct.Struct(">4sI")
MAX_HEADER_BYTES = 4096
FORMATS = ("jpeg", "rgba")
_ECHO_KEYS = ("id", "t", "pose", "stereo")


class FrameError(ValueError):
    """A malformed message from a client (the reason sent when its connection is closed)."""


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 8 << 20  # one message
    max_side: int = 4096  # one image side (a stereo image: both eyes together)
    max_rate: float = 240.0  # messages per second, averaged over a second
    max_clients: int = 4


@dataclass(frozen=True)
class UpFrame:
    header: dict[str, Any]
    image: np.ndarray  # (H, W, 3) uint8 RGB; a stereo image holds both eyes side by side
    fmt: str
    stereo: bool


def pack(header: dict[str, Any], payload: bytes) -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return _HEAD.pack(MAGIC, len(head)) + head + payload


def parse_header(data: bytes, limits: Limits) -> tuple[dict[str, Any], memoryview]:
    if len(data) > limits.max_bytes:
        raise FrameError(f"frame of {len(data)} bytes is over the limit of {limits.max_bytes}")
    if len(data) < _HEAD.size or data[:4] != MAGIC:
        raise FrameError("binary message is not a GRF1 frame")
    (_, n) = _HEAD.unpack_from(data)
    if n > MAX_HEADER_BYTES or _HEAD.size + n > len(data):
        raise FrameError(f"bad frame header length {n}")
    try:
        header = json.loads(bytes(data[_HEAD.size:_HEAD.size + n]))
    except (ValueError, UnicodeDecodeError):
        raise FrameError("frame header is not JSON") from None
    if not isinstance(header, dict):
        raise FrameError("frame header is not a JSON object")
    return header, memoryview(data)[_HEAD.size + n:]


def _int(header: dict[str, Any], key: str) -> int:
    v = header.get(key)
    if not isinstance(v, int) or isinstance(v, bool):
        raise FrameError(f"frame header {key!r} must be an integer, got {v!r}")
    return v


def decode_frame(data: bytes, limits: Limits) -> UpFrame:
    """Parse and decode one page → server frame. Raises `FrameError`."""
    import cv2

    header, payload = parse_header(data, limits)
    fmt = header.get("fmt", "jpeg")
    if fmt not in FORMATS:
        raise FrameError(f"unknown frame format {fmt!r}: use {' or '.join(FORMATS)}")
    w, h = _int(header, "w"), _int(header, "h")
    if not (8 <= w <= limits.max_side and 8 <= h <= limits.max_side):
        raise FrameError(f"impossible frame size {w}x{h}: each side must be 8 to {limits.max_side}")
    stereo = bool(header.get("stereo", False))
    if stereo and w % 2:
        raise FrameError(f"a side-by-side stereo frame needs an even width, got {w}")
    if fmt == "rgba":
        if len(payload) != w * h * 4:
            raise FrameError(f"raw frame of {len(payload)} bytes does not match {w}x{h} RGBA")
        image = np.frombuffer(payload, np.uint8).reshape(h, w, 4)[:, :, :3]
    else:
        bgr = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FrameError("frame payload is not a decodable JPEG")
        if bgr.shape[:2] != (h, w):
            raise FrameError(f"JPEG is {bgr.shape[1]}x{bgr.shape[0]}, header says {w}x{h}")
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
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
    try:
        msg = json.loads(text)
    except ValueError:
        raise FrameError("control message is not JSON") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise FrameError("control message must be a JSON object with a 'type'")
    return msg

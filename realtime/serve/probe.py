"""What an uploaded image is, read from its first bytes, before anything is decoded.

`jpeg_size` walks a JPEG's markers to its SOF segment (width and height) without decoding a pixel;
`sniff` names the container from its magic bytes, so a PNG or BMP sent as ``fmt: "jpeg"`` is refused
instead of decoded (a 1 MB PNG can hold 30000x30000 pixels: gigabytes once decoded).
"""
from __future__ import annotations

from typing import Optional

_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"BM", "BMP"), (b"GIF8", "GIF"),
          (b"RIFF", "RIFF/WebP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"\x00\x00\x00\x0cjP", "JPEG 2000"),
          (b"P1", "PNM"), (b"P2", "PNM"), (b"P3", "PNM"), (b"P4", "PNM"), (b"P5", "PNM"), (b"P6", "PNM"),
          (b"#?RADIANCE", "HDR"), (b"\x76\x2f\x31\x01", "OpenEXR"))
# start-of-frame markers (baseline, extended, progressive, lossless; Huffman or arithmetic); not DHT/JPG/DAC
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_SOS, _EOI = 0xDA, 0xD9
_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM, RST0-7: no length field


class ProbeError(ValueError):
    """The bytes are not the image they claim to be (the message says what they are instead)."""


def sniff(data: bytes | memoryview) -> Optional[str]:
    """The container named by the magic bytes ("JPEG", "PNG", ...), or None when unknown."""
    head = bytes(data[:12])
    return next((name for magic, name in _MAGIC if head.startswith(magic)), None)


def jpeg_size(data: bytes | memoryview) -> tuple[int, int]:
    """(width, height) from a JPEG's first SOF segment (what a decoder allocates for). Raises `ProbeError`."""
    kind = sniff(data)
    if kind != "JPEG":
        raise ProbeError("payload is empty" if len(data) == 0 else
                         f"payload is {'a ' + kind if kind else 'not a JPEG'}, the header says jpeg")
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise ProbeError("JPEG markers are corrupt")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker in (_SOS, _EOI):
            break
        length = (data[i + 2] << 8) | data[i + 3]
        if length < 2:
            raise ProbeError("JPEG markers are corrupt")
        if marker in _SOF:
            if i + 9 > n:
                break
            height = (data[i + 5] << 8) | data[i + 6]
            width = (data[i + 7] << 8) | data[i + 8]
            if width == 0 or height == 0:
                raise ProbeError("JPEG declares no size (a DNL segment): send its size in the SOF")
            return width, height
        i += 2 + length
    raise ProbeError("JPEG has no frame header (SOF) before its image data")


def jpeg_scans(data: bytes | memoryview) -> int:
    """How many scans (SOS markers) a JPEG holds: a progressive one has about 10; thousands are a CPU
    bomb. Entropy-coded data stuffs every 0xFF with 0x00, so each FF DA is a real marker."""
    return bytes(data).count(b"\xff\xda")

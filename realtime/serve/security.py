"""Who may talk to the server: loopback by default; off loopback only with TLS and a token.

- `check_exposure`: a non-loopback ``--host`` without TLS, or without a token, is a `UserError`.
- `make_token`: a random access token per start (printed as part of the URL to open).
- `token_ok`: the token from ``?token=``, an ``Authorization: Bearer`` header or the cookie the
  server sets after the first good request (so the page's scripts and sockets carry it).
- `origin_ok`: a WebSocket's ``Origin`` must be the server's own scheme://host:port.
- `host_ok`: on loopback the ``Host`` header must name loopback (no DNS-rebinding reads).
- `ensure_certificate`: a self-signed certificate made on first use under the cache dir.
- `TokenBucket` / `PerAddress`: message and offer rates (a bucket per connection, per client address).
"""
from __future__ import annotations

import datetime
import hmac
import ipaddress
import logging
import os
import re
import secrets
import time
from pathlib import Path
from typing import Callable, Mapping, Optional
from urllib.parse import urlsplit

from genreal_errors import UserError

log = logging.getLogger(__name__)

COOKIE = "genreal_token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, tls: bool, token: bool) -> None:
    """Refuse to serve a camera page off loopback without both TLS and a token."""
    if is_loopback(host):
        return
    missing = [what for what, ok in (("--tls (or --cert/--key)", tls), ("an access token", token)) if not ok]
    if missing:
        raise UserError(f"--host {host} is not loopback: serving cameras to the network needs "
                        f"{' and '.join(missing)}; add --tls (a token is made at start unless --no-token), "
                        f"or keep the default 127.0.0.1 and use 'adb reverse' for a headset on USB")


def advertised_host(bind_host: str) -> str:
    """The address a browser on another machine should open: for a wildcard bind (0.0.0.0, ::) this
    machine's primary LAN address (found by routing a UDP socket; nothing is sent), else `bind_host`."""
    if bind_host not in ("0.0.0.0", "::", ""):
        return bind_host
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("10.255.255.255", 1))
            return str(sock.getsockname()[0])
    except OSError:
        return socket.gethostname()


def make_token() -> str:
    return secrets.token_urlsafe(18)


def token_ok(expected: Optional[str], query: Mapping[str, str], headers: Mapping[str, str],
             cookies: Mapping[str, str]) -> bool:
    if expected is None:
        return True
    auth = headers.get("Authorization", "")
    given = [query.get("token", ""), cookies.get(COOKIE, ""),
             auth[7:] if auth.startswith("Bearer ") else ""]
    return any(g and hmac.compare_digest(g, expected) for g in given)


def _hostname(host_header: str) -> str:
    return urlsplit("//" + host_header).hostname or ""


def host_ok(bind_host: str, host_header: str) -> bool:
    """On a loopback bind, only loopback Host names are answered (a rebinding page cannot read us)."""
    if not is_loopback(bind_host):
        return True
    return is_loopback(_hostname(host_header))


def origin_ok(origin: Optional[str], host_header: str, secure: bool) -> bool:
    """A browser's WebSocket must come from our own page. Non-browser clients send no Origin."""
    if origin is None:
        return True
    expected = f"{'https' if secure else 'http'}://{host_header}".lower()
    return origin.lower() == expected


class TokenBucket:
    """`rate` events a second on average, bursts up to `burst` (default: one second's worth). A client
    averaging under the rate is never refused, however its messages bunch up within a second."""

    def __init__(self, rate: float, burst: Optional[float] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = rate if burst is None else burst
        self._clock = clock
        self._tokens = self.burst
        self._last = clock()

    def hit(self) -> bool:
        """Take one token; False (nothing taken) when the bucket is empty."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    @property
    def full(self) -> bool:
        return self._tokens + (self._clock() - self._last) * self.rate >= self.burst


class PerAddress:
    """A `TokenBucket` per client address (e.g. WebRTC offers a minute); full buckets are forgotten."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._buckets: dict[str, TokenBucket] = {}

    def hit(self, address: str) -> bool:
        if len(self._buckets) > 1024:
            self._buckets = {a: b for a, b in self._buckets.items() if not b.full}
        bucket = self._buckets.get(address)
        if bucket is None:
            bucket = self._buckets[address] = TokenBucket(self.rate, self.burst, self._clock)
        return bucket.hit()


def default_cert_dir() -> Path:
    root = os.environ.get("GENREAL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "genreal")
    return Path(root) / "serve"


def ensure_certificate(directory: Path, host: str) -> tuple[Path, Path]:
    """(cert-HOST.pem, key-HOST.pem) under `directory`, made on first use (self-signed, 1 year, names
    localhost, 127.0.0.1 and `host`). Browsers warn once for a self-signed certificate."""
    tag = re.sub(r"[^A-Za-z0-9.-]", "_", host or "localhost")
    cert_path, key_path = directory / f"cert-{tag}.pem", directory / f"key-{tag}.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:  # pragma: no cover - cryptography is a dependency
        raise UserError("--tls needs the 'cryptography' package to make a certificate: pip install cryptography, "
                        "or pass --cert/--key") from None
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the certificate folder {directory}: {exc.strerror}") from None
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        if host and host != "localhost":
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "genreal serve")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(key, hashes.SHA256()))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    log.info("made a self-signed certificate %s (browsers ask once to trust it)", cert_path)
    return cert_path, key_path

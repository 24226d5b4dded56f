"""Images given by URL in API requests (``init_images``, ``mask``), fetched safely.

A1111 accepts ``http(s)://`` URLs where a base64 image is expected and downloads them. Here too, with
the limits a server on a LAN needs:

* only ``http`` and ``https``; at most :data:`MAX_IMAGE_BYTES`, :data:`TIMEOUT_SECONDS` in all (A1111's
  time-out), a few redirects, each one checked again;
* every address the host name resolves to must be a public one: loopback, link-local, private and
  other non-global addresses are refused (A1111's ``api_forbid_local_requests``, on by default), so the
  API cannot be used to reach the LAN or the machine itself. The connection goes to the address that
  was checked, so a DNS answer that changes between the check and the request cannot slip through.
  The launch flag ``--api-allow-local-requests`` lifts this (for a trusted LAN);
* the setting ``api_enable_requests`` false (A1111's) refuses URLs altogether.

Errors are :class:`ImageUrlError` with a message for the person who sent the URL.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import socket
import ssl
import time
from urllib.parse import urljoin, urlsplit

logger = logging.getLogger(__name__)

#: Largest image file fetched (bytes).
MAX_IMAGE_BYTES = 50 * 1024 * 1024
#: The whole fetch, redirects included (A1111 waits 30 s).
TIMEOUT_SECONDS = 30.0
MAX_REDIRECTS = 5
USER_AGENT = "sdweb (A1111-compatible API; fetching an init image)"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class ImageUrlError(Exception):
    """A URL that cannot be, or must not be, fetched; the message says which and why."""


def is_image_url(text: str) -> bool:
    """Whether an image field holds a URL rather than base64 data."""
    return text.lstrip()[:8].lower().startswith(("http://", "https://"))


def check_address(address: str, host: str) -> None:
    """Refuse a non-global address (loopback, link-local, private, reserved...)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not ip.is_global:
        raise ImageUrlError(f"{host} is a local address ({ip}); the API does not fetch from this machine or "
                            "the LAN (start the server with --api-allow-local-requests to allow it)")


def resolve(host: str, port: int, *, allow_local: bool) -> str:
    """The address to connect to for ``host``: every address it has must pass :func:`check_address`."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ImageUrlError(f"cannot resolve the host {host!r}: {exc}") from None
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise ImageUrlError(f"the host {host!r} has no address")
    if not allow_local:
        for address in addresses:
            check_address(address, host)
    return addresses[0]


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to a checked address, with the URL's host name in the request."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a checked address; the certificate is checked against the URL's host name."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        self._ssl_context = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self._ssl_context)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._ssl_context.wrap_socket(sock, server_hostname=self.host)


def fetch_image_bytes(url: str, *, allow_local: bool = False, timeout: float = TIMEOUT_SECONDS,
                      max_bytes: int = MAX_IMAGE_BYTES, user_agent: str = USER_AGENT) -> bytes:
    """The body of ``url`` (an image file), following a few redirects; see the module docstring."""
    deadline = time.monotonic() + timeout
    current = url.strip()
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(current)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ImageUrlError(f"only http and https URLs are fetched (got {scheme or 'no'} scheme)")
        host = parts.hostname
        if not host:
            raise ImageUrlError("the URL has no host")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise ImageUrlError("the URL's port is not a number from 1 to 65535") from None
        address = resolve(host, port, allow_local=allow_local)
        left = max(0.1, deadline - time.monotonic())
        cls = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
        connection = cls(host, port, address, left)
        try:
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            connection.request("GET", path, headers={"User-Agent": user_agent, "Accept": "image/*"})
            response = connection.getresponse()
            if response.status in _REDIRECTS:
                location = response.getheader("Location")
                if not location:
                    raise ImageUrlError(f"HTTP {response.status} without a Location")
                current = urljoin(current, location)
                continue
            if response.status != 200:
                raise ImageUrlError(f"the server answered HTTP {response.status} {response.reason}")
            length = response.getheader("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise ImageUrlError(f"the file is {int(length):,} bytes, more than the limit of "
                                    f"{max_bytes:,}")
            return _read_limited(response, max_bytes, deadline)
        except (OSError, http.client.HTTPException) as exc:
            if isinstance(exc, TimeoutError) or "timed out" in str(exc):
                raise ImageUrlError(f"no answer within {timeout:g} s") from None
            raise ImageUrlError(f"could not fetch it: {exc}") from None
        finally:
            connection.close()
    raise ImageUrlError(f"more than {MAX_REDIRECTS} redirects")


def _read_limited(response: http.client.HTTPResponse, max_bytes: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() > deadline:
            raise ImageUrlError("the download took too long")
        chunk = response.read(64 * 1024)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise ImageUrlError(f"the file is more than the limit of {max_bytes:,} bytes")
        chunks.append(chunk)

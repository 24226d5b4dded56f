"""The Host check: requests for a name that is not this server's get 403 (a guard against DNS rebinding).

A hostile web page can point a name it controls (``evil.example``) at 127.0.0.1 or at this PC's LAN
address; the visitor's browser then treats the server as part of that page's site and lets its scripts
read the answers. Browsers always send the name they looked up in the ``Host`` header, so the server
answers only to names that can only mean itself:

* loopback names and addresses: ``localhost``, ``*.localhost``, ``127.0.0.0/8``, ``::1``;
* this machine's addresses (those its name resolves to, the one the request came in on, the one it was
  bound to) and its own names (``hostname``, its fully qualified name, ``hostname.local``);
* the names given with ``--allowed-hosts`` (``.example.org`` also allows its subdomains; ``*`` turns the
  check off, e.g. behind a reverse proxy that checks names itself).

:class:`HostCheckMiddleware` wraps the whole app (UI, its queue and websocket routes, and the API). In
tests, Starlette's ``TestClient`` (Host ``testserver``, client ``testclient``) is let through: that pair
never comes from a socket.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def host_name(header: str) -> str:
    """The name or address in a ``Host`` header, without port, brackets or a trailing dot, lowercased."""
    value = header.strip().lower()
    if value.startswith("["):  # [::1]:7860
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def machine_names_and_addresses() -> tuple[set[str], set[str]]:
    """This machine's own names and the addresses they resolve to (no packet leaves the machine)."""
    names: set[str] = set()
    addresses: set[str] = set()
    try:
        hostname = socket.gethostname().lower()
    except OSError:
        return names, addresses
    if hostname:
        names.update({hostname, f"{hostname}.local"})
    try:
        fqdn = socket.getfqdn().lower()
        if fqdn:
            names.add(fqdn)
    except OSError:
        pass
    for name in list(names):
        try:
            for info in socket.getaddrinfo(name, None):
                address = _ip(str(info[4][0]))
                if address is not None:
                    addresses.add(str(address))
        except (OSError, UnicodeError):
            continue
    return names, addresses


class HostPolicy:
    """Which ``Host`` names the server answers to.

    Args:
        allowed: ``--allowed-hosts``: names (``pc.lan``), suffixes (``.example.org``), or ``*``.
        bind_host: the address the server listens on (its own, unless it is a wildcard).
        machine: this machine's (names, addresses); found once when not given.
    """

    def __init__(self, allowed: Iterable[str] = (), *, bind_host: str | None = None,
                 machine: tuple[set[str], set[str]] | None = None) -> None:
        entries = [entry.strip().lower().rstrip(".") for entry in allowed if entry.strip()]
        self.any = "*" in entries
        self._suffixes = tuple(entry.lstrip("*") for entry in entries if entry.startswith((".", "*.")))
        self._names = {entry for entry in entries if not entry.startswith((".", "*."))}
        names, addresses = machine if machine is not None else machine_names_and_addresses()
        self._names |= names
        self._addresses = set(addresses)
        bound = _ip(bind_host) if bind_host else None
        if bound is not None and not bound.is_unspecified:
            self._addresses.add(str(bound))
        for entry in list(self._names):  # an address given with --allowed-hosts
            address = _ip(entry)
            if address is not None:
                self._addresses.add(str(address))

    def allows(self, header: str | None, *, server: str | None = None, client: str | None = None) -> bool:
        """True when a request with ``Host: header`` is for this server.

        ``server``: the local address the request came in on; ``client``: the peer's (``testclient``
        for Starlette's in-process test client).
        """
        if self.any or not header:  # no Host at all: not a browser (browsers always send it)
            return True
        name = host_name(header)
        if name == "testserver" and client == "testclient":
            return True
        if name == "localhost" or name.endswith(".localhost"):
            return True
        address = _ip(name)
        if address is not None:
            if address.is_loopback:
                return True
            text = str(address)
            if text in self._addresses:
                return True
            local = _ip(server) if server else None
            return local is not None and str(local) == text
        if name in self._names:
            return True
        return any(name == suffix[1:] or name.endswith(suffix) for suffix in self._suffixes)


class HostCheckMiddleware:
    """ASGI middleware: 403 for HTTP requests and websockets whose Host the :class:`HostPolicy` refuses."""

    def __init__(self, app: ASGIApp, policy: HostPolicy) -> None:
        self.app = app
        self.policy = policy
        self._logged: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.policy.any:
            await self.app(scope, receive, send)
            return
        header = None
        for key, value in scope.get("headers") or ():
            if key == b"host":
                header = value.decode("latin-1")
                break
        server = scope.get("server")
        client = scope.get("client")
        if self.policy.allows(header, server=server[0] if server else None,
                              client=client[0] if client else None):
            await self.app(scope, receive, send)
            return
        name = host_name(header or "")[:100]
        if name not in self._logged and len(self._logged) < 100:
            self._logged.add(name)
            logger.warning("refused a request for host %r from %s (not this server's name; "
                           "start with --allowed-hosts %s to allow it)", name,
                           client[0] if client else "?", name or "NAME")
        message = (f"Host {name!r} is not allowed: this server answers to localhost, its own addresses "
                   f"and the names given with --allowed-hosts (a guard against DNS rebinding). To use this "
                   f"name, start the server with --allowed-hosts {name}")
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "host not allowed"})
            return
        body = json.dumps({"detail": message}).encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def install_host_check(app: Any, allowed: Iterable[str], *, bind_host: str | None = None) -> HostPolicy:
    """Wrap ``app`` (FastAPI/Starlette, before it starts) in the Host check; returns the policy."""
    policy = HostPolicy(allowed, bind_host=bind_host)
    app.add_middleware(HostCheckMiddleware, policy=policy)
    if policy.any:
        logger.warning("--allowed-hosts '*': the Host check is off (keep a proxy in front that checks names)")
    return policy

"""HTTP Basic authentication for the ``/sdapi/v1`` routes.

The credentials are :attr:`LaunchSettings.effective_api_auth`: ``--api-auth`` when given, otherwise the
UI's ``--gradio-auth``, so a password-protected UI never sits beside an open API (A1111 leaves the API
open in that case; we do not). With neither flag the API is open, as A1111's is.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from sdweb.ratelimit import LoginLimiter, paused_message

logger = logging.getLogger(__name__)


def credentials_match(
    credentials: Sequence[tuple[str, str]], username: str, password: str
) -> bool:
    """True when ``username:password`` is one of ``credentials``.

    Every pair is compared, each in constant time and as bytes (``compare_digest`` refuses non-ASCII
    ``str``), so neither the answer time nor an exception tells which part was wrong.
    """
    user_bytes = username.encode("utf-8")
    password_bytes = password.encode("utf-8")
    found = False
    for known_user, known_password in credentials:
        user_ok = secrets.compare_digest(user_bytes, known_user.encode("utf-8"))
        password_ok = secrets.compare_digest(password_bytes, known_password.encode("utf-8"))
        found |= user_ok and password_ok
    return found


class Utf8HttpBasic(HTTPBasic):
    """HTTP Basic that reads UTF-8 credentials (RFC 7617), with Latin-1 as the fallback.

    FastAPI's own scheme decodes as ASCII, so a password such as ``pässwörd`` could never match.
    Returns None for a missing or unreadable header; the dependency below answers 401.
    """

    async def __call__(self, request: Request) -> HTTPBasicCredentials | None:  # type: ignore[override]
        header = request.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or not encoded:
            return None
        try:
            raw = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        username, separator, password = text.partition(":")
        if not separator:
            return None
        return HTTPBasicCredentials(username=username, password=password)


def client_address(scope_or_request: Any) -> str:
    """The peer address of a request (its ASGI scope's ``client``), ``?`` when unknown."""
    scope = getattr(scope_or_request, "scope", scope_or_request)
    client = scope.get("client") if isinstance(scope, dict) else None
    return str(client[0]) if client else "?"


def basic_auth_dependency(credentials: Sequence[tuple[str, str]],
                          limiter: LoginLimiter | None = None) -> Callable[..., None] | None:
    """A FastAPI dependency enforcing ``credentials``; None when there are none (an open API).

    With ``limiter``, wrong credentials count against the client's address, and a paused address gets
    429 (with ``Retry-After``) whatever it sends, until its pause ends.
    """
    if not credentials:
        return None
    known = tuple(credentials)
    scheme = Utf8HttpBasic(auto_error=False, realm="sdweb API")

    def require_credentials(request: Request, given: HTTPBasicCredentials | None = Depends(scheme)) -> None:
        address = client_address(request)
        if limiter is not None and given is not None:
            wait = limiter.wait(address)
            if wait > 0:
                raise HTTPException(status_code=status.HTTP_429_TOO_MANY_REQUESTS,
                                    detail=paused_message(wait),
                                    headers={"Retry-After": str(max(1, int(wait + 0.999)))})
        if given is not None and credentials_match(known, given.username, given.password):
            if limiter is not None:
                limiter.succeeded(address)
            return
        if given is not None and limiter is not None:
            pause = limiter.failed(address)
            if pause > 0:
                logger.warning("API: %d failed logins from %s; logins from it paused for %d s",
                               limiter.max_failures + 1, address, pause)
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="Incorrect username or password" if given is not None else "Authentication required",
            headers={"WWW-Authenticate": 'Basic realm="sdweb API"'},
        )

    return require_credentials


def api_dependencies(credentials: Sequence[tuple[str, str]],
                     limiter: LoginLimiter | None = None) -> list[Any]:
    """``dependencies=`` for any router served under ``/sdapi`` (extension routes included), so that
    every API route asks for the same credentials: ``app.include_router(r, dependencies=...)``.
    """
    dependency = basic_auth_dependency(credentials, limiter)
    return [Depends(dependency)] if dependency is not None else []


class LoginThrottleMiddleware:
    """ASGI middleware for the UI's login form (``POST /login``): a paused address gets 429 with the
    reason, before the password is looked at; answers 400/401 count as failures, 200 as a success.
    """

    def __init__(self, app: Any, limiter: LoginLimiter, paths: Sequence[str] = ("/login", "/login/")) -> None:
        self.app = app
        self.limiter = limiter
        self.paths = frozenset(paths)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        address = client_address(scope)
        wait = self.limiter.wait(address)
        if wait > 0:
            body = json.dumps({"detail": paused_message(wait)}).encode()
            await send({"type": "http.response.start", "status": 429,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode()),
                                    (b"retry-after", str(max(1, int(wait + 0.999))).encode())]})
            await send({"type": "http.response.body", "body": body})
            return

        async def watched_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                code = int(message["status"])
                if code == 200:
                    self.limiter.succeeded(address)
                elif code in (400, 401):
                    pause = self.limiter.failed(address)
                    if pause > 0:
                        logger.warning("UI: %d failed logins from %s; logins from it paused for %d s",
                                       self.limiter.max_failures + 1, address, pause)
            await send(message)

        await self.app(scope, receive, watched_send)

"""HTTP Basic authentication for the ``/sdapi/v1`` routes.

The credentials are :attr:`LaunchSettings.effective_api_auth`: ``--api-auth`` when given, otherwise the
UI's ``--gradio-auth``, so a password-protected UI never sits beside an open API (A1111 leaves the API
open in that case; we do not). With neither flag the API is open, as A1111's is.
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPBasic, HTTPBasicCredentials

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


def basic_auth_dependency(credentials: Sequence[tuple[str, str]]) -> Callable[..., None] | None:
    """A FastAPI dependency enforcing ``credentials``; None when there are none (an open API)."""
    if not credentials:
        return None
    known = tuple(credentials)
    scheme = Utf8HttpBasic(auto_error=False, realm="sdweb API")

    def require_credentials(given: HTTPBasicCredentials | None = Depends(scheme)) -> None:
        if given is not None and credentials_match(known, given.username, given.password):
            return
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="Incorrect username or password" if given is not None else "Authentication required",
            headers={"WWW-Authenticate": 'Basic realm="sdweb API"'},
        )

    return require_credentials


def api_dependencies(credentials: Sequence[tuple[str, str]]) -> list[Any]:
    """``dependencies=`` for any router served under ``/sdapi`` (extension routes included), so that
    every API route asks for the same credentials: ``app.include_router(r, dependencies=...)``.
    """
    dependency = basic_auth_dependency(credentials)
    return [Depends(dependency)] if dependency is not None else []

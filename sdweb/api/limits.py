"""Request body size limit for the whole app (UI uploads and API requests): ``--max-body-mb``.

A request that says it is bigger (``Content-Length``) is answered 413 before a byte of its body is read;
one sent in chunks is cut off with a 413 as soon as it passes the limit. Either way nothing is decoded or
queued. The message names the limit and the flag that changes it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.exceptions import HTTPException

from sdweb.api.hosts import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_MB = 64


def too_large_message(max_bytes: int) -> str:
    return (f"the request body is larger than this server's limit of {max_bytes // (1024 * 1024)} MB; "
            "send fewer or smaller images, or start the server with a higher --max-body-mb")


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a chunked body passes the limit (FastAPI passes HTTPExceptions on)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(status_code=413, detail=too_large_message(max_bytes))


class BodyLimitMiddleware:
    """ASGI middleware: 413 for HTTP request bodies over ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers") or ():
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    self._log(scope, declared)
                    await _answer_413(send, self.max_bytes)
                    return
                break
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    self._log(scope, received)
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge:
            if not started:
                await _answer_413(send, self.max_bytes)

    def _log(self, scope: Scope, size: int) -> None:
        client = scope.get("client")
        logger.warning("refused a %s MB request to %s from %s (limit %d MB, --max-body-mb)",
                       f"{size / (1024 * 1024):.1f}" if size >= 0 else "?", scope.get("path"),
                       client[0] if client else "?", self.max_bytes // (1024 * 1024))


async def _answer_413(send: Send, max_bytes: int) -> None:
    body = json.dumps({"detail": too_large_message(max_bytes)}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def install_body_limit(app: Any, max_mb: int) -> None:
    """Refuse request bodies over ``max_mb`` MiB on ``app`` (before it starts)."""
    app.add_middleware(BodyLimitMiddleware, max_bytes=int(max_mb) * 1024 * 1024)

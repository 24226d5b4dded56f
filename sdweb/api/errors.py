"""Error answers of the ``/sdapi/v1`` API, in A1111's shape ``{error, detail, body, errors}``.

:func:`install_error_handlers` is called once on the app that mounts the router. Under ``/sdapi``:

* invalid fields and malformed JSON -> 422 with FastAPI's list-shaped answer, as A1111's API gives it
  (``{"detail": [{"loc", "msg", "type", "input"}]}``; long inputs are cut, never echoed whole);
* :class:`ApiError` (raised by the routes) and FastAPI's ``HTTPException`` -> their status, with
  their headers (``WWW-Authenticate`` on 401), and A1111's values: ``error`` "HTTPException",
  ``detail`` the message, ``body`` "", ``errors`` "<status>: <message>";
* anything unexpected -> a JSON 500 saying what failed, logged with its traceback. The routes are
  written so that no request reaches this (the schemathesis test proves it on our schema).

Other paths (the web UI) keep FastAPI's default answers.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

API_PREFIX = "/sdapi"
#: Longest input value quoted back in an error (a 1 MB prompt is not echoed).
MAX_QUOTED_CHARS = 80


class ApiError(Exception):
    """An error answer the routes raise on purpose: HTTP ``status`` with a message a person can act on."""

    def __init__(self, status: int, detail: str, *, errors: str | list[dict[str, Any]] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = detail if errors is None else errors
        self.headers = dict(headers or {})


def error_body(error: str, detail: str, errors: str | list[dict[str, Any]] = "") -> dict[str, Any]:
    return {"error": error, "detail": detail, "body": "", "errors": errors}


def http_error_body(status: int, detail: str) -> dict[str, Any]:
    """What A1111 answers for an HTTPException: ``errors`` is ``str(exception)``, "404: Not Found"."""
    return error_body("HTTPException", detail, f"{status}: {detail}")


def validation_error_items(items: list[Any]) -> list[dict[str, Any]]:
    """FastAPI's list of validation problems, each ``{loc, msg, type, input}`` with short inputs."""
    return [{"loc": list(item.get("loc", ())), "msg": str(item.get("msg", "invalid value")),
             "type": str(item.get("type", "")), "input": _quoted(item.get("input"))} for item in items]


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(part) for part in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] or parts
    return ".".join(parts) or "request"


def _quoted(value: Any) -> Any:
    """A short, JSON-safe form of a rejected input value."""
    if isinstance(value, (bool, int)) or value is None:
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= MAX_QUOTED_CHARS else text[:MAX_QUOTED_CHARS] + "..."


def describe_validation_errors(items: list[Any]) -> tuple[str, list[dict[str, Any]]]:
    """``("steps: Input should be less than or equal to 150; ...", [{loc, msg, type, input}])``."""
    lines: list[str] = []
    errors: list[dict[str, Any]] = []
    for item in items:
        where = _location(item.get("loc", ()))
        message = str(item.get("msg", "invalid value")).removeprefix("Value error, ")
        if item.get("type") == "json_invalid":
            context = item.get("ctx") or {}
            message = f"the body is not valid JSON ({context.get('error', message)})"
            where = "body"
        lines.append(f"{where}: {message}")
        errors.append({"loc": [str(part) for part in item.get("loc", ())], "field": where, "msg": message,
                       "type": str(item.get("type", "")), "input": _quoted(item.get("input"))})
    return "; ".join(lines) or "invalid request", errors


def _is_api(request: Request) -> bool:
    return request.url.path.startswith(API_PREFIX)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    if not _is_api(request):
        return await request_validation_exception_handler(request, exc)
    items = validation_error_items(list(exc.errors()))
    logger.info("%s %s: invalid request: %s", request.method, request.url.path,
                describe_validation_errors(list(exc.errors()))[0])
    return JSONResponse(status_code=422, content=jsonable_encoder({"detail": items}))


def _scrubbed(request: Request, text: str) -> str:
    """``text`` as a client may see it: the server's absolute paths rewritten (folders relative to the
    data folder); the log keeps the full text.
    """
    scrub = getattr(request.app.state, "client_scrubber", None)
    if scrub is None:
        from sdweb.safepath import for_client as scrub
    shown = str(scrub(text))
    if shown != text:
        logger.info("%s %s: %s", request.method, request.url.path, text)
    return shown


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    detail = _scrubbed(request, exc.detail)
    if isinstance(exc.errors, str):
        errors: str | list[dict[str, Any]] = f"{exc.status}: {_scrubbed(request, exc.errors)}"
    else:
        errors = [{key: _scrubbed(request, value) if isinstance(value, str) else value
                   for key, value in item.items()} for item in exc.errors]
    body = error_body("HTTPException", detail, errors)
    return JSONResponse(status_code=exc.status, headers=exc.headers or None, content=jsonable_encoder(body))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if not _is_api(request):
        return await http_exception_handler(request, exc)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    elif exc.status_code == 404 and detail == "Not Found":
        detail = f"no API route {request.url.path}"
    return JSONResponse(status_code=exc.status_code, headers=getattr(exc, "headers", None),
                        content=http_error_body(exc.status_code, _scrubbed(request, detail)))


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    logger.exception("API error: %s %s", request.method, request.url.path)
    # The log has the traceback; the client gets what failed, without the server's paths.
    message = _scrubbed(request, str(exc))
    detail = (f"internal error while handling {request.method} {request.url.path}: {type(exc).__name__}: "
              f"{message}")
    return JSONResponse(status_code=500, content=error_body(type(exc).__name__, detail, message))


#: A JSON ``\uD800``-``\uDFFF`` escape: only then can a body hold an unpaired surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _unpaired_surrogate_at(value: Any, where: str) -> str | None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where or "body"
        return None
    if isinstance(value, Mapping):
        for key, item in value.items():
            found = _unpaired_surrogate_at(key, where) or _unpaired_surrogate_at(
                item, f"{where}.{key}" if where else str(key))
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _unpaired_surrogate_at(item, f"{where}.{index}" if where else str(index))
            if found:
                return found
    return None


async def reject_unpaired_surrogates(request: Request) -> None:
    r"""Refuse (422) a JSON body with a lone UTF-16 surrogate escape such as ``"\ud800"``.

    Python's JSON reader accepts them, but such a string cannot be written as UTF-8: left in, it
    would fail later while answering, saving the settings file or writing a PNG chunk (a 500, or a
    settings file that breaks ``GET /options``). Bodies without such an escape cost one regex scan.
    """
    if request.method not in ("POST", "PUT", "PATCH"):
        return
    body = await request.body()  # cached by Starlette; the route reads the same bytes
    if not _SURROGATE_ESCAPE.search(body):
        return
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return  # the route's own parsing answers malformed JSON
    where = _unpaired_surrogate_at(data, "")
    if where is not None:
        message = (f"{where}: contains an unpaired UTF-16 surrogate escape (\\ud800-\\udfff); "
                   "send text as UTF-8 or as complete surrogate pairs")
        raise ApiError(422, message, errors=[{"loc": where.split("."), "field": where, "msg": message,
                                              "type": "unpaired_surrogate", "input": None}])


def install_error_handlers(app: FastAPI, client_scrubber: Any = None) -> None:
    """Install the handlers above on ``app`` (once, on the app that includes the API router).

    ``client_scrubber(text)``: rewrites the server's paths in error messages (DataPaths.client_scrubber).
    """
    app.state.client_scrubber = client_scrubber
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)

"""CORS for pages in a browser that call the server (A1111's ``--cors-allow-origins`` and
``--cors-allow-origins-regex``): the same middleware and options A1111 installs, for the whole app.

Without either flag no CORS headers are sent, so browsers keep other sites' pages from reading
answers (same-origin policy). Preflight ``OPTIONS`` requests are answered by the middleware, before
authentication, as browsers send them without credentials; the real request still needs them.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from sdweb.config import LaunchSettings

logger = logging.getLogger(__name__)


def install_cors(app: FastAPI, settings: LaunchSettings) -> None:
    """Allow the configured origins (list and/or regex) to call ``app`` from a browser."""
    origins = list(settings.cors_allow_origins)
    regex = settings.cors_allow_origins_regex
    if not origins and not regex:
        return
    app.add_middleware(CORSMiddleware, allow_origins=origins, allow_origin_regex=regex, allow_methods=["*"],
                       allow_credentials=True, allow_headers=["*"])
    logger.info("CORS: allowing %s", ", ".join([*origins, *([f"/{regex}/"] if regex else [])]))

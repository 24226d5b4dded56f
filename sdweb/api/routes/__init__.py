"""The API's routes, one module per group of what they serve; :func:`sdweb.api.router.make_router`
assembles them from its list of modules.

* :mod:`.generation`: ``/txt2img``, ``/img2img`` (request building is :mod:`sdweb.api.request_params`).
* :mod:`.progress`: ``/progress``, ``/interrupt``, ``/skip``.
* :mod:`.extras`: ``/extra-single-image``, ``/extra-batch-images``, ``/png-info``, ``/interrogate``.
* :mod:`.options`: ``/options`` (GET and POST), ``/cmd-flags``.
* :mod:`.info`: samplers, schedulers, upscalers, styles, scripts, extensions, memory... (listings).
* :mod:`.models`: checkpoints, VAEs, LoRAs, embeddings: listing, refreshing, unloading, reloading.
* :mod:`.internal`: A1111's ``/internal/ping``, ``/internal/progress``, ``/internal/pending-tasks``.
* :mod:`.workers`: ``/workers``, the workers jobs run on (in-process, or Ray's: docs/multi-gpu.md).
* :mod:`.controlnet`: the sd-webui-controlnet extension's ``/controlnet/*`` (models, preprocessors, detect).

How a route module plugs in: it has ``add_routes(routes: ApiRoutes) -> None``, which adds its routes
with :meth:`ApiRoutes.add` (under ``/sdapi/v1`` unless it passes another ``prefix``: the ControlNet
extension's API lives at ``/controlnet/*``) and reaches the app through ``routes.services`` and the
script registry through ``routes.scripts``. Then it is one more entry in
:data:`sdweb.api.router.ROUTE_MODULES`. Every route gets the router's auth guard, A1111's error shape
and the ``sdapi`` tag.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import APIRouter

from sdweb.api.scripts import ScriptRegistry
from sdweb.services.container import AppServices

logger = logging.getLogger(__name__)

#: Where A1111's API lives; a route's default prefix.
SDAPI_PREFIX = "/sdapi/v1"


@dataclass
class ApiRoutes:
    """What a route module adds its routes to, and what its handlers may use."""

    router: APIRouter
    services: AppServices
    #: The A1111 scripts the generation routes run (``script_name``, ``alwayson_scripts``).
    scripts: ScriptRegistry

    def add(self, path: str, endpoint: Callable[..., Any], method: str, model: Any = None, *,
            prefix: str = SDAPI_PREFIX, **kwargs: Any) -> None:
        """Add ``method prefix+path`` answered by ``endpoint`` with response model ``model``.

        ``kwargs`` go to FastAPI's ``add_api_route`` (``responses=`` for documented errors...). The
        operation id comes from the endpoint's name and the path: keep both when moving a route.
        """
        self.router.add_api_route(prefix + path, endpoint, methods=[method], response_model=model, **kwargs)


class RouteModule(Protocol):
    """A module of routes (``sdweb.api.routes.generation`` ...)."""

    def add_routes(self, routes: ApiRoutes) -> None: ...

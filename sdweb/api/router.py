"""The A1111-compatible REST API: ``make_router(services)`` assembles the route modules into one router.

The router's paths are whole (``/sdapi/v1/txt2img``): include it without a prefix. Every route is typed
with the models of :mod:`sdweb.api.models` (so ``/docs`` and ``/openapi.json`` describe them), guarded
by HTTP Basic auth when credentials are configured (:mod:`sdweb.api.security`), and answers errors in
A1111's shape through :mod:`sdweb.api.errors`.

The routes live in :mod:`sdweb.api.routes`, one module per group of what they serve; a new capability
(ControlNet's ``/controlnet/*``, scripts...) is one more module in :data:`ROUTE_MODULES`. The A1111
scripts the generation routes run are the :func:`sdweb.api.scripts.builtin_scripts` registry.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fastapi import APIRouter, Depends

from sdweb.api.errors import reject_unpaired_surrogates
from sdweb.api.models import ERROR_RESPONSES
from sdweb.api.routes import (
    ApiRoutes,
    RouteModule,
    controlnet,
    extras,
    generation,
    info,
    internal,
    models,
    options,
    progress,
    workers,
)
from sdweb.api.scripts import ScriptRegistry, builtin_scripts
from sdweb.api.security import api_dependencies
from sdweb.services.container import AppServices

logger = logging.getLogger(__name__)

#: The route modules the API is made of, in the order ``/docs`` lists them.
ROUTE_MODULES: tuple[RouteModule, ...] = (generation, extras, progress, options, info, models, workers,
                                          internal, controlnet)


def make_router(
    services: AppServices,
    modules: Sequence[RouteModule] = ROUTE_MODULES,
    scripts: ScriptRegistry | None = None,
) -> APIRouter:
    """The API's routes (include without a prefix), auth-guarded when configured.

    ``modules``: the route modules to assemble; ``scripts``: the A1111 scripts the generation routes
    run (default: :func:`sdweb.api.scripts.builtin_scripts`).
    """
    dependencies = [*api_dependencies(services.settings.effective_api_auth, services.login_limiter),
                    Depends(reject_unpaired_surrogates)]
    router = APIRouter(dependencies=dependencies, responses=ERROR_RESPONSES, tags=["sdapi"])
    routes = ApiRoutes(router=router, services=services,
                       scripts=builtin_scripts(services) if scripts is None else scripts)
    for module in modules:
        module.add_routes(routes)
    return router

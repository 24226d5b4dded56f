"""``make_router`` assembles the API from route modules: a capability's routes are one more module,
under ``/sdapi/v1`` or a prefix of its own (the ControlNet extension's ``/controlnet/*``), behind the
same login as the rest."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
from fastapi import FastAPI

from sdweb.api.errors import install_error_handlers
from sdweb.api.router import ROUTE_MODULES, make_router
from sdweb.api.routes import ApiRoutes
from tests.api.conftest import served_api
from tests.fakes import make_services


def _add_version_routes(routes: ApiRoutes) -> None:
    def example_version() -> dict[str, Any]:
        return {"version": 2, "models": len(routes.services.models.list_checkpoints())}

    # An extension-style prefix of its own (as ControlNet's /controlnet/*, which is a real module now).
    routes.add("/version", example_version, "GET", dict[str, Any], prefix="/example-extension")


VERSION_MODULE = SimpleNamespace(add_routes=_add_version_routes)


def test_a_route_module_adds_its_routes_behind_the_same_login(tmp_path: Path) -> None:
    services, _ = make_services(tmp_path, api_auth=(("alice", "s3cret"),))
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(make_router(services, modules=(*ROUTE_MODULES, VERSION_MODULE)))
    with served_api(services, app) as url, httpx.Client(timeout=30) as client:
        root = url.removesuffix("/sdapi/v1")
        assert client.get(f"{root}/example-extension/version").status_code == 401
        assert client.get(f"{root}/controlnet/version").status_code == 401
        response = client.get(f"{root}/example-extension/version", auth=("alice", "s3cret"))
        assert response.status_code == 200 and response.json() == {"version": 2, "models": 1}
        assert client.get(f"{url}/sd-models", auth=("alice", "s3cret")).status_code == 200
        paths = client.get(f"{root}/openapi.json").json()["paths"]
        assert "/example-extension/version" in paths and "/sdapi/v1/txt2img" in paths
        assert "/controlnet/model_list" in paths


def test_the_router_has_only_the_modules_it_is_given(tmp_path: Path) -> None:
    from sdweb.api.routes import progress

    services, _ = make_services(tmp_path)
    try:
        paths = {route.path for route in make_router(services, modules=(progress,)).routes}
        assert paths == {"/sdapi/v1/progress", "/sdapi/v1/interrupt", "/sdapi/v1/skip"}
    finally:
        services.worker.close()

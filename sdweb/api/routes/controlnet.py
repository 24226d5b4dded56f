"""The sd-webui-controlnet extension's routes, at ``/controlnet/*`` (its paths, fields and shapes).

* ``GET /controlnet/version``: ``{"version": 3}`` (the extension's API version these follow).
* ``GET /controlnet/model_list[?update=true]``: ``{"model_list": ["name [hash]", ...]}``.
* ``GET /controlnet/module_list[?alias_names=false]``: ``{"module_list": [...], "module_detail": {...}}``.
* ``GET /controlnet/control_types``: per control type, its preprocessors and models and defaults.
* ``GET /controlnet/settings``: ``{"control_net_unit_count": 3}``.
* ``POST /controlnet/detect``: a preprocessor's maps of base64 pictures, ``{"images": [...], "info"}``.

Units themselves travel in ``alwayson_scripts`` (:mod:`sdweb.api.scripts.controlnet`).
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, Field

from sdweb.api.encoding import encode_png_base64
from sdweb.api.errors import ApiError
from sdweb.api.image_requests import decode_images
from sdweb.api.routes import ApiRoutes
from sdweb.services.controlnet import API_VERSION

logger = logging.getLogger(__name__)

PREFIX = "/controlnet"


class DetectRequest(BaseModel):
    """``POST /controlnet/detect`` (the extension's field names and defaults)."""

    controlnet_module: str = Field("none", max_length=200)
    controlnet_input_images: list[str] = Field(default_factory=list, max_length=16)
    controlnet_processor_res: float = -1
    controlnet_threshold_a: float = -1
    controlnet_threshold_b: float = -1
    controlnet_masks: list[str] = Field(default_factory=list, max_length=16)
    low_vram: bool = False


def add_routes(routes: ApiRoutes) -> None:
    services = routes.services

    def controlnet() -> Any:
        if services.controlnet is None:
            raise ApiError(404, "ControlNet is not available in this app")
        return services.controlnet

    def version() -> dict[str, int]:
        return {"version": API_VERSION}

    def model_list(update: bool = True) -> dict[str, list[str]]:
        return {"model_list": controlnet().model_titles(refresh=update)}

    def module_list(alias_names: bool = False) -> dict[str, Any]:
        service = controlnet()
        return {"module_list": service.module_names(), "module_detail": service.module_detail()}

    def control_types() -> dict[str, Any]:
        return {"control_types": controlnet().control_types()}

    def settings() -> dict[str, int]:
        return {"control_net_unit_count": controlnet().unit_count()}

    def detect(request: DetectRequest) -> dict[str, Any]:
        service = controlnet()
        try:
            service.preprocessor(request.controlnet_module)
        except LookupError as exc:
            raise ApiError(422, f"controlnet_module: {exc}") from exc
        if not request.controlnet_input_images:
            raise ApiError(422, "controlnet_input_images: no image given")
        pictures = decode_images(request.controlnet_input_images, "controlnet_input_images")
        try:
            maps = service.detect(request.controlnet_module, pictures,
                                  processor_res=request.controlnet_processor_res,
                                  threshold_a=request.controlnet_threshold_a,
                                  threshold_b=request.controlnet_threshold_b)
        except ValueError as exc:  # a model-based annotator: what it needs
            raise ApiError(422, f"controlnet_module: {exc}") from exc
        return {"images": [encode_png_base64(image) for image in maps], "info": "Success"}

    routes.add("/version", version, "GET", prefix=PREFIX)
    routes.add("/model_list", model_list, "GET", prefix=PREFIX)
    routes.add("/module_list", module_list, "GET", prefix=PREFIX)
    routes.add("/control_types", control_types, "GET", prefix=PREFIX)
    routes.add("/settings", settings, "GET", prefix=PREFIX)
    routes.add("/detect", detect, "POST", prefix=PREFIX)

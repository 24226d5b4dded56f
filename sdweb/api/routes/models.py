"""The model files: ``/sd-models``, ``/sd-vae``, ``/sd-modules`` (Forge's: text encoders and VAEs for
SD 3.x / Flux), ``/loras``, ``/embeddings`` and their ``/refresh-*``.

Also ``/unload-checkpoint`` and ``/reload-checkpoint``.
"""

from __future__ import annotations

import logging
from typing import Any

from sdweb.api.errors import ApiError
from sdweb.api.model_lookup import load_failure_status
from sdweb.api.models import EmbeddingsResponse, LoraItem, SDModelItem, SDModuleItem, SDVaeItem
from sdweb.api.routes import ApiRoutes
from sdweb.services.container import AppServices

logger = logging.getLogger(__name__)


def add_routes(routes: ApiRoutes) -> None:
    handlers = ModelRoutes(routes.services)
    routes.add("/sd-models", handlers.sd_models, "GET", list[SDModelItem])
    routes.add("/sd-vae", handlers.sd_vae, "GET", list[SDVaeItem])
    routes.add("/sd-modules", handlers.sd_modules, "GET", list[SDModuleItem])
    routes.add("/embeddings", handlers.embeddings, "GET", EmbeddingsResponse)
    routes.add("/loras", handlers.loras, "GET", list[LoraItem])
    routes.add("/refresh-checkpoints", handlers.refresh_checkpoints, "POST", None)
    routes.add("/refresh-vae", handlers.refresh_vae, "POST", None)
    routes.add("/refresh-modules", handlers.refresh_modules, "POST", None)
    routes.add("/refresh-loras", handlers.refresh_loras, "POST", None)
    routes.add("/refresh-embeddings", handlers.refresh_embeddings, "POST", None)
    routes.add("/unload-checkpoint", handlers.unload_checkpoint, "POST", dict[str, Any])
    routes.add("/reload-checkpoint", handlers.reload_checkpoint, "POST", dict[str, Any])


class ModelRoutes:
    """The model file handlers, bound to one services container."""

    def __init__(self, services: AppServices) -> None:
        self.services = services

    def sd_models(self) -> list[SDModelItem]:
        return [
            SDModelItem(title=info.title, model_name=info.model_name, hash=info.shorthash,
                        sha256=info.sha256, filename=str(info.path), config=None)
            for info in self.services.models.list_checkpoints()
        ]

    def sd_vae(self) -> list[SDVaeItem]:
        return [SDVaeItem(model_name=info.name, filename=str(info.path))
                for info in self.services.models.list_vaes()]

    def sd_modules(self) -> list[SDModuleItem]:
        return [SDModuleItem(model_name=item.name, filename=str(item.path), kind=item.module.kind,
                             slots=list(item.module.slots), width=item.module.width, storage=item.storage)
                for item in self.services.models.list_modules()]

    def refresh_modules(self) -> None:
        self.services.models.refresh_modules()

    def embeddings(self) -> EmbeddingsResponse:
        return EmbeddingsResponse.model_validate(self.services.models.embeddings())

    def loras(self) -> list[LoraItem]:
        library = self.services.loras
        return [LoraItem(**item) for item in library.items()] if library is not None else []

    def refresh_checkpoints(self) -> None:
        self.services.models.refresh()

    def refresh_vae(self) -> None:
        self.services.models.refresh_vaes()

    def refresh_loras(self) -> None:
        if self.services.loras is not None:
            self.services.loras.refresh()

    def refresh_embeddings(self) -> None:
        self.services.models.refresh_embeddings()

    def unload_checkpoint(self) -> dict[str, Any]:
        self.services.models.unload()
        return {}

    def reload_checkpoint(self) -> dict[str, Any]:
        try:
            self.services.models.reload()
        except LookupError as exc:
            raise ApiError(404, str(exc).strip("'\"")) from exc
        except Exception as exc:  # the engine's message is what the user needs
            raise ApiError(load_failure_status(exc), f"could not load the model: {exc}") from exc
        return {}

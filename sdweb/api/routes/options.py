"""``GET/POST /options`` (the settings, all or nothing) and ``GET /cmd-flags`` (the launch flags)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Body

from sdweb.api.encoding import has_non_finite, json_safe
from sdweb.api.errors import ApiError
from sdweb.api.model_lookup import find_checkpoint, load_failure_status
from sdweb.api.models import options_model
from sdweb.api.routes import ApiRoutes
from sdweb.config import OptionsError
from sdweb.services.container import AppServices

logger = logging.getLogger(__name__)


def add_routes(routes: ApiRoutes) -> None:
    handlers = OptionsRoutes(routes.services)
    options_doc = {200: {"model": options_model(routes.services.options.specs),
                         "description": "All settings"}}
    routes.add("/options", handlers.get_options, "GET", None, responses=options_doc)
    routes.add("/options", handlers.set_options, "POST", None)
    routes.add("/cmd-flags", handlers.cmd_flags, "GET", dict[str, Any])


class OptionsRoutes:
    """The settings handlers, bound to one services container."""

    def __init__(self, services: AppServices) -> None:
        self.services = services

    def get_options(self) -> dict[str, Any]:
        values = self.services.options.as_dict()
        # A1111's: the model requests without one use, from the start (never ""), and its sha256.
        values.update(self.services.models.current_options())
        return json_safe(values)

    def set_options(
        self, changes: dict[str, Any] = Body(..., examples=[{"CLIP_stop_at_last_layers": 2}])
    ) -> None:
        """Set options, all or nothing.

        A client may post back the whole dict it read (Open WebUI does): values equal to the current
        ones are no-ops, keys of A1111 features we lack are kept as they are, and only invalid values of
        options we have are refused (400 naming each option and what it may hold; nothing is stored).
        ``sd_model_checkpoint`` loads that model first; when it cannot be found or loaded nothing
        changes and the current model stays.
        """
        options = self.services.options
        bad = [key for key, value in changes.items() if has_non_finite(value)]
        if bad:
            raise ApiError(400, f"option {bad[0]!r}: must be a finite number")
        changes = dict(changes)
        current = self.services.models.current_options()
        wanted = changes.pop("sd_model_checkpoint", None)
        if wanted is not None and wanted == current["sd_model_checkpoint"]:
            wanted = None  # posted back unchanged
        try:
            converted = options.validate(changes, unknown="keep",
                                         allow_outside=self.services.settings.allow_outdir_anywhere)
        except OptionsError as exc:
            raise ApiError(400, str(exc)) from exc
        if wanted is not None:
            if not isinstance(wanted, str):
                raise ApiError(400, f"option 'sd_model_checkpoint' must be a checkpoint title, got "
                                    f"{wanted!r}")
            info = find_checkpoint(self.services, wanted, "sd_model_checkpoint")
            try:
                self.services.models.select(info.title)
            except Exception as exc:  # the engine's message is what the user needs
                logger.warning("could not switch to %s: %s", info.title, exc)
                raise ApiError(load_failure_status(exc),
                               f"sd_model_checkpoint: could not load {info.title}: {exc}") from exc
        if converted:
            try:
                options.update(converted, unknown="keep", allow_outside=True)  # checked above
            except OptionsError as exc:  # a file vanished between the check and now
                raise ApiError(400, str(exc)) from exc

    def cmd_flags(self) -> dict[str, Any]:
        return json_safe(self.services.settings.public_flags())

"""Every hook an extension can implement. The docstrings here are the documentation.

Implement a hook with ``@sdweb.plugin_api.hookimpl`` on a function of the same name in your
extension's module. ``register_*`` hooks return lists; pluggy collects one list per extension.
A hook that raises is logged with the extension's name and skipped for that call: the app and the
running generation carry on.
"""

from __future__ import annotations

from typing import Any

import pluggy

from sdweb.plugin_api import PROJECT_NAME

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


@hookspec
def register_samplers() -> list[Any]:
    """Return a list of :class:`sdweb.plugin_api.SamplerSpec` to add samplers.

    The built-in samplers ("Euler a", "DPM++ 2M", ...) are registered through this same hook. Two
    samplers with one name (or alias) are an error that names both extensions.
    """


@hookspec
def register_schedules() -> list[Any]:
    """Return a list of :class:`sdweb.plugin_api.ScheduleSpec` to add schedule types ("Karras", ...)."""


@hookspec
def register_settings() -> list[Any]:
    """Return a list of :class:`sdweb.plugin_api.OptionSpec`: options shown in the Settings tab.

    Prefix keys with your extension's name to avoid clashes; the values persist in ``config.json``.
    """


@hookspec
def before_generate(params: Any) -> Any:
    """Called with the :class:`GenerationParams` of each job before it runs.

    Return a changed copy (``params.model_copy(update=...)``) to alter the request, or None to leave
    it. Hooks run in registration order, each seeing the previous one's result.
    """


@hookspec
def on_step(progress: Any) -> None:
    """Called after every denoising step with a :class:`sdweb.plugin_api.StepProgress`.

    Runs on the GPU worker: keep it quick. Exceptions are logged and ignored.
    """


@hookspec
def extra_infotext(params: Any) -> dict[str, Any] | None:
    """Return extra ``key: value`` pairs to append to each image's infotext (A1111 style)."""


@hookspec
def after_image_saved(path: str, params: Any, infotext: str) -> None:
    """Called after each image file is written (``path``), with its params and infotext."""


@hookspec
def register_ui_tabs(services: Any) -> list[Any]:
    """Return a list of :class:`sdweb.plugin_api.UITab` to add tabs to the web UI.

    ``services`` is the application's services container (generation, models, options, ...).
    """


@hookspec
def register_api_routes(services: Any) -> list[Any]:
    """Return a list of FastAPI ``APIRouter`` objects; they are mounted under ``/sdapi/v1/ext``."""


@hookspec
def on_app_started(app: Any, services: Any) -> None:
    """Called once the server's FastAPI ``app`` is built, before it serves requests."""


@hookspec
def on_model_loaded(model_info: Any) -> None:
    """Called after a checkpoint is loaded, with its :class:`CheckpointInfo` (title, hash, family)."""

"""Every hook an extension can implement. The docstrings here are the documentation.

Implement a hook with ``@sdweb.plugin_api.hookimpl`` on a function of the same name in your
extension's module; it may take fewer arguments than the specification, by name. ``register_*``
hooks return lists; the app collects one list per extension, together with the extension's name.

Order and failures (see :class:`sdweb.extensions.manager.PluginHost`): implementations run in
registration order (built-ins first, then extensions in load order; ``tryfirst``/``trylast`` move
one to either end). A hook that raises is logged with the extension's name, shown in the Extensions
tab, and skipped for that call: the app and the running generation carry on.
"""

from __future__ import annotations

from typing import Any

import pluggy

from sdweb.plugin_api import PROJECT_NAME

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


@hookspec
def register_samplers() -> list[Any]:
    """Return a list of :class:`sdweb.plugin_api.SamplerSpec` to add samplers.

    Called once at start, after every extension is loaded. A sampler is either a diffusers
    scheduler class (``scheduler_cls``) or a sampling function (``sample_fn``, see
    :data:`sdweb.plugin_api.SamplingFunction`). The built-in samplers ("Euler a", "DPM++ 2M", ...)
    are registered through this same hook. Two samplers with one name (or alias, compared without
    case) are an error that names both extensions.
    """


@hookspec
def register_schedules() -> list[Any]:
    """Return a list of :class:`sdweb.plugin_api.ScheduleSpec` to add schedule types ("Karras", ...).

    Called once at start. A schedule is either scheduler config flags (``config``) or a sigma
    function (``sigmas_fn(n, sigma_min, sigma_max)``). Name clashes are errors naming both extensions.
    """


@hookspec
def register_settings() -> list[Any]:
    """Return a list of :class:`sdweb.plugin_api.OptionSpec`: options shown in the Settings tab.

    Called once at start. Prefix keys with your extension's name to avoid clashes (a key defined
    twice is refused); the values persist in ``config.json``, and ``services.options.get(key)``
    reads them.
    """


@hookspec
def register_scripts() -> list[Any]:
    """Return a list of :class:`sdweb.plugin_api.ScriptSpec`: scripts for the "Script" dropdown and the API.

    Called once, when the scripts are first listed. A script turns one request into many (each a
    ``GenerationParams``) and combines their results; it never reaches into the denoising loop. Its
    ``prepare(call)`` checks the arguments (A1111's positional ``script_args``) and names every request
    it will run; its ``run(context)`` runs them with ``context.generate(...)`` on the GPU worker. The
    built-in scripts (X/Y/Z plot, prompt matrix, SD upscale ...) are registered through this same hook.
    A second script with a title already taken (compared without case) is refused and logged with both
    extensions' names.
    """


@hookspec
def register_controlnet_preprocessors() -> list[Any]:
    """Return a list of :class:`sdweb.plugin_api.ControlPreprocessorSpec`: ControlNet preprocessors.

    Called once, when the app starts. Each is listed after the built-in ones (none, canny, invert ...)
    in ``/controlnet/module_list``, the ControlNet accordion's preprocessor dropdown and its control
    types (``tags``), and runs for units and previews that name it: ``run(image, resolution,
    threshold_a, threshold_b)`` gets an RGB PIL image and the unit's values (out-of-range ones replaced
    by the spec's defaults) and returns the control map as a PIL image. A name already taken is refused
    and logged with the extension's name.
    """


@hookspec
def register_xyz_axes() -> list[Any]:
    """Return a list of :class:`sdweb.plugin_api.XyzAxis`: axes for the X/Y/Z plot script.

    Called once, when the axes are first listed. They come after the built-in axes (A1111's, in its
    order, so its axis numbers keep their meaning), in extension load order. ``apply(params, value,
    values)`` returns the cell's request (``params.model_copy(update=...)``; every cell is validated
    before anything runs). A second axis with a label already taken in the same tabs is refused and
    logged with both extensions' names.
    """


@hookspec
def before_generate(params: Any) -> Any:
    """Called with the :class:`sdweb.plugin_api.GenerationParams` of each job before it runs.

    Return a changed copy (``params.model_copy(update=...)``) to alter the request, or None to leave
    it. Implementations run in registration order, each seeing the previous one's result. A result
    that is not a ``GenerationParams`` is ignored and reported, like an exception.
    """


@hookspec
def on_step(progress: Any) -> None:
    """Called after every denoising step with a :class:`sdweb.plugin_api.StepProgress`.

    Runs on the GPU worker thread, in the middle of sampling: keep it quick. Exceptions are logged
    and ignored; they do not stop the generation (use the Interrupt button for that).
    """


@hookspec
def extra_infotext(params: Any) -> dict[str, Any] | None:
    """Return extra ``key: value`` pairs to append to each image's infotext (A1111 style).

    Called for each image with its final ``GenerationParams`` (concrete seed). Keys should be
    human-readable ("My ext strength"); values are written with ``str()``. Return None to add nothing.
    """


@hookspec
def after_image_saved(path: str, params: Any, infotext: str) -> None:
    """Called after each image file is written, with its ``path``, params and infotext.

    The file is complete when this runs. It runs on the generation worker: hand long work
    (uploads, copies) to your own thread.
    """


@hookspec
def register_ui_tabs(services: Any) -> list[Any]:
    """Return a list of :class:`sdweb.plugin_api.UITab` to add tabs to the web UI.

    Called once while the UI is built. ``services`` is the application's services container
    (generation, models, options, ...). Each tab's ``render()`` is called inside an open
    ``gr.Tab(title)`` and builds its gradio components there; extensions may import gradio.
    """


@hookspec
def register_api_routes(services: Any) -> list[Any]:
    """Return a list of FastAPI ``APIRouter`` objects; they are mounted under ``/sdapi/v1/ext``.

    Called once while the app is built, with the services container. Prefix your paths with your
    extension's name (``/my-ext/...``) so two extensions never claim one route.
    """


@hookspec
def on_app_started(app: Any, services: Any) -> None:
    """Called once the server's FastAPI ``app`` is built, before it serves requests."""


@hookspec
def on_model_loaded(model_info: Any) -> None:
    """Called after a checkpoint is loaded, with its ``CheckpointInfo`` (title, hash, family).

    Runs on the thread that loaded the model; do not start a generation from here.
    """

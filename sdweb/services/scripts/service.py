"""ScriptService: which scripts exist, checking a script request, and running it as one job.

The UI's "Script" dropdown and the API's ``script_name`` / ``script_args`` both come here:

1. :meth:`ScriptService.find` names the script (A1111's title, any case; unknown -> :class:`ScriptError`
   listing the known ones for the tab).
2. :meth:`ScriptService.prepare` fills the arguments left out with their defaults, lets the script
   check them and plan its requests, and checks every planned request as a plain job would be (unknown
   sampler, checkpoint, style, LoRA ...). Nothing is queued when any of that fails.
3. :meth:`ScriptService.submit` queues the plan as one job on the generation queue
   (:meth:`GenerationService.submit_script`): its parts run back to back, with one progress bar and
   one interrupt.

Scripts and X/Y/Z axes are collected once from the plugins' ``register_scripts`` /
``register_xyz_axes`` (the built-ins are a plugin too).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from sdweb.config import OptionsStore
from sdweb.params import GenerationParams, GenerationResult, Img2ImgParams, format_validation_error
from sdweb.scripting import PreparedScript, ScriptCall, ScriptError, ScriptMode, ScriptSpec, XyzAxis
from sdweb.services.generation import GenerationError, GenerationService, Job, JobRunner
from sdweb.services.scripts.arguments import fill_arguments
from sdweb.services.scripts.axes import axes_for

logger = logging.getLogger(__name__)


class ScriptEnvironmentImpl:
    """The look-ups scripts use while preparing (:class:`sdweb.scripting.ScriptEnvironment`)."""

    def __init__(self, service: ScriptService) -> None:
        self._service = service

    def sampler_names(self) -> list[str]:
        return list(self._service.samplers().names())

    def find_sampler(self, name: str) -> str:
        try:
            return str(self._service.samplers().get(name).name)
        except (KeyError, LookupError, ValueError) as exc:
            raise LookupError(str(exc).strip("'\"")) from None

    def schedule_names(self) -> list[str]:
        return list(self._service.samplers().schedule_names())

    def checkpoint_titles(self) -> list[str]:
        models = self._service.models
        return [info.title for info in models.list_checkpoints()] if models is not None else []

    def find_checkpoint(self, query: str) -> str:
        models = self._service.models
        if models is None:
            raise LookupError("no checkpoints are available")
        return str(models.find(query).title)

    def vae_names(self) -> list[str]:
        models = self._service.models
        return [info.name for info in models.list_vaes()] if models is not None else []

    def upscaler_names(self) -> list[str]:
        upscalers = self._service.upscalers
        if upscalers is None:
            from sdweb.images.upscale import list_upscalers

            return [item.name for item in list_upscalers()]
        return list(upscalers.names())

    def hires_upscaler_names(self) -> list[str]:
        upscalers = self._service.upscalers
        if upscalers is None:
            from sdweb.images.upscale import LATENT_UPSCALE_MODES, list_upscalers

            return [*LATENT_UPSCALE_MODES, *(item.name for item in list_upscalers())]
        return list(upscalers.hires_names())

    def style_names(self) -> list[str]:
        styles = self._service.styles
        return list(styles.names()) if styles is not None else []

    def xyz_axes(self, mode: ScriptMode) -> list[XyzAxis]:
        return axes_for(mode, self._service.axes())

    def option(self, key: str) -> Any:
        try:
            return self._service.options.get(key)
        except KeyError:
            return None


class ScriptContextImpl:
    """A running script's :class:`sdweb.scripting.ScriptContext`: the job's runner plus upscaling."""

    def __init__(self, runner: JobRunner, upscalers: Any) -> None:
        self._runner = runner
        self._upscalers = upscalers

    def __getattr__(self, name: str) -> Any:  # generate, save_grid, infotext, interrupted ...
        return getattr(self._runner, name)

    @property
    def interrupted(self) -> bool:
        return self._runner.interrupted

    @property
    def skipped(self) -> bool:
        return self._runner.skipped

    def upscale(self, image: Any, *, upscaler: str, factor: float) -> Any:
        if self._upscalers is None:
            from sdweb.images.upscale import upscale_image

            return upscale_image(image, upscaler=upscaler, mode=0, factor=factor)
        return self._upscalers.upscale(image, upscaler=upscaler, mode=0, factor=factor)


class ScriptService:
    """The scripts of both tabs, from the plugins; checks and queues script requests."""

    def __init__(
        self,
        *,
        generation: GenerationService,
        plugins: Any,
        options: OptionsStore,
        samplers: Callable[[], Any],
        models: Any = None,
        styles: Any = None,
        upscalers: Any = None,
    ) -> None:
        self.generation = generation
        self.options = options
        self.samplers = samplers
        self.models = models
        self.styles = styles
        self.upscalers = upscalers
        self._plugins = plugins
        self._lock = threading.Lock()
        self._scripts: list[ScriptSpec] | None = None
        self._axes: list[XyzAxis] | None = None

    # -- what exists ---------------------------------------------------------------------------
    def all_scripts(self) -> list[ScriptSpec]:
        """Every script, built-ins first, each title once (a clash keeps the first and logs both names)."""
        with self._lock:
            if self._scripts is None:
                self._scripts = _collect(self._plugins, "register_scripts", ScriptSpec,
                                         key=lambda spec: spec.title.lower(), what="script")
            return list(self._scripts)

    def scripts(self, mode: ScriptMode) -> list[ScriptSpec]:
        return [spec for spec in self.all_scripts() if mode in spec.modes]

    def axes(self) -> list[XyzAxis]:
        """Every X/Y/Z axis (both tabs), A1111's first, then the extensions'."""
        with self._lock:
            if self._axes is None:
                collected = _collect(self._plugins, "register_xyz_axes", XyzAxis,
                                     key=lambda axis: (axis.label.lower(), axis.modes), what="X/Y/Z axis")
                self._axes = collected
            return list(self._axes)

    def environment(self) -> ScriptEnvironmentImpl:
        return ScriptEnvironmentImpl(self)

    def find(self, name: str, mode: ScriptMode) -> ScriptSpec:
        """The script titled ``name`` (any case) in ``mode``; :class:`ScriptError` lists the known ones."""
        wanted = name.strip().lower()
        for spec in self.scripts(mode):
            if spec.title.lower() == wanted:
                return spec
        other = [spec.title for spec in self.all_scripts() if spec.title.lower() == wanted]
        if other:
            raise ScriptError(f"script_name: {other[0]!r} is not available in {mode}")
        known = ", ".join(spec.title for spec in self.scripts(mode))
        raise ScriptError(f"script_name: script {name!r} not found; {mode} scripts: {known}")

    # -- running -------------------------------------------------------------------------------
    def prepare(self, name: str, args: Sequence[Any] | None, params: GenerationParams, *,
                init_images: Sequence[Any] = (), mask: Any = None) -> tuple[ScriptSpec, PreparedScript]:
        """Check a script request and plan it.

        Raises:
            ScriptError: a bad script name or argument.
            GenerationError: a planned request names an unknown sampler, model, style ...
        """
        mode: ScriptMode = "img2img" if isinstance(params, Img2ImgParams) else "txt2img"
        spec = self.find(name, mode)
        if mode == "img2img" and not init_images:
            raise ScriptError(f"{spec.title} needs an init image")
        filled = fill_arguments(spec.title, spec.args, args)
        call = ScriptCall(mode=mode, params=params, args=filled, env=self.environment(),
                          init_images=tuple(init_images), mask=mask)
        prepared = spec.prepare(call)
        self.generation.check(params)
        for planned in _distinct(prepared.planned):
            try:
                type(planned).model_validate(planned.model_dump())  # apply() may have used model_copy
            except ValidationError as exc:
                raise ScriptError(f"{spec.title}: {format_validation_error(exc)}") from None
            try:
                self.generation.check(planned)
            except GenerationError as exc:
                raise GenerationError(f"{spec.title}: {exc.message}", status=exc.status) from exc
        if prepared.summary:
            logger.info("%s", prepared.summary)
        return spec, prepared

    def submit(self, name: str, args: Sequence[Any] | None, params: GenerationParams, *,
               init_images: Sequence[Any] = (), mask: Any = None, save: bool = True, source: str = "ui",
               job_id: str | None = None) -> Job:
        """Check (see :meth:`prepare`) and queue the script as one job."""
        spec, prepared = self.prepare(name, args, params, init_images=init_images, mask=mask)
        upscalers = self.upscalers

        def body(runner: JobRunner) -> GenerationResult:
            return prepared.run(ScriptContextImpl(runner, upscalers))

        return self.generation.submit_script(params, body, job_count=prepared.job_count, save=save,
                                             source=source, job_id=job_id, label=spec.title)

    def run(self, name: str, args: Sequence[Any] | None, params: GenerationParams,
            **kwargs: Any) -> GenerationResult:
        """Submit and wait (the API's and the CLI's blocking form)."""
        return self.submit(name, args, params, **kwargs).wait()

    def describe(self, mode: ScriptMode) -> list[dict[str, Any]]:
        """``/script-info`` entries of ``mode`` (A1111's shape: name, is_alwayson, is_img2img, args)."""
        env = self.environment()
        described = []
        for spec in self.scripts(mode):
            args = []
            for arg in spec.args:
                args.append({"label": arg.label, "value": arg.default, "minimum": arg.minimum,
                             "maximum": arg.maximum, "step": arg.step, "choices": arg.choices_now(env, mode)})
            described.append({"name": spec.title.lower(), "is_alwayson": False,
                              "is_img2img": mode == "img2img", "args": args})
        return described


def _distinct(planned: Sequence[GenerationParams]) -> list[GenerationParams]:
    """Each differently-set request once (checking 100 cells that differ only in seed once is enough)."""
    seen: set[str] = set()
    distinct = []
    for params in planned:
        key = params.model_copy(update={"seed": -1, "subseed": -1}).model_dump_json()
        if key not in seen:
            seen.add(key)
            distinct.append(params)
    return distinct


def _collect(plugins: Any, hook: str, kind: type, *, key: Callable[[Any], Any], what: str) -> list[Any]:
    found: list[Any] = []
    owners: dict[Any, str] = {}
    if plugins is None:
        return found
    for plugin, items in plugins.collect(hook):
        for item in items or ():
            if not isinstance(item, kind):
                logger.error("extension %r: %s returned %r, not a %s; ignored", plugin, hook, item,
                             kind.__name__)
                continue
            name = key(item)
            if name in owners:
                logger.error("%s %r of extension %r is already registered by %r; ignored", what,
                             getattr(item, "title", getattr(item, "label", item)), plugin, owners[name])
                continue
            owners[name] = plugin
            found.append(item)
    return found

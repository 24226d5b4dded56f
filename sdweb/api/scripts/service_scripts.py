"""The scripts of :class:`sdweb.services.scripts.service.ScriptService` in the API: X/Y/Z plot, prompt matrix,
prompts from file, loopback, SD upscale, and the ones extensions register.

Each becomes a :class:`ScriptHandler` named by its title in lower case (A1111's ``script_name``), with
A1111's positional ``script_args``. Such a script runs many requests and combines their results, so it
queues its own job (:meth:`ScriptHandler.submit`): the script service checks the arguments and every
request the script will make before anything is queued; a bad one is a 422 naming it, an unknown
sampler or model in one the status the generation service gives.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sdweb.api.errors import ApiError
from sdweb.api.models import Txt2ImgRequest
from sdweb.api.scripts.base import ImageJob, ScriptHandler
from sdweb.scripting import ScriptError, ScriptSpec
from sdweb.services.generation import GenerationError

logger = logging.getLogger(__name__)


class ServiceScriptHandler(ScriptHandler):
    """One script of the script service, for the routes of the tabs it shows in."""

    def __init__(self, spec: ScriptSpec, environment: Any) -> None:
        self.spec = spec
        self._environment = environment
        self.name = spec.title.lower()  # type: ignore[misc]  # per instance: one handler per script
        self.txt2img = "txt2img" in spec.modes  # type: ignore[misc]
        self.img2img = "img2img" in spec.modes  # type: ignore[misc]

    def args_info(self) -> list[dict[str, Any]]:
        mode = "txt2img" if self.txt2img else "img2img"
        described = []
        for arg in self.spec.args:
            try:
                choices = arg.choices_now(self._environment, mode)
            except Exception:  # a listing that needs the engine: describe the argument without it
                logger.debug("could not list the choices of %s", arg.name, exc_info=True)
                choices = None
            described.append({"label": arg.label, "value": arg.default, "minimum": arg.minimum,
                              "maximum": arg.maximum, "step": arg.step, "choices": choices})
        return described

    def parse(self, args: Sequence[Any], request: Txt2ImgRequest) -> Any:
        if len(args) > len(self.spec.args):
            names = ", ".join(arg.name for arg in self.spec.args)
            raise ApiError(422, f"script_args: {self.spec.title} takes at most {len(self.spec.args)} values "
                                f"[{names}] (got {len(args)})")
        return list(args)

    def submit(self, job: ImageJob, parsed: Any, *, services: Any, save: bool, job_id: str | None) -> Any:
        try:
            return services.scripts.submit(self.spec.title, parsed, job.params, init_images=job.images,
                                           mask=job.mask, save=save, source="api", job_id=job_id)
        except ScriptError as exc:
            message = str(exc)
            if not message.lower().startswith(self.spec.title.lower()):
                message = f"{self.spec.title}: {message}"  # say which script refused
            raise ApiError(422, message) from exc
        except GenerationError as exc:
            raise ApiError(exc.status, exc.message) from exc


def service_script_handlers(services: Any) -> list[ScriptHandler]:
    """A handler for every script the services know (none when they have no script service)."""
    scripts = getattr(services, "scripts", None)
    if scripts is None:
        return []
    environment = scripts.environment()
    return [ServiceScriptHandler(spec, environment) for spec in scripts.all_scripts()]

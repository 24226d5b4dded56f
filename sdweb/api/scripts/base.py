"""A1111 scripts in the API: how a script plugs into ``txt2img`` / ``img2img`` requests.

A1111 runs scripts named in a request: one selectable script (``script_name`` with positional
``script_args``) and any number of "always on" ones (``alwayson_scripts: {"name": {"args": [...]}}``,
ControlNet's way in). Here each is a :class:`ScriptHandler`, found by its name (any case) in the
:class:`ScriptRegistry` the router is built with; the generation routes never name a script.

How a handler plugs in (subclass :class:`ScriptHandler`, add an instance to
:func:`sdweb.api.scripts.builtin_scripts`):

1. ``name`` (lower case, as A1111's API matches titles), ``alwayson``, and on which routes it runs
   (``txt2img``, ``img2img``); ``args_info()`` describes its arguments for ``GET /script-info``.
2. ``parse(args, request)`` checks its arguments before any work is done (images are not decoded yet)
   and returns them typed; a bad one is an ``ApiError`` 422 naming it (``script_args[0] (pixels)...``).
3. ``apply(job, parsed)`` returns the :class:`ImageJob` to queue: the request's parameters, init images
   and mask as the script changes them (outpainting pads the picture and makes the mask). Always-on
   scripts apply first, in request order, then the selected one.
4. A script that runs many requests and combines them (X/Y/Z plot ...) queues the job itself:
   ``submit(job, parsed, services=..., save=..., job_id=...)`` returns the generation job to wait for
   (default None: the route queues ``job`` as one request).

A name no handler has is refused with 422 (never a silently different image).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from PIL import Image

from sdweb.api.errors import ApiError
from sdweb.api.models import Img2ImgRequest, ScriptInfo, Txt2ImgRequest
from sdweb.params import GenerationParams

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageJob:
    """What a request becomes before it is queued: parameters, and for img2img its init images and mask."""

    params: GenerationParams
    images: list[Image.Image] = field(default_factory=list)
    mask: Image.Image | None = None


class ScriptHandler:
    """One A1111 script the API runs. The defaults take no arguments and change nothing."""

    #: The script's title in lower case: what ``script_name`` / an ``alwayson_scripts`` key must say.
    name: ClassVar[str] = ""
    #: An always-on script (``alwayson_scripts``) rather than a selectable one (``script_name``).
    alwayson: ClassVar[bool] = False
    #: The routes that offer it.
    txt2img: ClassVar[bool] = True
    img2img: ClassVar[bool] = True

    def args_info(self) -> list[dict[str, Any]]:
        """Its arguments as ``GET /script-info`` describes them (label, value, minimum, choices...)."""
        return []

    def parse(self, args: Sequence[Any], request: Txt2ImgRequest) -> Any:
        """The checked arguments; ApiError 422 naming a bad one."""
        return None

    def apply(self, job: ImageJob, parsed: Any) -> ImageJob:
        """The job to queue once the script has done its part."""
        return job

    def submit(self, job: ImageJob, parsed: Any, *, services: Any, save: bool, job_id: str | None) -> Any:
        """Queue ``job`` yourself and return the generation job (``Job``) to wait for; None: the route
        queues it. Bad arguments found now are an ``ApiError`` (nothing queued).
        """
        return None


@dataclass(frozen=True)
class PlannedScript:
    """A script a request runs, with its checked arguments."""

    handler: ScriptHandler
    args: Any


def _key(name: str | None) -> str:
    return str(name or "").strip().lower()


class ScriptRegistry:
    """The scripts the API runs, by name; built once with the router (no module-level state)."""

    def __init__(self, handlers: Iterable[ScriptHandler] = ()) -> None:
        self._handlers: dict[str, ScriptHandler] = {}
        for handler in handlers:
            key = _key(handler.name)
            if not key or key in self._handlers:
                raise ValueError(f"script handler {type(handler).__name__}: name {handler.name!r} is empty "
                                 "or taken")
            self._handlers[key] = handler

    def find(self, name: str | None, *, img2img: bool, alwayson: bool = False) -> ScriptHandler | None:
        """The handler called ``name`` (any case) that runs on that route in that role, else None."""
        handler = self._handlers.get(_key(name))
        if handler is None or handler.alwayson != alwayson:
            return None
        return handler if (handler.img2img if img2img else handler.txt2img) else None

    def names(self, *, img2img: bool) -> list[str]:
        """The scripts a route offers, as ``GET /scripts`` lists them (A1111: always-on ones too)."""
        return [key for key, handler in self._handlers.items()
                if (handler.img2img if img2img else handler.txt2img)]

    def infos(self) -> list[ScriptInfo]:
        """``GET /script-info``: each script once per route it runs on (txt2img first)."""
        infos = []
        for is_img2img in (False, True):
            for key in self.names(img2img=is_img2img):
                handler = self._handlers[key]
                infos.append(ScriptInfo(name=key, is_alwayson=handler.alwayson, is_img2img=is_img2img,
                                        args=[dict(arg) for arg in handler.args_info()]))
        return infos

    def problems(self, request: Txt2ImgRequest) -> list[str]:
        """Why the scripts the request names cannot run here (for the request's 422), else nothing."""
        img2img = isinstance(request, Img2ImgRequest)
        problems = []
        if request.script_name and self.find(request.script_name, img2img=img2img) is None:
            problems.append(f"script_name: Script {request.script_name!r} not found (scripts are not "
                            "supported yet)")
        unknown = [name for name in (request.alwayson_scripts or {})
                   if self.find(name, img2img=img2img, alwayson=True) is None]
        if unknown:
            problems.append(f"alwayson_scripts: always on script(s) {', '.join(sorted(unknown))} not found "
                            "(scripts are not supported yet)")
        return problems

    def plan(self, request: Txt2ImgRequest) -> list[PlannedScript]:
        """The scripts the request runs, always-on ones first, each with its checked arguments.

        Call after :meth:`problems` found none.
        """
        img2img = isinstance(request, Img2ImgRequest)
        planned = []
        for name, value in (request.alwayson_scripts or {}).items():
            handler = self.find(name, img2img=img2img, alwayson=True)
            if handler is None:
                raise ApiError(422, f"alwayson_scripts: always on script {name} not found")
            args = value.get("args", []) if isinstance(value, dict) else None
            if not isinstance(args, list):
                raise ApiError(422, f'alwayson_scripts.{name}: expected {{"args": [...]}} (got {value!r})')
            planned.append(PlannedScript(handler, handler.parse(args, request)))
        if request.script_name:
            handler = self.find(request.script_name, img2img=img2img)
            if handler is None:
                raise ApiError(422, f"script_name: Script {request.script_name!r} not found")
            planned.append(PlannedScript(handler, handler.parse(list(request.script_args or []), request)))
        return planned

    @staticmethod
    def apply(planned: Sequence[PlannedScript], job: ImageJob) -> ImageJob:
        """The job after each planned script, in order."""
        for script in planned:
            job = script.handler.apply(job, script.args)
        return job

    @staticmethod
    def submit(planned: Sequence[PlannedScript], job: ImageJob, *, services: Any, save: bool,
               job_id: str | None) -> Any:
        """The generation job the selected script queued itself, or None (the route queues ``job``)."""
        for script in reversed(planned):
            if not script.handler.alwayson:
                return script.handler.submit(job, script.args, services=services, save=save, job_id=job_id)
        return None

"""A1111 scripts the API runs (``script_name`` / ``alwayson_scripts``); the seam is :mod:`.base`.

* :mod:`.base`: :class:`ScriptHandler` (what a script implements), :class:`ScriptRegistry` (what the
  routes ask), :class:`ImageJob`.
* :mod:`.outpaint`: "Poor man's outpainting" (img2img).
* :mod:`.controlnet`: the sd-webui-controlnet extension's ``alwayson_scripts.controlnet`` units.
* :mod:`.service_scripts`: the script service's scripts (X/Y/Z plot, prompt matrix, SD upscale ...,
  and those extensions register), which queue their own jobs.

:func:`builtin_scripts` is the registry the router is built with: a new script is a module here plus
one line there.
"""

from __future__ import annotations

import logging
from typing import Any

from sdweb.api.scripts.base import ImageJob, PlannedScript, ScriptHandler, ScriptRegistry
from sdweb.api.scripts.controlnet import ControlNetHandler
from sdweb.api.scripts.outpaint import OutpaintHandler
from sdweb.api.scripts.service_scripts import service_script_handlers

logger = logging.getLogger(__name__)

__all__ = ["ImageJob", "PlannedScript", "ScriptHandler", "ScriptRegistry", "builtin_scripts"]


def builtin_scripts(services: Any = None) -> ScriptRegistry:
    """The scripts sdweb runs itself: poor man's outpainting, and the script service's (with ``services``)."""
    return ScriptRegistry([OutpaintHandler(), ControlNetHandler(), *service_script_handlers(services)])

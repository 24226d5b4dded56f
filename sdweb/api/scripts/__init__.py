"""A1111 scripts the API runs (``script_name`` / ``alwayson_scripts``); the seam is :mod:`.base`.

* :mod:`.base`: :class:`ScriptHandler` (what a script implements), :class:`ScriptRegistry` (what the
  routes ask), :class:`ImageJob`.
* :mod:`.outpaint`: "Poor man's outpainting" (img2img).

:func:`builtin_scripts` is the registry the router is built with: a new script is a module here plus
one line there.
"""

from __future__ import annotations

import logging

from sdweb.api.scripts.base import ImageJob, PlannedScript, ScriptHandler, ScriptRegistry
from sdweb.api.scripts.outpaint import OutpaintHandler

logger = logging.getLogger(__name__)

__all__ = ["ImageJob", "PlannedScript", "ScriptHandler", "ScriptRegistry", "builtin_scripts"]


def builtin_scripts() -> ScriptRegistry:
    """The scripts sdweb runs itself."""
    return ScriptRegistry([OutpaintHandler()])

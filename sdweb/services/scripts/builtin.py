"""The built-in scripts and X/Y/Z axes, registered through the same hooks an extension uses.

``build_services`` registers this module with the plugin host as "builtin-scripts", before any
extension, so A1111's scripts and axes come first in every list.
"""

from __future__ import annotations

import logging

from sdweb.config import OptionSpec
from sdweb.plugin_api import hookimpl
from sdweb.scripting import ScriptSpec, XyzAxis
from sdweb.services.scripts import loopback, prompt_matrix, prompts_from_file, sd_upscale, xyz_plot
from sdweb.services.scripts.axes import builtin_axes

logger = logging.getLogger(__name__)

PLUGIN_NAME = "builtin-scripts"


@hookimpl
def register_scripts() -> list[ScriptSpec]:
    # A1111's order in its Script dropdown.
    return [prompt_matrix.SCRIPT, prompts_from_file.SCRIPT, xyz_plot.SCRIPT, loopback.SCRIPT,
            sd_upscale.SCRIPT]


@hookimpl
def register_xyz_axes() -> list[XyzAxis]:
    return builtin_axes()


@hookimpl
def register_settings() -> list[OptionSpec]:
    return [
        OptionSpec("script_max_images", xyz_plot.DEFAULT_MAX_IMAGES,
                   "Most images one script run (X/Y/Z plot, prompt matrix ...) may make", "Scripts",
                   minimum=1, maximum=100_000),
    ]

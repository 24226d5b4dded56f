"""The sampler and schedule type lists of a form, filled once the page is up.

Listing the samplers may build the engine's sampler registry (it imports diffusers), so the dropdowns
start with only the default as a choice and get the real lists when a page opens; the page is never
held up by it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import gradio as gr

from sdweb.ui import controls
from sdweb.ui.components.messages import error_html

logger = logging.getLogger(__name__)


def sampler_choices(services: Any) -> tuple[list[str], list[str]]:
    """Sampler and schedule names (may build the sampler registry: run after the page is up)."""
    registry = services.samplers()
    return list(registry.names()), list(registry.schedule_names())


def wire_sampler_lists(
    demo: gr.Blocks, services: Any, form: Mapping[str, Any], message: gr.HTML | None = None
) -> None:
    """Fill ``form``'s sampler and schedule dropdowns when a page opens, keeping a valid pick.

    A failure is shown in ``message``; without one (another tab already shows it) it is only logged
    and the dropdowns keep their default.
    """

    def fill_samplers(sampler: str, schedule: str) -> dict[Any, Any]:
        try:
            samplers, schedules = sampler_choices(services)
        except Exception as exc:  # shown, not raised: the rest of the page still works
            logger.exception("could not list the samplers")
            if message is None:
                return {}
            return {message: error_html(f"Could not list the samplers: {exc}")}
        return controls.sampler_dropdown_updates(form, samplers, schedules, sampler, schedule)

    outputs = {form["sampler_name"], form["scheduler"]}
    if message is not None:
        outputs.add(message)
    demo.load(
        fill_samplers,
        inputs=[form["sampler_name"], form["scheduler"]],
        outputs=outputs,
        show_progress="hidden",
        concurrency_limit=None,
    )

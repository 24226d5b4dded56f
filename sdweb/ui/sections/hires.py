"""The "Hires. fix" accordion of txt2img: a second, img2img pass at a larger size (A1111's controls).

Its components hold request fields (``enable_hr``, ``hr_scale``, ``hr_upscaler``... of
:class:`~sdweb.params.GenerationParams`), so they go into the form as they are and "send to txt2img"
restores them. The second pass's sampler lists are filled when a page opens (they need the engine's
sampler registry), with "Use same sampler" / "Use same scheduler" (value ``""``) first.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import gradio as gr

from sdweb.images.upscale import LATENT_UPSCALE_MODES, list_upscalers
from sdweb.ui import controls
from sdweb.ui.components.samplers import sampler_choices
from sdweb.ui.sections.base import PARAMETERS, FormSection, SectionContext

logger = logging.getLogger(__name__)

#: The hires sampler dropdowns' first choice (value ""): the first pass's sampler / schedule type.
HIRES_SAME_SAMPLER = "Use same sampler"
HIRES_SAME_SCHEDULE = "Use same scheduler"


def hires_upscaler_names(upscalers: Any = None) -> list[str]:
    """The hires fix upscalers: the latent modes, then the pixel upscalers (A1111's order).

    ``upscalers``: the ``UpscalerService`` (adds the models/ESRGAN models); None: the built-ins only.
    """
    if upscalers is not None:
        return upscalers.hires_names()
    return [*LATENT_UPSCALE_MODES, *(info.name for info in list_upscalers())]


def hires_sampler_choices(
    samplers: list[str], schedules: list[str]
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The hires fix sampler and schedule dropdowns' choices: "the first pass's" ("") first."""
    return (
        [(HIRES_SAME_SAMPLER, ""), *((name, name) for name in samplers)],
        [(HIRES_SAME_SCHEDULE, ""), *((name, name) for name in schedules)],
    )


def render_hires_fix(
    form: dict[str, Any], defaults: Mapping[str, Any], upscalers: Any = None, *, prefix: str = "txt2img"
) -> None:
    """The "Hires. fix" accordion; its components go into ``form`` under their request field names."""
    with gr.Accordion("Hires. fix", open=False, elem_id=f"{prefix}-hires"):
        form["enable_hr"] = gr.Checkbox(
            value=defaults["enable_hr"], label="Enable hires. fix", elem_id=f"{prefix}-enable-hr"
        )
        # Two controls a row: three would wrap every label in the parameters column.
        with gr.Row():
            form["hr_upscaler"] = gr.Dropdown(
                label="Upscaler",
                choices=hires_upscaler_names(upscalers),
                value=defaults["hr_upscaler"],
                elem_id=f"{prefix}-hr-upscaler",
            )
            form["hr_second_pass_steps"] = gr.Slider(
                0,
                150,
                value=defaults["hr_second_pass_steps"],
                step=1,
                label="Hires steps",
                info="0: as many as the first pass",
                elem_id=f"{prefix}-hr-steps",
            )
        with gr.Row():
            controls.render_denoising_slider(form, defaults, prefix=prefix)
            form["hr_scale"] = gr.Slider(
                1.0,
                4.0,
                value=defaults["hr_scale"],
                step=0.05,
                label="Upscale by",
                elem_id=f"{prefix}-hr-scale",
            )
        with gr.Row():
            form["hr_resize_x"] = gr.Slider(
                0,
                2048,
                value=defaults["hr_resize_x"],
                step=8,
                label="Resize width to",
                info="0: use Upscale by",
                elem_id=f"{prefix}-hr-resize-x",
            )
            form["hr_resize_y"] = gr.Slider(
                0,
                2048,
                value=defaults["hr_resize_y"],
                step=8,
                label="Resize height to",
                info="0: use Upscale by",
                elem_id=f"{prefix}-hr-resize-y",
            )
        # The second pass's own sampler and prompts; "" (the first choice, an empty box) = the first pass's.
        # The sampler lists are filled on page load (HiresFixSection.wire_page_load).
        with gr.Row():
            form["hr_sampler_name"] = gr.Dropdown(
                label="Hires sampling method",
                choices=[(HIRES_SAME_SAMPLER, "")],
                value=defaults["hr_sampler_name"],
                elem_id=f"{prefix}-hr-sampler",
            )
            form["hr_scheduler"] = gr.Dropdown(
                label="Hires schedule type",
                choices=[(HIRES_SAME_SCHEDULE, "")],
                value=defaults["hr_scheduler"],
                elem_id=f"{prefix}-hr-scheduler",
            )
        form["hr_prompt"] = gr.Textbox(
            label="Hires prompt",
            placeholder="empty: the prompt above",
            lines=2,
            max_lines=20,
            elem_id=f"{prefix}-hr-prompt",
        )
        form["hr_negative_prompt"] = gr.Textbox(
            label="Hires negative prompt",
            placeholder="empty: the negative prompt above",
            lines=2,
            max_lines=20,
            elem_id=f"{prefix}-hr-negative-prompt",
        )


def wire_hires_samplers(demo: gr.Blocks, services: Any, sampler: gr.Dropdown, schedule: gr.Dropdown) -> None:
    """Fill the hires fix sampler lists when a page opens (they need the engine's sampler registry)."""

    def fill(current_sampler: str, current_schedule: str) -> dict[Any, Any]:
        try:
            samplers, schedules = sampler_choices(services)
        except Exception:  # txt2img's own lists say so already; "Use same sampler" still works
            logger.exception("could not list the samplers")
            return {}
        sampler_items, schedule_items = hires_sampler_choices(samplers, schedules)
        return {
            sampler: gr.update(
                choices=sampler_items, value=current_sampler if current_sampler in samplers else ""
            ),
            schedule: gr.update(
                choices=schedule_items, value=current_schedule if current_schedule in schedules else ""
            ),
        }

    demo.load(
        fill,
        inputs=[sampler, schedule],
        outputs={sampler, schedule},
        show_progress="hidden",
        concurrency_limit=None,
    )


class HiresFixSection(FormSection):
    """Hires fix as a form section: the accordion under the CFG scale, its sampler lists on page load."""

    slot = PARAMETERS

    def __init__(self) -> None:
        self._form: dict[str, Any] = {}

    def render(self, ctx: SectionContext) -> None:
        render_hires_fix(ctx.form, ctx.defaults, getattr(ctx.services, "upscalers", None), prefix=ctx.tab)
        self._form = ctx.form

    def wire_page_load(self, demo: gr.Blocks, services: Any) -> None:
        sampler, schedule = self._form.get("hr_sampler_name"), self._form.get("hr_scheduler")
        if sampler is not None and schedule is not None:
            wire_hires_samplers(demo, services, sampler, schedule)

"""What the form changes for SD 3.x and Flux checkpoints: the "Distilled CFG Scale" slider and the defaults.

* "Distilled CFG Scale" (Forge's label; the request field ``distilled_cfg_scale``) is Flux dev's guidance
  input. It shows while a Flux dev checkpoint is selected; other models ignore the value.
* When the selected checkpoint's kind changes (an SD 1.x/XL UNet <-> a Flux or SD 3.x transformer), or a
  page opens on a Flux / SD 3.x checkpoint, steps, CFG scale, Distilled CFG Scale, sampler and size switch
  to that family's defaults (:mod:`sdweb.engine.families.defaults`: Flux dev 20 steps, CFG 1, distilled
  3.5; schnell 4 steps; SD 3.5 Large 28 steps at CFG 3.5...). Switching between two models of the same
  kind keeps what the user set.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from sdweb.ui.sections.base import PARAMETERS, FormSection, SectionContext

logger = logging.getLogger(__name__)

#: The form fields the family defaults set.
SWITCHED = ("steps", "cfg_scale", "distilled_cfg_scale", "sampler_name", "width", "height")


def family_kind(family: str | None) -> str:
    """``flow`` (SD 3.x, Flux) or ``unet`` (everything else)."""
    return "flow" if family and str(family).startswith(("flux", "sd3")) else "unet"


def defaults_for(services: Any, title: str | None) -> tuple[str | None, dict[str, Any]]:
    """The checkpoint's family and the form values its family suggests (``distilled_cfg_scale`` kept when
    the family has none).
    """
    models = services.models
    family = models.family_of(title) if hasattr(models, "family_of") else None
    defaults = models.family_defaults(title) if hasattr(models, "family_defaults") else None
    if defaults is None:
        return family, {}
    values = {name: getattr(defaults, name) for name in SWITCHED if getattr(defaults, name) is not None}
    return family, values


class ModelFamilySection(FormSection):
    """The Distilled CFG Scale slider and the switch to a model family's defaults."""

    slot = PARAMETERS

    def render(self, ctx: SectionContext) -> None:
        form, services = ctx.form, ctx.services
        checkpoint = form.get("checkpoint")
        form["distilled_cfg_scale"] = gr.Slider(
            0.0,
            30.0,
            value=ctx.defaults["distilled_cfg_scale"],
            step=0.1,
            label="Distilled CFG Scale",
            info="Flux dev's guidance (CFG Scale 1 = one pass, no negative prompt)",
            visible=checkpoint is None,  # a form without a checkpoint choice (img2img) always shows it
            elem_id=f"{ctx.tab}-distilled-cfg",
        )
        if checkpoint is None:
            return
        kind = gr.State(None)
        switched = [form[name] for name in SWITCHED]

        def on_checkpoint(title: str | None, previous: str | None) -> list[Any]:
            family, values = defaults_for(services, title)
            now = family_kind(family)
            apply = now != previous if previous is not None else now == "flow"
            updates: list[Any] = [
                gr.update(value=values[name]) if apply and name in values else gr.update()
                for name in SWITCHED
            ]
            visible = bool(family and str(family).startswith("flux-dev"))
            updates[SWITCHED.index("distilled_cfg_scale")] = gr.update(
                visible=visible, **({"value": values["distilled_cfg_scale"]} if apply and visible else {})
            )
            return [*updates, now]

        checkpoint.change(
            on_checkpoint,
            inputs=[checkpoint, kind],
            outputs=[*switched, kind],
            show_progress="hidden",
            concurrency_limit=None,
        )

"""The "Script" dropdown of txt2img and img2img (A1111's place: the bottom of the parameters column).

Choosing a script (X/Y/Z plot, prompt matrix, prompts from file, and in img2img loopback and SD
upscale; the ones extensions add too) shows its controls, built from its arguments
(:class:`sdweb.scripting.ScriptArg`, A1111's order and labels). With a script chosen, Generate queues
the script (:meth:`sdweb.services.scripts.service.ScriptService.submit`) instead of one request: the
section's :meth:`ScriptSection.job_submitter`. A script's bad argument is refused before anything is
queued, with the script's own message.

X/Y/Z plot gets two conveniences of A1111's: the value list of an axis with choices (samplers,
checkpoints, VAEs ...) is a multi-select of them when its type is chosen, and a line under the axes
says how many images the plot will make once values are typed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gradio as gr

from sdweb.scripting import ScriptArg, ScriptError, ScriptMode, ScriptSpec
from sdweb.services.generation import GenerationError
from sdweb.ui.sections.base import SCRIPTS, FormSection, SectionContext

logger = logging.getLogger(__name__)

NONE = "None"


def _elem_id(tab: str, spec: ScriptSpec, arg: ScriptArg) -> str:
    slug = "".join(ch if ch.isalnum() else "-" for ch in spec.title.lower()).strip("-")
    return f"{tab}-script-{slug}-{arg.name.replace('_', '-')}"


def render_argument(arg: ScriptArg, choices: list[str] | None, elem_id: str) -> Any:
    """The gradio control of one script argument."""
    common: dict[str, Any] = {"label": arg.label, "elem_id": elem_id}
    if arg.help:
        common["info"] = arg.help
    if arg.kind == "checkbox":
        return gr.Checkbox(value=bool(arg.default), **common)
    if arg.kind == "slider":
        return gr.Slider(arg.minimum or 0, arg.maximum or 100, value=arg.default, step=arg.step or 1,
                         **common)
    if arg.kind == "number":
        return gr.Number(value=arg.default, minimum=arg.minimum, maximum=arg.maximum, **common)
    if arg.kind in ("dropdown", "radio") and choices:
        value = arg.default
        if isinstance(value, int) and not isinstance(value, bool):
            value = choices[value] if 0 <= value < len(choices) else choices[0]  # A1111's index default
        value = value if value in choices else choices[0]
        maker = gr.Radio if arg.kind == "radio" else gr.Dropdown
        return maker(choices=choices, value=value, **common)
    if arg.kind == "multiselect":  # shown when there is something to choose (an X/Y/Z axis with choices)
        return gr.Dropdown(choices=choices or [], value=list(arg.default or []), multiselect=True,
                           visible=bool(choices), **common)
    if arg.kind == "html":
        return gr.HTML(f'<p class="sdweb-note">{arg.label}</p>', elem_id=elem_id, js_on_load=None)
    lines = 4 if arg.name in ("prompt_txt",) else 1
    return gr.Textbox(value=str(arg.default or ""), lines=lines, **common)


class ScriptSection(FormSection):
    """The Script dropdown and each script's controls (one group shown at a time)."""

    slot = SCRIPTS

    def __init__(self, services: Any, mode: ScriptMode) -> None:
        self.services = services
        self.mode = mode
        self.choice: Any = None
        #: title -> the components of its arguments, in A1111's order.
        self.controls: dict[str, list[Any]] = {}
        self._summary: Any = None

    def specs(self) -> list[ScriptSpec]:
        scripts = getattr(self.services, "scripts", None)
        return scripts.scripts(self.mode) if scripts is not None else []

    def render(self, ctx: SectionContext) -> None:
        specs = self.specs()
        if not specs:
            return
        env = self.services.scripts.environment()
        self.choice = gr.Dropdown([NONE, *(spec.title for spec in specs)], value=NONE, label="Script",
                                  elem_id=f"{ctx.tab}-script")
        groups = []
        for spec in specs:
            with gr.Group(visible=False, elem_id=f"{ctx.tab}-script-group-{len(groups)}") as group:
                components = []
                for arg in spec.args:
                    try:
                        choices = arg.choices_now(env, self.mode)
                    except Exception:  # a list that needs the engine: filled when a page opens
                        logger.debug("no choices yet for %s", arg.name, exc_info=True)
                        choices = None
                    components.append(render_argument(arg, choices, _elem_id(ctx.tab, spec, arg)))
                self.controls[spec.title] = components
                if spec.title == "X/Y/Z plot":
                    self._wire_xyz(ctx, components)
            groups.append(group)

        def show(title: str) -> list[Any]:
            return [gr.update(visible=spec.title == title) for spec in specs]

        self.choice.change(show, inputs=self.choice, outputs=groups, show_progress="hidden", queue=False)

    def _wire_xyz(self, ctx: SectionContext, components: list[Any]) -> None:
        """Axis type -> its choices in the values multi-select; a line saying how many images it makes."""
        env = self.services.scripts.environment()
        self._summary = gr.HTML("", elem_id=f"{ctx.tab}-script-xyz-summary", js_on_load=None)

        def axis_choices(axis_type: Any) -> Any:
            from sdweb.services.scripts.xyz_plot import find_axis

            try:
                axis = find_axis(axis_type, env.xyz_axes(self.mode), arg="axis")
                choices = list(axis.choices(env)) if axis.choices is not None else []
            except (ScriptError, LookupError, ValueError):
                choices = []
            except Exception:  # the sampler list needs the engine, which may still be starting
                logger.exception("could not list the values of the axis %r", axis_type)
                choices = []
            return gr.update(choices=choices, value=[], visible=bool(choices))

        for offset in (0, 3, 6):
            components[offset].change(axis_choices, inputs=components[offset], outputs=components[offset + 2],
                                      show_progress="hidden")

        def count(*values: Any) -> str:
            from sdweb.ui.components.messages import note_html

            try:
                sizes = []
                for offset in (0, 3, 6):
                    axis_values = xyz_value_count(env, self.mode, values[offset], values[offset + 1],
                                                  values[offset + 2], bool(values[17]))
                    sizes.append(axis_values)
            except (ScriptError, ValueError) as exc:
                return note_html(str(exc))
            x, y, z = sizes
            return note_html(f"{x * y * z} cell(s): {z} grid(s) of {x}x{y}")

        for component in (*components[:9], components[17]):
            component.change(count, inputs=components, outputs=self._summary, show_progress="hidden")

    def job_submitter(self, data: Mapping[Any, Any]) -> Callable[..., Any] | None:
        """With a script chosen: ``submit(params, images, mask) -> Job`` queueing it; else None."""
        if self.choice is None:
            return None
        title = data.get(self.choice)
        if not title or title == NONE:
            return None
        args = [data.get(component) for component in self.controls.get(title, [])]
        scripts = self.services.scripts

        def submit(params: Any, images: Sequence[Any] = (), mask: Any = None) -> Any:
            try:
                return scripts.submit(title, args, params, init_images=images, mask=mask, source="ui")
            except ScriptError as exc:  # shown like any refused request
                raise GenerationError(str(exc), status=422) from exc

        return submit

    def inputs(self) -> Sequence[Any]:
        if self.choice is None:
            return ()
        return [self.choice, *(item for components in self.controls.values() for item in components)]


def xyz_value_count(env: Any, mode: ScriptMode, axis_type: Any, text: Any, chosen: Any,
                    csv_mode: bool) -> int:
    """How many values an X/Y/Z axis has as typed (1 for "Nothing" or while nothing is typed)."""
    from sdweb.services.scripts.ranges import join_values, parse_values
    from sdweb.services.scripts.xyz_plot import find_axis

    axis = find_axis(axis_type, env.xyz_axes(mode), arg="axis")
    if axis.label == "Nothing":
        return 1
    source = str(text or "")
    if axis.choices is not None and not csv_mode and chosen:
        source = join_values([str(item) for item in chosen])
    values = parse_values(source, axis.value_type)
    return max(1, len(values))

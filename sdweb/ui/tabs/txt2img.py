"""The txt2img tab: prompts, parameters, Generate / Interrupt / Skip, live progress and results.

Layout follows A1111: prompts on top, parameters on the left, results on the right. This module owns
the tab's layout and its generate handler; the pieces it shares with img2img (result panel, job runner,
checkpoint selector, styles, token counter, sampler lists) are in :mod:`sdweb.ui.components`, and
feature accordions (hires fix...) plug into the form as :mod:`sdweb.ui.sections`, so this module
names no feature.

The generate handler submits to OUR GPU queue (``services.generation.submit``) and polls the job
(:func:`sdweb.ui.components.jobs.run_job`), so several users can press Generate at once; gradio's own
queue is not allowed to hold them back (``concurrency_limit=None``) and each user sees their position
in ours. :class:`Txt2ImgTab` is what other tabs need to "send to txt2img".
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import gradio as gr
from pydantic import ValidationError

from sdweb.params import format_validation_error
from sdweb.safepath import for_client
from sdweb.ui import controls
from sdweb.ui.components.checkpoints import checkpoint_titles, module_names, render_checkpoint_selector
from sdweb.ui.components.jobs import SessionJobs, run_job, wire_interrupt_skip
from sdweb.ui.components.messages import error_html, note_html
from sdweb.ui.components.page_load import wire_form_lists
from sdweb.ui.components.paste import PASTE_LABEL, read_prompt_parameters
from sdweb.ui.components.results import render_result_panel
from sdweb.ui.components.samplers import sampler_choices, wire_sampler_lists
from sdweb.ui.components.styles import render_styles_picker
from sdweb.ui.components.tokens import render_token_counter, wire_token_counters
from sdweb.ui.fields import FORM_DEFAULTS, FORM_FIELDS, params_from_form, sent_values
from sdweb.ui.sections import (
    PARAMETERS,
    SCRIPTS,
    FormSections,
    SectionContext,
    SectionError,
    txt2img_sections,
)

logger = logging.getLogger(__name__)

TAB_ID = "txt2img"


@dataclass
class Txt2ImgTab:
    """What other tabs need from txt2img: its form components, to fill them ("send to txt2img")."""

    form: dict[str, gr.components.Component]
    tabs: gr.Tabs
    message: gr.HTML
    checkpoint_choices: Callable[[], list[str]]
    #: ``() -> (sampler names, schedule names)``; None in tests that have no sampler registry.
    sampler_choices: Callable[[], tuple[list[str], list[str]]] | None = None
    #: The results' "Send to img2img" button and the result state it sends from (None in tests).
    send_to_img2img: gr.Button | None = None
    view: gr.State | None = None
    #: The form's feature sections (hires fix...), for their page-load wiring.
    sections: FormSections = field(default_factory=FormSections)
    #: The settings (A1111's send_seed / send_size decide what a "Send to" fills); None in tests.
    options: Any = None
    #: The "VAE / Text Encoder" selector (the forge_additional_modules setting) and its choices; a paste
    #: with Forge's "Module N" keys sets both. None in tests without it.
    modules: Any = None
    module_choices: Callable[[], list[str]] | None = None

    def outputs(self) -> set[Any]:
        extra = {self.modules} if self.modules is not None else set()
        return {*self.form.values(), self.tabs, self.message, *extra, *self.sections.fill_outputs()}

    def fill(self, values: Mapping[str, Any], notes: list[str] | None = None) -> dict[Any, Any]:
        """Updates that put ``values`` into the form and switch to the txt2img tab."""
        updates: dict[Any, Any] = {}
        for name, value in sent_values(values, self.options).items():
            component = self.form.get(name)
            if component is None:
                continue
            if name == "checkpoint":
                choices = self.checkpoint_choices()
                if value not in choices:
                    continue
                updates[component] = gr.update(value=value, choices=choices)
            else:
                updates[component] = value
        names = values.get("additional_modules")
        if names is not None and self.modules is not None:
            # Like choosing them in the selector: the setting the next SD 3.x / Flux load uses.
            if self.options is not None:
                self.options.update({"forge_additional_modules": list(names)})
            choices = self.module_choices() if self.module_choices is not None else []
            updates[self.modules] = gr.update(value=list(names), choices=sorted({*choices, *names}))
        notes = [*(notes or ()), *self._unknown_sampler_notes(values)]
        updates.update(self.sections.fill(values, notes))
        updates[self.tabs] = gr.Tabs(selected=TAB_ID)
        text = "Parameters restored." + (" " + "; ".join(notes) + "." if notes else "")
        updates[self.message] = note_html(text)
        return updates

    def _unknown_sampler_notes(self, values: Mapping[str, Any]) -> list[str]:
        """Say so when a pasted sampler or schedule type is not installed here (Generate would refuse it)."""
        if self.sampler_choices is None or not ({"sampler_name", "scheduler"} & set(values)):
            return []
        try:
            samplers, schedules = self.sampler_choices()
        except Exception:  # noqa: BLE001 - the note is a courtesy; Generate checks again
            logger.exception("could not list the samplers")
            return []
        notes = []
        for key, known, what in (
            ("sampler_name", samplers, "sampler"),
            ("scheduler", schedules, "schedule type"),
        ):
            if key in values and values[key] not in known:
                notes.append(f"{what} {values[key]!r} is not available here (known: {', '.join(known)})")
        return notes

    def wire_send(
        self, trigger: Any, fn: Callable[..., tuple[Mapping[str, Any], list[str]] | None], inputs: list[Any]
    ) -> None:
        """On ``trigger``, call ``fn(*inputs) -> (values, notes)`` and fill the form with the values.

        ``fn`` returns None (or raises ``gr.Error``) when there is nothing to send.
        """

        def send(*args: Any) -> dict[Any, Any]:
            got = fn(*args)
            if got is None:
                return {}
            values, notes = got
            return self.fill(values, notes)

        trigger(send, inputs=inputs, outputs=self.outputs(), show_progress="hidden")


def render_txt2img_tab(services: Any, tabs: gr.Tabs, sections: FormSections | None = None) -> Txt2ImgTab:
    """Lay out the tab's components and wire them. Call inside an open ``gr.Tab``.

    ``sections``: the form's feature sections (default :func:`sdweb.ui.sections.txt2img_sections`).
    """
    jobs = SessionJobs()
    form: dict[str, Any] = {}
    defaults = FORM_DEFAULTS
    sections = txt2img_sections(services) if sections is None else sections
    section_ctx = SectionContext(services=services, tab=TAB_ID, form=form, defaults=defaults)

    # 1. Prompts, checkpoint and the action buttons.
    with gr.Row(equal_height=False):
        with gr.Column(scale=6):
            checkpoint = render_checkpoint_selector(services, form, prefix=TAB_ID)
            form["prompt"] = gr.Textbox(
                label="Prompt",
                lines=3,
                max_lines=20,
                elem_id="txt2img-prompt",
                placeholder="Prompt (press Ctrl+Enter to generate)",
            )
            prompt_tokens = render_token_counter("txt2img-prompt-tokens")
            form["negative_prompt"] = gr.Textbox(
                label="Negative prompt", lines=2, max_lines=20, elem_id="txt2img-negative-prompt"
            )
            negative_tokens = render_token_counter("txt2img-negative-tokens")
        with gr.Column(scale=2, min_width=220):
            generate = gr.Button("Generate", variant="primary", elem_id="txt2img-generate")
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id="txt2img-interrupt", size="sm", min_width=80)
                skip = gr.Button("Skip", elem_id="txt2img-skip", size="sm", min_width=80)
            # A1111's ↙ button: the generation parameters pasted into the prompt fill the whole form.
            paste = gr.Button(PASTE_LABEL, size="sm", elem_id="txt2img-paste")
            styles = render_styles_picker(form, prefix=TAB_ID)

    # 2. Parameters (left) and results (right).
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            controls.render_sampler_and_steps(form, defaults, prefix=TAB_ID)
            with gr.Row():
                with gr.Column(scale=5):
                    controls.render_size_sliders(form, defaults, prefix=TAB_ID)
                swap = gr.Button("⇅", elem_classes="sdweb-tool", scale=0, elem_id="txt2img-swap-size")
                with gr.Column(scale=3, min_width=140):
                    controls.render_batch_sliders(form, defaults, prefix=TAB_ID)
            controls.render_cfg_slider(form, defaults, prefix=TAB_ID)
            sections.render(section_ctx, PARAMETERS)
            with gr.Row():
                random_seed = controls.render_seed_input(form, defaults, prefix=TAB_ID)
                reuse_seed = gr.Button("♻️", elem_classes="sdweb-tool", scale=0, elem_id="txt2img-reuse-seed")
            random_subseed, reuse_subseed = controls.render_variation_seed(form, defaults, prefix=TAB_ID)
            controls.render_override_settings(form, defaults, prefix=TAB_ID)
            sections.render(section_ctx, SCRIPTS)
        with gr.Column(scale=1):
            panel = render_result_panel(TAB_ID)
            send_to_img2img = gr.Button("Send to img2img", size="sm", elem_id="txt2img-send-to-img2img")
    message, view = panel.message, panel.view
    unread = set(form) - set(FORM_FIELDS)
    assert not unread, f"{sorted(unread)}: not in sdweb.ui.fields.FORM_FIELDS, the request would drop them"

    # 3. Wiring.
    wire_token_counters(services, form, prompt_tokens, negative_tokens)
    swap.click(
        lambda w, h: (h, w),
        inputs=[form["width"], form["height"]],
        outputs=[form["width"], form["height"]],
        show_progress="hidden",
        queue=False,
    )
    random_seed.click(lambda: -1, outputs=form["seed"], show_progress="hidden", queue=False)
    random_subseed.click(lambda: -1, outputs=form["subseed"], show_progress="hidden", queue=False)
    reuse_seed.click(
        lambda v: v.seed(services.generation.last_seed),
        inputs=view,
        outputs=form["seed"],
        show_progress="hidden",
    )
    reuse_subseed.click(lambda v: v.subseed(), inputs=view, outputs=form["subseed"], show_progress="hidden")
    checkpoint.wire(services, message)
    styles.wire(services, form, message)

    # 4. Generate: submit to our queue, then poll the job and stream progress to this user.
    async def run_generation(data: dict[Any, Any], request: gr.Request) -> Any:
        values = {name: data[component] for name, component in form.items()}
        try:
            params = params_from_form(values, sections.request_values(data))
        except (ValidationError, SectionError) as exc:
            text = format_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
            gr.Warning(for_client(text))
            yield {panel.progress: error_html(text)}
            return
        own = sections.job_submitter(data)  # a script queues its own job
        submit = partial(own, params) if own else partial(services.generation.submit, params, source="ui")
        async for update in run_job(services, submit, panel, jobs, request):
            yield update

    generate.click(
        run_generation,
        inputs={*form.values(), *sections.inputs()},
        outputs=panel.outputs(),
        concurrency_limit=None,
        show_progress="hidden",
        trigger_mode="once",
    )
    wire_interrupt_skip(services, jobs, interrupt, skip, message)

    tab = Txt2ImgTab(
        options=services.options,
        form=form,
        tabs=tabs,
        message=message,
        checkpoint_choices=partial(checkpoint_titles, services),
        sampler_choices=lambda: sampler_choices(services),
        send_to_img2img=send_to_img2img,
        view=view,
        sections=sections,
        modules=checkpoint.modules,
        module_choices=partial(module_names, services),
    )
    tab.wire_send(paste.click, partial(read_prompt_parameters, services), [form["prompt"]])
    return tab


def wire_page_load(demo: gr.Blocks, services: Any, tab: Txt2ImgTab) -> None:
    """Fill the form's lists when a page opens: checkpoints and styles (files and styles change while
    the server runs), the samplers (they need the engine's registry), then the sections' own lists.
    """
    wire_form_lists(demo, services, tab.form)
    wire_sampler_lists(demo, services, tab.form, tab.message)
    tab.sections.wire_page_load(demo, services)

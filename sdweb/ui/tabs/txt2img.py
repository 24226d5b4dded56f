"""The txt2img tab: prompts, parameters, Generate / Interrupt / Skip, live progress and results.

Layout follows A1111: prompts on top, parameters on the left, results on the right. The generate
handler submits to OUR GPU queue (``services.generation.submit``) and polls the job, so several users
can press Generate at once; gradio's own queue is not allowed to hold them back
(``concurrency_limit=None``) and each user sees their position in ours.

The pure pieces (token counts, progress text, values from a result) are module functions tested
without a browser; :func:`render_txt2img_tab` only lays out components and wires them.
"""

from __future__ import annotations

import asyncio
import html
import logging
import math
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import gradio as gr
from pydantic import ValidationError

from sdweb.images.upscale import LATENT_UPSCALE_MODES, list_upscalers
from sdweb.params import GenerationResult, JobProgress, format_validation_error
from sdweb.prompts.tokens import CHUNK_TOKENS, TokenCount, texts_for_token_count
from sdweb.services.generation import GenerationError
from sdweb.ui import controls
from sdweb.ui.fields import FORM_DEFAULTS, FORM_FIELDS, params_from_form
from sdweb.ui.tabs.download import render_download_section

logger = logging.getLogger(__name__)

#: The side the bundled demo model was trained at (demo_model/dataset.py's IMAGE_SIZE).
DEMO_MODEL_SIZE = 64

#: How often the generate handler looks at its job (seconds).
POLL_INTERVAL = 0.3
TAB_ID = "txt2img"

_TOKEN_RE = re.compile(r"[A-Za-z]+|\d|[^\sA-Za-z\d]")
_LORA_RE = re.compile(r"<[^<>]*>")
_WEIGHT_RE = re.compile(r":\s*-?\d+(?:\.\d+)?\s*(?=[)\]])")


# ---------------------------------------------------------------------------------------------
# Pure pieces
# ---------------------------------------------------------------------------------------------


def estimate_tokens(text: str) -> int:
    """A rough CLIP token count for when the real tokenizer is not loaded yet.

    Words count one token each (long ones more), digits and punctuation one each; extra-network
    tags (``<lora:x:1>``), emphasis brackets and weights are not sent to CLIP and are dropped.
    """
    text = _LORA_RE.sub(" ", text)
    text = _WEIGHT_RE.sub("", text)
    text = re.sub(r"(?<!\\)[()\[\]]", " ", text).replace("BREAK", " ")
    count = 0
    for token in _TOKEN_RE.findall(text):
        count += max(1, math.ceil(len(token) / 8)) if token.isalpha() else 1
    return count


def token_counter_text(
    text: str,
    counter: Callable[[str], tuple[int, int]] | None,
    *,
    steps: int = 20,
    negative: bool = False,
) -> str:
    """A1111's counter: ``12/75``, then ``80/150`` once the prompt spills into a second chunk.

    ``counter`` is the engine's tokenizer (``services.token_counter``); until it exists the count is
    estimated over the texts A1111 would count (``AND`` parts, prompt-editing variants over ``steps``).
    """
    if counter is not None:
        try:
            tokens, limit = counter(text)
            return _counter_html(tokens, limit, estimated=False)
        except LookupError:
            pass  # the engine (and its tokenizer) is not up yet
        except Exception:  # the counter is a convenience; never let it break typing
            logger.debug("token counter failed; estimating", exc_info=True)
    try:
        texts = texts_for_token_count(text, int(steps or 1), negative=negative) or [text]
    except Exception:  # noqa: BLE001 - half-typed syntax: estimate the raw text
        texts = [text]
    count = TokenCount.from_counts(estimate_tokens(part) for part in texts)
    return _counter_html(count.count, count.limit, estimated=True)


def _counter_html(tokens: int, limit: int, *, estimated: bool) -> str:
    over = " sdweb-tokens-over" if limit > CHUNK_TOKENS else ""
    title = "estimated (the tokenizer loads with the model)" if estimated else "CLIP tokens / chunk limit"
    prefix = "~" if estimated else ""
    return f'<div class="sdweb-tokens{over}" title="{title}">{prefix}{tokens}/{limit}</div>'


def _format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    minutes, secs = divmod(seconds, 60)
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def progress_html(progress: JobProgress) -> str:
    """The progress line a user sees: queue position, batch, step, percentage, ETA."""
    if progress.state == "queued":
        position = progress.queue_position
        where = f"position {position} in the queue" if position else "starting"
        return f'<div class="sdweb-progress">Waiting for the GPU: {where}…</div>'
    percent = int(progress.fraction * 100)
    parts = []
    if progress.job_count > 1:
        parts.append(f"Batch {min(progress.job_no + 1, progress.job_count)}/{progress.job_count}")
    if progress.sampling_steps:
        parts.append(f"Step {progress.sampling_step}/{progress.sampling_steps}")
    parts.append(f"{percent}%")
    eta = progress.eta_seconds
    if eta is not None:
        parts.append(f"ETA {_format_seconds(eta)}")
    if progress.interrupted:
        parts.append("interrupting…")
    text = " · ".join(parts)
    return (
        f'<div class="sdweb-progress"><div class="sdweb-progress-bar">'
        f'<div style="width:{percent}%"></div></div>{html.escape(text)}</div>'
    )


def error_html(message: str) -> str:
    return f'<div class="sdweb-error">{html.escape(message)}</div>'


def note_html(message: str) -> str:
    return f'<div class="sdweb-note">{html.escape(message)}</div>'


def infotext_html(infotext: str) -> str:
    if not infotext:
        return ""
    return f'<div class="sdweb-infotext">{html.escape(infotext)}</div>'


def finished_html(result: GenerationResult, seconds: float | None) -> str:
    count = len(result.images)
    noun = "image" if count == 1 else "images"
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    if result.interrupted:
        return note_html(f"Interrupted: kept {count} {noun} made so far{took}.")
    return note_html(f"Done: {count} {noun}{took}.")


@dataclass
class ResultView:
    """One user's last result, kept in a ``gr.State``: what the gallery shows and which is selected."""

    seeds: list[int] = field(default_factory=list)
    subseeds: list[int] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    selected: int = 0
    #: What the gallery shows (saved paths, else the images), for "send to img2img".
    items: list[Any] = field(default_factory=list)

    @classmethod
    def of(cls, result: GenerationResult) -> ResultView:
        return cls(
            seeds=list(result.seeds),
            subseeds=list(result.subseeds),
            infotexts=list(result.infotexts),
            items=gallery_items(result),
        )

    def pick(self, index: int) -> ResultView:
        return ResultView(self.seeds, self.subseeds, self.infotexts, selected=index, items=self.items)

    @property
    def item(self) -> Any:
        """The selected image (a saved file's path or the image itself), or None before a result."""
        if 0 <= self.selected < len(self.items):
            return self.items[self.selected]
        return None

    @property
    def infotext(self) -> str:
        if 0 <= self.selected < len(self.infotexts):
            return self.infotexts[self.selected]
        return ""

    def seed(self, fallback: int | None) -> int:
        """The selected image's seed (A1111's ♻️), else the last seed this server used, else -1."""
        if 0 <= self.selected < len(self.seeds):
            return self.seeds[self.selected]
        return fallback if fallback is not None else -1

    def subseed(self) -> int:
        if 0 <= self.selected < len(self.subseeds):
            return self.subseeds[self.selected]
        return -1


def gallery_items(result: GenerationResult) -> list[Any]:
    """Saved files when the images were saved (served from outputs/), else the images themselves."""
    if result.paths and len(result.paths) == len(result.images):
        return list(result.paths)
    return list(result.images)


class SessionJobs:
    """Which job each browser session is running, so Interrupt/Skip reach only the user's own job."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, str] = {}

    def start(self, session: str, job_id: str) -> None:
        with self._lock:
            self._jobs[session] = job_id

    def finish(self, session: str, job_id: str) -> None:
        with self._lock:
            if self._jobs.get(session) == job_id:
                del self._jobs[session]

    def get(self, session: str) -> str | None:
        with self._lock:
            return self._jobs.get(session)


def _session_of(request: gr.Request | None) -> str:
    return str(getattr(request, "session_hash", None) or "anonymous")


# ---------------------------------------------------------------------------------------------
# Results and job progress, shared by the txt2img and img2img tabs
# ---------------------------------------------------------------------------------------------


@dataclass
class ResultPanel:
    """The right-hand column of a generating tab: messages, progress, preview, gallery, infotext."""

    message: gr.HTML
    progress: gr.HTML
    preview: gr.Image
    gallery: gr.Gallery
    infotext: gr.HTML
    #: The user's last result (:class:`ResultView`).
    view: gr.State

    def outputs(self) -> set[Any]:
        return {self.progress, self.message, self.preview, self.gallery, self.infotext, self.view}


def render_result_panel(prefix: str) -> ResultPanel:
    """Lay out a :class:`ResultPanel` (elem ids ``{prefix}-progress`` ...) and wire image selection."""
    message = gr.HTML("", elem_id=f"{prefix}-message", js_on_load=None)
    progress = gr.HTML("", elem_id=f"{prefix}-progress", js_on_load=None)
    preview = gr.Image(
        label="Preview", visible=False, interactive=False, elem_id=f"{prefix}-preview", height=320
    )
    gallery = gr.Gallery(
        label="Output",
        columns=2,
        height=480,
        object_fit="contain",
        elem_id=f"{prefix}-gallery",
        interactive=False,
        format="png",
        fit_columns=False,
    )
    infotext = gr.HTML("", elem_id=f"{prefix}-infotext", js_on_load=None)
    view = gr.State(ResultView())

    def show_selected(current: ResultView, evt: gr.SelectData) -> tuple[ResultView, str]:
        picked = current.pick(int(evt.index)) if isinstance(evt.index, int) else current
        return picked, infotext_html(picked.infotext)

    gallery.select(show_selected, inputs=view, outputs=[view, infotext], show_progress="hidden")
    return ResultPanel(message, progress, preview, gallery, infotext, view)


async def run_job(
    services: Any,
    submit: Callable[[], Any],
    panel: ResultPanel,
    jobs: SessionJobs,
    request: gr.Request | None,
) -> AsyncIterator[dict[Any, Any]]:
    """Submit a job to our GPU queue (``submit()`` returns the Job), stream its progress, show the result.

    Yields gradio updates for ``panel``'s components. A refused request (GenerationError) is shown, not
    raised; the job is registered under the user's session so Interrupt/Skip reach it.
    """
    try:
        job = await asyncio.to_thread(submit)
    except GenerationError as exc:
        gr.Warning(exc.message)
        yield {panel.progress: error_html(exc.message)}
        return
    session = _session_of(request)
    jobs.start(session, job.id)
    yield {panel.message: ""}
    shown_preview: Any = None
    try:
        while job.task is not None and not job.task.done:
            state = services.generation.progress(job)
            update: dict[Any, Any] = {panel.progress: progress_html(state)}
            if state.preview is not None and state.preview is not shown_preview:
                shown_preview = state.preview
                update[panel.preview] = gr.update(value=shown_preview, visible=True)
            yield update
            await asyncio.sleep(POLL_INTERVAL)
    finally:
        jobs.finish(session, job.id)
    yield _finished_updates(job, panel)


def _finished_updates(job: Any, panel: ResultPanel) -> dict[Any, Any]:
    hide_preview = gr.update(value=None, visible=False)
    if job.task is not None and job.task.cancelled:
        # Interrupted while still queued: it never reached the GPU.
        return {
            panel.progress: note_html("Interrupted before it started; nothing was made."),
            panel.message: "",
            panel.preview: hide_preview,
        }
    try:
        result = job.wait(timeout=0)
    except GenerationError as exc:
        gr.Warning(exc.message)
        return {panel.progress: error_html(exc.message), panel.preview: hide_preview}
    started = job.progress.started_at
    seconds = time.monotonic() - started if started is not None else None
    result_view = ResultView.of(result)
    return {
        panel.progress: finished_html(result, seconds),
        panel.message: "",
        panel.preview: hide_preview,
        panel.gallery: gr.update(value=result_view.items, selected_index=0 if result.images else None),
        panel.infotext: infotext_html(result_view.infotext),
        panel.view: result_view,
    }


def wire_interrupt_skip(
    services: Any, jobs: SessionJobs, interrupt: gr.Button, skip: gr.Button, message: gr.HTML
) -> None:
    """Interrupt / Skip reach only the job this browser session started from the tab."""

    def interrupt_job(request: gr.Request) -> str:
        job_id = jobs.get(_session_of(request))
        if job_id is None or not services.generation.interrupt(job_id):
            return note_html("Nothing of yours is running.")
        return note_html("Interrupting… the images finished so far are kept.")

    def skip_image(request: gr.Request) -> str:
        job_id = jobs.get(_session_of(request))
        if job_id is None or not services.generation.skip(job_id):
            return note_html("Nothing of yours is running.")
        return note_html("Skipping the current image…")

    interrupt.click(interrupt_job, outputs=message, concurrency_limit=None, show_progress="hidden")
    skip.click(skip_image, outputs=message, concurrency_limit=None, show_progress="hidden")


def hires_upscaler_names(upscalers: Any = None) -> list[str]:
    """The hires fix upscalers: the latent modes, then the pixel upscalers (A1111's order).

    ``upscalers``: the ``UpscalerService`` (adds the models/ESRGAN models); None: the built-ins only.
    """
    if upscalers is not None:
        return upscalers.hires_names()
    return [*LATENT_UPSCALE_MODES, *(info.name for info in list_upscalers())]


# ---------------------------------------------------------------------------------------------
# The tab
# ---------------------------------------------------------------------------------------------


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

    def outputs(self) -> set[Any]:
        return {*self.form.values(), self.tabs, self.message}

    def fill(self, values: Mapping[str, Any], notes: list[str] | None = None) -> dict[Any, Any]:
        """Updates that put ``values`` into the form and switch to the txt2img tab."""
        updates: dict[Any, Any] = {}
        for name, value in values.items():
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
        notes = [*(notes or ()), *self._unknown_sampler_notes(values)]
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


def render_txt2img_tab(services: Any, tabs: gr.Tabs) -> Txt2ImgTab:
    """Lay out the tab's components and wire them. Call inside an open ``gr.Tab``."""
    jobs = SessionJobs()
    form: dict[str, Any] = {}
    defaults = FORM_DEFAULTS

    def checkpoint_titles() -> list[str]:
        return [info.title for info in services.models.list_checkpoints()]

    def style_names() -> list[str]:
        return [style.name for style in services.styles.list()]

    # 1. Prompts, checkpoint and the action buttons.
    with gr.Row(equal_height=False):
        with gr.Column(scale=6):
            with gr.Row():
                form["checkpoint"] = gr.Dropdown(
                    label="Stable Diffusion checkpoint",
                    choices=[],
                    value=None,
                    allow_custom_value=True,
                    elem_id="txt2img-checkpoint",
                    scale=5,
                )
                refresh_models = gr.Button(
                    "↻", elem_classes="sdweb-tool", scale=0, elem_id="txt2img-refresh-models"
                )
            # Open while the bundled demo is all there is: the way to a real model is right there.
            render_download_section(services, form["checkpoint"],
                                    open_=not services.models.has_own_checkpoint())
            form["prompt"] = gr.Textbox(
                label="Prompt",
                lines=3,
                max_lines=20,
                elem_id="txt2img-prompt",
                placeholder="Prompt (press Ctrl+Enter to generate)",
            )
            prompt_tokens = gr.HTML(
                token_counter_text("", None),
                elem_id="txt2img-prompt-tokens",
                js_on_load=None,
                elem_classes="sdweb-token-box",
            )
            form["negative_prompt"] = gr.Textbox(
                label="Negative prompt", lines=2, max_lines=20, elem_id="txt2img-negative-prompt"
            )
            negative_tokens = gr.HTML(
                token_counter_text("", None),
                elem_id="txt2img-negative-tokens",
                js_on_load=None,
                elem_classes="sdweb-token-box",
            )
        with gr.Column(scale=2, min_width=220):
            generate = gr.Button("Generate", variant="primary", elem_id="txt2img-generate")
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id="txt2img-interrupt", size="sm", min_width=80)
                skip = gr.Button("Skip", elem_id="txt2img-skip", size="sm", min_width=80)
            form["styles"] = gr.Dropdown(
                label="Styles", choices=[], value=[], multiselect=True, elem_id="txt2img-styles"
            )
            with gr.Row():
                apply_styles = gr.Button("Apply styles to prompt", size="sm", elem_id="txt2img-apply-styles")
            with gr.Accordion("Save prompt as a style", open=False):
                style_name = gr.Textbox(label="Style name", elem_id="txt2img-style-name")
                save_style = gr.Button("Save style", size="sm", elem_id="txt2img-save-style")

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
            render_hires_fix(form, defaults, getattr(services, "upscalers", None))
            with gr.Row():
                random_seed = controls.render_seed_input(form, defaults, prefix=TAB_ID)
                reuse_seed = gr.Button("♻️", elem_classes="sdweb-tool", scale=0, elem_id="txt2img-reuse-seed")
            with gr.Accordion("Variation seed", open=False, elem_id="txt2img-variation"):
                with gr.Row():
                    form["subseed"] = gr.Number(
                        value=defaults["subseed"],
                        precision=0,
                        label="Variation seed",
                        elem_id="txt2img-subseed",
                        scale=5,
                    )
                    random_subseed = gr.Button("⚄", elem_classes="sdweb-tool", scale=0)
                    reuse_subseed = gr.Button("♻️", elem_classes="sdweb-tool", scale=0)
                form["subseed_strength"] = gr.Slider(
                    0.0,
                    1.0,
                    value=defaults["subseed_strength"],
                    step=0.01,
                    label="Variation strength",
                    elem_id="txt2img-subseed-strength",
                )
                with gr.Row():
                    form["seed_resize_from_w"] = gr.Slider(
                        -1,
                        2048,
                        value=defaults["seed_resize_from_w"],
                        step=8,
                        label="Resize seed from width",
                        info="-1: off",
                        elem_id="txt2img-seed-resize-w",
                    )
                    form["seed_resize_from_h"] = gr.Slider(
                        -1,
                        2048,
                        value=defaults["seed_resize_from_h"],
                        step=8,
                        label="Resize seed from height",
                        info="-1: off",
                        elem_id="txt2img-seed-resize-h",
                    )
            with gr.Accordion("Override settings", open=False):
                form["clip_skip"] = gr.Slider(
                    0,
                    12,
                    value=defaults["clip_skip"],
                    step=1,
                    label="Clip skip",
                    info="0: use the Clip skip setting",
                    elem_id="txt2img-clip-skip",
                )
        with gr.Column(scale=1):
            panel = render_result_panel(TAB_ID)
            send_to_img2img = gr.Button("Send to img2img", size="sm", elem_id="txt2img-send-to-img2img")
    message, view = panel.message, panel.view
    assert set(form) == set(FORM_FIELDS), "every GenerationParams form field needs a component"

    # 3. Wiring.
    def count_prompt(text: str, steps: float) -> str:
        return token_counter_text(text or "", services.token_counter, steps=int(steps or 1))

    def count_negative(text: str, steps: float) -> str:
        return token_counter_text(text or "", services.token_counter, steps=int(steps or 1), negative=True)

    for box, shown, count in (
        (form["prompt"], prompt_tokens, count_prompt),
        (form["negative_prompt"], negative_tokens, count_negative),
    ):
        box.change(
            count,
            inputs=[box, form["steps"]],
            outputs=shown,
            show_progress="hidden",
            trigger_mode="always_last",
            concurrency_limit=None,
        )

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

    def refresh_checkpoints(current: str | None) -> Any:
        services.models.refresh()
        titles = checkpoint_titles()
        value = current if current in titles else services.models.selected_title()
        return gr.update(choices=titles, value=value)

    refresh_models.click(
        refresh_checkpoints,
        inputs=form["checkpoint"],
        outputs=form["checkpoint"],
        show_progress="hidden",
        concurrency_limit=None,
    )

    def select_checkpoint(title: str | None) -> str:
        text, ok = load_checkpoint(services, title)
        if not ok:
            gr.Warning(text)
            return error_html(text)
        return note_html(text) if text else ""

    form["checkpoint"].input(
        select_checkpoint,
        inputs=form["checkpoint"],
        outputs=message,
        concurrency_limit=None,
        show_progress="minimal",
    )

    def apply_selected_styles(prompt: str, negative: str, names: list[str]) -> tuple[Any, Any, Any, str]:
        if not names:
            return prompt, negative, names, note_html("Pick one or more styles first.")
        try:
            new_prompt, new_negative = services.styles.apply(prompt or "", negative or "", list(names))
        except (LookupError, ValueError) as exc:
            return prompt, negative, names, error_html(str(exc).strip("'\""))
        return new_prompt, new_negative, [], note_html(f"Applied {', '.join(names)} to the prompt.")

    apply_styles.click(
        apply_selected_styles,
        inputs=[form["prompt"], form["negative_prompt"], form["styles"]],
        outputs=[form["prompt"], form["negative_prompt"], form["styles"], message],
        show_progress="hidden",
    )

    def save_prompt_style(name: str, prompt: str, negative: str) -> tuple[Any, str, str]:
        name = (name or "").strip()
        if not name:
            return gr.update(), name, error_html("Give the style a name first.")
        try:
            services.styles.save(_make_style(name, prompt or "", negative or ""))
        except (OSError, ValueError) as exc:
            return gr.update(), name, error_html(f"Could not save the style: {exc}")
        return gr.update(choices=style_names()), "", note_html(f"Saved style {name!r}.")

    save_style.click(
        save_prompt_style,
        inputs=[style_name, form["prompt"], form["negative_prompt"]],
        outputs=[form["styles"], style_name, message],
        show_progress="hidden",
    )

    # 4. Generate: submit to our queue, then poll the job and stream progress to this user.
    async def run_generation(data: dict[Any, Any], request: gr.Request) -> Any:
        values = {name: data[component] for name, component in form.items()}
        try:
            params = params_from_form(values)
        except ValidationError as exc:
            text = format_validation_error(exc)
            gr.Warning(text)
            yield {panel.progress: error_html(text)}
            return
        submit = partial(services.generation.submit, params, source="ui")
        async for update in run_job(services, submit, panel, jobs, request):
            yield update

    generate.click(
        run_generation,
        inputs=set(form.values()),
        outputs=panel.outputs(),
        concurrency_limit=None,
        show_progress="hidden",
        trigger_mode="once",
    )
    wire_interrupt_skip(services, jobs, interrupt, skip, message)

    return Txt2ImgTab(
        form=form,
        tabs=tabs,
        message=message,
        checkpoint_choices=checkpoint_titles,
        sampler_choices=lambda: sampler_choices(services),
        send_to_img2img=send_to_img2img,
        view=view,
    )


#: The hires sampler dropdowns' first choice (value ""): the first pass's sampler / schedule type.
HIRES_SAME_SAMPLER = "Use same sampler"
HIRES_SAME_SCHEDULE = "Use same scheduler"


def render_hires_fix(form: dict[str, Any], defaults: Mapping[str, Any], upscalers: Any = None) -> None:
    """The "Hires. fix" accordion: a second, img2img pass at a larger size (A1111's controls)."""
    with gr.Accordion("Hires. fix", open=False, elem_id="txt2img-hires"):
        form["enable_hr"] = gr.Checkbox(
            value=defaults["enable_hr"], label="Enable hires. fix", elem_id="txt2img-enable-hr"
        )
        # Two controls a row: three would wrap every label in the parameters column.
        with gr.Row():
            form["hr_upscaler"] = gr.Dropdown(
                label="Upscaler",
                choices=hires_upscaler_names(upscalers),
                value=defaults["hr_upscaler"],
                elem_id="txt2img-hr-upscaler",
            )
            form["hr_second_pass_steps"] = gr.Slider(
                0,
                150,
                value=defaults["hr_second_pass_steps"],
                step=1,
                label="Hires steps",
                info="0: as many as the first pass",
                elem_id="txt2img-hr-steps",
            )
        with gr.Row():
            controls.render_denoising_slider(form, defaults, prefix=TAB_ID)
            form["hr_scale"] = gr.Slider(
                1.0,
                4.0,
                value=defaults["hr_scale"],
                step=0.05,
                label="Upscale by",
                elem_id="txt2img-hr-scale",
            )
        with gr.Row():
            form["hr_resize_x"] = gr.Slider(
                0,
                2048,
                value=defaults["hr_resize_x"],
                step=8,
                label="Resize width to",
                info="0: use Upscale by",
                elem_id="txt2img-hr-resize-x",
            )
            form["hr_resize_y"] = gr.Slider(
                0,
                2048,
                value=defaults["hr_resize_y"],
                step=8,
                label="Resize height to",
                info="0: use Upscale by",
                elem_id="txt2img-hr-resize-y",
            )
        # The second pass's own sampler and prompts; "" (the first choice, an empty box) = the first pass's.
        # The sampler lists are filled on page load (sdweb.ui.app.wire_hires_samplers).
        with gr.Row():
            form["hr_sampler_name"] = gr.Dropdown(
                label="Hires sampling method",
                choices=[(HIRES_SAME_SAMPLER, "")],
                value=defaults["hr_sampler_name"],
                elem_id="txt2img-hr-sampler",
            )
            form["hr_scheduler"] = gr.Dropdown(
                label="Hires schedule type",
                choices=[(HIRES_SAME_SCHEDULE, "")],
                value=defaults["hr_scheduler"],
                elem_id="txt2img-hr-scheduler",
            )
        form["hr_prompt"] = gr.Textbox(
            label="Hires prompt",
            placeholder="empty: the prompt above",
            lines=2,
            max_lines=20,
            elem_id="txt2img-hr-prompt",
        )
        form["hr_negative_prompt"] = gr.Textbox(
            label="Hires negative prompt",
            placeholder="empty: the negative prompt above",
            lines=2,
            max_lines=20,
            elem_id="txt2img-hr-negative-prompt",
        )


def load_checkpoint(services: Any, title: str | None) -> tuple[str, bool]:
    """Load the checkpoint picked in the dropdown; return (what to tell the user, whether it worked).

    A failed load keeps the previous model (ModelService's rule); the reason is shown, not raised.
    """
    if not title:
        return "", True
    try:
        info = services.models.select(title)
    except LookupError as exc:
        return str(exc).strip("'\""), False
    except Exception as exc:  # noqa: BLE001 - any load failure becomes a message for the user
        logger.info("checkpoint %s could not be loaded: %s", title, exc)
        return f"Could not load {title}: {exc}; the previous model stays selected", False
    return f"Loaded {getattr(info, 'title', title)}.", True


def load_choices(services: Any) -> dict[str, Any]:
    """Values the page asks for once loaded: checkpoints, selection, styles (fast, no torch)."""
    titles = [info.title for info in services.models.list_checkpoints()]
    return {
        "checkpoints": titles,
        "checkpoint": services.models.selected_title(),
        "styles": [style.name for style in services.styles.list()],
    }


def sampler_choices(services: Any) -> tuple[list[str], list[str]]:
    """Sampler and schedule names (may build the sampler registry: run after the page is up)."""
    registry = services.samplers()
    return list(registry.names()), list(registry.schedule_names())


def _make_style(name: str, prompt: str, negative: str) -> Any:
    from sdweb.prompts.styles import PromptStyle

    return PromptStyle(name=name, prompt=prompt, negative_prompt=negative)


def wire_page_load(demo: gr.Blocks, services: Any, tab: Txt2ImgTab) -> None:
    """Fill the dropdowns when a page opens: lists change while the server runs (new files, styles)."""
    form = tab.form

    def fill_lists(current_checkpoint: str | None, width: int, height: int) -> dict[Any, Any]:
        choices = load_choices(services)
        value = current_checkpoint if current_checkpoint in choices["checkpoints"] else choices["checkpoint"]
        updates = {
            form["checkpoint"]: gr.update(choices=choices["checkpoints"], value=value),
            form["styles"]: gr.update(choices=choices["styles"]),
        }
        # A fresh install has only the bundled demo model, which was trained at 64x64 and draws noise
        # at the usual 512: start the size where it works (a size the user already changed is kept).
        if (choices["checkpoints"] and not services.models.has_own_checkpoint()
                and (width, height) == (FORM_DEFAULTS["width"], FORM_DEFAULTS["height"])):
            updates[form["width"]] = DEMO_MODEL_SIZE
            updates[form["height"]] = DEMO_MODEL_SIZE
        return updates

    demo.load(
        fill_lists,
        inputs=[form["checkpoint"], form["width"], form["height"]],
        outputs={form["checkpoint"], form["styles"], form["width"], form["height"]},
        show_progress="hidden",
        concurrency_limit=None,
    )

    def fill_samplers(sampler: str, schedule: str) -> dict[Any, Any]:
        try:
            samplers, schedules = sampler_choices(services)
        except Exception as exc:  # shown, not raised: the rest of the page still works
            logger.exception("could not list the samplers")
            return {tab.message: error_html(f"Could not list the samplers: {exc}")}
        return controls.sampler_dropdown_updates(form, samplers, schedules, sampler, schedule)

    demo.load(
        fill_samplers,
        inputs=[form["sampler_name"], form["scheduler"]],
        outputs={form["sampler_name"], form["scheduler"], tab.message},
        show_progress="hidden",
        concurrency_limit=None,
    )

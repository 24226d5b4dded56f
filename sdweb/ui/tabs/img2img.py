"""The img2img tab: an init image plus a prompt -> images; inpainting, outpainting and batches of pictures.

This module owns the tab's layout and its generate handlers. Same queue, progress and results as
txt2img (:mod:`sdweb.ui.components`); the request is an :class:`~sdweb.params.Img2ImgParams` built from
the form, the uploads, the drawn mask and the outpainting choice by
:func:`sdweb.ui.tabs.img2img_inputs.img2img_request`. Uploads are decoded with sdweb's size limit
(:mod:`sdweb.ui.components.uploads`).

* Inpainting: the mask is painted over the init image with a brush or uploaded; mask blur, masked
  content, inpaint area and mask mode apply to either.
* Outpainting: the picture grows on the chosen sides and the new area is inpainted.
* Batch: "Generate batch" runs each uploaded picture as its own job with the same settings; all results
  are saved and shown together (:mod:`sdweb.ui.tabs.img2img_batch`).

Feature accordions plug into the form as :mod:`sdweb.ui.sections`. Other tabs send pictures here
through :meth:`Img2ImgTab.wire_send` ("Send to img2img"), with :func:`values_for_img2img`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import gradio as gr
from PIL import Image
from pydantic import ValidationError

from sdweb.images.mask import MASKED_CONTENT_NAMES
from sdweb.images.outpaint import OUTPAINT_FILLS, OUTPAINT_SIDES
from sdweb.images.resize import RESIZE_MODE_NAMES
from sdweb.params import (
    CFG_SKIP_NUMBERS,
    SCHEDULE_SETTINGS,
    SIGMA_DEFAULTS,
    Img2ImgParams,
    format_validation_error,
)
from sdweb.safepath import for_client
from sdweb.ui import controls
from sdweb.ui.components.jobs import SessionJobs, run_job, wire_interrupt_skip
from sdweb.ui.components.messages import error_html, note_html
from sdweb.ui.components.paste import PASTE_LABEL, read_prompt_parameters
from sdweb.ui.components.results import render_result_panel
from sdweb.ui.components.samplers import wire_sampler_lists
from sdweb.ui.components.uploads import UploadError
from sdweb.ui.fields import FORM_DEFAULTS, img2img_params_from_form, sent_values
from sdweb.ui.sections import (
    PARAMETERS,
    SCRIPTS,
    FormSections,
    SectionContext,
    SectionError,
    img2img_sections,
)
from sdweb.ui.tabs.img2img_batch import batch_paths, run_batch
from sdweb.ui.tabs.img2img_inputs import (
    OutpaintChoice,
    editor_value_for,
    img2img_request,
    picture_job,
    size_for_upload,
)

logger = logging.getLogger(__name__)
TAB_ID = "img2img"
#: "Inpaint area" choices: label -> ``inpaint_full_res``.
INPAINT_AREAS: tuple[tuple[str, bool], ...] = (("Whole picture", False), ("Only masked", True))
#: "Mask mode" choices: label -> ``inpainting_mask_invert``.
MASK_MODES: tuple[tuple[str, bool], ...] = (("Inpaint masked", False), ("Inpaint not masked", True))
#: The outpainting fills' labels.
OUTPAINT_FILL_LABELS: Mapping[str, str] = {"edge": "Stretch the edges", "noise": "Edges with noise"}

_IMG2IMG_DEFAULTS = Img2ImgParams()


@dataclass
class Img2ImgTab:
    """What other tabs need from img2img: the init image and form, to "send to img2img"."""

    image: gr.Image
    #: The inpainting mask upload; a sent picture clears it (a mask belongs to the picture it was made for).
    mask: gr.Image
    form: dict[str, Any]
    tabs: gr.Tabs
    message: gr.HTML
    #: The inpaint editor (the drawn mask); it follows ``image`` on its own (a change event).
    sketch: gr.ImageEditor | None = None
    #: The form's feature sections, for their page-load wiring.
    sections: FormSections = field(default_factory=FormSections)
    #: The settings (A1111's send_seed / send_size decide what a "Send to" fills); None in tests.
    options: Any = None

    def outputs(self) -> set[Any]:
        return {self.image, self.mask, *self.form.values(), self.tabs, self.message,
                *self.sections.fill_outputs()}

    def fill(self, image: Any, values: Mapping[str, Any], notes: list[str] | None = None) -> dict[Any, Any]:
        """Updates that put ``image`` (a path or picture) and ``values`` into the tab and switch to it.

        ``image`` None keeps the tab's picture and mask (parameters read from the prompt).
        """
        updates: dict[Any, Any] = {} if image is None else {self.image: image, self.mask: None}
        for name, value in sent_values(values, self.options).items():
            component = self.form.get(name)
            if component is not None:
                updates[component] = value
        notes = list(notes or ())
        updates.update(self.sections.fill(values, notes))
        updates[self.tabs] = gr.Tabs(selected=TAB_ID)
        text = ("Parameters restored." if image is None else "Image sent to img2img.") + (
            " " + "; ".join(notes) + "." if notes else "")
        updates[self.message] = note_html(text)
        return updates

    def wire_send(
        self,
        trigger: Any,
        fn: Callable[..., tuple[Any, Mapping[str, Any], list[str]] | None],
        inputs: list[Any],
    ) -> None:
        """On ``trigger``, call ``fn(*inputs) -> (image, values, notes)`` and fill the tab with them.

        ``fn`` returns None when there is nothing to send (after telling the user why).
        """

        def send(*args: Any) -> dict[Any, Any]:
            got = fn(*args)
            if got is None:
                return {}
            image, values, notes = got
            return self.fill(image, values, notes)

        trigger(send, inputs=inputs, outputs=self.outputs(), show_progress="hidden")


def render_img2img_tab(services: Any, tabs: gr.Tabs, sections: FormSections | None = None) -> Img2ImgTab:
    """Lay out the tab's components and wire them. Call inside an open ``gr.Tab``.

    ``sections``: the form's feature sections (default :func:`sdweb.ui.sections.img2img_sections`).
    """
    jobs = SessionJobs()
    form: dict[str, Any] = {}
    defaults = FORM_DEFAULTS
    sections = img2img_sections(services) if sections is None else sections
    section_ctx = SectionContext(services=services, tab=TAB_ID, form=form, defaults=defaults)

    # 1. Prompts and the action buttons.
    with gr.Row(equal_height=False):
        with gr.Column(scale=6):
            form["prompt"] = gr.Textbox(label="Prompt", lines=3, max_lines=20, elem_id="img2img-prompt")
            form["negative_prompt"] = gr.Textbox(
                label="Negative prompt", lines=2, max_lines=20, elem_id="img2img-negative-prompt"
            )
        with gr.Column(scale=2, min_width=220):
            generate = gr.Button("Generate", variant="primary", elem_id="img2img-generate")
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id="img2img-interrupt", size="sm", min_width=80)
                skip = gr.Button("Skip", elem_id="img2img-skip", size="sm", min_width=80)
            paste = gr.Button(PASTE_LABEL, size="sm", elem_id="img2img-paste")  # A1111's ↙

    # 2. Image and parameters (left), results (right).
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            image = gr.Image(
                label="Image for img2img",
                type="filepath",
                image_mode=None,
                sources=["upload", "clipboard"],
                height=360,
                elem_id="img2img-image",
            )
            with gr.Accordion("Inpaint: draw or upload a mask", open=False, elem_id="img2img-inpaint"):
                # The editor shows the init image (it follows the upload above); the strokes are the mask.
                sketch = gr.ImageEditor(
                    label="Paint over what to repaint",
                    type="pil",
                    image_mode="RGBA",
                    sources=[],
                    transforms=[],
                    brush=gr.Brush(colors=["#ffffff"], default_color="#ffffff", color_mode="fixed"),
                    layers=gr.LayerOptions(allow_additional_layers=False),
                    format="png",  # lossless: the strokes' edges are the mask's
                    height=360,
                    elem_id="img2img-sketch",
                )
                mask = gr.Image(
                    label="Mask (white: repaint; the image's size)",
                    type="filepath",
                    image_mode=None,
                    sources=["upload", "clipboard"],
                    height=240,
                    elem_id="img2img-mask",
                )
                form["mask_blur"] = gr.Slider(
                    0,
                    64,
                    value=_IMG2IMG_DEFAULTS.mask_blur,
                    step=1,
                    label="Mask blur",
                    elem_id="img2img-mask-blur",
                )
                form["inpainting_mask_invert"] = gr.Radio(
                    list(MASK_MODES), value=False, label="Mask mode", elem_id="img2img-mask-mode"
                )
                form["inpainting_fill"] = gr.Radio(
                    [(name, number) for number, name in MASKED_CONTENT_NAMES.items()],
                    value=_IMG2IMG_DEFAULTS.inpainting_fill,
                    label="Masked content",
                    elem_id="img2img-masked-content",
                )
                form["inpaint_full_res"] = gr.Radio(
                    list(INPAINT_AREAS),
                    value=_IMG2IMG_DEFAULTS.inpaint_full_res,
                    label="Inpaint area",
                    elem_id="img2img-inpaint-area",
                )
                form["inpaint_full_res_padding"] = gr.Slider(
                    0,
                    256,
                    value=_IMG2IMG_DEFAULTS.inpaint_full_res_padding,
                    step=4,
                    label="Only masked padding, pixels",
                    elem_id="img2img-padding",
                )
            with gr.Accordion("Outpainting", open=False, elem_id="img2img-outpaint"):
                outpaint_enabled = gr.Checkbox(
                    value=False, label="Grow the picture (outpaint)", elem_id="img2img-outpaint-enable"
                )
                with gr.Row():
                    outpaint_pixels = gr.Slider(
                        8, 256, value=128, step=8, label="Pixels to expand", elem_id="img2img-outpaint-pixels"
                    )
                    outpaint_fill = gr.Radio(
                        [(OUTPAINT_FILL_LABELS[name], name) for name in OUTPAINT_FILLS],
                        value="edge",
                        label="New area starts from",
                        elem_id="img2img-outpaint-fill",
                    )
                outpaint_sides = gr.CheckboxGroup(
                    list(OUTPAINT_SIDES),
                    value=list(OUTPAINT_SIDES),
                    label="Outpainting direction",
                    elem_id="img2img-outpaint-sides",
                )
                gr.Markdown(
                    "The new area is inpainted with the mask blur and masked content of the Inpaint "
                    "section; the mask blur is also how far the repainting reaches into the picture. "
                    "The output has the grown picture's size (Width and Height do not apply)."
                )
            with gr.Accordion("Batch: several pictures", open=False, elem_id="img2img-batch"):
                batch_files = gr.File(
                    label="Pictures (each is processed with the settings of this tab)",
                    file_count="multiple",
                    file_types=["image"],
                    type="filepath",
                    elem_id="img2img-batch-files",
                )
                generate_batch = gr.Button("Generate batch", elem_id="img2img-generate-batch")
            form["resize_mode"] = gr.Radio(
                [(name, number) for number, name in RESIZE_MODE_NAMES.items()],
                value=_IMG2IMG_DEFAULTS.resize_mode,
                label="Resize mode",
                elem_id="img2img-resize-mode",
            )
            controls.render_sampler_and_steps(form, defaults, prefix=TAB_ID)
            with gr.Row():
                controls.render_size_sliders(form, defaults, prefix=TAB_ID)
            with gr.Row():
                controls.render_batch_sliders(form, defaults, prefix=TAB_ID)
            controls.render_cfg_slider(form, defaults, prefix=TAB_ID)
            controls.render_denoising_slider(form, defaults, prefix=TAB_ID)
            sections.render(section_ctx, PARAMETERS)
            with gr.Row():
                random_seed = controls.render_seed_input(form, defaults, prefix=TAB_ID)
                reuse_seed = gr.Button("♻️", elem_classes="sdweb-tool", scale=0, elem_id="img2img-reuse-seed")
            # The same seed extras and noise settings as txt2img (a pasted infotext's RNG, ENSD, eta...).
            random_subseed, reuse_subseed = controls.render_variation_seed(form, defaults, prefix=TAB_ID)
            controls.render_override_settings(form, defaults, prefix=TAB_ID)
            sections.render(section_ctx, SCRIPTS)
        with gr.Column(scale=1):
            panel = render_result_panel(TAB_ID)

    # 3. Wiring.
    random_seed.click(lambda: -1, outputs=form["seed"], show_progress="hidden", queue=False)
    reuse_seed.click(lambda v: v.seed(services.generation.last_seed), inputs=panel.view, outputs=form["seed"],
                     show_progress="hidden")
    random_subseed.click(lambda: -1, outputs=form["subseed"], show_progress="hidden", queue=False)
    reuse_subseed.click(lambda v: v.subseed(), inputs=panel.view, outputs=form["subseed"],
                        show_progress="hidden")

    def fit_size_to_upload(path: str | None) -> tuple[Any, Any]:
        # Uploading a picture makes its own size the output size (the common img2img wish); the
        # sliders stay free to change afterwards.
        if not path:
            return gr.update(), gr.update()
        try:
            with Image.open(path) as opened:  # the header only: no pixels are decoded here
                width, height = opened.size
        except OSError:
            return gr.update(), gr.update()  # Generate says what is wrong with the file
        return size_for_upload(width, height)

    image.upload(
        fit_size_to_upload,
        inputs=image,
        outputs=[form["width"], form["height"]],
        show_progress="hidden",
    )
    # The mask is drawn on the picture it is for: a new picture (upload, send, clear) starts a clean sheet.
    image.change(editor_value_for, inputs=image, outputs=sketch, show_progress="hidden", queue=False)
    outpaint_inputs = [outpaint_enabled, outpaint_pixels, outpaint_sides, outpaint_fill]

    def outpaint_choice(data: dict[Any, Any]) -> OutpaintChoice:
        return OutpaintChoice(enabled=bool(data[outpaint_enabled]), pixels=int(data[outpaint_pixels] or 0),
                              sides=tuple(data[outpaint_sides] or ()), fill=str(data[outpaint_fill]))

    def form_error(exc: UploadError | ValidationError | SectionError) -> dict[Any, str]:
        """A toast and the progress line saying what is wrong with the form (no job was queued)."""
        text = format_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
        gr.Warning(for_client(text))
        return {panel.progress: error_html(text)}

    async def run_generation(data: dict[Any, Any], request: gr.Request) -> Any:
        values = {name: data[component] for name, component in form.items()}
        try:
            params, images, mask_image = img2img_request(values, data[image], data[mask], drawn=data[sketch],
                                                         outpaint=outpaint_choice(data),
                                                         section_values=sections.request_values(data))
        except (UploadError, ValidationError, SectionError) as exc:
            yield form_error(exc)
            return
        own = sections.job_submitter(data)  # a script queues its own job
        submit = (partial(own, params, images, mask_image) if own else
                  partial(services.generation.submit_img2img, params, images, mask=mask_image, source="ui"))
        async for update in run_job(services, submit, panel, jobs, request):
            yield update

    generate.click(
        run_generation,
        inputs={image, mask, sketch, *outpaint_inputs, *form.values(), *sections.inputs()},
        outputs=panel.outputs(),
        concurrency_limit=None,
        show_progress="hidden",
        trigger_mode="once",
    )

    async def run_batch_generation(data: dict[Any, Any], request: gr.Request) -> Any:
        values = {name: data[component] for name, component in form.items()}
        try:
            paths = batch_paths(data[batch_files])
            params = img2img_params_from_form(values, sections.request_values(data))
        except (UploadError, ValidationError, SectionError) as exc:
            yield form_error(exc)
            return
        # A batch has no mask of its own (each picture would need one); outpainting applies to each.
        choice = outpaint_choice(data)

        def make_job(picture: Image.Image) -> tuple[Img2ImgParams, list[Image.Image], Image.Image | None]:
            return picture_job(params, picture, None, choice)

        async for update in run_batch(services, paths, make_job, panel, jobs, request):
            yield update

    generate_batch.click(
        run_batch_generation,
        inputs={batch_files, *outpaint_inputs, *form.values(), *sections.inputs()},
        outputs=panel.outputs(),
        concurrency_limit=None,
        show_progress="hidden",
        trigger_mode="once",
    )
    wire_interrupt_skip(services, jobs, interrupt, skip, panel.message)
    tab = Img2ImgTab(image=image, mask=mask, form=form, tabs=tabs, message=panel.message, sketch=sketch,
                     sections=sections, options=services.options)

    def paste_parameters(text: str | None) -> tuple[Any, Mapping[str, Any], list[str]] | None:
        got = read_prompt_parameters(services, text)
        return None if got is None else (None, *got)  # the picture stays

    tab.wire_send(paste.click, paste_parameters, [form["prompt"]])
    return tab


def wire_page_load(demo: gr.Blocks, services: Any, tab: Img2ImgTab) -> None:
    """Fill the sampler lists when a page opens (they need the engine's registry), then the sections'.

    A failure to list the samplers is only logged: txt2img's message already says so.
    """
    wire_sampler_lists(demo, services, tab.form)
    tab.sections.wire_page_load(demo, services)


def values_for_img2img(infotext: str, models: Any | None = None, *, gpu_rng: str = "GPU",
                       backcompat: bool = True) -> tuple[dict[str, Any], list[str]]:
    """The img2img form values a sent picture's infotext gives (prompt, sampler, size, seeds, noise
    settings...). ``gpu_rng``: what reproduces A1111's default GPU noise here
    (:func:`sdweb.ui.fields.pasted_gpu_rng`), for an infotext without an ``RNG`` key. ``backcompat``:
    A1111's "Automatic backward compatibility" (:func:`sdweb.ui.fields.pasted_backcompat`).
    """
    from sdweb.ui.fields import CONTROLNET_UNITS, SWITCH_FIELDS, form_from_infotext

    if not infotext:
        return {}, []
    pasted = form_from_infotext(infotext, models, gpu_rng=gpu_rng, backcompat=backcompat)
    # Hires fix's denoising strength is not img2img's; a fresh pass starts from the tab's value.
    shared = {
        "prompt",
        "negative_prompt",
        "sampler_name",
        "scheduler",
        "steps",
        "cfg_scale",
        "width",
        "height",
        "seed",
        "subseed",
        "subseed_strength",
        "seed_resize_from_w",
        "seed_resize_from_h",
        "clip_skip",
        "rng",
        "eta_noise_seed_delta",
        "eta",
        "sampler_path",
        *SWITCH_FIELDS,
        *SCHEDULE_SETTINGS,
        *SIGMA_DEFAULTS,
        *CFG_SKIP_NUMBERS,
        "emphasis",
        "sd_noise_schedule",
        "n_iter",
        "batch_size",
        CONTROLNET_UNITS,  # the extension registers its unit fields for img2img's paste too
    }
    return {name: value for name, value in pasted.values.items() if name in shared}, pasted.notes

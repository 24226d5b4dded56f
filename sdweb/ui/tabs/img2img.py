"""The img2img tab: an init image (and optionally an uploaded inpainting mask) plus a prompt -> images.

Same queue, progress and results as txt2img (:func:`sdweb.ui.tabs.txt2img.run_job`); the request is an
:class:`~sdweb.params.Img2ImgParams` built by :func:`sdweb.ui.fields.img2img_params_from_form`.
Uploads are decoded by ``sdweb.images.metadata.decode_image_bytes`` (its pixel limit refuses
decompression bombs with a message) rather than by gradio, which would decode any size.

Other tabs send pictures here through :meth:`Img2ImgTab.wire_send` ("Send to img2img").
The pure pieces (reading uploads, building the request, the size an upload suggests) are module
functions tested without a browser.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image
from pydantic import ValidationError

from sdweb.images.mask import MASKED_CONTENT_NAMES
from sdweb.images.resize import RESIZE_MODE_NAMES
from sdweb.params import Img2ImgParams, format_validation_error
from sdweb.ui import controls
from sdweb.ui.controls import MAX_SIDE
from sdweb.ui.fields import FORM_DEFAULTS, img2img_params_from_form
from sdweb.ui.tabs.txt2img import (
    SessionJobs,
    error_html,
    note_html,
    render_result_panel,
    run_job,
    sampler_choices,
    wire_interrupt_skip,
)

logger = logging.getLogger(__name__)

TAB_ID = "img2img"
#: "Inpaint area" choices: label -> ``inpaint_full_res``.
INPAINT_AREAS: tuple[tuple[str, bool], ...] = (("Whole picture", False), ("Only masked", True))
#: "Mask mode" choices: label -> ``inpainting_mask_invert``.
MASK_MODES: tuple[tuple[str, bool], ...] = (("Inpaint masked", False), ("Inpaint not masked", True))

_IMG2IMG_DEFAULTS = Img2ImgParams()


class UploadError(ValueError):
    """An upload that cannot be used (missing, broken, too large); the message is for the user."""


def read_upload(path: str | Path | None, what: str) -> Image.Image:
    """Decode an uploaded file with sdweb's size limit; ``what`` names it in the error message."""
    from sdweb.images.metadata import ImageDecodeError, decode_image_bytes

    if not path:
        raise UploadError(f"Upload {what} first.")
    try:
        return decode_image_bytes(Path(path).read_bytes())
    except (OSError, ImageDecodeError) as exc:
        raise UploadError(f"Cannot read {what}: {exc}") from exc


def img2img_request(
    values: Mapping[str, Any], image_path: str | None, mask_path: str | None
) -> tuple[Img2ImgParams, list[Image.Image], Image.Image | None]:
    """The request, init images and mask from the tab's values and uploaded files.

    Raises:
        UploadError: no init image, or an upload that does not decode.
        pydantic.ValidationError: a value out of range.
    """
    image = read_upload(image_path, "an image for img2img")
    mask = read_upload(mask_path, "the mask") if mask_path else None
    params = img2img_params_from_form(values)
    return params, [image], mask


def size_for_upload(width: int, height: int) -> tuple[int, int]:
    """The output size an uploaded picture suggests: its own, to a multiple of 8, within the limits.

    Larger pictures are scaled down with their aspect ratio so the longer side is ``MAX_SIDE``.
    """
    scale = min(1.0, MAX_SIDE / max(width, height, 1))

    def fit(side: int) -> int:
        return int(min(MAX_SIDE, max(64, round(side * scale / 8) * 8)))

    return fit(width), fit(height)


@dataclass
class Img2ImgTab:
    """What other tabs need from img2img: the init image and form, to "send to img2img"."""

    image: gr.Image
    #: The inpainting mask upload; a sent picture clears it (a mask belongs to the picture it was made for).
    mask: gr.Image
    form: dict[str, Any]
    tabs: gr.Tabs
    message: gr.HTML

    def outputs(self) -> set[Any]:
        return {self.image, self.mask, *self.form.values(), self.tabs, self.message}

    def fill(self, image: Any, values: Mapping[str, Any], notes: list[str] | None = None) -> dict[Any, Any]:
        """Updates that put ``image`` (a path or picture) and ``values`` into the tab and switch to it."""
        updates: dict[Any, Any] = {self.image: image, self.mask: None}
        for name, value in values.items():
            component = self.form.get(name)
            if component is not None:
                updates[component] = value
        updates[self.tabs] = gr.Tabs(selected=TAB_ID)
        text = "Image sent to img2img." + (" " + "; ".join(notes) + "." if notes else "")
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


def render_img2img_tab(services: Any, tabs: gr.Tabs) -> Img2ImgTab:
    """Lay out the tab's components and wire them. Call inside an open ``gr.Tab``."""
    jobs = SessionJobs()
    form: dict[str, Any] = {}
    defaults = FORM_DEFAULTS

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
            with gr.Accordion("Inpaint: upload a mask", open=False, elem_id="img2img-inpaint"):
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
            with gr.Row():
                random_seed = controls.render_seed_input(form, defaults, prefix=TAB_ID)
        with gr.Column(scale=1):
            panel = render_result_panel(TAB_ID)

    # 3. Wiring.
    random_seed.click(lambda: -1, outputs=form["seed"], show_progress="hidden", queue=False)

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

    async def run_generation(data: dict[Any, Any], request: gr.Request) -> Any:
        values = {name: data[component] for name, component in form.items()}
        try:
            params, images, mask_image = img2img_request(values, data[image], data[mask])
        except UploadError as exc:
            gr.Warning(str(exc))
            yield {panel.progress: error_html(str(exc))}
            return
        except ValidationError as exc:
            text = format_validation_error(exc)
            gr.Warning(text)
            yield {panel.progress: error_html(text)}
            return
        submit = partial(services.generation.submit_img2img, params, images, mask=mask_image, source="ui")
        async for update in run_job(services, submit, panel, jobs, request):
            yield update

    generate.click(
        run_generation,
        inputs={image, mask, *form.values()},
        outputs=panel.outputs(),
        concurrency_limit=None,
        show_progress="hidden",
        trigger_mode="once",
    )
    wire_interrupt_skip(services, jobs, interrupt, skip, panel.message)
    return Img2ImgTab(image=image, mask=mask, form=form, tabs=tabs, message=panel.message)


def wire_page_load(demo: gr.Blocks, services: Any, tab: Img2ImgTab) -> None:
    """Fill the sampler lists when a page opens (they need the engine's registry)."""
    form = tab.form

    def fill_samplers(sampler: str, schedule: str) -> dict[Any, Any]:
        try:
            samplers, schedules = sampler_choices(services)
        except Exception:  # txt2img's message already says so; the rest of the tab still works
            logger.exception("could not list the samplers")
            return {}
        return controls.sampler_dropdown_updates(form, samplers, schedules, sampler, schedule)

    demo.load(
        fill_samplers,
        inputs=[form["sampler_name"], form["scheduler"]],
        outputs={form["sampler_name"], form["scheduler"]},
        show_progress="hidden",
        concurrency_limit=None,
    )


def values_for_img2img(infotext: str, models: Any | None = None) -> tuple[dict[str, Any], list[str]]:
    """The img2img form values a sent picture's infotext gives (prompt, sampler, size, seed...)."""
    from sdweb.ui.fields import form_from_infotext

    if not infotext:
        return {}, []
    pasted = form_from_infotext(infotext, models)
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
        "n_iter",
        "batch_size",
    }
    return {name: value for name, value in pasted.values.items() if name in shared}, pasted.notes

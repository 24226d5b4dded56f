"""The Extras tab: upscale one uploaded picture by a factor or to a size.

The upscalers are the service's (``services.upscalers``): Pillow's are fast and need no GPU, so they
run right in the event; a model upscaler (models/ESRGAN) takes its turn on the GPU queue, and one that
cannot run (the optional ``upscalers`` extra missing) says how to install it. The source picture's
infotext is shown beside the result, with the postprocessing that was done, so a user still sees how
the picture was made. :func:`upscale_upload` is the pure handler, tested without a browser.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from sdweb.images.upscale import UpscaleError, list_upscalers, upscale_image
from sdweb.ui.components.messages import error_html, infotext_html
from sdweb.ui.components.uploads import UploadError, read_upload

logger = logging.getLogger(__name__)

TAB_ID = "extras"
#: The "Resize" radio: label -> ``upscale_image``'s ``mode``.
SCALE_MODES: tuple[tuple[str, int], ...] = (("Scale by", 0), ("Scale to", 1))


@dataclass
class ExtrasResult:
    """What the tab shows after an upscale: the picture (None on failure) and the text under it."""

    image: Image.Image | None
    info_html: str


def upscale_upload(
    path: str | None,
    *,
    upscaler: str,
    mode: int,
    factor: float,
    to_width: int,
    to_height: int,
    crop: bool,
    upscalers: Any = None,
    faces: Any = None,
    gfpgan_visibility: float = 0.0,
    codeformer_visibility: float = 0.0,
    codeformer_weight: float = 0.5,
) -> ExtrasResult:
    """Upscale the uploaded file; errors (no upload, broken file, size too large, a model upscaler
    that cannot run) come back as text.

    ``upscalers``: the ``UpscalerService`` (Pillow and model upscalers); None: Pillow's only.
    ``faces``: the ``FaceRestoreService``; with a visibility above 0 the faces are restored first
    (A1111's order), or the text says why they could not be.
    """
    try:
        source = read_upload(path, "an image to upscale")
    except UploadError as exc:
        return ExtrasResult(None, error_html(str(exc)))
    face_notes: list[str] = []
    restored = source
    if faces is not None and (gfpgan_visibility > 0 or codeformer_visibility > 0):
        restored, lines, warnings = faces.restore_for_extras(
            source, gfpgan_visibility=float(gfpgan_visibility),
            codeformer_visibility=float(codeformer_visibility), codeformer_weight=float(codeformer_weight))
        face_notes = [*lines, *warnings]
    upscale = upscalers.upscale if upscalers is not None else upscale_image
    try:
        result = upscale(
            restored,
            upscaler=upscaler,
            mode=int(mode),
            factor=float(factor),
            to_width=int(to_width),
            to_height=int(to_height),
            crop=bool(crop),
        )
    except UpscaleError as exc:
        return ExtrasResult(None, error_html(str(exc)))
    except (RuntimeError, MemoryError) as exc:  # e.g. the device ran out of memory in a model upscaler
        logger.exception("upscale with %s failed", upscaler)
        return ExtrasResult(None, error_html(f"the upscale with {upscaler} failed: {exc}"))
    done = postprocess_text(upscaler, mode=int(mode), factor=float(factor), size=result.size)
    parameters = _source_infotext(source)
    shown = (
        f'<div class="sdweb-note" id="extras-size">{source.width}x{source.height} → '
        f"{result.width}x{result.height}. {html.escape(done)}</div>"
    )
    for note in face_notes:
        shown += f'<div class="sdweb-note extras-faces">{html.escape(note)}</div>'
    if parameters:
        shown += infotext_html(parameters)
    return ExtrasResult(result, shown)


def postprocess_text(upscaler: str, *, mode: int, factor: float, size: tuple[int, int]) -> str:
    """A1111's postprocessing pairs for what was done (``Postprocess upscale by: 2, ...``)."""
    if mode == 1:
        how = f"Postprocess upscale to: {size[0]}x{size[1]}"
    else:
        how = f"Postprocess upscale by: {factor:g}"
    return f"{how}, Postprocess upscaler: {upscaler}"


def _source_infotext(image: Image.Image) -> str:
    from sdweb.images.metadata import read_image_metadata

    try:
        return read_image_metadata(image).parameters or ""
    except Exception:  # noqa: BLE001 - odd metadata must not fail an upscale
        logger.debug("could not read the source's metadata", exc_info=True)
        return ""


def upscaler_names(services: Any) -> list[str]:
    """What the Upscaler dropdown offers now: the built-ins, then the files in models/ESRGAN."""
    upscalers = getattr(services, "upscalers", None)
    return upscalers.names() if upscalers is not None else [info.name for info in list_upscalers()]


def render_extras_tab(services: Any) -> gr.Dropdown:
    """Lay out the tab and wire it. Call inside an open ``gr.Tab``; returns the Upscaler dropdown."""
    upscalers = getattr(services, "upscalers", None)
    names = upscaler_names(services)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            source = gr.Image(
                label="Source",
                type="filepath",
                image_mode=None,
                sources=["upload", "clipboard"],
                height=360,
                elem_id="extras-image",
            )
            mode = gr.Radio(list(SCALE_MODES), value=0, label="Resize", elem_id="extras-mode")
            factor = gr.Slider(1.0, 8.0, value=2.0, step=0.05, label="Resize by", elem_id="extras-factor")
            with gr.Row():
                to_width = gr.Slider(64, 8192, value=512, step=8, label="Width", elem_id="extras-width")
                to_height = gr.Slider(64, 8192, value=512, step=8, label="Height", elem_id="extras-height")
            crop = gr.Checkbox(value=True, label="Crop to fit", elem_id="extras-crop")
            with gr.Accordion("Restore faces", open=False, elem_id="extras-faces"):
                gfpgan = gr.Slider(0.0, 1.0, value=0.0, step=0.001, label="GFPGAN visibility",
                                   elem_id="extras-gfpgan-visibility")
                codeformer = gr.Slider(0.0, 1.0, value=0.0, step=0.001, label="CodeFormer visibility",
                                       elem_id="extras-codeformer-visibility")
                codeformer_weight = gr.Slider(
                    0.0, 1.0, value=0.5, step=0.001, elem_id="extras-codeformer-weight",
                    label="CodeFormer weight (0 = maximum effect, 1 = minimum effect)")
            upscaler = gr.Dropdown(
                choices=names,
                value="Lanczos" if "Lanczos" in names else names[0],
                label="Upscaler",
                elem_id="extras-upscaler",
            )
            run = gr.Button("Upscale", variant="primary", elem_id="extras-run")
        with gr.Column(scale=1):
            info = gr.HTML("", elem_id="extras-info", js_on_load=None)
            output = gr.Image(
                label="Result",
                type="pil",
                format="png",
                interactive=False,
                height=480,
                elem_id="extras-output",
            )

    def run_upscale(
        path: str | None, upscaler_name: str, how: int, by: float, width: float, height: float, cut: bool,
        gfpgan_visibility: float, codeformer_visibility: float, weight: float,
    ) -> tuple[Any, str]:
        got = upscale_upload(
            path,
            upscaler=upscaler_name,
            mode=how,
            factor=by,
            to_width=int(width),
            to_height=int(height),
            crop=cut,
            upscalers=upscalers,
            faces=getattr(services, "face_restorers", None),
            gfpgan_visibility=gfpgan_visibility,
            codeformer_visibility=codeformer_visibility,
            codeformer_weight=weight,
        )
        return (got.image if got.image is not None else gr.update()), got.info_html

    run.click(
        run_upscale,
        inputs=[source, upscaler, mode, factor, to_width, to_height, crop, gfpgan, codeformer,
                codeformer_weight],
        outputs=[output, info],
        show_progress="minimal",
    )
    return upscaler


def wire_page_load(demo: gr.Blocks, services: Any, upscaler: gr.Dropdown) -> None:
    """List the upscalers again when a page opens: a model dropped into models/ESRGAN shows up on reload."""

    def fill(current: str | None) -> Any:
        names = upscaler_names(services)
        return gr.update(choices=names, value=current if current in names else names[0])

    demo.load(fill, inputs=upscaler, outputs=upscaler, show_progress="hidden", concurrency_limit=None)

"""The PNG Info tab: drop an image, read how it was made, send it to txt2img.

A1111 infotexts (A1111, Forge, Fooocus in A1111 mode) are parsed into a table and can fill the
txt2img form, checkpoint included when its ``Model hash`` matches a file on disk. ComfyUI, InvokeAI and
NovelAI metadata is shown as it is. An image without metadata gets a sentence saying so. The upload is
read from the original file (``type="filepath"``, no re-encoding) so its text chunks survive.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from sdweb.ui.components.messages import error_html, note_html
from sdweb.ui.fields import form_from_infotext, pasted_backcompat, pasted_gpu_rng
from sdweb.ui.tabs.img2img import Img2ImgTab, values_for_img2img
from sdweb.ui.tabs.txt2img import Txt2ImgTab

logger = logging.getLogger(__name__)

#: Raw metadata longer than this is cut in the raw view (ComfyUI workflows can be megabytes).
RAW_CHARS_SHOWN = 200_000


@dataclass
class PngInfo:
    """What the tab shows for one image."""

    parameters: str = ""
    table: list[list[str]] = field(default_factory=list)
    raw: str = ""
    message: str = ""
    is_error: bool = False


def read_png_info(path: str | None) -> PngInfo:
    """Read an uploaded image file's metadata into what the tab shows."""
    from sdweb.images.infotext import parse_infotext
    from sdweb.images.metadata import ImageDecodeError, decode_image_bytes, read_image_metadata

    if not path:
        return PngInfo()
    try:
        image = decode_image_bytes(Path(path).read_bytes())
    except (OSError, ImageDecodeError) as exc:
        return PngInfo(message=f"Cannot read this image: {exc}", is_error=True)
    metadata = read_image_metadata(image)
    raw = "\n\n".join(f"{key}:\n{value}" for key, value in metadata.raw.items())
    if len(raw) > RAW_CHARS_SHOWN:
        raw = raw[:RAW_CHARS_SHOWN] + f"\n… ({len(raw) - RAW_CHARS_SHOWN:,} more characters)"
    info = PngInfo(parameters=metadata.parameters or "", raw=raw, message=metadata.message or "")
    if metadata.parameters:
        parsed = parse_infotext(metadata.parameters)
        info.table = [[key, _short(value)] for key, value in _joined_sizes(parsed).items()]
    return info


def _joined_sizes(parsed: dict[str, Any]) -> dict[str, Any]:
    """Show ``Size: 512x768`` as written, not the ``Size-1``/``Size-2`` halves the parser splits it into."""
    shown: dict[str, Any] = {}
    for key, value in parsed.items():
        base, dash, part = str(key).rpartition("-")
        if dash and part in ("1", "2") and f"{base}-1" in parsed and f"{base}-2" in parsed:
            if part == "1":
                shown[base] = f"{parsed[f'{base}-1']}x{parsed[f'{base}-2']}"
            continue
        shown[str(key)] = value
    return shown


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 2000 else text[:2000] + "…"


def render_pnginfo_tab(services: Any, txt2img: Txt2ImgTab, img2img: Img2ImgTab | None = None) -> None:
    """Lay out and wire the PNG Info tab. Call inside an open ``gr.Tab``.

    With ``img2img``, "Send to img2img" sends the dropped picture itself and its parameters there.
    """
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            upload = gr.Image(
                label="Source",
                type="filepath",
                image_mode=None,
                sources=["upload", "clipboard"],
                height=480,
                elem_id="pnginfo-image",
            )
        with gr.Column(scale=1):
            message = gr.HTML(
                note_html("Drop an image to read its generation parameters."),
                elem_id="pnginfo-message",
                js_on_load=None,
            )
            table = gr.Dataframe(
                headers=["Parameter", "Value"],
                value=[],
                interactive=False,
                wrap=True,
                label="Parameters",
                elem_id="pnginfo-table",
                max_height=420,
                column_widths=["30%", "70%"],
            )
            with gr.Row():
                send = gr.Button(
                    "Send to txt2img", variant="primary", elem_id="pnginfo-send", interactive=False
                )
                send_to_img2img = gr.Button(
                    "Send to img2img", elem_id="pnginfo-send-to-img2img", visible=img2img is not None
                )
            parameters = gr.Textbox(
                label="Infotext", lines=4, interactive=False, elem_id="pnginfo-parameters", buttons=["copy"]
            )
            with gr.Accordion("All metadata (raw)", open=False):
                raw = gr.Textbox(
                    show_label=False,
                    lines=8,
                    max_lines=30,
                    interactive=False,
                    elem_id="pnginfo-raw",
                    buttons=["copy"],
                )

    def show(path: str | None) -> tuple[str, Any, Any, str, str]:
        info = read_png_info(path)
        if not path:
            text = note_html("Drop an image to read its generation parameters.")
        elif info.is_error:
            text = error_html(info.message)
        elif info.parameters:
            text = note_html("A1111 generation parameters found.")
        else:
            text = f'<div class="sdweb-note" id="pnginfo-none">{html.escape(info.message)}</div>'
        return (text, info.table, gr.update(interactive=bool(info.parameters)), info.parameters, info.raw)

    upload.change(
        show, inputs=upload, outputs=[message, table, send, parameters, raw], show_progress="hidden"
    )

    def send_parameters(text: str) -> tuple[dict[str, Any], list[str]] | None:
        if not text:
            gr.Warning("This image has no A1111 generation parameters to send.")
            return None
        pasted = form_from_infotext(text, services.models, gpu_rng=pasted_gpu_rng(services),
                                    backcompat=pasted_backcompat(services))
        return pasted.values, pasted.notes

    txt2img.wire_send(send.click, send_parameters, [parameters])

    def send_picture(path: str | None, text: str) -> tuple[Any, dict[str, Any], list[str]] | None:
        if not path:
            gr.Warning("Drop an image first.")
            return None
        # no parameters: the picture alone
        values, notes = values_for_img2img(text, services.models, gpu_rng=pasted_gpu_rng(services),
                                           backcompat=pasted_backcompat(services))
        return path, values, notes

    if img2img is not None:
        img2img.wire_send(send_to_img2img.click, send_picture, [upload, parameters])

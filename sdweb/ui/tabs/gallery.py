"""The Gallery tab: browse ``outputs/`` by date folder (newest first), one page at a time.

Only one page (:data:`PER_PAGE` files) is listed and sent to the browser at a time, so a folder of
10,000 images opens as fast as one of ten. Every path the tab touches comes from the image store's
own listing, kept server-side in ``gr.State`` (the browser never names a file), and a delete goes
through ``ImageStore.delete``'s path gate once more.
"""

from __future__ import annotations

import html
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from sdweb.ui.components.messages import error_html, infotext_html, note_html
from sdweb.ui.controls import render_page_number
from sdweb.ui.fields import form_from_infotext, pasted_backcompat, pasted_gpu_rng
from sdweb.ui.tabs.img2img import Img2ImgTab, values_for_img2img
from sdweb.ui.tabs.txt2img import Txt2ImgTab

logger = logging.getLogger(__name__)

PER_PAGE = 36
#: Folders of outputs/ the tab browses: ``<kind>-images`` and ``<kind>-grids`` (ImageStore's layout).
_FOLDER_RE = re.compile(r"^([a-z0-9][a-z0-9_]*)-(images|grids)$")
DEFAULT_FOLDER = "txt2img-images"


def parse_folder(folder: str) -> tuple[str, bool]:
    """``"img2img-grids"`` -> (``"img2img"``, grids=True); anything else is the default folder."""
    match = _FOLDER_RE.match(folder or "") or _FOLDER_RE.match(DEFAULT_FOLDER)
    assert match is not None
    return match.group(1), match.group(2) == "grids"


def output_folders(images: Any) -> list[str]:
    """The image folders outputs/ holds (txt2img's first, even before anything was made)."""
    found = {DEFAULT_FOLDER}
    try:
        found.update(
            entry.name
            for entry in Path(images.root).iterdir()
            if entry.is_dir() and _FOLDER_RE.match(entry.name)
        )
    except FileNotFoundError:
        pass
    return sorted(found, key=lambda name: (name != DEFAULT_FOLDER, name))


@dataclass
class GalleryPage:
    """One page of one date folder: the files (absolute paths) and where the page stands."""

    folder: str = DEFAULT_FOLDER
    dates: list[str] = field(default_factory=list)
    date: str | None = None
    page: int = 1
    pages: int = 1
    total: int = 0
    files: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        if not self.date:
            return "No images yet: generated images appear here, by day."
        noun = "image" if self.total == 1 else "images"
        return f"{self.date}: {self.total:,} {noun} · page {self.page} of {self.pages}"


def page_count(total: int, per_page: int = PER_PAGE) -> int:
    return max(1, math.ceil(total / per_page))


def load_page(images: Any, folder: str, date: str | None, page: int, per_page: int = PER_PAGE) -> GalleryPage:
    """List one page of ``folder``/``date`` (newest date when ``date`` is None); pages clamp to range."""
    kind, grids = parse_folder(folder)
    dates = list(images.list_dates(kind, grids=grids))
    if not dates:
        return GalleryPage(folder=folder, dates=[])
    if date not in dates:
        date = dates[0]
    total = int(images.total(kind, date, grids=grids))
    pages = page_count(total, per_page)
    page = min(max(1, int(page or 1)), pages)
    listed = images.list_images(kind, date, offset=(page - 1) * per_page, limit=per_page, grids=grids)
    return GalleryPage(
        folder=folder,
        dates=dates,
        date=date,
        page=page,
        pages=pages,
        total=total,
        files=[str(path) for path in listed],
    )


def image_infotext(path: str) -> tuple[str, str | None]:
    """The infotext of a saved image and, when it has none, a sentence saying so."""
    from sdweb.images.metadata import ImageDecodeError, decode_image_bytes, read_image_metadata

    try:
        image = decode_image_bytes(Path(path).read_bytes())
    except (OSError, ImageDecodeError) as exc:
        return "", f"Cannot read {Path(path).name}: {exc}"
    metadata = read_image_metadata(image)
    return metadata.parameters or "", metadata.message


def render_gallery_tab(
    services: Any, txt2img: Txt2ImgTab, tab: gr.Tab | None = None, img2img: Img2ImgTab | None = None
) -> None:
    """Lay out and wire the Gallery tab. Call inside an open ``gr.Tab``.

    With ``img2img``, a "Send to img2img" button sends the selected picture and its parameters there.
    """
    images = services.images

    with gr.Row():
        kind = gr.Dropdown(
            label="Folder",
            choices=output_folders(images),
            value=DEFAULT_FOLDER,
            scale=2,
            elem_id="gallery-kind",
        )
        date = gr.Dropdown(label="Date", choices=[], value=None, scale=2, elem_id="gallery-date")
        refresh = gr.Button("↻ Refresh", scale=1, elem_id="gallery-refresh")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            with gr.Row():
                first = gr.Button("«", size="sm", scale=0, min_width=50)
                previous = gr.Button("◀ Previous", size="sm", elem_id="gallery-previous")
                page_number = render_page_number(elem_id="gallery-page")
                following = gr.Button("Next ▶", size="sm", elem_id="gallery-next")
                last = gr.Button("»", size="sm", scale=0, min_width=50)
            summary = gr.HTML("", elem_id="gallery-summary", js_on_load=None)
            grid = gr.Gallery(
                label="Images",
                columns=6,
                height=620,
                allow_preview=False,
                object_fit="cover",
                elem_id="gallery-grid",
                interactive=False,
                fit_columns=False,
            )
        with gr.Column(scale=2):
            full = gr.Image(
                label="Selected image",
                type="filepath",
                interactive=False,
                height=420,
                elem_id="gallery-image",
            )
            name = gr.Textbox(label="File", interactive=False, elem_id="gallery-file")
            details = gr.HTML("", elem_id="gallery-infotext", js_on_load=None)
            with gr.Row():
                send = gr.Button("Send to txt2img", elem_id="gallery-send", variant="primary")
                send_to_img2img = gr.Button(
                    "Send to img2img", elem_id="gallery-send-to-img2img", visible=img2img is not None
                )
                delete = gr.Button("Delete", variant="stop", elem_id="gallery-delete")
            status = gr.HTML("", elem_id="gallery-status", js_on_load=None)
    state = gr.State(GalleryPage())
    selected = gr.State("")
    delete_armed = gr.State(False)

    def show(current: GalleryPage, message: str = "") -> dict[Any, Any]:
        return {
            state: current,
            kind: gr.update(choices=output_folders(images), value=current.folder),
            date: gr.update(choices=current.dates, value=current.date),
            page_number: current.page,
            summary: html.escape(current.summary),
            grid: gr.update(value=[(path, Path(path).name) for path in current.files], selected_index=None),
            selected: "",
            full: None,
            name: "",
            details: "",
            delete: gr.update(value="Delete"),
            delete_armed: False,
            status: message,
        }

    outputs = {
        state,
        kind,
        date,
        page_number,
        summary,
        grid,
        selected,
        full,
        name,
        details,
        delete,
        delete_armed,
        status,
    }

    def goto(current: GalleryPage, kind_value: str, date_value: str | None, page: Any) -> dict[Any, Any]:
        try:
            return show(load_page(images, kind_value or DEFAULT_FOLDER, date_value, int(page or 1)))
        except Exception as exc:  # a broken folder must not break the tab
            logger.exception("could not list the gallery")
            return {status: error_html(f"Could not list the images: {exc}")}

    inputs = [state, kind, date, page_number]
    refresh.click(goto, inputs=inputs, outputs=outputs, show_progress="hidden")
    page_number.submit(goto, inputs=inputs, outputs=outputs, show_progress="hidden")
    kind.input(
        lambda s, k: goto(s, k, None, 1), inputs=[state, kind], outputs=outputs, show_progress="hidden"
    )
    date.input(
        lambda s, k, d: goto(s, k, d, 1), inputs=[state, kind, date], outputs=outputs, show_progress="hidden"
    )
    previous.click(
        lambda s, k, d, p: goto(s, k, d, int(p or 1) - 1),
        inputs=inputs,
        outputs=outputs,
        show_progress="hidden",
    )
    following.click(
        lambda s, k, d, p: goto(s, k, d, int(p or 1) + 1),
        inputs=inputs,
        outputs=outputs,
        show_progress="hidden",
    )
    first.click(lambda s, k, d, p: goto(s, k, d, 1), inputs=inputs, outputs=outputs, show_progress="hidden")
    last.click(
        lambda s, k, d, p: goto(s, k, d, s.pages if s.date == d else 10**9),
        inputs=inputs,
        outputs=outputs,
        show_progress="hidden",
    )
    if tab is not None:
        # Opening the tab shows the newest images (outputs change while the server runs).
        tab.select(goto, inputs=inputs, outputs=outputs, show_progress="hidden")

    def pick(current: GalleryPage, evt: gr.SelectData) -> dict[Any, Any]:
        index = evt.index if isinstance(evt.index, int) else -1
        if not 0 <= index < len(current.files):
            return {}
        path = current.files[index]
        text, message = image_infotext(path)
        shown = infotext_html(text) if text else note_html(message or "")
        return {
            selected: path,
            full: path,
            name: _relative_name(images, path),
            details: shown,
            delete: gr.update(value="Delete"),
            delete_armed: False,
            status: "",
        }

    grid.select(
        pick,
        inputs=state,
        outputs={selected, full, name, details, delete, delete_armed, status},
        show_progress="hidden",
    )

    def delete_image(current: GalleryPage, path: str, armed: bool) -> dict[Any, Any]:
        if not path:
            return {status: note_html("Select an image first.")}
        if not armed:
            # Step 1 of 2: the button asks for confirmation.
            return {
                delete: gr.update(value=f"Really delete {Path(path).name}?"),
                delete_armed: True,
                status: note_html("Click again to delete the file for good."),
            }
        try:
            images.delete(_relative_name(images, path))
        except Exception as exc:  # PathOutsideOutputsError, OSError: say so, keep the listing
            logger.info("delete refused for %s: %s", path, exc)
            return {
                delete: gr.update(value="Delete"),
                delete_armed: False,
                status: error_html(f"Could not delete {Path(path).name}: {exc}"),
            }
        refreshed = load_page(images, current.folder, current.date, current.page)
        return show(refreshed, note_html(f"Deleted {Path(path).name}."))

    delete.click(
        delete_image, inputs=[state, selected, delete_armed], outputs=outputs, show_progress="hidden"
    )

    def send_selected(path: str) -> tuple[dict[str, Any], list[str]] | None:
        if not path:
            gr.Warning("Select an image first.")
            return None
        text, message = image_infotext(path)
        if not text:
            gr.Warning(message or "This image has no generation parameters.")
            return None
        pasted = form_from_infotext(text, services.models, gpu_rng=pasted_gpu_rng(services),
                                    backcompat=pasted_backcompat(services))
        return pasted.values, pasted.notes

    txt2img.wire_send(send.click, send_selected, [selected])

    def send_picture(path: str) -> tuple[Any, dict[str, Any], list[str]] | None:
        if not path:
            gr.Warning("Select an image first.")
            return None
        text, _ = image_infotext(path)  # a picture without parameters is still worth sending
        values, notes = values_for_img2img(text, services.models, gpu_rng=pasted_gpu_rng(services),
                                           backcompat=pasted_backcompat(services))
        return path, values, notes

    if img2img is not None:
        img2img.wire_send(send_to_img2img.click, send_picture, [selected])


def _relative_name(images: Any, path: str) -> str:
    """The path relative to outputs/ (what ImageStore.resolve and delete take)."""
    try:
        return str(images.relative(Path(path)))
    except ValueError:
        return path

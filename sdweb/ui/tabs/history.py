"""The History tab: every generation (parameters, seeds, model, time, thumbnail), searchable, paged.

Entries come from ``services.history`` (SQLite under the data folder, full-text search over prompts).
Selecting one shows its details; "Restore to txt2img" puts every parameter back into the form (seed
included, so the same image comes out); "Send to img2img" sends its first image that is still on disk,
with its prompt, seed and size, to the img2img tab; deleting an entry leaves its image files alone, and
deleted image files leave the entry readable (thumbnails live in the database).
"""

from __future__ import annotations

import html
import io
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import gradio as gr
from PIL import Image

from sdweb.images.controlnet_infotext import units_from_request
from sdweb.ui.components.messages import error_html, note_html
from sdweb.ui.controls import render_page_number
from sdweb.ui.fields import CONTROLNET_UNITS, form_from_params, pasted_backcompat, pasted_gpu_rng
from sdweb.ui.tabs.img2img import Img2ImgTab, values_for_img2img
from sdweb.ui.tabs.txt2img import Txt2ImgTab

logger = logging.getLogger(__name__)

PER_PAGE = 24


@dataclass
class HistoryPage:
    """One page of search results (entry ids in display order) and where it stands."""

    query: str = ""
    page: int = 1
    pages: int = 1
    total: int = 0
    ids: list[int] = field(default_factory=list)

    @property
    def summary(self) -> str:
        if not self.total:
            return f"Nothing matches {self.query!r}." if self.query else "No generations yet."
        noun = "generation" if self.total == 1 else "generations"
        found = f" matching {self.query!r}" if self.query else ""
        return f"{self.total:,} {noun}{found} · page {self.page} of {self.pages}"


def search_page(
    history: Any, query: str, page: int, per_page: int = PER_PAGE
) -> tuple[HistoryPage, list[Any]]:
    """Run the search for one page (newest first); pages clamp to the range."""
    query = (query or "").strip()
    total = int(history.count(query))
    pages = max(1, math.ceil(total / per_page))
    page = min(max(1, int(page or 1)), pages)
    entries = list(history.search(query, offset=(page - 1) * per_page, limit=per_page))
    ids = [int(entry.id) for entry in entries]
    return HistoryPage(query=query, page=page, pages=pages, total=total, ids=ids), entries


def thumbnail_image(entry: Any) -> Any:
    """The stored thumbnail as an image (a grey square when there is none or it is unreadable)."""
    data = getattr(entry, "thumbnail", None)
    if data:
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
            return image
        except Exception:  # noqa: BLE001 - a bad thumbnail must not hide the entry
            logger.warning("history entry %s has an unreadable thumbnail", getattr(entry, "id", "?"))
    return Image.new("RGB", (64, 64), (128, 128, 128))


def _when(entry: Any) -> str:
    """When the entry was made, in the server's local time."""
    created = getattr(entry, "created_at", None)
    if isinstance(created, datetime):
        return created.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return str(created or "")


def caption(entry: Any) -> str:
    prompt = entry.params.prompt.replace("\n", " ")
    return f"{_when(entry)} · {prompt[:60]}{'…' if len(prompt) > 60 else ''}"


def details_html(entry: Any) -> str:
    """Everything about one generation, for the details panel."""
    params = entry.params
    seeds = ", ".join(str(seed) for seed in entry.seeds) or "—"
    rows = [
        ("Time", _when(entry)),
        ("Model", f"{entry.model_title or '—'}" + (f" [{entry.model_hash}]" if entry.model_hash else "")),
        ("Prompt", params.prompt),
        ("Negative prompt", params.negative_prompt or "—"),
        ("Styles", ", ".join(params.styles) or "—"),
        ("Seeds", seeds),
        ("Sampler", f"{params.sampler_name} · {params.scheduler}"),
        ("Steps · CFG", f"{params.steps} · {params.cfg_scale}"),
        ("Size", f"{params.width}x{params.height}"),
        ("Batch", f"{params.n_iter} x {params.batch_size}"),
    ]
    if params.subseed_strength:
        rows.append(("Variation", f"seed {params.subseed}, strength {params.subseed_strength}"))
    if params.clip_skip:
        rows.append(("Clip skip", str(params.clip_skip)))
    existing = set(entry.existing_paths())
    files = (
        "<br>".join(
            html.escape(path) + ("" if path in existing else " (deleted)") for path in entry.output_paths
        )
        or "not saved"
    )
    body = "".join(
        f"<tr><th>{html.escape(key)}</th><td>{html.escape(str(value))}</td></tr>" for key, value in rows
    )
    return f'<table class="sdweb-history-details">{body}<tr><th>Files</th><td>{files}</td></tr></table>'


def picture_to_send(entry: Any) -> tuple[str, str] | None:
    """``(path, infotext)`` of the entry's first image still on disk, for "Send to img2img".

    None when every file was deleted (or none was saved).
    """
    existing = set(entry.existing_paths())
    infotexts = list(getattr(entry, "infotexts", []) or [])
    for index, path in enumerate(entry.output_paths):
        if path in existing:
            return path, infotexts[index] if index < len(infotexts) else (infotexts[0] if infotexts else "")
    return None


def render_history_tab(
    services: Any, txt2img: Txt2ImgTab, tab: gr.Tab | None = None, img2img: Img2ImgTab | None = None
) -> None:
    """Lay out and wire the History tab. Call inside an open ``gr.Tab``.

    With ``img2img``, a "Send to img2img" button sends the selected entry's picture and parameters there.
    """
    history = services.history

    with gr.Row():
        query = gr.Textbox(
            label="Search prompts",
            placeholder="words from the prompt or negative prompt",
            scale=4,
            elem_id="history-search",
        )
        search = gr.Button("Search", scale=1, elem_id="history-search-button")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            with gr.Row():
                previous = gr.Button("◀ Newer", size="sm", elem_id="history-previous")
                page_number = render_page_number(elem_id="history-page")
                following = gr.Button("Older ▶", size="sm", elem_id="history-next")
            summary = gr.HTML("", elem_id="history-summary", js_on_load=None)
            grid = gr.Gallery(
                label="Generations",
                columns=6,
                height=560,
                allow_preview=False,
                object_fit="cover",
                elem_id="history-grid",
                interactive=False,
                format="png",
                fit_columns=False,
            )
        with gr.Column(scale=2):
            details = gr.HTML(
                note_html("Select a generation to see it."), elem_id="history-details", js_on_load=None
            )
            infotext = gr.Textbox(
                label="Infotext", lines=4, interactive=False, elem_id="history-infotext", buttons=["copy"]
            )
            with gr.Row():
                restore = gr.Button("Restore to txt2img", variant="primary", elem_id="history-restore")
                send_to_img2img = gr.Button(
                    "Send to img2img", elem_id="history-send-to-img2img", visible=img2img is not None
                )
                delete = gr.Button("Delete entry", variant="stop", elem_id="history-delete")
            status = gr.HTML("", elem_id="history-status", js_on_load=None)
    state = gr.State(HistoryPage())
    selected = gr.State(None)
    delete_armed = gr.State(False)

    def show(query_text: str, page: Any, message: str = "") -> dict[Any, Any]:
        try:
            current, entries = search_page(history, query_text, int(page or 1))
        except Exception as exc:  # a bad query (FTS syntax) or a locked database: say so
            logger.info("history search failed: %s", exc)
            return {status: error_html(f"Search failed: {exc}")}
        return {
            state: current,
            page_number: current.page,
            summary: html.escape(current.summary),
            grid: gr.update(
                value=[(thumbnail_image(entry), caption(entry)) for entry in entries], selected_index=None
            ),
            selected: None,
            details: note_html("Select a generation to see it."),
            infotext: "",
            delete: gr.update(value="Delete entry"),
            delete_armed: False,
            status: message,
        }

    outputs = {state, page_number, summary, grid, selected, details, infotext, delete, delete_armed, status}
    search.click(lambda q: show(q, 1), inputs=query, outputs=outputs, show_progress="hidden")
    query.submit(lambda q: show(q, 1), inputs=query, outputs=outputs, show_progress="hidden")
    page_number.submit(
        lambda s, p: show(s.query, p), inputs=[state, page_number], outputs=outputs, show_progress="hidden"
    )
    previous.click(lambda s: show(s.query, s.page - 1), inputs=state, outputs=outputs, show_progress="hidden")
    following.click(
        lambda s: show(s.query, s.page + 1), inputs=state, outputs=outputs, show_progress="hidden"
    )
    if tab is not None:
        tab.select(lambda s: show(s.query, s.page), inputs=state, outputs=outputs, show_progress="hidden")

    def pick(current: HistoryPage, evt: gr.SelectData) -> dict[Any, Any]:
        index = evt.index if isinstance(evt.index, int) else -1
        if not 0 <= index < len(current.ids):
            return {}
        entry = history.get(current.ids[index])
        if entry is None:
            return {status: error_html("That entry was deleted meanwhile.")}
        infotexts = list(getattr(entry, "infotexts", []) or [])
        return {
            selected: current.ids[index],
            details: details_html(entry),
            infotext: infotexts[0] if infotexts else "",
            delete: gr.update(value="Delete entry"),
            delete_armed: False,
            status: "",
        }

    grid.select(
        pick,
        inputs=state,
        outputs={selected, details, infotext, delete, delete_armed, status},
        show_progress="hidden",
    )

    def delete_entry(current: HistoryPage, entry_id: int | None, armed: bool) -> dict[Any, Any]:
        if entry_id is None:
            return {status: note_html("Select a generation first.")}
        if not armed:
            return {
                delete: gr.update(value="Really delete this entry?"),
                delete_armed: True,
                status: note_html("Click again to delete the entry (image files are kept)."),
            }
        history.delete(entry_id)
        return show(current.query, current.page, note_html("Entry deleted; its image files are kept."))

    delete.click(
        delete_entry, inputs=[state, selected, delete_armed], outputs=outputs, show_progress="hidden"
    )

    def selected_entry(entry_id: int | None) -> Any:
        """The history entry selected, or None after telling the user why there is none."""
        if entry_id is None:
            gr.Warning("Select a generation first.")
            return None
        entry = history.get(entry_id)
        if entry is None:
            gr.Warning("That entry was deleted meanwhile.")
        return entry

    def restore_entry(entry_id: int | None) -> tuple[dict[str, Any], list[str]] | None:
        entry = selected_entry(entry_id)
        return None if entry is None else restore_values(services, entry)

    txt2img.wire_send(restore.click, restore_entry, [selected])

    def send_picture(entry_id: int | None) -> tuple[Any, dict[str, Any], list[str]] | None:
        entry = selected_entry(entry_id)
        if entry is None:
            return None
        found = picture_to_send(entry)
        if found is None:
            gr.Warning("The images of this generation were deleted (or never saved); nothing to send.")
            return None
        path, text = found
        values, notes = values_for_img2img(text, services.models, gpu_rng=pasted_gpu_rng(services),
                                           backcompat=pasted_backcompat(services))
        return path, values, notes

    if img2img is not None:
        img2img.wire_send(send_to_img2img.click, send_picture, [selected])


def restore_values(services: Any, entry: Any) -> tuple[dict[str, Any], list[str]]:
    """Form values that reproduce a history entry: its request with the concrete first seed."""
    params = entry.params
    notes: list[str] = []
    updates: dict[str, Any] = {}
    if entry.seeds:
        updates["seed"] = int(entry.seeds[0])
    if params.subseed == -1 and entry.subseeds:
        updates["subseed"] = int(entry.subseeds[0])
    title = None
    for query in (params.checkpoint, entry.model_hash, entry.model_title):
        if not query:
            continue
        try:
            title = services.models.find(query).title
            break
        except LookupError:
            continue
    if title is None and (entry.model_title or entry.model_hash):
        notes.append(
            f"checkpoint {entry.model_title or entry.model_hash} is not on disk any more; "
            "the checkpoint was left unchanged"
        )
    # The recorded prompt already has its styles merged in (the service applies them before the
    # run); selecting them again would apply them twice.
    updates["styles"] = ()
    values = form_from_params(
        params.model_copy(update={**updates, "checkpoint": None}), checkpoint_title=title
    )
    if title is None:
        values.pop("checkpoint", None)
    # The ControlNet units as the request had them (their pictures are not stored); the others go off.
    values[CONTROLNET_UNITS] = units_from_request(params.controlnet_units)
    return values, notes

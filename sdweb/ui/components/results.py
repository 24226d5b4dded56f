"""The result column of a generating tab (txt2img, img2img) and the user's last result.

:func:`render_result_panel` lays out the messages, progress line, live preview, gallery and infotext
(elem ids ``{prefix}-progress`` ...) and wires picking an image in the gallery; :class:`ResultView` is
what a ``gr.State`` keeps of the last result (seeds, infotexts, gallery items, the selected image), for
♻️ (reuse seed) and "Send to img2img".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from sdweb.params import GenerationResult
from sdweb.ui.components.messages import infotext_html

logger = logging.getLogger(__name__)


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

"""The "Restore faces" checkbox of txt2img and img2img (A1111's; GFPGAN / CodeFormer, chosen in Settings).

Checked, the request asks for face restoration (``restore_faces``). Restoration is optional: when the
models or the ``upscalers`` extra are missing, the checkbox says so under it (checked once a page
opens) and a generation with it checked still gives its images, with a warning saying why the faces
were not restored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import gradio as gr

from sdweb.ui.sections.base import PARAMETERS, FormSection, SectionContext

logger = logging.getLogger(__name__)


def restore_faces_info(services: Any) -> str:
    """The line under the checkbox: which restorer runs, or what is missing and how to get it."""
    restorers = getattr(services, "face_restorers", None)
    if restorers is None:
        return "Face restoration is not available in this server."
    name = restorers.selected()
    try:
        problem = restorers.problem(name)
    except Exception as exc:  # an odd install must not break the page
        logger.exception("could not check face restoration")
        problem = str(exc)
    if problem is None:
        return f"With {name} (Settings → Face restoration)."
    from sdweb.safepath import for_client

    return f"Cannot run here: {for_client(problem)}"  # folders relative to the data folder


class FaceRestoreSection(FormSection):
    """One checkbox; its value becomes the request's ``restore_faces``."""

    slot = PARAMETERS

    def __init__(self) -> None:
        self.checkbox: Any = None

    def render(self, ctx: SectionContext) -> None:
        self.checkbox = gr.Checkbox(False, label="Restore faces", elem_id=f"{ctx.tab}-restore-faces")

    def inputs(self) -> Sequence[Any]:
        return () if self.checkbox is None else (self.checkbox,)

    def request_values(self, data: Mapping[Any, Any]) -> dict[str, Any]:
        if self.checkbox is None or not data.get(self.checkbox):
            return {}
        return {"restore_faces": True}

    def wire_page_load(self, demo: gr.Blocks, services: Any) -> None:
        if self.checkbox is None:
            return
        demo.load(lambda: gr.update(info=restore_faces_info(services)), outputs=self.checkbox,
                  show_progress="hidden", concurrency_limit=None)

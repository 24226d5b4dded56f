"""The form lists a page fills in when it opens: checkpoints, styles, and the demo model's size.

Files and styles come and go while the server runs, so the lists are read per page, not once at start.
Sampler lists are :mod:`sdweb.ui.components.samplers`' (they need the engine's registry).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import gradio as gr

from sdweb.ui.fields import FORM_DEFAULTS

logger = logging.getLogger(__name__)

#: The side the bundled demo model was trained at (demo_model/dataset.py's IMAGE_SIZE).
DEMO_MODEL_SIZE = 64


def load_choices(services: Any) -> dict[str, Any]:
    """Values the page asks for once loaded: checkpoints, selection, styles (fast, no torch)."""
    titles = [info.title for info in services.models.list_checkpoints()]
    return {
        "checkpoints": titles,
        "checkpoint": services.models.selected_title(),
        "styles": [style.name for style in services.styles.list()],
    }


def wire_form_lists(demo: gr.Blocks, services: Any, form: Mapping[str, Any]) -> None:
    """Fill ``form``'s checkpoint and styles dropdowns when a page opens; on a fresh install (only the
    bundled demo model) start the size at the demo's.
    """

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

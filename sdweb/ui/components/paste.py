"""A1111's ↙ button of txt2img and img2img: generation parameters pasted into the prompt box fill the form.

:func:`read_prompt_parameters` turns the prompt box's text into form values (the tab's ``fill`` puts them
in, ControlNet units included); an empty prompt reads the last generation's parameters, as A1111 reads
its ``params.txt``.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from sdweb.ui.fields import form_from_infotext, pasted_backcompat, pasted_gpu_rng

logger = logging.getLogger(__name__)

#: The button's label; its elem id is ``<tab>-paste``.
PASTE_LABEL = "↙ Read parameters from prompt"


def read_prompt_parameters(services: Any, text: str | None) -> tuple[dict[str, Any], list[str]] | None:
    """``(form values, notes)`` from the infotext in the prompt box (empty: the last generation's).

    None, after a warning saying why, when there is nothing to read.
    """
    from sdweb.images.infotext import has_parameter_line

    text = (text or "").strip()
    if not text:
        text = _last_infotext(services)
        if not text:
            gr.Warning("Paste generation parameters (an image's infotext) into the prompt, then press ↙.")
            return None
    elif not has_parameter_line(text):
        gr.Warning("The prompt holds no generation parameters to read: paste an infotext ending with its "
                   "'Steps: ..., Sampler: ...' line.")
        return None
    pasted = form_from_infotext(text, services.models, gpu_rng=pasted_gpu_rng(services),
                                backcompat=pasted_backcompat(services))
    return pasted.values, pasted.notes


def _last_infotext(services: Any) -> str:
    history = getattr(services, "history", None)
    entries = history.search("", limit=1) if history is not None else []
    infotexts = list(getattr(entries[0], "infotexts", None) or []) if entries else []
    return str(infotexts[0]) if infotexts else ""

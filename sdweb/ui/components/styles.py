"""Prompt styles in a form: the Styles dropdown, "Apply styles to prompt", "Save prompt as a style".

The styles themselves (styles.csv, A1111's format) are ``services.styles``'; picked styles are sent
with the request (``form["styles"]``) and applied by the engine, or written into the prompt boxes by
"Apply". The dropdown's choices are filled when a page opens (:mod:`sdweb.ui.components.page_load`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gradio as gr

from sdweb.ui.components.messages import error_html, note_html

logger = logging.getLogger(__name__)


def style_names(services: Any) -> list[str]:
    """The Styles dropdown's choices."""
    return [style.name for style in services.styles.list()]


def _make_style(name: str, prompt: str, negative: str) -> Any:
    from sdweb.prompts.styles import PromptStyle

    return PromptStyle(name=name, prompt=prompt, negative_prompt=negative)


@dataclass
class StylesPicker:
    """The styles controls; :meth:`wire` once the prompt boxes and the message line exist."""

    apply: gr.Button
    name: gr.Textbox
    save: gr.Button

    def wire(self, services: Any, form: Mapping[str, Any], message: gr.HTML) -> None:
        """Apply writes the picked styles into ``form``'s prompts; Save adds the prompts as a style."""

        def apply_selected_styles(prompt: str, negative: str, names: list[str]) -> tuple[Any, Any, Any, str]:
            if not names:
                return prompt, negative, names, note_html("Pick one or more styles first.")
            try:
                new_prompt, new_negative = services.styles.apply(prompt or "", negative or "", list(names))
            except (LookupError, ValueError) as exc:
                return prompt, negative, names, error_html(str(exc).strip("'\""))
            return new_prompt, new_negative, [], note_html(f"Applied {', '.join(names)} to the prompt.")

        self.apply.click(
            apply_selected_styles,
            inputs=[form["prompt"], form["negative_prompt"], form["styles"]],
            outputs=[form["prompt"], form["negative_prompt"], form["styles"], message],
            show_progress="hidden",
        )

        def save_prompt_style(name: str, prompt: str, negative: str) -> tuple[Any, str, str]:
            name = (name or "").strip()
            if not name:
                return gr.update(), name, error_html("Give the style a name first.")
            try:
                services.styles.save(_make_style(name, prompt or "", negative or ""))
            except (OSError, ValueError) as exc:
                return gr.update(), name, error_html(f"Could not save the style: {exc}")
            return gr.update(choices=style_names(services)), "", note_html(f"Saved style {name!r}.")

        self.save.click(
            save_prompt_style,
            inputs=[self.name, form["prompt"], form["negative_prompt"]],
            outputs=[form["styles"], self.name, message],
            show_progress="hidden",
        )


def render_styles_picker(form: dict[str, Any], *, prefix: str) -> StylesPicker:
    """The Styles dropdown (``form["styles"]``), the Apply button, the "Save prompt as a style" accordion."""
    form["styles"] = gr.Dropdown(
        label="Styles", choices=[], value=[], multiselect=True, elem_id=f"{prefix}-styles"
    )
    with gr.Row():
        apply = gr.Button("Apply styles to prompt", size="sm", elem_id=f"{prefix}-apply-styles")
    with gr.Accordion("Save prompt as a style", open=False):
        name = gr.Textbox(label="Style name", elem_id=f"{prefix}-style-name")
        save = gr.Button("Save style", size="sm", elem_id=f"{prefix}-save-style")
    return StylesPicker(apply=apply, name=name, save=save)

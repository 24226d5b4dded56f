"""Example tab extension: a "Prompt tidy" tab built with gradio, added through ``register_ui_tabs``."""

import re

from sdweb.plugin_api import UITab, hookimpl


def tidy_prompt(prompt: str) -> str:
    """Collapse runs of whitespace and drop empty and repeated comma-separated tags (case-insensitive)."""
    seen: set[str] = set()
    tags = []
    for tag in prompt.split(","):
        tag = re.sub(r"\s+", " ", tag).strip()
        if tag and tag.lower() not in seen:
            seen.add(tag.lower())
            tags.append(tag)
    return ", ".join(tags)


def render() -> None:
    # Imported here, not at the top: loading the extension stays instant, gradio is only needed
    # when the UI is built.
    import gradio as gr

    gr.Markdown("Removes empty and repeated tags from a comma-separated prompt.")
    with gr.Row():
        source = gr.Textbox(label="Prompt", lines=3, elem_id="example_tab_prompt")
        result = gr.Textbox(label="Tidied prompt", lines=3, elem_id="example_tab_result")
    gr.Button("Tidy", variant="primary", elem_id="example_tab_tidy").click(
        tidy_prompt, inputs=source, outputs=result)


@hookimpl
def register_ui_tabs(services):
    return [UITab(title="Prompt tidy", render=render, elem_id="tab_example_prompt_tidy")]

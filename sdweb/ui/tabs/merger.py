"""The Checkpoint Merger tab (A1111's): merge two or three checkpoints into a new one.

The fields are A1111's; the work is :class:`sdweb.services.merger.MergeService`'s (it runs on the GPU
queue, so a merge waits for the generation before it and the next one waits for it). The result is
listed at once with its hash: the model dropdowns here are refreshed with it, and the message names
its title. :func:`merge_from_form` is the handler, tested without a browser.
"""

from __future__ import annotations

import html
import logging
from typing import Any

import gradio as gr

logger = logging.getLogger(__name__)

TAB_ID = "modelmerger"
METHODS = ("No interpolation", "Weighted sum", "Add difference")
CONFIG_SOURCES = ("A, B or C", "B", "C", "Don't")
METHOD_HELP = {
    "No interpolation": "Result = A (to convert it to float16, bake in a VAE or drop weights).",
    "Weighted sum": "Result = A * (1 - M) + B * M",
    "Add difference": "Result = A + (B - C) * M",
}


def _message(text: str, *, error: bool = False, elem_id: str = "modelmerger-result-text") -> str:
    kind = "sdweb-error" if error else "sdweb-note"
    return f'<div class="{kind}" id="{elem_id}">{html.escape(text)}</div>'


def checkpoint_titles(services: Any) -> list[str]:
    return [info.title for info in services.models.list_checkpoints() if not getattr(info, "demo", False)]


def kept_selection(services: Any, value: str | None, titles: list[str]) -> str | None:
    """The title ``value`` has now (a merge hashes its inputs: "a.safetensors" gets its " [hash]")."""
    if not value:
        return None
    try:
        title = services.models.find(value).title
    except LookupError:
        return None
    return title if title in titles else None


def vae_choices(services: Any) -> list[str]:
    return ["None", *(info.name for info in services.models.list_vaes())]


def merge_from_form(services: Any, fields: dict[str, Any]) -> tuple[str, str | None]:
    """Run a merge from the tab's values: ``(message html, new title or None)``; never raises."""
    from sdweb.services.merger import MergeRequest, MergeRequestError

    try:
        request = MergeRequest(
            primary_model_name=str(fields.get("primary") or ""),
            secondary_model_name=str(fields.get("secondary") or ""),
            tertiary_model_name=str(fields.get("tertiary") or ""),
            interp_method=str(fields.get("method") or "Weighted sum"),
            multiplier=float(fields.get("multiplier", 0.3)),
            save_as_half=bool(fields.get("save_as_half")),
            custom_name=str(fields.get("custom_name") or ""),
            config_source=str(fields.get("config_source") or CONFIG_SOURCES[0]),
            bake_in_vae=str(fields.get("bake_in_vae") or "None"),
            discard_weights=str(fields.get("discard_weights") or ""),
            save_metadata=bool(fields.get("save_metadata", True)),
            add_merge_recipe=bool(fields.get("add_merge_recipe", True)),
            copy_metadata_fields=bool(fields.get("copy_metadata_fields", True)),
            metadata_json=str(fields.get("metadata_json") or ""),
        )
        result = services.merger.merge(request)
    except MergeRequestError as exc:
        return _message(f"Not merged: {exc}", error=True), None
    except Exception as exc:  # a file that breaks mid-way: say so, keep the page alive
        logger.exception("checkpoint merge failed")
        return _message(f"The merge failed: {exc}", error=True), None
    return _message(f"{result.message}. It is listed as {result.title}."), result.title


def render_merger_tab(services: Any) -> list[gr.Dropdown]:
    """Lay out the tab and wire it. Call inside an open ``gr.Tab``; returns the three model dropdowns."""
    titles = checkpoint_titles(services)
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            about = ("A merged checkpoint is saved as .safetensors in models/Stable-diffusion, tensor by "
                     "tensor, and listed at once with its hash.")
            gr.HTML(_message(about, elem_id="modelmerger-about"), js_on_load=None)
            with gr.Row():
                # Empty until chosen (gradio would preselect the first model).
                primary = gr.Dropdown(titles, value=None, label="Primary model (A)",
                                      elem_id="modelmerger-primary")
                secondary = gr.Dropdown(titles, value=None, label="Secondary model (B)",
                                        elem_id="modelmerger-secondary")
                tertiary = gr.Dropdown(titles, value=None, label="Tertiary model (C)",
                                       elem_id="modelmerger-tertiary")
                refresh = gr.Button("↻", elem_id="modelmerger-refresh", elem_classes="sdweb-tool", scale=0,
                                    min_width=40)
            custom_name = gr.Textbox(label="Custom Name (Optional)", elem_id="modelmerger-custom-name")
            multiplier = gr.Slider(0.0, 1.0, value=0.3, step=0.05,
                                   label="Multiplier (M) - set to 0 to get model A",
                                   elem_id="modelmerger-multiplier")
            method = gr.Radio(list(METHODS), value="Weighted sum", label="Interpolation Method",
                              info=METHOD_HELP["Weighted sum"], elem_id="modelmerger-method")
            with gr.Row():
                gr.Radio(["safetensors"], value="safetensors", label="Checkpoint format", interactive=False,
                         elem_id="modelmerger-format")
                save_as_half = gr.Checkbox(False, label="Save as float16", elem_id="modelmerger-half")
            config_source = gr.Radio(list(CONFIG_SOURCES), value=CONFIG_SOURCES[0],
                                     label="Copy config from", elem_id="modelmerger-config-source")
            with gr.Row():
                bake_in_vae = gr.Dropdown(vae_choices(services), value="None", label="Bake in VAE",
                                          elem_id="modelmerger-bake-in-vae")
                discard_weights = gr.Textbox(label="Discard weights with matching name",
                                             elem_id="modelmerger-discard")
            with gr.Accordion("Metadata", open=False):
                save_metadata = gr.Checkbox(True, label="Save metadata", elem_id="modelmerger-save-metadata")
                add_merge_recipe = gr.Checkbox(True, label="Add merge recipe metadata",
                                               elem_id="modelmerger-add-recipe")
                copy_metadata_fields = gr.Checkbox(True, label="Copy metadata from merged models",
                                                   elem_id="modelmerger-copy-metadata")
                metadata_json = gr.Textbox("{}", label="Metadata in JSON format", lines=4,
                                           elem_id="modelmerger-metadata-json")
            merge = gr.Button("Merge", variant="primary", elem_id="modelmerger-merge")
        with gr.Column(scale=2):
            result = gr.HTML("", elem_id="modelmerger-result", js_on_load=None)

    inputs = {
        "primary": primary, "secondary": secondary, "tertiary": tertiary, "custom_name": custom_name,
        "multiplier": multiplier, "method": method, "save_as_half": save_as_half,
        "config_source": config_source, "bake_in_vae": bake_in_vae, "discard_weights": discard_weights,
        "save_metadata": save_metadata, "add_merge_recipe": add_merge_recipe,
        "copy_metadata_fields": copy_metadata_fields, "metadata_json": metadata_json,
    }
    components = list(inputs.values())
    dropdowns = [primary, secondary, tertiary]

    def refreshed(*current: str | None) -> list[Any]:
        services.models.refresh()
        now = checkpoint_titles(services)
        return [gr.update(choices=now, value=kept_selection(services, value, now)) for value in current]

    def run(*values: Any) -> list[Any]:
        fields = dict(zip(inputs, values, strict=True))
        message, _title = merge_from_form(services, fields)
        now = checkpoint_titles(services)
        chosen = (fields["primary"], fields["secondary"], fields["tertiary"])
        return [message, *(gr.update(choices=now, value=kept_selection(services, value, now))
                           for value in chosen)]

    method.change(lambda how: gr.update(info=METHOD_HELP.get(how, "")), inputs=method, outputs=method,
                  show_progress="hidden")
    refresh.click(refreshed, inputs=dropdowns, outputs=dropdowns, show_progress="hidden")
    merge.click(run, inputs=components, outputs=[result, *dropdowns], show_progress="minimal")
    return dropdowns


def wire_page_load(demo: gr.Blocks, services: Any, dropdowns: list[gr.Dropdown]) -> None:
    """List the checkpoints again when a page opens (a model copied in, or merged by another user)."""

    def fill(*current: str | None) -> list[Any]:
        now = checkpoint_titles(services)
        return [gr.update(choices=now, value=kept_selection(services, value, now)) for value in current]

    demo.load(fill, inputs=dropdowns, outputs=dropdowns, show_progress="hidden", concurrency_limit=None)

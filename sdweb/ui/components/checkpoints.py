"""The checkpoint selector: a dropdown of the checkpoints on disk, ↻ to rescan, Forge's "VAE / Text
Encoder" choice (the files of models/text_encoder and models/VAE that SD 3.x and Flux checkpoints without
their own are loaded with; none chosen = the fitting ones are picked automatically), and a Download section.

Picking a checkpoint loads it at once (:func:`load_checkpoint`); a failed load keeps the previous model
and says why in the tab's message line. The list is filled when a page opens
(:mod:`sdweb.ui.components.page_load`), since files come and go while the server runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import gradio as gr

from sdweb.safepath import for_client
from sdweb.ui.components.download import render_download_section
from sdweb.ui.components.messages import error_html, note_html

logger = logging.getLogger(__name__)


def checkpoint_titles(services: Any) -> list[str]:
    """The dropdown's choices: every checkpoint's title (``name.safetensors [hash]``)."""
    return [info.title for info in services.models.list_checkpoints()]


def load_checkpoint(services: Any, title: str | None) -> tuple[str, bool]:
    """Load the checkpoint picked in the dropdown; return (what to tell the user, whether it worked).

    A failed load keeps the previous model (ModelService's rule); the reason is shown, not raised.
    """
    if not title:
        return "", True
    try:
        info = services.models.select(title)
    except LookupError as exc:
        return str(exc).strip("'\""), False
    except Exception as exc:  # noqa: BLE001 - any load failure becomes a message for the user
        logger.info("checkpoint %s could not be loaded: %s", title, exc)
        return f"Could not load {title}: {exc}; the previous model stays selected", False
    return f"Loaded {getattr(info, 'title', title)}.", True


@dataclass
class CheckpointSelector:
    """The selector's components; :meth:`wire` once the tab's message line exists."""

    dropdown: gr.Dropdown
    refresh: gr.Button
    #: "VAE / Text Encoder": the ``forge_additional_modules`` setting (None in tests that build it by hand).
    modules: gr.Dropdown | None = None

    def wire(self, services: Any, message: gr.HTML) -> None:
        """↻ rescans the model folders; picking a checkpoint loads it and says so in ``message``."""

        def refresh_checkpoints(current: str | None) -> Any:
            services.models.refresh()
            titles = checkpoint_titles(services)
            value = current if current in titles else services.models.selected_title()
            return gr.update(choices=titles, value=value)

        self.refresh.click(
            refresh_checkpoints,
            inputs=self.dropdown,
            outputs=self.dropdown,
            show_progress="hidden",
            concurrency_limit=None,
        )

        def select_checkpoint(title: str | None) -> str:
            text, ok = load_checkpoint(services, title)
            if not ok:
                gr.Warning(for_client(text))
                return error_html(text)
            return note_html(text) if text else ""

        self.dropdown.input(
            select_checkpoint,
            inputs=self.dropdown,
            outputs=message,
            concurrency_limit=None,
            show_progress="minimal",
        )
        if self.modules is not None:
            self.modules.focus(lambda: gr.update(choices=module_names(services, refresh=True)),
                               outputs=self.modules, show_progress="hidden", concurrency_limit=None)
            self.modules.input(lambda names: choose_modules(services, names), inputs=self.modules,
                               outputs=message, show_progress="hidden", concurrency_limit=None)


def module_names(services: Any, *, refresh: bool = False) -> list[str]:
    """The text encoder / VAE files SD 3.x and Flux can be loaded with (models/text_encoder, models/VAE)."""
    models = services.models
    if refresh and hasattr(models, "refresh_modules"):
        models.refresh_modules()
    listing = getattr(models, "list_modules", None)
    return [item.name for item in listing()] if listing is not None else []


def choose_modules(services: Any, names: list[str] | None) -> str:
    """Keep the chosen modules as the ``forge_additional_modules`` setting; they apply at the next load."""
    try:
        services.options.update({"forge_additional_modules": list(names or [])})
    except ValueError as exc:  # a file removed since the list was shown
        return error_html(f"Not applied: {exc}")
    if names:
        return note_html(f"SD 3.x / Flux models will be loaded with {', '.join(names)}.")
    return note_html("SD 3.x / Flux models will use the fitting text encoders and VAE found automatically.")


def render_checkpoint_selector(services: Any, form: dict[str, Any], *, prefix: str) -> CheckpointSelector:
    """The dropdown (``form["checkpoint"]``) and ↻ in a row, then the "Download a model" accordion."""
    with gr.Row():
        form["checkpoint"] = gr.Dropdown(
            label="Stable Diffusion checkpoint",
            choices=[],
            value=None,
            allow_custom_value=True,
            elem_id=f"{prefix}-checkpoint",
            scale=5,
        )
        refresh = gr.Button("↻", elem_classes="sdweb-tool", scale=0, elem_id=f"{prefix}-refresh-models")
        chosen = list(services.options.get("forge_additional_modules") or [])
        modules = gr.Dropdown(
            label="VAE / Text Encoder",
            info="SD 3.x / Flux files without their own; none: picked automatically",
            choices=sorted({*module_names(services), *chosen}),
            value=chosen,
            multiselect=True,
            elem_id=f"{prefix}-modules",
            scale=3,
        )
    # Open while the bundled demo is all there is: the way to a real model is right there.
    render_download_section(services, form["checkpoint"], open_=not services.models.has_own_checkpoint())
    return CheckpointSelector(dropdown=form["checkpoint"], refresh=refresh, modules=modules)

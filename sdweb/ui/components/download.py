"""The "Download a model" accordion: fetch a checkpoint from the Hugging Face hub from the page.

Offers the well-known checkpoints (SD 1.5, SDXL base, with their published sha256) and any hub
repository (``owner/name`` or ``owner/name:file.safetensors``). The download itself is the model
service's (resumable, sha256-verified, saved under ``models/Stable-diffusion``); this module shows its
progress with gradio's progress bar, reports the outcome in words, and puts the new checkpoint into
the checkpoint dropdown at once.
"""

from __future__ import annotations

import html
import logging
from typing import Any

import gradio as gr

logger = logging.getLogger(__name__)

#: The dropdown entry that means "use the repository typed below".
CUSTOM_CHOICE = "Other: a Hugging Face repository"


def download_choices(services: Any) -> list[tuple[str, str]]:
    return [*services.models.known_downloads(), (CUSTOM_CHOICE, "")]


def spec_from_form(choice: str | None, repository: str | None) -> str:
    """What to download: the repository typed (it overrides the list), else the well-known name picked;
    ValueError if neither.
    """
    typed = (repository or "").strip()
    if typed:
        return typed
    if choice:
        return choice
    raise ValueError("Pick a model from the list, or type a Hugging Face repository such as "
                     "'owner/name' or 'owner/name:file.safetensors'.")


def outcome_html(text: str, *, ok: bool) -> str:
    kind = "note" if ok else "error"
    return f'<div class="sdweb-{kind}" id="sdweb-download-result">{html.escape(text)}</div>'


def render_download_section(services: Any, checkpoint: gr.Dropdown, *, open_: bool = False) -> None:
    """An accordion under the checkpoint selector; a finished download is selected in ``checkpoint``."""
    from sdweb.safepath import shown_path

    # Relative to the data folder: a page opened from the LAN never shows the server's own paths.
    folder = shown_path(services.settings.paths.ckpt_dirs[0], services.settings.paths.root)
    with gr.Accordion("Download a model", open=open_, elem_id="sdweb-download"):
        gr.Markdown(
            f"Fetches a checkpoint from the Hugging Face hub into `{folder}` (resumable; the file is kept "
            "only if its sha256 matches). Needs an internet connection; a gated repository needs "
            "`hf auth login` first."
        )
        with gr.Row():
            choice = gr.Dropdown(label="Model", choices=download_choices(services),
                                 value=services.models.known_downloads()[0][1], scale=2,
                                 elem_id="sdweb-download-choice")
            repository = gr.Textbox(label="or a hub repository (used when filled in)",
                                    placeholder="owner/name:file.safetensors",
                                    elem_id="sdweb-download-repo", scale=3)
            start = gr.Button("Download", variant="secondary", elem_id="sdweb-download-start", scale=0)
        result = gr.HTML("", elem_id="sdweb-download-outcome", js_on_load=None)

    def download(choice_value: str | None, repo: str | None, current: str | None,
                 progress: gr.Progress = gr.Progress()) -> tuple[str, Any]:  # noqa: B008 - gradio's idiom
        keep = gr.update(value=current)
        try:
            spec = spec_from_form(choice_value, repo)
        except ValueError as exc:
            return outcome_html(str(exc), ok=False), keep

        def show(done: int, total: int) -> None:
            progress(done / total if total else None, desc=f"Downloading {spec}",
                     total=None, unit="bytes")

        try:
            info = services.models.download(spec, progress=show)
        except (ValueError, RuntimeError, OSError) as exc:
            logger.warning("download of %s failed: %s", spec, exc)
            return outcome_html(f"Download failed: {exc}", ok=False), keep
        titles = [item.title for item in services.models.list_checkpoints()]
        return (outcome_html(f"Downloaded {info.title}. It is in the checkpoint list; pick it to load it.",
                             ok=True),
                gr.update(choices=titles, value=current if current in titles else info.title))

    start.click(download, inputs=[choice, repository, checkpoint], outputs=[result, checkpoint],
                concurrency_limit=None)

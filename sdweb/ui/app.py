"""The web UI: ``build_ui(services)`` assembles one module per tab into a ``gr.Blocks``.

Also owns the page header (model status, the LAN-without-login warning) and the cross-tab
"send to txt2img" wiring: every tab that can send parameters gets the :class:`Txt2ImgTab` handle.
Nothing here imports torch: lists that need the engine (samplers) are filled after the page loads.

Mount with ``gr.mount_gradio_app(app, build_ui(services), path="/", auth=..., **mount_kwargs(services))``.
"""

from __future__ import annotations

import html
import logging
from typing import Any

import gradio as gr

from sdweb.ui import theme
from sdweb.ui.components.results import ResultView
from sdweb.ui.fields import pasted_backcompat, pasted_gpu_rng
from sdweb.ui.tabs import extras, gallery, history, img2img, merger, pnginfo, settings, txt2img, workers

logger = logging.getLogger(__name__)

#: How many calls of one UI event (paging, searching...) run at once across all users.
EVENT_CONCURRENCY = 16
#: How often an open page refreshes the model status in its header (seconds).
STATUS_REFRESH_SECONDS = 2.0

LISTEN_WITHOUT_AUTH_WARNING = (
    "This UI is open to your whole network (--listen) without a login: anyone on the LAN can use it "
    "and see your images. Restart with --gradio-auth user:password."
)


def mount_kwargs(services: Any) -> dict[str, Any]:
    """The keyword arguments ``gr.mount_gradio_app`` needs for this UI.

    ``allowed_paths``: gradio may serve files from outputs/ (the galleries show saved files) and
    nothing else of the data folder. ``css``/``theme`` moved from Blocks to mount/launch in Gradio 6.
    """
    outputs = services.settings.paths.outputs_dir
    return {
        "allowed_paths": [str(outputs)],
        "css": theme.CSS,
        "head": theme.HEAD,
        "theme": gr.themes.Default(primary_hue="orange"),
        "show_error": False,
        # Our History tab keeps generations; gradio's run history would copy every result into each
        # browser and offers uploading them to a hub.
        "run_history": False,
        "footer_links": ["api", "settings"],
    }


def model_status_html(services: Any) -> str:
    """The header's model line: none / idle / loading / ready / error (with the reason)."""
    models = services.models
    status = models.status()
    state = status.state
    if state in ("idle", "none") and not models.list_checkpoints():
        state, text = "none", models.empty_message()
    elif state == "idle":
        title = models.selected_title()
        text = f"Model: {title} (loads on first use)" if title else (status.message or "No model loaded")
    elif state == "ready":
        text = f"Model: {status.title} ✓"
    elif state == "loading":
        text = status.message or f"Loading {status.title}…"
    elif state == "error":
        text = f"Model error ({status.title}): {status.message}"
    else:
        text = status.message or models.empty_message()
    if status.is_demo and state == "ready":
        text += " (demo model: simple coloured shapes at 64x64, for trying the UI)"
    return (
        f'<span class="sdweb-model sdweb-model-{state}" id="sdweb-model-status" '
        f'data-state="{state}">{html.escape(text)}</span>'
    )


def banner_html(services: Any) -> str:
    """A red banner when the UI is on the LAN without a login."""
    launch = services.settings
    if launch.listen and not launch.gradio_auth:
        warning = html.escape(LISTEN_WITHOUT_AUTH_WARNING)
        return f'<div class="sdweb-banner" id="sdweb-listen-warning">⚠ {warning}</div>'
    return ""


def build_ui(services: Any) -> gr.Blocks:
    """The whole page: header, then the tabs (txt2img, img2img, Extras, Gallery, History, PNG Info...)."""
    # Gallery pages are copied into gradio's cache; files older than a day are swept hourly.
    with gr.Blocks(title="sdweb", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        # 1. Header: name, model status (refreshed while the page is open), LAN warning.
        with gr.Row(elem_id="sdweb-header"):
            gr.HTML("<h1>sdweb</h1>", js_on_load=None)
            status = gr.HTML(model_status_html(services), elem_id="sdweb-model", js_on_load=None)
        gr.HTML(banner_html(services), js_on_load=None)
        timer = gr.Timer(STATUS_REFRESH_SECONDS)
        timer.tick(
            lambda: model_status_html(services),
            outputs=status,
            show_progress="hidden",
            concurrency_limit=None,
            queue=False,
        )

        # 2. Tabs. txt2img first: the others send parameters to it.
        with gr.Tabs(elem_id="sdweb-tabs") as tabs:
            with gr.Tab("txt2img", id=txt2img.TAB_ID, elem_id="tab-txt2img"):
                t2i = txt2img.render_txt2img_tab(services, tabs)
            with gr.Tab("img2img", id=img2img.TAB_ID, elem_id="tab-img2img"):
                i2i = img2img.render_img2img_tab(services, tabs)
            with gr.Tab("Extras", id=extras.TAB_ID, elem_id="tab-extras"):
                extras_upscaler = extras.render_extras_tab(services)
            with gr.Tab("Gallery", id="gallery", elem_id="tab-gallery") as gallery_tab:
                gallery.render_gallery_tab(services, t2i, gallery_tab, i2i)
            with gr.Tab("History", id="history", elem_id="tab-history") as history_tab:
                history.render_history_tab(services, t2i, history_tab, i2i)
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab-pnginfo"):
                pnginfo.render_pnginfo_tab(services, t2i, i2i)
            merge_models = None
            if getattr(services, "merger", None) is not None:
                with gr.Tab("Checkpoint Merger", id=merger.TAB_ID, elem_id="tab-modelmerger"):
                    merge_models = merger.render_merger_tab(services)
            render_extension_tabs(services)
            with gr.Tab("Workers", id="workers", elem_id="tab-workers"):
                workers.render_workers_tab(services)
            with gr.Tab("Settings", id="settings", elem_id="tab-settings"):
                settings.render_settings_tab(services, demo)

        # 3. Lists that change while the server runs (and samplers, which need the engine's registry).
        txt2img.wire_page_load(demo, services, t2i)
        img2img.wire_page_load(demo, services, i2i)
        extras.wire_page_load(demo, services, extras_upscaler)
        if merge_models is not None:
            merger.wire_page_load(demo, services, merge_models)
        wire_send_to_img2img(services, t2i, i2i)
    # Gradio runs each event one call at a time unless told otherwise: paging or searching by one user
    # must not wait for another's. GPU work is serialised by our own queue, not by this limit.
    demo.queue(default_concurrency_limit=EVENT_CONCURRENCY)
    return demo


def wire_send_to_img2img(services: Any, t2i: txt2img.Txt2ImgTab, i2i: img2img.Img2ImgTab) -> None:
    """txt2img's "Send to img2img": the selected result and its parameters go to the img2img tab."""
    if t2i.send_to_img2img is None or t2i.view is None:
        return

    def send_result(view: ResultView) -> tuple[Any, dict[str, Any], list[str]] | None:
        if view.item is None:
            gr.Warning("Generate an image first.")
            return None
        values, notes = img2img.values_for_img2img(view.infotext, services.models,
                                                   gpu_rng=pasted_gpu_rng(services),
                                                   backcompat=pasted_backcompat(services))
        return view.item, values, notes

    i2i.wire_send(t2i.send_to_img2img.click, send_result, [t2i.view])


def render_extension_tabs(services: Any) -> None:
    """The Extensions tab (when that module exists) and tabs extensions add through ``register_ui_tabs``."""
    try:
        from sdweb.ui.tabs.extensions import render_extensions_tab
    except ImportError:
        render_extensions_tab = None  # the Extensions tab lands with the extensions issue
    if render_extensions_tab is not None:
        with gr.Tab("Extensions", id="extensions", elem_id="tab-extensions"):
            render_extensions_tab(services)
    for plugin_name, tabs in services.plugins.collect("register_ui_tabs", services=services):
        for index, ui_tab in enumerate(tabs or ()):
            title = str(getattr(ui_tab, "title", "") or plugin_name)
            elem_id = getattr(ui_tab, "elem_id", "") or f"tab-ext-{plugin_name}-{index}"
            with gr.Tab(title, id=elem_id, elem_id=elem_id):
                try:
                    ui_tab.render()
                except Exception as exc:  # an extension's tab must not take the page down
                    logger.exception("extension %r failed to render its tab %r", plugin_name, title)
                    gr.HTML(
                        f'<div class="sdweb-error">The extension {html.escape(plugin_name)} failed '
                        f"to build this tab: {html.escape(str(exc))}</div>",
                        js_on_load=None,
                    )

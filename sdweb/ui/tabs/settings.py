"""The Settings tab: every option of ``services.options`` (config.json), grouped by section.

Each :class:`~sdweb.config.OptionSpec` is rendered by its type (checkbox, number, dropdown, text).
"Apply settings" sends only what changed to ``OptionsStore.update`` — all or nothing: one invalid value
refuses the whole change with the store's message, and nothing is written. The form re-reads the
stored values whenever the page is opened, so a change made elsewhere (API, another browser) shows.
"""

from __future__ import annotations

import html
import ipaddress
import logging
from collections.abc import Callable, Mapping
from typing import Any

import gradio as gr

from sdweb.config import OptionSpec
from sdweb.safepath import for_client
from sdweb.ui.components.messages import error_html, note_html

logger = logging.getLogger(__name__)


def suggestions(services: Any) -> dict[str, Callable[[], list[str]]]:
    """Lists offered for free-text options that name files (A1111 shows these as dropdowns)."""
    models = services.models

    def checkpoints() -> list[str]:
        return [info.title for info in models.list_checkpoints()]

    def vaes() -> list[str]:
        return ["Automatic", "None", *(info.name for info in models.list_vaes())]

    return {"sd_model_checkpoint": checkpoints, "sd_vae": vaes}


def is_loopback(host: str | None) -> bool:
    """Whether a client address is this machine (127.0.0.0/8, ::1, "localhost")."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _kind(spec: OptionSpec, suggested: Mapping[str, Any] | None = None) -> str:
    if spec.choices is not None or spec.dynamic_choices is not None or spec.key in (suggested or {}):
        return "choice"
    if isinstance(spec.default, bool):
        return "bool"
    if isinstance(spec.default, int):
        return "int"
    if isinstance(spec.default, float):
        return "float"
    if isinstance(spec.default, (list, tuple)):
        return "list"
    return "text"


def to_form(spec: OptionSpec, value: Any) -> Any:
    """A stored value as its component shows it."""
    kind = _kind(spec)
    if kind == "list":
        return ", ".join(str(item) for item in value or ())
    if kind == "text":
        return "" if value is None else str(value)
    return value


def from_form(spec: OptionSpec, value: Any) -> Any:
    """A component's value as the option store takes it (the store still validates it)."""
    kind = _kind(spec)
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind == "list":
        return [item.strip() for item in str(value or "").split(",") if item.strip()]
    if kind == "text" and spec.default is None:
        return value or None
    return value


def changed_options(
    specs: list[OptionSpec], current: Mapping[str, Any], values: Mapping[str, Any]
) -> dict[str, Any]:
    """The options whose form value differs from the stored one."""
    changes: dict[str, Any] = {}
    for spec in specs:
        if spec.key not in values:
            continue
        value = from_form(spec, values[spec.key])
        if value != current.get(spec.key):
            changes[spec.key] = value
    return changes


def apply_settings(options: Any, values: Mapping[str, Any], *, allow_outside: bool = True,
                   current: Mapping[str, Any] | None = None) -> tuple[str, bool]:
    """Apply the changed values all-or-nothing; return (message, ok).

    ``allow_outside``: output folders may be absolute paths outside the data folder (the Settings tab
    opened on this machine, or ``--allow-outdir-anywhere``). ``current``: the values the form showed.
    """
    shown = dict(options.as_dict())
    shown.update(current or {})
    changes = changed_options(options.specs, shown, values)
    if not changes:
        return "Nothing changed.", True
    try:
        applied = options.update(changes, allow_outside=allow_outside)
    except ValueError as exc:
        return f"Not applied (nothing was changed): {exc}", False
    if not applied:
        return "Nothing changed.", True
    labels = {spec.key: spec.label for spec in options.specs}
    listed = ", ".join(f"{labels.get(key, key)} = {value!r}" for key, value in applied.items())
    return f"Applied {len(applied)} change{'s' if len(applied) != 1 else ''}: {listed}.", True


def _component(spec: OptionSpec, value: Any, suggested: Mapping[str, Any]) -> Any:
    kind = _kind(spec, suggested)
    common: dict[str, Any] = {"label": spec.label, "info": spec.key, "elem_id": f"setting-{spec.key}"}
    if kind == "choice":
        choices = list(spec.choices) if spec.choices is not None else [value]
        return gr.Dropdown(choices=choices, value=value, allow_custom_value=spec.choices is None, **common)
    if kind == "bool":
        return gr.Checkbox(value=bool(value), **common)
    if kind in ("int", "float"):
        return gr.Number(
            value=value,
            precision=0 if kind == "int" else None,
            minimum=spec.minimum,
            maximum=spec.maximum,
            **common,
        )
    return gr.Textbox(value=to_form(spec, value), **common)


def render_settings_tab(services: Any, demo: gr.Blocks | None = None) -> None:
    """Lay out and wire the Settings tab. Call inside an open ``gr.Tab``.

    With ``demo``, the form re-reads the stored values (and dynamic choices) each time a page opens.
    Not on tab selection: a reload racing the user's first edit would undo it.
    """
    options = services.options
    specs: list[OptionSpec] = options.specs

    def stored_values() -> dict[str, Any]:
        values = dict(options.as_dict())
        current_options = getattr(services.models, "current_options", None)
        if current_options is not None:  # the checkpoint in use, never "" once one is listed
            values["sd_model_checkpoint"] = current_options()["sd_model_checkpoint"]
        return values

    current = stored_values()
    suggested = suggestions(services)
    sections: dict[str, list[OptionSpec]] = {}
    for spec in specs:
        sections.setdefault(spec.section, []).append(spec)

    with gr.Row():
        apply = gr.Button("Apply settings", variant="primary", elem_id="settings-apply", scale=1)
        result = gr.HTML("", elem_id="settings-result", js_on_load=None)
    components: dict[str, Any] = {}
    with gr.Row(equal_height=False):
        columns = [gr.Column(), gr.Column()]
        for index, (section, section_specs) in enumerate(sections.items()):
            with columns[index % 2], gr.Accordion(section, open=True):
                for spec in section_specs:
                    components[spec.key] = _component(spec, current.get(spec.key), suggested)
    by_component = {component: key for key, component in components.items()}
    spec_by_key = {spec.key: spec for spec in specs}

    settings = getattr(services, "settings", None)
    anywhere = bool(getattr(settings, "allow_outdir_anywhere", False))

    def apply_clicked(data: dict[Any, Any], request: gr.Request) -> str:
        values = {by_component[component]: value for component, value in data.items()}
        # Absolute output folders only from this machine (or with --allow-outdir-anywhere): on a LAN,
        # another person's browser may not aim the server's writes anywhere.
        local = is_loopback(getattr(getattr(request, "client", None), "host", None))
        message, ok = apply_settings(options, values, allow_outside=anywhere or local,
                                     current=stored_values())
        if not ok:
            gr.Warning(for_client(message))
        return note_html(message) if ok else error_html(message)

    apply.click(apply_clicked, inputs=set(components.values()), outputs=result, show_progress="hidden")

    def reload_values() -> dict[Any, Any]:
        stored = stored_values()
        updates: dict[Any, Any] = {}
        for key, component in components.items():
            spec = spec_by_key[key]
            listing = spec.dynamic_choices or suggested.get(key)
            if listing is not None:
                try:
                    choices = list(listing())
                except Exception as exc:  # noqa: BLE001 - show the value even if the list fails
                    logger.warning("choices for %s failed: %s", key, exc)
                    choices = []
                value = stored.get(key)
                if value not in choices:
                    choices.append(value)
                updates[component] = gr.update(choices=choices, value=value)
            else:
                updates[component] = to_form(spec, stored.get(key))
        return updates

    if demo is not None and components:
        demo.load(reload_values, outputs=set(components.values()), show_progress="hidden")
    if not components:
        gr.HTML(html.escape("No settings are defined."), js_on_load=None)

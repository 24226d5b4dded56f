"""The Extensions tab: the installed list, installs (git URL, local folder, zip), updates, enable/disable,
uninstall, requirements and the restart button.

The behaviour lives in :class:`ExtensionsTabActions` (no gradio; each action returns a message for the
user), and :func:`render_extensions_tab` wires it to components inside the ``gr.Tab("Extensions")`` the
UI owner opens. Every refusal or failure is shown as a message in the tab, never as a traceback.
Changes to what runs apply at the next start ("Restart server").
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

logger = logging.getLogger(__name__)

DISABLED_OPTION = "disabled_extensions"
HEADERS = ["Name", "Version", "Enabled", "Status", "Commit", "Branch", "Remote", "Requirements", "Problem"]
#: Fixed widths: with automatic ones, empty columns (no git, no requirements) squeeze their headers.
COLUMN_WIDTHS = ["12%", "7%", "7%", "10%", "7%", "6%", "15%", "10%", "26%"]
_NOTHING_SELECTED = "Choose an extension first (click its row or pick it in the list)."


def message_html(text: str, *, error: bool = False) -> str:
    """A message box; ``text`` is escaped (commit subjects and errors come from outside)."""
    kind = "sdweb-error" if error else "sdweb-note"
    body = html.escape(text).replace("\n", "<br>")
    return f'<div class="{kind}">{body}</div>'


def status_of(info: Any) -> str:
    """What is true now and what the next start will do, in words."""
    if info.path is None and info.source == "folder":
        return "uninstalled; runs until restart"
    if info.loaded:
        return "running" if info.enabled else "running; disabled from next start"
    if not info.enabled:
        return "disabled"
    if info.load_error:
        return "failed to load"
    return "restart to load"


class ExtensionsTabActions:
    """What each control of the Extensions tab does, testable without a browser.

    Args:
        services: the app's services container; uses ``extensions`` (ExtensionManager), ``installer``
            (ExtensionInstaller), ``options`` (OptionsStore) and ``restart`` (callable).
        save_disabled: persists the disabled set; by default the ``disabled_extensions`` option.
    """

    def __init__(self, services: Any, *, save_disabled: Callable[[set[str]], None] | None = None) -> None:
        self._services = services
        self._save_disabled = save_disabled

    @property
    def available(self) -> bool:
        return getattr(self._services, "extensions", None) is not None

    @property
    def changes_allowed(self) -> bool:
        manager = getattr(self._services, "extensions", None)
        return bool(manager is not None and manager.changes_allowed)

    # -- the list -------------------------------------------------------------------------------
    def infos(self) -> list[Any]:
        if not self.available:
            return []
        return list(self._services.extensions.list())

    def table(self) -> dict[str, Any]:
        rows = []
        for info in self.infos():
            rows.append([
                info.name,
                info.version,
                "yes" if info.enabled else "no",
                status_of(info),
                (info.git_commit or "")[:8],
                info.branch or "",
                info.git_remote or ("pip package" if info.source == "entry_point" else ""),
                ", ".join(info.requirements),
                info.load_error or info.hook_error or "",
            ])
        return {"data": rows, "headers": HEADERS}

    def names(self) -> list[str]:
        return [info.name for info in self.infos()]

    # -- running one action ---------------------------------------------------------------------
    def _attempt(self, what: str, action: Callable[[], str]) -> str:
        """Run ``action``; turn every failure into a message the user can act on."""
        if not self.available:
            return message_html("Extensions are not available in this server.", error=True)
        try:
            return message_html(action())
        except (PermissionError, ValueError, KeyError, LookupError, RuntimeError, OSError) as exc:
            # These carry messages written for people (refusals, bad URLs, git's own words).
            text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            logger.warning("%s failed: %s", what, text)
            return message_html(f"{what} failed: {text}", error=True)
        except Exception as exc:  # an unexpected bug: log the traceback, show one line
            logger.exception("%s failed", what)
            return message_html(f"{what} failed unexpectedly ({type(exc).__name__}: {exc}); "
                                "the server log has the details.", error=True)

    @property
    def _installer(self) -> Any:
        installer = getattr(self._services, "installer", None)
        if installer is None:
            raise RuntimeError("this server was started without the extension installer")
        return installer

    # -- install --------------------------------------------------------------------------------
    def install_git(self, url: str, branch: str = "") -> str:
        def run() -> str:
            info = self._installer.install_from_git(url, branch=branch or None)
            return self._installed_message(info)

        return self._attempt("Install from URL", run)

    def install_folder(self, folder: str) -> str:
        def run() -> str:
            if not (folder or "").strip():
                raise ValueError("enter the path of an extension folder on the server")
            return self._installed_message(self._installer.install_from_folder(Path(folder.strip())))

        return self._attempt("Install from folder", run)

    def install_zip(self, upload: Any) -> str:
        def run() -> str:
            path = getattr(upload, "name", upload)  # a filepath string, or a tempfile wrapper
            if not path:
                raise ValueError("choose a .zip file first")
            return self._installed_message(self._installer.install_from_zip(Path(path)))

        return self._attempt("Install from zip", run)

    @staticmethod
    def _installed_message(info: Any) -> str:
        text = f"Installed {info.name} {info.version}"
        if info.git_commit:
            text += f" at {info.git_commit[:8]}"
        text += ". Press \"Restart server\" to load it."
        if info.requirements:
            text += (f" It declares Python requirements ({', '.join(info.requirements)}): press "
                     "\"Install requirements\" if they are not installed yet.")
        return text

    # -- per extension ---------------------------------------------------------------------------
    def check_updates(self, name: str | None) -> str:
        def run() -> str:
            if not name:
                raise ValueError(_NOTHING_SELECTED)
            commits = self._installer.check_updates(name)
            if not commits:
                return f"{name} is up to date."
            listing = "\n".join(f"  {commit}" for commit in commits)
            return (f"{name} has {len(commits)} new commit(s), newest first:\n{listing}\n"
                    "Press \"Update\" to fast-forward to them.")

        return self._attempt("Check for updates", run)

    def update(self, name: str | None) -> str:
        def run() -> str:
            if not name:
                raise ValueError(_NOTHING_SELECTED)
            info = self._installer.update(name)
            return f"Updated {name} to {(info.git_commit or '?')[:8]}. Press \"Restart server\" to use it."

        return self._attempt("Update", run)

    def set_enabled(self, name: str | None, enabled: bool) -> str:
        def run() -> str:
            if not name:
                raise ValueError(_NOTHING_SELECTED)
            disabled = self._services.extensions.set_enabled(name, enabled)
            saved = self._persist_disabled(disabled)
            state = "enabled" if enabled else "disabled"
            note = "" if saved else " (could not be saved: it lasts until the server stops)"
            return f"{name} is {state} from the next start{note}. Press \"Restart server\" to apply it."

        return self._attempt("Enable" if enabled else "Disable", run)

    def _persist_disabled(self, disabled: set[str]) -> bool:
        if self._save_disabled is not None:
            self._save_disabled(set(disabled))
            return True
        options = getattr(self._services, "options", None)
        if options is not None and any(spec.key == DISABLED_OPTION for spec in options.specs):
            options.update({DISABLED_OPTION: sorted(disabled)})
            return True
        logger.warning("no %r option to save the disabled extensions in", DISABLED_OPTION)
        return False

    def uninstall(self, name: str | None, confirmed: bool) -> str:
        def run() -> str:
            if not name:
                raise ValueError(_NOTHING_SELECTED)
            if not confirmed:
                raise ValueError(f"tick \"Yes, delete it\" to confirm removing {name} and its folder")
            self._installer.uninstall(name)
            return f"Removed {name}. It keeps running until you press \"Restart server\"."

        return self._attempt("Uninstall", run)

    def install_requirements(self, name: str | None) -> str:
        def run() -> str:
            if not name:
                raise ValueError(_NOTHING_SELECTED)
            output = self._installer.install_requirements(name)
            return f"Requirements of {name}:\n{output}\nPress \"Restart server\" to load it with them."

        return self._attempt("Install requirements", run)

    def restart(self) -> str:
        def run() -> str:
            restart = getattr(self._services, "restart", None)
            if restart is None:
                raise RuntimeError("this server cannot restart itself; stop and start it by hand")
            restart()
            return "Restarting the server… reload this page in a few seconds."

        return self._attempt("Restart", run)


def render_extensions_tab(
    services: Any, *, save_disabled: Callable[[set[str]], None] | None = None
) -> None:
    """Build the Extensions tab's components; call inside an open ``gr.Tab("Extensions")``."""
    actions = ExtensionsTabActions(services, save_disabled=save_disabled)
    if not actions.available:
        gr.HTML(message_html("Extensions are not available in this server.", error=True))
        return
    if not actions.changes_allowed:
        from sdweb.extensions.installer import LAN_REFUSAL

        gr.HTML(message_html(LAN_REFUSAL, error=True), elem_id="extensions_lan_notice")

    # Buttons that change installed code are greyed out on a LAN; the actions refuse them anyway.
    changeable = actions.changes_allowed

    # 1. The installed list, and the extension the per-extension buttons act on.
    table = gr.Dataframe(value=actions.table(), headers=HEADERS, interactive=False, wrap=True,
                         column_widths=COLUMN_WIDTHS, label="Installed extensions",
                         elem_id="extensions_table")
    with gr.Row():
        selected = gr.Dropdown(choices=actions.names(), value=None, label="Extension",
                               elem_id="extensions_selected", scale=3)
        refresh = gr.Button("Refresh list", elem_id="extensions_refresh", scale=1)
    with gr.Row():
        check = gr.Button("Check for updates", elem_id="extensions_check_updates")
        update = gr.Button("Update", elem_id="extensions_update", interactive=changeable)
        enable = gr.Button("Enable", elem_id="extensions_enable")
        disable = gr.Button("Disable", elem_id="extensions_disable")
        requirements = gr.Button("Install requirements", elem_id="extensions_install_requirements",
                                 interactive=changeable)
    with gr.Row():
        confirm = gr.Checkbox(False, label="Yes, delete it", elem_id="extensions_confirm_uninstall")
        uninstall = gr.Button("Uninstall", variant="stop", elem_id="extensions_uninstall",
                              interactive=changeable)
        restart = gr.Button("Restart server", variant="primary", elem_id="extensions_restart")
    message = gr.HTML("", elem_id="extensions_message")

    # 2. Installing.
    with gr.Accordion("Install", open=True):
        with gr.Row():
            url = gr.Textbox(label="Git repository URL", placeholder="https://github.com/someone/sdweb-extension",
                             elem_id="extensions_url", scale=4)
            branch = gr.Textbox(label="Branch or tag (optional)", elem_id="extensions_branch", scale=1)
        install_url = gr.Button("Install from URL", variant="primary", elem_id="extensions_install_url",
                                interactive=changeable)
        with gr.Row():
            folder = gr.Textbox(label="Local folder on the server", elem_id="extensions_folder", scale=4)
            install_folder = gr.Button("Install from folder", elem_id="extensions_install_folder", scale=1,
                                       interactive=changeable)
        with gr.Row():
            archive = gr.File(label="Zip file", file_types=[".zip"], type="filepath", height=120,
                              elem_id="extensions_zip", scale=4)
            install_zip = gr.Button("Install from zip", elem_id="extensions_install_zip", scale=1,
                                    interactive=changeable)

    # 3. Wiring: every action shows its message and redraws the list.
    def redraw(text: str, current: str | None) -> tuple[str, dict[str, Any], Any]:
        names = actions.names()
        return text, actions.table(), gr.Dropdown(choices=names, value=current if current in names else None)

    listing = [message, table, selected]
    refresh.click(lambda current: redraw("", current), inputs=selected, outputs=listing)
    check.click(lambda name: redraw(actions.check_updates(name), name), inputs=selected, outputs=listing)
    update.click(lambda name: redraw(actions.update(name), name), inputs=selected, outputs=listing)
    enable.click(lambda name: redraw(actions.set_enabled(name, True), name), inputs=selected, outputs=listing)
    disable.click(lambda name: redraw(actions.set_enabled(name, False), name), inputs=selected,
                  outputs=listing)
    requirements.click(lambda name: redraw(actions.install_requirements(name), name), inputs=selected,
                       outputs=listing)
    uninstall.click(lambda name, sure: (*redraw(actions.uninstall(name, sure), name), False),
                    inputs=[selected, confirm], outputs=[*listing, confirm])
    restart.click(actions.restart, outputs=message)
    install_url.click(lambda u, b, current: redraw(actions.install_git(u, b), current),
                      inputs=[url, branch, selected], outputs=listing)
    install_folder.click(lambda f, current: redraw(actions.install_folder(f), current),
                         inputs=[folder, selected], outputs=listing)
    install_zip.click(lambda z, current: redraw(actions.install_zip(z), current),
                      inputs=[archive, selected], outputs=listing)

    def pick_row(event: gr.SelectData) -> Any:
        row = event.row_value or []
        return gr.Dropdown(value=row[0]) if row else gr.Dropdown()

    table.select(pick_row, outputs=selected)

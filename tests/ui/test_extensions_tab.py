"""The Extensions tab's actions (real manager and installer in a temporary folder) and its build."""

from __future__ import annotations

import os
import subprocess
import types
import zipfile
from pathlib import Path
from typing import Any

import pytest

from sdweb.config import OptionSpec, OptionsStore
from sdweb.extensions.installer import ExtensionInstaller
from sdweb.extensions.manager import ExtensionManager, PluginHost
from sdweb.ui.tabs.extensions import HEADERS, ExtensionsTabActions, render_extensions_tab

MANIFEST = 'name = "{name}"\nversion = "1.0"\ndescription = "d"\nplugin_api = "1"\n{extra}'


def write_extension(folder: Path, extra: str = "", code: str = "") -> Path:
    folder.mkdir(parents=True)
    (folder / "extension.toml").write_text(MANIFEST.format(name=folder.name, extra=extra))
    (folder / "__init__.py").write_text("from sdweb.plugin_api import hookimpl\n" + code)
    return folder


def make_services(root: Path, *, changes_allowed: bool = True) -> Any:
    extensions_dir = root / "extensions"
    extensions_dir.mkdir(parents=True, exist_ok=True)
    options = OptionsStore(root / "config.json",
                           [OptionSpec("disabled_extensions", [], "Disabled extensions", "Extensions")])
    manager = ExtensionManager(extensions_dir, PluginHost(), disabled=options.get("disabled_extensions"),
                               changes_allowed=changes_allowed, entry_points=False)
    restarts: list[bool] = []
    return types.SimpleNamespace(extensions=manager, installer=ExtensionInstaller(manager), options=options,
                                 restart=lambda: restarts.append(True), restarts=restarts)


def git(*args: str, cwd: Path) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "T", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "T", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    subprocess.run(["git", "-c", "init.defaultBranch=main", *args], cwd=cwd, env=env, check=True,
                   capture_output=True, timeout=60)


def test_the_list_shows_state_errors_and_requirements(tmp_path: Path) -> None:
    services = make_services(tmp_path)
    write_extension(services.extensions.extensions_dir / "good", extra='requirements = ["numpy"]\n')
    write_extension(services.extensions.extensions_dir / "broken",
                    code="raise ImportError('no torchvision')\n")
    services.extensions.load_all()

    table = ExtensionsTabActions(services).table()

    assert table["headers"] == HEADERS
    rows = {row[0]: dict(zip(HEADERS, row, strict=True)) for row in table["data"]}
    assert rows["good"]["Status"] == "running" and rows["good"]["Requirements"] == "numpy"
    assert rows["broken"]["Status"] == "failed to load" and "no torchvision" in rows["broken"]["Problem"]


def test_install_update_flow_from_a_git_url(tmp_path: Path) -> None:
    services = make_services(tmp_path)
    work = write_extension(tmp_path / "src" / "from-git")
    git("init", "-q", cwd=work)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "First", cwd=work)
    actions = ExtensionsTabActions(services)

    installed = actions.install_git(work.as_uri(), "")
    assert "Installed from-git 1.0" in installed and "Restart server" in installed
    assert "restart to load" in str(actions.table()["data"])

    (work / "README.md").write_text("new\n")
    git("add", "README.md", cwd=work)
    git("commit", "-q", "-m", "Add <b>readme</b>", cwd=work)
    listed = actions.check_updates("from-git")
    assert "1 new commit" in listed and "Add &lt;b&gt;readme&lt;/b&gt;" in listed  # escaped, never HTML

    assert "Updated from-git" in actions.update("from-git")
    assert "is up to date" in actions.check_updates("from-git")


def test_refusals_and_failures_are_messages_not_tracebacks(tmp_path: Path) -> None:
    services = make_services(tmp_path, changes_allowed=False)
    write_extension(services.extensions.extensions_dir / "present")
    actions = ExtensionsTabActions(services)

    refused = actions.install_git("https://example.com/a/b.git", "")
    assert 'class="sdweb-error"' in refused and "--enable-insecure-extension-access" in refused
    assert "--listen" in actions.uninstall("present", True)
    assert "Traceback" not in refused

    bad_url = ExtensionsTabActions(make_services(tmp_path / "other")).install_git("http://insecure/x.git", "")
    assert "Install from URL failed" in bad_url and "https://" in bad_url
    assert "Choose an extension first" in actions.update(None)
    assert "no extension named" in actions.set_enabled("missing", False)


def test_enable_disable_is_saved_in_the_options(tmp_path: Path) -> None:
    services = make_services(tmp_path)
    write_extension(services.extensions.extensions_dir / "toggle")
    actions = ExtensionsTabActions(services)

    assert "disabled from the next start" in actions.set_enabled("toggle", False)
    assert services.options.get("disabled_extensions") == ["toggle"]
    assert OptionsStore(tmp_path / "config.json", [
        OptionSpec("disabled_extensions", [], "x")]).get("disabled_extensions") == ["toggle"]

    actions.set_enabled("toggle", True)
    assert services.options.get("disabled_extensions") == []


def test_a_save_callable_is_used_when_given(tmp_path: Path) -> None:
    services = make_services(tmp_path)
    write_extension(services.extensions.extensions_dir / "toggle")
    saved: list[set[str]] = []

    ExtensionsTabActions(services, save_disabled=saved.append).set_enabled("toggle", False)

    assert saved == [{"toggle"}]


def test_uninstall_needs_confirmation(tmp_path: Path) -> None:
    services = make_services(tmp_path)
    folder = write_extension(services.extensions.extensions_dir / "victim")
    actions = ExtensionsTabActions(services)

    assert "tick" in actions.uninstall("victim", False) and folder.exists()
    assert "Removed victim" in actions.uninstall("victim", True) and not folder.exists()


def test_zip_upload_and_restart(tmp_path: Path) -> None:
    services = make_services(tmp_path)
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("zipped/extension.toml", MANIFEST.format(name="zipped", extra=""))
        bundle.writestr("zipped/__init__.py", "")
    actions = ExtensionsTabActions(services)

    assert "Installed zipped" in actions.install_zip(str(archive))
    assert "choose a .zip" in actions.install_zip(None)
    assert "Restarting" in actions.restart() and services.restarts == [True]


@pytest.mark.parametrize("changes_allowed", [True, False])
def test_the_tab_builds_inside_a_gradio_tab(tmp_path: Path, changes_allowed: bool) -> None:
    import gradio as gr

    services = make_services(tmp_path, changes_allowed=changes_allowed)
    write_extension(services.extensions.extensions_dir / "shown")
    with gr.Blocks() as demo, gr.Tab("Extensions"):
        render_extensions_tab(services)

    by_id = {getattr(block, "elem_id", None): block for block in demo.blocks.values()}
    assert by_id["extensions_install_url"].interactive is changes_allowed
    assert by_id["extensions_restart"].interactive is True
    assert ("extensions_lan_notice" in by_id) is (not changes_allowed)

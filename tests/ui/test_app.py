"""The page as a whole: it builds from the real services, says what the model is doing, warns on an
open LAN, and never drags torch in while the page is being built."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import gradio as gr
import pytest

from sdweb.services.models import ModelStatus
from sdweb.ui.app import LISTEN_WITHOUT_AUTH_WARNING, banner_html, build_ui, model_status_html, mount_kwargs
from tests.fakes import make_services

REPO = Path(__file__).resolve().parents[2]


def test_build_ui_makes_every_tab(tmp_path: Path) -> None:
    services, _ = make_services(tmp_path)
    try:
        demo = build_ui(services)
        assert isinstance(demo, gr.Blocks)
        labels = {block.label for block in demo.blocks.values() if isinstance(block, gr.Tab)}
        assert {"txt2img", "Gallery", "History", "PNG Info", "Settings"} <= labels
    finally:
        services.worker.close()


def test_no_checkpoint_says_where_to_put_one(tmp_path: Path) -> None:
    services, _ = make_services(tmp_path, with_checkpoint=False)
    try:
        text = model_status_html(services)
        assert 'data-state="none"' in text
        assert "models/Stable-diffusion" in text and str(tmp_path) not in text  # no server paths
    finally:
        services.worker.close()


def test_status_shows_loading_ready_and_the_error_reason(tmp_path: Path) -> None:
    services, _ = make_services(tmp_path)
    try:
        models = services.models
        models._set_status(ModelStatus("loading", title="m [1]", message="Loading m [1]..."))
        assert 'data-state="loading"' in model_status_html(services)
        models._set_status(ModelStatus("error", title="m [1]", message="unknown model family"))
        text = model_status_html(services)
        assert 'data-state="error"' in text and "unknown model family" in text
        models.select(models.list_checkpoints()[0].title)
        assert 'data-state="ready"' in model_status_html(services)
    finally:
        services.worker.close()


def test_listen_without_login_shows_a_banner(tmp_path: Path) -> None:
    services, _ = make_services(tmp_path, listen=True)
    secured, _ = make_services(tmp_path / "b", listen=True, gradio_auth=(("u", "p"),))
    try:
        assert LISTEN_WITHOUT_AUTH_WARNING in banner_html(services).replace("&#x27;", "'")
        assert banner_html(secured) == ""
    finally:
        services.worker.close()
        secured.worker.close()


def test_gradio_may_serve_outputs_and_nothing_else_of_the_data_folder(tmp_path: Path) -> None:
    services, _ = make_services(tmp_path)
    try:
        assert mount_kwargs(services)["allowed_paths"] == [str(services.settings.paths.outputs_dir)]
    finally:
        services.worker.close()


_BUILD_AND_REPORT = textwrap.dedent("""
    import builtins, json, sys, tempfile
    from pathlib import Path
    from sdweb.config import DataPaths, LaunchSettings
    from sdweb.services.factory import build_services

    services = build_services(LaunchSettings(paths=DataPaths.from_root(Path(tempfile.mkdtemp()))))
    after_services = sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules)
    asked = []
    real_import = builtins.__import__

    def watching_import(name, *args, **kwargs):
        if name.split(".")[0] in ("torch", "diffusers", "transformers", "peft"):
            asked.append(name)
        return real_import(name, *args, **kwargs)

    builtins.__import__ = watching_import
    from sdweb.ui.app import build_ui
    build_ui(services)
    builtins.__import__ = real_import
    print(json.dumps({"after_services": after_services, "ui_asked": asked}))
""")


def _build_in_fresh_process() -> dict[str, list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", _BUILD_AND_REPORT],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def fresh_build() -> dict[str, list[str]]:
    return _build_in_fresh_process()


def test_building_the_ui_imports_no_torch(fresh_build: dict[str, list[str]]) -> None:
    assert fresh_build["ui_asked"] == []


def test_services_and_ui_together_import_no_torch(fresh_build: dict[str, list[str]]) -> None:
    """Issue 4 item 2: the page is up before torch (seconds) is imported."""
    assert fresh_build["after_services"] == []


def test_the_download_hint_names_the_folder_without_the_servers_path(tmp_path: Path) -> None:
    # A page opened from the LAN must not learn where the server keeps its files (issue 13.4).
    services, _ = make_services(tmp_path)
    try:
        demo = build_ui(services)
        hints = [block.value for block in demo.blocks.values()
                 if isinstance(block, gr.Markdown) and "Fetches a checkpoint" in str(block.value)]
        assert hints and all("`models/Stable-diffusion`" in hint for hint in hints)
        assert not any(str(tmp_path) in hint for hint in hints)
    finally:
        services.worker.close()

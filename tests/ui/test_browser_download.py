"""Real-browser test of "Download a model" (txt2img tab) against the fake hub on 127.0.0.1.

With only the bundled demo model the section is open; a repository typed there is fetched with a progress
bar, verified, and lands in the checkpoint dropdown at once; an unreachable hub is reported in words.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.fixtures.checkpoints import write_tiny_sd1
from tests.fixtures.fake_hub import REPO, FakeHub, running_hub
from tests.ui.conftest import RunningServer, opened_page, serve
from tests.ui.test_browser import TIMEOUT_MS, browser, screenshot

pytestmark = pytest.mark.browser

__all__ = ["browser"]  # the shared chromium fixture


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    with running_hub() as state:
        yield state


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, hub: FakeHub) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("download")
    demo = write_tiny_sd1(root / "bundled" / "demo-shapes.safetensors")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sdweb.services.factory.DEMO_CHECKPOINT", demo)
        patch.setenv("HF_ENDPOINT", hub.url)
        with serve(root / "data", skip_demo_model=False, with_checkpoint=False) as running:
            yield running


@pytest.fixture()
def page(browser: Any, server: RunningServer) -> Iterator[Any]:
    with opened_page(browser, server.url, timeout_ms=TIMEOUT_MS) as opened:
        yield opened


def test_a_typed_repository_downloads_and_appears_in_the_checkpoint_list(
    page: Any, server: RunningServer, hub: FakeHub, tmp_path: Path
) -> None:
    hub.add(REPO, "fetched.safetensors", write_tiny_sd1(tmp_path / "fetched.safetensors").read_bytes())
    # The page's load event fills the checkpoint dropdown; Download sends the dropdown's value with it, and
    # an empty one (a click before the load answered) would make it select the new file instead.
    dropdown = page.locator("#txt2img-checkpoint input")
    expect(dropdown).to_have_value(re.compile(r"^demo-shapes"), timeout=TIMEOUT_MS)
    section = page.locator("#sdweb-download")
    # Open without asking: the demo is all there is.
    repo_box = section.locator("#sdweb-download-repo textarea, #sdweb-download-repo input").first
    repo_box.fill(f"{REPO}:fetched.safetensors")
    page.locator("#sdweb-download-start").click()

    result = page.locator("#sdweb-download-result")
    result.wait_for()
    assert "Downloaded fetched.safetensors" in result.inner_text()
    saved = server.services.settings.paths.ckpt_dirs[0] / "fetched.safetensors"
    assert saved.is_file()
    # Listed at once; the loaded model stays selected until the user picks the new one.
    expect(dropdown).to_have_value(re.compile(r"^demo-shapes"), timeout=TIMEOUT_MS)
    dropdown.click()
    page.get_by_role("option", name="fetched.safetensors").first.wait_for()
    screenshot(page, "download-done")
    page.keyboard.press("Escape")


def test_an_unreachable_hub_is_reported_without_losing_the_selection(
    page: Any, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    page.locator("#sdweb-download-start").click()  # the well-known SD 1.5, preselected

    result = page.locator("#sdweb-download-result")
    result.wait_for()
    assert "cannot reach the Hugging Face hub" in result.inner_text()
    assert not list(server.services.settings.paths.ckpt_dirs[0].glob("*.incomplete"))

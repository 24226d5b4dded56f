"""The Checkpoint Merger tab in a real browser: choose two models, merge, and the result is listed with
its hash; a merge that cannot be done says why."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.ui.conftest import ARTIFACTS, RunningServer, opened_page, serve
from tests.ui.test_browser import CHROMIUM_ARGS, browser, screenshot

__all__ = ["browser"]  # fixture
pytestmark = pytest.mark.browser
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("merger-ui")
    with serve(root) as running:
        # A second model of the same family, copied in while the server runs (the page lists it on load).
        folder = running.services.settings.paths.ckpt_dirs[0]
        generator = torch.Generator().manual_seed(5)
        other = {k: (v + 0.1 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v)
                 for k, v in load_file(str(folder / "fake-model.safetensors")).items()}
        save_file(other, str(folder / "other-model.safetensors"))
        running.services.models.refresh()
        yield running


@pytest.fixture(scope="module")
def page(browser: Any, server: RunningServer) -> Iterator[Any]:
    with opened_page(browser, server.url, timeout_ms=TIMEOUT_MS) as opened:
        opened.get_by_role("tab", name="Checkpoint Merger").click()
        # The page's load event lists the model copied in, and sets each list's value back to what it was
        # when the page asked: a model chosen before it answers would be undone. Wait for its list.
        opened.locator("#modelmerger-secondary input").click()
        opened.get_by_role("option", name=re.compile(r"^other-model")).first.wait_for()
        opened.keyboard.press("Escape")
        yield opened


def choose(page: Any, element: str, option: str) -> None:
    page.locator(f"#{element} input").click()
    page.get_by_role("option", name=option).first.click()


def test_two_models_merge_into_a_listed_checkpoint(page: Any, server: RunningServer) -> None:
    assert CHROMIUM_ARGS  # the browser of test_browser.py
    titles = [info.title for info in server.services.models.list_checkpoints()]
    choose(page, "modelmerger-primary", next(t for t in titles if t.startswith("fake-model")))
    choose(page, "modelmerger-secondary", next(t for t in titles if t.startswith("other-model")))
    page.locator("#modelmerger-custom-name textarea, #modelmerger-custom-name input").first.fill("mixed")
    page.locator("#modelmerger-merge").click()
    message = page.locator("#modelmerger-result-text")
    message.wait_for()
    text = message.inner_text()
    assert "listed as mixed.safetensors [" in text, text
    saved = server.services.settings.paths.ckpt_dirs[0] / "mixed.safetensors"
    assert saved.is_file()
    with safe_open(str(saved), "pt") as handle:
        recipe = json.loads(handle.metadata()["sd_merge_recipe"])
    assert recipe["interp_method"] == "Weighted sum" and recipe["multiplier"] == 0.3
    # The new checkpoint is in the merger's lists and the app's at once.
    listed = [info.title for info in server.services.models.list_checkpoints()]
    assert any(title.startswith("mixed.safetensors [") for title in listed)
    page.locator("#modelmerger-primary input").click()
    page.get_by_role("option", name="mixed.safetensors").first.wait_for()
    page.keyboard.press("Escape")
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot(page, "checkpoint-merger")


def test_a_merge_that_cannot_be_done_says_why(page: Any, server: RunningServer) -> None:
    page.locator("#modelmerger-method").get_by_text("Add difference").click()
    page.locator("#modelmerger-custom-name textarea, #modelmerger-custom-name input").first.fill("third")
    page.locator("#modelmerger-merge").click()
    message = page.locator("#modelmerger-result-text", has_text="Not merged")
    message.wait_for()
    screenshot(page, "checkpoint-merger-refused")
    assert "tertiary_model_name: this merge needs a model here" in message.inner_text()
    assert not (server.services.settings.paths.ckpt_dirs[0] / "third.safetensors").exists()
    assert not list(Path(server.services.settings.paths.ckpt_dirs[0]).glob(".*partial"))

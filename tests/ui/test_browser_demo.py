"""A fresh install in the browser: no checkpoint of the user's, so the page opens with the bundled demo
model, says so, and Generate makes an image that shows what the prompt names (read from its pixels).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image
from playwright.sync_api import expect

from demo_model.checker import read_scene
from sdweb.services.factory import DEMO_CHECKPOINT
from tests.ui.conftest import RunningServer, opened_page, serve
from tests.ui.test_browser import TIMEOUT_MS, browser, screenshot, set_number

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not DEMO_CHECKPOINT.is_file(), reason="the demo checkpoint is not exported")]

__all__ = ["browser"]  # the shared chromium fixture


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serve(tmp_path_factory.mktemp("fresh"), real_engine=True, demo_only=True) as running:
        yield running


@pytest.fixture(scope="module")
def page(browser: Any, server: RunningServer) -> Iterator[Any]:
    with opened_page(browser, server.url, timeout_ms=TIMEOUT_MS * 3) as opened:
        yield opened


def test_the_page_opens_with_the_demo_model_labelled_as_a_demo(page: Any) -> None:
    status = page.locator("#sdweb-model-status[data-state=ready]")
    status.wait_for()
    assert "sdweb-demo-shapes" in status.inner_text() and "demo model" in status.inner_text()
    # The header is rendered with the page; the dropdown is filled by the page's load event after it.
    expect(page.locator("#txt2img-checkpoint input")).to_have_value(re.compile(r"^sdweb-demo-shapes"),
                                                                timeout=TIMEOUT_MS * 3)
    # The way to a real model is open next to it.
    assert page.locator("#sdweb-download-start").is_visible()
    # The size starts at what the demo was trained for, not 512.
    expect(page.locator("#txt2img-width input[type=number]")).to_have_value("64", timeout=TIMEOUT_MS * 3)
    expect(page.locator("#txt2img-height input[type=number]")).to_have_value("64", timeout=TIMEOUT_MS * 3)


def test_generate_draws_the_shape_background_and_place_the_prompt_names(
        page: Any, server: RunningServer) -> None:
    page.fill("#txt2img-prompt textarea", "a large red circle on the right, blue background")
    for selector, value in (("#txt2img-width", 64), ("#txt2img-height", 64), ("#txt2img-steps", 20)):
        set_number(page, f"{selector} input[type=number]", value)
    set_number(page, "#txt2img-seed input", 5)
    page.click("#txt2img-generate")
    page.locator("#txt2img-progress", has_text=re.compile("Done: 1 image")).wait_for()
    screenshot(page, "txt2img-demo-model")

    (saved,) = sorted((server.root / "outputs" / "txt2img-images").rglob("*.png"))
    with Image.open(saved) as image:
        assert image.size == (64, 64)
        assert "Model: sdweb-demo-shapes" in image.info["parameters"]
        reading = read_scene(image)
    assert (reading.colour, reading.background, reading.position) == ("red", "blue", "right")

"""The ControlNet accordion in a real browser, with the real engine, the tiny SD1 checkpoint and a tiny
random ControlNet in models/ControlNet: preview the preprocessed map, generate with a unit, and find the
extension's infotext line in the saved image; a unit enabled without a model is a message."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.fixtures.checkpoints import tiny_sd1_components
from tests.fixtures.controlnet import write_tiny_controlnet
from tests.ui.conftest import RunningServer, serve
from tests.ui.test_browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, screenshot, set_number

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def cn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("cn-ui")
    write_tiny_controlnet(root / "models" / "ControlNet" / "control_tiny_sd15_canny.safetensors",
                          tiny_sd1_components()["unet"])
    with serve(root, real_engine=True) as running:
        yield running


@pytest.fixture(scope="module")
def cn_page(cn_server: RunningServer) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        page.set_default_timeout(TIMEOUT_MS * 3)
        page.goto(cn_server.url)
        page.wait_for_selector("#txt2img-prompt textarea")
        yield page
        browser.close()


def choose(page: Any, selector: str, option: str) -> None:
    page.locator(f"{selector} input").first.click()
    page.get_by_role("option", name=option, exact=True).first.click()


def _square(path: Path) -> Path:
    array = np.zeros((64, 64, 3), dtype=np.uint8)
    array[16:48, 16:48] = 255
    Image.fromarray(array).save(path)
    return path


def test_a_unit_previews_its_map_and_steers_the_image(cn_page: Any, cn_server: RunningServer,
                                                      tmp_path: Path) -> None:
    page = cn_page
    title = cn_server.services.controlnet.model_titles()[0]
    page.fill("#txt2img-prompt textarea", "a lighthouse")
    for selector, value in (("#txt2img-width", 64), ("#txt2img-height", 64), ("#txt2img-steps", 2)):
        set_number(page, f"{selector} input[type=number]", value)
    set_number(page, "#txt2img-seed input", 11)
    page.locator("#txt2img-controlnet").get_by_text("ControlNet", exact=True).first.click()
    # A unit enabled without a model is refused before anything is queued.
    page.locator("#txt2img-controlnet-0-enabled input").check()
    page.click("#txt2img-generate")
    page.locator("#txt2img-progress", has_text="ControlNet unit 0: choose a model").wait_for()

    square = str(_square(tmp_path / "square.png"))
    page.set_input_files("#txt2img-controlnet-0-image input[type=file]", square)
    choose(page, "#txt2img-controlnet-0-module", "canny")
    choose(page, "#txt2img-controlnet-0-model", title)
    page.click("#txt2img-controlnet-0-preview-button")
    page.locator("#txt2img-controlnet-0-preview img").wait_for()
    page.click("#txt2img-generate")
    page.locator("#txt2img-progress", has_text=re.compile("Done: 1 image")).wait_for()
    screenshot(page, "txt2img-controlnet")
    saved = sorted((cn_server.root / "outputs" / "txt2img-images").rglob("*.png"))
    assert len(saved) == 1
    with Image.open(saved[0]) as image:
        parameters = image.info["parameters"]
    assert f'ControlNet 0: "Module: canny, Model: {title}, Weight: 1.0' in parameters

"""The page with the real engine and the tiny SD1 checkpoint file, as a user's model would be loaded:
Generate makes a real image whose infotext names the checkpoint's hash, and PNG Info picks that
checkpoint again by its hash."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.ui.conftest import RunningServer, serve
from tests.ui.test_browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, screenshot, set_number

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serve(tmp_path_factory.mktemp("real"), real_engine=True) as running:
        yield running


@pytest.fixture(scope="module")
def real_page(real_server: RunningServer) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS * 3)  # a first real run on a busy CPU
        page.goto(real_server.url)
        page.wait_for_selector("#txt2img-prompt textarea")
        yield page
        browser.close()


def test_a_real_image_carries_the_checkpoint_hash_and_pnginfo_finds_the_checkpoint(
    real_page: Any, real_server: RunningServer
) -> None:
    page = real_page
    info = real_server.services.models.list_checkpoints()[0]
    assert info.shorthash and page.locator("#sdweb-model-status[data-state=ready]").count() == 1

    page.fill("#txt2img-prompt textarea", "a lighthouse")
    # The engine is up: the counter uses the model's own tokenizer (no "~" estimate).
    counter = page.locator("#txt2img-prompt-tokens .sdweb-tokens:not([title^=estimated])")
    counter.wait_for()
    assert counter.inner_text().strip() == "2/75"  # "a", "lighthouse"
    for selector, value in (("#txt2img-width", 64), ("#txt2img-height", 64), ("#txt2img-steps", 2)):
        set_number(page, f"{selector} input[type=number]", value)
    set_number(page, "#txt2img-seed input", 11)
    page.click("#txt2img-generate")
    page.locator("#txt2img-progress", has_text=re.compile("Done: 1 image")).wait_for()
    screenshot(page, "txt2img-real-engine")

    saved = sorted((real_server.root / "outputs" / "txt2img-images").rglob("*.png"))
    assert len(saved) == 1
    with Image.open(saved[0]) as image:
        assert image.size == (64, 64)
        parameters = image.info["parameters"]
    assert parameters.startswith("a lighthouse\n") and "Seed: 11," in parameters
    assert f"Model hash: {info.shorthash}" in parameters and "Size: 64x64" in parameters

    # PNG Info finds the checkpoint by the hash in the file (no "not on disk" note) and selects it.
    page.get_by_role("tab", name="PNG Info").click()
    page.set_input_files("#pnginfo-image input[type=file]", str(saved[0]))
    page.locator("#pnginfo-table", has_text="Model hash").wait_for()
    page.click("#pnginfo-send")
    page.locator("#txt2img-message", has_text="Parameters restored").wait_for()
    assert "not on disk" not in page.locator("#txt2img-message").inner_text()
    assert page.locator("#txt2img-checkpoint input").input_value() == info.title
    assert page.locator("#txt2img-seed input").input_value() == "11"


def test_the_same_seed_makes_the_same_image(real_page: Any, real_server: RunningServer) -> None:
    page = real_page  # the form still holds the first run's parameters (restored by PNG Info)
    page.get_by_role("tab", name="txt2img").click()
    page.click("#txt2img-generate")
    folder = real_server.root / "outputs" / "txt2img-images"

    def finished_files() -> list[Path]:  # not a save's .tmp- file: the second one is written right now
        return sorted(path for path in folder.rglob("*.png") if not path.name.startswith("."))

    deadline = time.monotonic() + 120
    while len(finished_files()) < 2:
        assert time.monotonic() < deadline, "the second image never came"
        time.sleep(0.1)
    first, second = finished_files()
    with Image.open(first) as a, Image.open(second) as b:
        assert a.info["parameters"] == b.info["parameters"]
        assert a.tobytes() == b.tobytes()

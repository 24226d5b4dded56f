"""The page with the real engine and a transformer-only Flux schnell file beside an SD 1.x one: picking Flux
switches the form to its defaults (4 steps, CFG 1, Euler), the token counter counts T5 tokens, the
"VAE / Text Encoder" list offers the module files, and Generate makes an image with the modules that
were found in models/text_encoder and models/VAE."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator

import pytest
from PIL import Image

from tests.fixtures.flow_checkpoints import write_flow_library
from tests.ui.conftest import RunningServer, serve
from tests.ui.test_browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, screenshot, set_number

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def flow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    library = tmp_path_factory.mktemp("flow-library")
    write_flow_library(library)
    root = tmp_path_factory.mktemp("flow-ui")
    shutil.copytree(library / "models", root / "models")
    for path in (root / "models" / "Stable-diffusion").iterdir():
        if path.name != "flux-schnell.safetensors":
            path.unlink()
    with serve(root, real_engine=True) as running:  # the tiny SD1 checkpoint is written and loaded too
        yield running


def test_picking_flux_switches_the_form_and_generates_with_found_modules(flow_server: RunningServer) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS * 3)
        page.goto(flow_server.url)
        page.wait_for_selector("#txt2img-prompt textarea")
        assert page.locator("#txt2img-steps input[type=number]").input_value() == "20"
        assert not page.locator("#txt2img-distilled-cfg").is_visible()

        # The module files are offered beside the checkpoint.
        page.locator("#txt2img-modules input").click()
        page.get_by_role("option", name="t5xxl_fp16.safetensors").first.wait_for()
        page.keyboard.press("Escape")

        dropdown = page.locator("#txt2img-checkpoint input")
        dropdown.click()
        page.get_by_role("option", name=re.compile(r"^flux-schnell\.safetensors")).first.click()
        page.locator("#txt2img-message", has_text="Loaded flux-schnell").wait_for()
        expect(page.locator("#txt2img-steps input[type=number]")).to_have_value("4", timeout=TIMEOUT_MS * 3)
        expect(page.locator("#txt2img-cfg input[type=number]")).to_have_value("1", timeout=TIMEOUT_MS * 3)
        assert not page.locator("#txt2img-distilled-cfg").is_visible()  # schnell has no guidance input

        page.fill("#txt2img-prompt textarea", "a photo of a cat")
        counter = page.locator("#txt2img-prompt-tokens .sdweb-tokens:not([title^=estimated])")
        counter.filter(has_text="/255").wait_for()
        assert counter.inner_text().strip() == "7/255"  # T5's tokens, schnell's 256-token chunk

        for selector, value in (("#txt2img-width", 64), ("#txt2img-height", 64)):
            set_number(page, f"{selector} input[type=number]", value)
        set_number(page, "#txt2img-seed input", 5)
        page.click("#txt2img-generate")
        page.locator("#txt2img-progress", has_text=re.compile("Done: 1 image")).wait_for()
        screenshot(page, "txt2img-flux-schnell")
        browser.close()

    saved = sorted((flow_server.root / "outputs" / "txt2img-images").rglob("*.png"))
    assert len(saved) == 1
    with Image.open(saved[0]) as image:
        parameters = image.info["parameters"]
    assert "Steps: 4, Sampler: Euler" in parameters and "CFG scale: 1," in parameters
    assert "Model: flux-schnell" in parameters
    # Forge's keys for the module files found in the folders (the VAE among them, no "VAE" key)
    assert "Module 1: ae, Module 2: clip_l, Module 3: t5xxl_fp16" in parameters



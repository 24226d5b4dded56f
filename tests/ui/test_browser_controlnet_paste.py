"""In a real browser: a picture whose infotext has two ControlNet units, dropped on PNG Info and sent to
txt2img, refills ControlNet Unit 0 and Unit 1 (preprocessor, model, sliders, radios, checkboxes), turns
off the unit the infotext does not name, and leaves the control image a unit already has in place."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from tests.ui.conftest import ARTIFACTS, RunningServer, opened_page, serve
from tests.ui.test_browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, open_tab, screenshot
from tests.ui.test_controlnet_paste import CANNY, DEPTH, write_fake_controlnets

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("cn-paste")
    write_fake_controlnets(root / "models" / "ControlNet", CANNY, DEPTH)
    with serve(root) as running:
        yield running


@pytest.fixture(scope="module")
def page(server: RunningServer) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        with opened_page(browser, server.url, timeout_ms=TIMEOUT_MS) as opened:
            yield opened
        browser.close()


def _title(server: RunningServer, name: str) -> str:
    return next(t for t in server.services.controlnet.model_titles() if t.startswith(name + " ["))


def _picture_with_infotext(path: Path, text: str) -> Path:
    info = PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (64, 64), (40, 90, 160)).save(path, pnginfo=info)
    return path


def _square(path: Path) -> Path:
    array = np.zeros((64, 64, 3), dtype=np.uint8)
    array[16:48, 16:48] = 255
    Image.fromarray(array).save(path)
    return path


def _unit_values(page: Any, index: int, tab: str = "txt2img") -> dict[str, Any]:
    """What unit tab ``index`` shows, read from the page as a person sees it."""
    prefix = f"#{tab}-controlnet-{index}"

    def checked_radio(name: str) -> str:
        return str(page.locator(f"{prefix}-{name} input[type=radio]:checked").get_attribute("value"))

    def number(name: str) -> float:
        return float(page.locator(f"{prefix}-{name} input[type=number]").input_value())

    return {
        "enabled": page.locator(f"{prefix}-enabled input").is_checked(),
        "pixel_perfect": page.locator(f"{prefix}-pixel-perfect input").is_checked(),
        "module": page.locator(f"{prefix}-module input").input_value(),
        "model": page.locator(f"{prefix}-model input").input_value(),
        "weight": number("weight"),
        "guidance_start": number("guidance-start"),
        "guidance_end": number("guidance-end"),
        "processor_res": number("processor-res"),
        "threshold_a": number("threshold-a"),
        "threshold_b": number("threshold-b"),
        "control_mode": checked_radio("control-mode"),
        "resize_mode": checked_radio("resize-mode"),
        **({"hr_option": checked_radio("hr-option")} if tab == "txt2img" else {}),
    }


def test_pnginfo_send_to_txt2img_refills_two_controlnet_units(page: Any, server: RunningServer,
                                                               tmp_path: Path) -> None:
    canny, depth = _title(server, CANNY), _title(server, DEPTH)
    # Before the paste: unit 0 has a control image, unit 2 is enabled (the infotext names neither).
    page.locator("#txt2img-controlnet").get_by_text("ControlNet", exact=True).first.click()
    page.set_input_files("#txt2img-controlnet-0-image input[type=file]", str(_square(tmp_path / "sq.png")))
    page.locator("#txt2img-controlnet-0-image img").wait_for()
    page.get_by_role("tab", name="ControlNet Unit 2").click()
    page.locator("#txt2img-controlnet-2-enabled input").check()

    text = (
        "a lighthouse at dusk\nNegative prompt: fog\nSteps: 3, Sampler: Euler, CFG scale: 6, Seed: 42, "
        f'Size: 64x64, ControlNet 0: "Module: canny, Model: {canny}, Weight: 0.75, Resize Mode: Just Resize, '
        "Processor Res: 384, Threshold A: 90.0, Threshold B: 210.0, Guidance Start: 0.1, Guidance End: 0.85, "
        'Pixel Perfect: True, Control Mode: My prompt is more important", '
        f'ControlNet 1: "Module: depth_midas, Model: {depth}, Weight: 1.2, Resize Mode: Resize and Fill, '
        "Low Vram: False, Processor Res: 512, Guidance Start: 0, Guidance End: 0.5, Pixel Perfect: False, "
        'Control Mode: ControlNet is more important, Hr Option: Low res only, Save Detected Map: True", '
        "Version: v1.10.1"
    )
    open_tab(page, "PNG Info")
    page.set_input_files("#pnginfo-image input[type=file]",
                         str(_picture_with_infotext(tmp_path / "made-with-cn.png", text)))
    page.locator("#pnginfo-table", has_text="ControlNet 1").wait_for()
    page.click("#pnginfo-send")
    page.locator("#txt2img-message", has_text="ControlNet units 0, 1 restored").wait_for()
    assert page.locator("#txt2img-prompt textarea").input_value() == "a lighthouse at dusk"

    accordion = page.locator("#txt2img-controlnet")
    page.get_by_role("tab", name="ControlNet Unit 0").click()
    assert _unit_values(page, 0) == {
        "enabled": True, "pixel_perfect": True, "module": "canny", "model": canny, "weight": 0.75,
        "guidance_start": 0.1, "guidance_end": 0.85, "processor_res": 384, "threshold_a": 90.0,
        "threshold_b": 210.0, "control_mode": "My prompt is more important", "resize_mode": "Just Resize",
        "hr_option": "Both"}
    assert page.locator("#txt2img-controlnet-0-image img").count() == 1  # the picture it had is kept
    ARTIFACTS.mkdir(exist_ok=True)
    accordion.screenshot(path=str(ARTIFACTS / "controlnet-paste-unit0.png"))

    page.get_by_role("tab", name="ControlNet Unit 1").click()
    assert _unit_values(page, 1) == {
        "enabled": True, "pixel_perfect": False, "module": "depth_midas", "model": depth, "weight": 1.2,
        "guidance_start": 0.0, "guidance_end": 0.5, "processor_res": 512, "threshold_a": -1.0,
        "threshold_b": -1.0, "control_mode": "ControlNet is more important", "resize_mode": "Resize and Fill",
        "hr_option": "Low res only"}
    accordion.screenshot(path=str(ARTIFACTS / "controlnet-paste-unit1.png"))

    page.get_by_role("tab", name="ControlNet Unit 2").click()
    assert not page.locator("#txt2img-controlnet-2-enabled input").is_checked()  # not in the infotext: off


def test_infotext_pasted_into_the_prompt_and_read_with_the_button_refills_the_units(
    page: Any, server: RunningServer
) -> None:
    depth = _title(server, DEPTH)
    open_tab(page, "txt2img")
    page.fill("#txt2img-prompt textarea", (
        "a barn\nSteps: 4, Sampler: Euler, Seed: 7, Size: 64x64, "
        f'ControlNet 0: "Module: depth_midas, Model: {depth}, Weight: 0.4, Resize Mode: Crop and Resize, '
        "Processor Res: 256, Guidance Start: 0.2, Guidance End: 0.9, Pixel Perfect: False, "
        'Control Mode: Balanced, Hr Option: High res only"'))
    page.click("#txt2img-paste")
    page.locator("#txt2img-message", has_text="ControlNet unit 0 restored").wait_for()
    assert page.locator("#txt2img-prompt textarea").input_value() == "a barn"
    page.get_by_role("tab", name="ControlNet Unit 0").click()
    unit = _unit_values(page, 0)
    assert (unit["module"], unit["model"], unit["weight"], unit["hr_option"]) == (
        "depth_midas", depth, 0.4, "High res only")
    assert (unit["guidance_start"], unit["guidance_end"], unit["processor_res"]) == (0.2, 0.9, 256)
    assert unit["enabled"] and not unit["pixel_perfect"]
    page.get_by_role("tab", name="ControlNet Unit 1").click()
    assert not page.locator("#txt2img-controlnet-1-enabled input").is_checked()  # not named this time
    screenshot(page, "txt2img-paste-controlnet")


def test_img2img_reads_the_pasted_parameters_into_its_own_units(page: Any, server: RunningServer) -> None:
    canny = _title(server, CANNY)
    open_tab(page, "img2img")
    page.fill("#img2img-prompt textarea", (
        "a harbour\nSteps: 5, Sampler: Euler, Seed: 9, Size: 64x64, Denoising strength: 0.6, "
        f'ControlNet 0: "Module: canny, Model: {canny}, Weight: 1.5, Resize Mode: Resize and Fill, '
        "Processor Res: 448, Threshold A: 60.0, Threshold B: 120.0, Guidance Start: 0.0, Guidance End: 0.7, "
        'Pixel Perfect: True, Control Mode: Balanced"'))
    page.click("#img2img-paste")
    page.locator("#img2img-message", has_text="ControlNet unit 0 restored").wait_for()
    assert page.locator("#img2img-prompt textarea").input_value() == "a harbour"
    page.locator("#img2img-controlnet-0-enabled").wait_for()  # the accordion opened on its own
    assert _unit_values(page, 0, "img2img") == {
        "enabled": True, "pixel_perfect": True, "module": "canny", "model": canny, "weight": 1.5,
        "guidance_start": 0.0, "guidance_end": 0.7, "processor_res": 448, "threshold_a": 60.0,
        "threshold_b": 120.0, "control_mode": "Balanced", "resize_mode": "Resize and Fill"}
    page.locator("#img2img-controlnet").screenshot(path=str(ARTIFACTS / "img2img-controlnet-paste.png"))

"""The Script dropdown in a real browser (fake engine: a flat colour per seed and prompt): an X/Y/Z plot
whose grid has the right cells in the right places with labels, an axis with choices offering them,
prompts from file with line options, and SD upscale in img2img."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from tests.fakes import colour_for
from tests.ui.conftest import RunningServer, opened_page, serve
from tests.ui.test_browser import browser, screenshot, set_number

__all__ = ["browser"]  # fixture
pytestmark = pytest.mark.browser
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serve(tmp_path_factory.mktemp("scripts-ui")) as running:
        yield running


@pytest.fixture(scope="module")
def page(browser: Any, server: RunningServer) -> Iterator[Any]:
    with opened_page(browser, server.url, timeout_ms=TIMEOUT_MS) as opened:
        yield opened


def choose(page: Any, selector: str, option: str) -> None:
    page.locator(f"{selector} input").first.click()
    page.get_by_role("option", name=option, exact=True).first.click()


def fill(page: Any, selector: str, text: str) -> None:
    box = page.locator(f"{selector} textarea, {selector} input").first
    box.fill(text)
    box.press("Tab")


def generate(page: Any, server: RunningServer, tab: str, calls: int = 1) -> str:
    """Press Generate and wait for this job: its engine calls, then the "Done" line."""
    before = len(server.engine.calls)
    page.click(f"#{tab}-generate")
    for _ in range(600):  # a loaded CI box is slow
        if len(server.engine.calls) >= before + calls:
            break
        page.wait_for_timeout(100)
    done = page.locator(f"#{tab}-progress", has_text=re.compile(r"Done|Interrupted")).or_(
        page.locator(f"#{tab}-progress .sdweb-error"))
    done.first.wait_for()
    page.wait_for_timeout(500)  # the result panel is filled in the same update
    return str(done.first.inner_text())


def newest(server: RunningServer, folder: str, pattern: str = "*.png") -> Path:
    files = sorted((path for path in (server.root / "outputs" / folder).rglob(pattern)
                    if not path.name.startswith(".")),  # not a save's .tmp- file, written right now
                   key=lambda path: path.stat().st_mtime)
    assert files, f"nothing saved in {folder}"
    return files[-1]


def box_of(image: Image.Image, colour: tuple[int, int, int]) -> tuple[int, int, int, int]:
    pixels = np.asarray(image.convert("RGB"))
    ys, xs = np.nonzero(np.all(pixels == colour, axis=-1))
    assert len(xs), f"no cell of colour {colour}"
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_an_xyz_plot_from_the_script_dropdown(page: Any, server: RunningServer) -> None:
    page.fill("#txt2img-prompt textarea", "a cat with a cat")
    set_number(page, "#txt2img-width input[type=number]", 64)
    set_number(page, "#txt2img-height input[type=number]", 64)
    set_number(page, "#txt2img-steps input[type=number]", 2)
    choose(page, "#txt2img-script", "X/Y/Z plot")
    fill(page, "#txt2img-script-x-y-z-plot-x-values", "1, 2, 3")  # X type: Seed (A1111's default)
    choose(page, "#txt2img-script-x-y-z-plot-y-type", "Prompt S/R")
    fill(page, "#txt2img-script-x-y-z-plot-y-values", "cat, dog")
    page.locator("#txt2img-script-xyz-summary", has_text="6 cell(s): 1 grid(s) of 3x2").wait_for()
    assert "Done: 1 image" in generate(page, server, "txt2img", calls=6)  # the grid
    screenshot(page, "script-xyz")

    grid_file = newest(server, "txt2img-grids", "xyz_grid-*.png")
    with Image.open(grid_file) as grid:
        grid.load()
        info = grid.info["parameters"]
    boxes = {(seed, animal): box_of(grid, colour_for(seed, f"a {animal} with a {animal}"))
             for seed in (1, 2, 3) for animal in ("cat", "dog")}
    lefts = [boxes[(seed, "cat")][0] for seed in (1, 2, 3)]
    assert lefts == [lefts[0], lefts[0] + 64, lefts[0] + 128]
    assert boxes[(1, "dog")][1] == boxes[(1, "cat")][1] + 64
    left, top = boxes[(1, "cat")][:2]
    labels = np.asarray(grid.convert("L").crop((left, 0, left + 3 * 64, top)))
    row_labels = np.asarray(grid.convert("L").crop((0, top, left, top + 128)))
    assert (labels < 128).any() and (row_labels < 128).any()
    assert "X Type: Seed" in info and "Y Type: Prompt S/R" in info
    assert len(list((server.root / "outputs" / "txt2img-images").rglob("*.png"))) >= 6  # every cell saved


def test_an_axis_with_choices_offers_them(page: Any) -> None:
    choose(page, "#txt2img-script-x-y-z-plot-x-type", "Sampler")
    values = page.locator("#txt2img-script-x-y-z-plot-x-values-dropdown input")
    values.click()
    page.get_by_role("option", name="DPM++ 2M", exact=True).first.wait_for()
    page.keyboard.press("Escape")


def test_prompts_from_file_with_line_options(page: Any, server: RunningServer) -> None:
    choose(page, "#txt2img-script", "Prompts from file or textbox")
    fill(page, "#txt2img-script-prompts-from-file-or-textbox-prompt-txt",
         '--prompt "a green frog" --seed 77 --steps 3')
    page.fill("#txt2img-prompt textarea", "")
    generate(page, server, "txt2img")
    call = server.engine.calls[-1]
    assert (call.prompt, call.seed, call.steps) == ("a green frog", 77, 3)
    # The progress line still says the plot's "Done" until this job's own end reaches the page, and the
    # file is saved only then: wait for its result (its infotext) before looking for the file.
    expect(page.locator("#txt2img-infotext")).to_contain_text("a green frog", timeout=TIMEOUT_MS)
    assert newest(server, "txt2img-images").name.endswith("-77.png")


def test_sd_upscale_in_img2img(page: Any, server: RunningServer, tmp_path: Path) -> None:
    source = tmp_path / "small.png"
    Image.new("RGB", (64, 64), (10, 120, 200)).save(source)
    page.get_by_role("tab", name="img2img").click()
    page.set_input_files("#img2img-image input[type=file]", str(source))
    page.wait_for_function("document.querySelector('#img2img-width input[type=number]').value === '64'")
    page.fill("#img2img-prompt textarea", "a blue sky")
    set_number(page, "#img2img-denoising input[type=number]", 0)
    choose(page, "#img2img-script", "SD upscale")
    page.locator("#img2img-script-sd-upscale-upscaler-index").get_by_text("Lanczos", exact=True).click()
    set_number(page, "#img2img-script-sd-upscale-overlap input[type=number]", 32)
    assert "Done: 1 image" in generate(page, server, "img2img", calls=9)  # 3x3 tiles of 64 over 128
    screenshot(page, "script-sd-upscale")
    with Image.open(newest(server, "img2img-images")) as upscaled:
        assert upscaled.size == (128, 128)
        assert "SD upscale upscaler: Lanczos" in upscaled.info["parameters"]


def test_restore_faces_says_what_is_missing_and_keeps_the_image(page: Any, server: RunningServer) -> None:
    page.get_by_role("tab", name="txt2img").click()
    choose(page, "#txt2img-script", "None")
    box = page.locator("#txt2img-restore-faces")
    # The line under the checkbox is filled by the page's load event, not with the page.
    expect(box).to_contain_text("Cannot run here: no CodeFormer model in", timeout=TIMEOUT_MS)
    box.locator("input").check()
    page.fill("#txt2img-prompt textarea", "a portrait")
    generate(page, server, "txt2img")
    assert server.engine.calls[-1].restore_faces
    # Until this job's end reaches the page, its progress line may still show the job before's "Done".
    progress = page.locator("#txt2img-progress")
    expect(progress).to_contain_text("face restoration was skipped: no CodeFormer model in",
                                       timeout=TIMEOUT_MS)
    assert "Done: 1 image" in progress.inner_text()  # this job's line: the image is kept
    screenshot(page, "restore-faces-skipped")
    box.locator("input").uncheck()

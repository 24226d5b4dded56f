"""Real-browser tests of img2img, inpainting with an uploaded mask, Extras and txt2img's Hires. fix.

Same harness as ``test_browser.py`` (Debian's chromium via Playwright, a real server, the fake engine,
which blends the init image towards a colour by the denoising strength). The tests share one server
and one page and run in file order. The new tabs are screenshotted into ``test-artifacts/``.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from tests.ui.conftest import RunningServer, opened_page, serve
from tests.ui.test_browser import CHROMIUM, TIMEOUT_MS, browser, open_tab, screenshot, set_number

pytestmark = pytest.mark.browser

__all__ = ["browser"]  # the shared chromium fixture

if not CHROMIUM.exists():  # pragma: no cover - the image installs it
    pytest.skip("chromium is not installed: apt-get install -y chromium", allow_module_level=True)

PROMPT = "a lighthouse in a storm"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serve(tmp_path_factory.mktemp("ui-img2img"), step_delay=0.01) as running:
        yield running


@pytest.fixture(scope="module")
def page(browser: Any, server: RunningServer) -> Iterator[Any]:
    with opened_page(browser, server.url, timeout_ms=TIMEOUT_MS) as opened:
        yield opened


@pytest.fixture(scope="module")
def init_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("uploads") / "init.png"
    Image.new("RGB", (96, 64), (20, 60, 200)).save(path)
    return path


def saved(server: RunningServer, kind: str) -> list[Path]:
    """The saved pictures, oldest first (not a save's ``.tmp-`` file, there while it is being written)."""
    folder = server.root / "outputs" / f"{kind}-images"
    return sorted(path for path in folder.rglob("*.png") if not path.name.startswith("."))


def wait_done(page: Any, tab: str) -> str:
    done = page.locator(f"#{tab}-progress", has_text=re.compile(r"Done|Interrupted"))
    done.wait_for()
    return str(done.inner_text())


def wait_for_engine_call(page: Any, server: RunningServer, before: int) -> None:
    """Until the engine got img2img call number ``before + 1`` (the progress line still shows the last)."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while len(server.engine.init_images) <= before:
        shown = page.locator("#img2img-progress").inner_text()
        assert time.monotonic() < deadline, f"the img2img request never reached the engine: {shown}"
        page.wait_for_timeout(50)


def wait_for_new_file(page: Any, server: RunningServer, before: int) -> None:
    """Until img2img output number ``before + 1`` is on disk (the progress line may still show the
    previous job's "Done")."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while len(saved(server, "img2img")) <= before:
        assert time.monotonic() < deadline, "the img2img result was never saved"
        page.wait_for_timeout(50)


def upload_init_image(page: Any, path: Path) -> None:
    """Open img2img and upload ``path`` (96x64), until its size is in the Width box."""
    open_tab(page, "img2img")
    page.set_input_files("#img2img-image input[type=file]", str(path))
    page.wait_for_function(
        "document.querySelector('#img2img-width input[type=number]').value === '96'"
    )


def wait_for_editor_picture(page: Any, canvas: Any, colour: tuple[int, int, int]) -> None:
    """Until the mask editor's canvas shows the new picture (its flat ``colour`` in the middle), as a person
    waits to see it before drawing: the editor is given the picture by its own event after the upload and
    draws it a moment later; a stroke made before lands on the old sheet, which the new picture clears."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while True:
        with Image.open(io.BytesIO(canvas.screenshot())) as shot:
            middle = shot.convert("RGB").getpixel((shot.width // 2, shot.height // 2))
        if max(abs(a - b) for a, b in zip(middle, colour, strict=True)) <= 3:
            return
        assert time.monotonic() < deadline, f"the mask editor never showed the picture: {middle}"
        page.wait_for_timeout(100)


def generate_one_image(page: Any, server: RunningServer) -> None:
    """Generate on img2img and wait for this job: its engine call, its saved file, then its result on the
    page (its infotext: until then the progress line may still show the previous job's "Done", and this
    job's last update could land in the next test), then "Done"."""
    before, files_before = len(server.engine.init_images), len(saved(server, "img2img"))
    page.click("#img2img-generate")
    wait_for_engine_call(page, server, before)
    wait_for_new_file(page, server, files_before)
    with Image.open(saved(server, "img2img")[-1]) as image:
        settings_line = image.info["parameters"].splitlines()[-1]
    page.locator("#img2img-infotext", has_text=settings_line).wait_for()
    assert "Done: 1 image" in wait_done(page, "img2img")


def test_img2img_upload_and_generate_saves_with_denoising_strength(
    page: Any, server: RunningServer, init_image: Path
) -> None:
    upload_init_image(page, init_image)  # its own size (96x64) becomes the output size
    assert page.locator("#img2img-height input[type=number]").input_value() == "64"
    page.fill("#img2img-prompt textarea", PROMPT)
    set_number(page, "#img2img-denoising input[type=number]", 0.35)
    page.click("#img2img-generate")
    assert "Done: 1 image" in wait_done(page, "img2img")
    page.locator("#img2img-gallery img").first.wait_for()
    assert "Denoising strength: 0.35" in page.locator("#img2img-infotext").inner_text()
    screenshot(page, "img2img")

    files = saved(server, "img2img")
    assert len(files) == 1
    with Image.open(files[0]) as image:
        assert image.size == (96, 64)
        parameters = image.info["parameters"]
    assert parameters.startswith(PROMPT) and "Denoising strength: 0.35" in parameters
    # The engine got the uploaded picture itself (no mask: plain img2img).
    assert server.engine.init_images[-1][0].size == (96, 64)
    assert server.engine.masks[-1] is None


def test_inpainting_with_an_uploaded_mask_and_a_wrong_sized_one(
    page: Any, server: RunningServer, init_image: Path, tmp_path: Path
) -> None:
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (0, 0, 48, 64))  # repaint the left half
    mask_path = tmp_path / "mask.png"
    mask.save(mask_path)
    wrong_path = tmp_path / "wrong.png"
    Image.new("L", (32, 32), 255).save(wrong_path)

    page.get_by_text("Inpaint: draw or upload a mask").click()
    page.set_input_files("#img2img-mask input[type=file]", str(wrong_path))
    page.locator("#img2img-mask img").wait_for()
    page.click("#img2img-generate")
    page.locator("#img2img-progress", has_text="they must have the same size").wait_for()

    page.locator("#img2img-mask button[aria-label='Remove Image']").first.click()
    page.set_input_files("#img2img-mask input[type=file]", str(mask_path))
    page.locator("#img2img-mask img").wait_for()
    generate_one_image(page, server)
    screenshot(page, "img2img-inpaint")

    assert server.engine.masks[-1] is not None and server.engine.masks[-1].size == (96, 64)
    newest = saved(server, "img2img")[-1]
    with Image.open(newest) as image:
        parameters = image.info["parameters"]
        right = image.convert("RGB").getpixel((90, 32))
    assert "Mask blur: 4" in parameters
    assert right == (20, 60, 200)  # outside the mask: the init image's pixels


def test_extras_upscales_2x_to_the_exact_size_and_shows_the_source_infotext(
    page: Any, tmp_path: Path
) -> None:
    source = tmp_path / "small.png"
    info = PngInfo()
    info.add_text("parameters", "a tiny fox\nSteps: 20, Sampler: Euler a, Seed: 7, Size: 40x30")
    Image.new("RGB", (40, 30), (200, 100, 0)).save(source, pnginfo=info)

    open_tab(page, "Extras")
    page.set_input_files("#extras-image input[type=file]", str(source))
    page.locator("#extras-image img").wait_for()
    page.click("#extras-run")
    page.locator("#extras-info", has_text="40x30 → 80x60").wait_for()
    shown = page.locator("#extras-info").inner_text()
    assert "a tiny fox" in shown and "Postprocess upscale by: 2" in shown
    page.wait_for_function(
        "(() => { const img = document.querySelector('#extras-output img');"
        " return img && img.complete && img.naturalWidth > 0; })()"
    )
    size = page.evaluate(
        "(() => { const img = document.querySelector('#extras-output img');"
        " return [img.naturalWidth, img.naturalHeight]; })()"
    )
    assert size == [80, 60]
    screenshot(page, "extras")


def test_hires_fix_reaches_the_engine_and_the_infotext(page: Any, server: RunningServer) -> None:
    open_tab(page, "txt2img")
    page.get_by_text("Hires. fix", exact=True).click()
    page.locator("#txt2img-enable-hr input[type=checkbox]").check()
    set_number(page, "#txt2img-hr-scale input[type=number]", 1.5)
    set_number(page, "#txt2img-hr-steps input[type=number]", 4)
    page.fill("#txt2img-prompt textarea", "a hires castle")
    page.click("#txt2img-generate")
    page.locator("#txt2img-progress", has_text="Done").wait_for()
    screenshot(page, "txt2img-hires")

    params = server.engine.calls[-1]
    assert params.enable_hr is True
    assert (params.hr_scale, params.hr_second_pass_steps, params.hr_upscaler) == (1.5, 4, "Latent")
    with Image.open(saved(server, "txt2img")[-1]) as image:
        parameters = image.info["parameters"]
    assert "Hires upscale: 1.5" in parameters and "Hires steps: 4" in parameters
    assert "Denoising strength: 0.75" in parameters


def test_send_a_txt2img_result_to_img2img(page: Any, server: RunningServer) -> None:
    page.click("#txt2img-send-to-img2img")
    page.locator("#img2img-message", has_text="Image sent to img2img").wait_for()
    assert page.locator("#img2img-prompt textarea").input_value() == "a hires castle"
    page.locator("#img2img-image img").wait_for()
    seed = server.engine.calls[-1].seed
    assert page.locator("#img2img-seed input").input_value() == str(seed)
    # The sent picture is what the next img2img run starts from.
    generate_one_image(page, server)
    assert server.engine.init_images[-1][0].size == (512, 512)


def test_send_a_gallery_picture_to_img2img(page: Any, server: RunningServer) -> None:
    page.fill("#img2img-prompt textarea", "to be replaced")
    open_tab(page, "Gallery")
    page.locator("#gallery-grid img").first.wait_for()
    page.locator("#gallery-grid img").first.click()
    page.locator("#gallery-infotext", has_text="a hires castle").wait_for()
    page.click("#gallery-send-to-img2img")
    page.locator("#img2img-message", has_text="Image sent to img2img").wait_for()
    assert page.locator("#img2img-prompt textarea").input_value() == "a hires castle"
    page.locator("#img2img-image img").wait_for()
    screenshot(page, "img2img-from-gallery")


def test_send_a_picture_from_png_info_to_img2img(page: Any, server: RunningServer) -> None:
    path = saved(server, "txt2img")[-1]
    page.fill("#img2img-prompt textarea", "to be replaced")
    open_tab(page, "PNG Info")
    page.set_input_files("#pnginfo-image input[type=file]", str(path))
    page.locator("#pnginfo-table", has_text="Steps").wait_for()
    page.click("#pnginfo-send-to-img2img")
    page.locator("#img2img-message", has_text="Image sent to img2img").wait_for()
    assert page.locator("#img2img-prompt textarea").input_value() == "a hires castle"
    page.locator("#img2img-image img").wait_for()


def test_inpainting_with_a_mask_drawn_with_the_brush(
    page: Any, server: RunningServer, init_image: Path
) -> None:
    upload_init_image(page, init_image)
    sketch = page.locator("#img2img-sketch")
    if not sketch.is_visible():
        page.get_by_text("Inpaint: draw or upload a mask").click()
    canvas = sketch.locator("canvas").first
    canvas.wait_for()
    wait_for_editor_picture(page, canvas, (20, 60, 200))  # init_image's colour
    sketch.get_by_role("button", name="Brush", exact=True).click()
    page.keyboard.press("Escape")  # close the brush options
    sketch.scroll_into_view_if_needed()  # the mouse only reaches what is in the viewport
    box = canvas.bounding_box()
    assert box is not None
    # A short stroke on the left of the picture, as a user drags the brush.
    x, y = box["x"] + box["width"] * 0.15, box["y"] + box["height"] * 0.5
    page.mouse.move(x, y)
    page.mouse.down()
    for step in range(1, 8):
        page.mouse.move(x + step * box["width"] * 0.015, y, steps=2)
    page.mouse.up()
    page.wait_for_timeout(300)
    screenshot(page, "img2img-drawn-mask")

    generate_one_image(page, server)

    mask = server.engine.masks[-1]
    assert mask is not None and mask.size == (96, 64)  # the picture's size, whatever the canvas' size
    painted = mask.getbbox()
    assert painted is not None and painted[0] < 20 and painted[2] < 96  # the stroke, not the picture
    with Image.open(saved(server, "img2img")[-1]) as image:
        assert "Mask blur: 4" in image.info["parameters"]
        assert image.convert("RGB").getpixel((95, 32)) == (20, 60, 200)  # unpainted: the original


def test_pasted_seed_extras_and_noise_settings_fill_img2img_and_reach_its_infotext(
    page: Any, server: RunningServer, tmp_path: Path
) -> None:
    fresh = tmp_path / "pier.png"  # a new picture: the drawn mask of the test before is cleared
    Image.new("RGB", (96, 64), (90, 90, 90)).save(fresh)
    upload_init_image(page, fresh)
    infotext = (
        "a foggy pier\nNegative prompt: blur\nSteps: 9, Sampler: Euler a, CFG scale: 5, Seed: 77, "
        "Size: 96x64, Variation seed: 5, Variation seed strength: 0.25, Clip skip: 2, RNG: CPU, "
        "ENSD: 31337, Eta: 0.5"
    )
    page.fill("#img2img-prompt textarea", infotext)
    page.click("#img2img-paste")
    page.locator("#img2img-message", has_text="Parameters restored").wait_for()
    for accordion in ("Variation seed", "Override settings"):
        page.locator(f"#img2img-{'variation' if accordion == 'Variation seed' else 'override-settings'}"
                     ).get_by_text(accordion, exact=True).click()
    page.locator("#img2img-ensd input").wait_for()
    assert page.locator("#img2img-prompt textarea").input_value() == "a foggy pier"
    assert page.locator("#img2img-rng input").input_value() == "CPU"
    assert page.locator("#img2img-ensd input").input_value() == "31337"
    assert page.locator("#img2img-eta input").input_value() == "0.5"
    assert page.locator("#img2img-subseed input").input_value() == "5"
    assert page.locator("#img2img-clip-skip input[type=number]").input_value() == "2"
    screenshot(page, "img2img-override-settings")

    generate_one_image(page, server)
    params = server.engine.calls[-1]
    assert (params.rng, params.eta_noise_seed_delta, params.eta) == ("CPU", 31337, 0.5)
    assert (params.subseed, params.subseed_strength, params.clip_skip) == (5, 0.25, 2)
    with Image.open(saved(server, "img2img")[-1]) as image:
        parameters = image.info["parameters"]
    for pair in ("RNG: CPU", "ENSD: 31337", "Eta: 0.5", "Variation seed: 5", "Variation seed strength: 0.25",
                 "Clip skip: 2", "Seed: 77"):
        assert pair in parameters, (pair, parameters)
    # the seed buttons as txt2img's: dice to -1, recycle to the result's seed
    page.click("#img2img-random-seed")
    page.wait_for_function("document.querySelector('#img2img-seed input').value === '-1'")
    page.click("#img2img-reuse-seed")
    page.wait_for_function("document.querySelector('#img2img-seed input').value === '77'")
    page.click("#img2img-random-subseed")
    page.wait_for_function("document.querySelector('#img2img-subseed input').value === '-1'")
    page.click("#img2img-reuse-subseed")
    page.wait_for_function("document.querySelector('#img2img-subseed input').value === '5'")

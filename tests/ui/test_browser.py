"""Real-browser tests: Debian's chromium, driven by Playwright, against a real server with a fake engine.

The flows a person goes through: type a prompt and Generate; find the image on disk (with its infotext),
in the Gallery and in the History; restore parameters from History and from PNG Info; interrupt a run;
log in when a login is required. Every tab is screenshotted into ``test-artifacts/``.

The tests share one server and one page and run in file order (each builds on the previous image).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.ui.conftest import ARTIFACTS, RunningServer, opened_page, serve

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
PROMPT = "a red fox in the snow"
TIMEOUT_MS = 20_000

if not CHROMIUM.exists():  # pragma: no cover - the image installs it; say how if it is missing
    pytest.skip("chromium is not installed: apt-get install -y chromium", allow_module_level=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serve(tmp_path_factory.mktemp("ui"), step_delay=0.01) as running:
        yield running


@pytest.fixture(scope="module")
def page(browser: Any, server: RunningServer) -> Iterator[Any]:
    with opened_page(browser, server.url, timeout_ms=TIMEOUT_MS) as opened:
        yield opened


def screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    # Toasts from earlier steps would cover the header; the page is what is being recorded.
    if page.evaluate("document.querySelectorAll('.toast-close').forEach(b => b.click()) || true"):
        page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def open_tab(page: Any, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def set_number(page: Any, selector: str, value: int | float) -> None:
    field = page.locator(selector)
    field.fill(str(value))
    field.press("Tab")  # gradio commits a number box's value when it loses focus


def generate(page: Any, prompt: str) -> None:
    page.fill("#txt2img-prompt textarea", prompt)
    page.click("#txt2img-generate")


def wait_done(page: Any) -> str:
    done = page.locator("#txt2img-progress", has_text=re.compile(r"Done|Interrupted"))
    done.wait_for()
    return str(done.inner_text())


def saved_images(server: RunningServer) -> list[Path]:
    """The saved pictures (grids apart; not a save's ``.tmp-`` file, there while it is being written)."""
    folder = server.root / "outputs" / "txt2img-images"
    return sorted(path for path in folder.rglob("*.png") if not path.name.startswith("."))


def test_generate_shows_the_image_and_saves_it_with_its_infotext(page: Any, server: RunningServer) -> None:
    from PIL import Image

    generate(page, PROMPT)
    assert "Done: 1 image" in wait_done(page)
    page.locator("#txt2img-gallery img").first.wait_for()
    infotext = page.locator("#txt2img-infotext")
    assert PROMPT in infotext.inner_text() and "Steps: 20" in infotext.inner_text()
    # The token counter counted the prompt (estimate: the fake engine has no tokenizer). Its own event
    # (the prompt's change) may answer after Generate's on a busy machine: wait for it.
    expect(page.locator("#txt2img-prompt-tokens")).to_have_text("~6/75", timeout=TIMEOUT_MS)
    screenshot(page, "txt2img")

    files = saved_images(server)
    assert len(files) == 1
    with Image.open(files[0]) as image:
        parameters = image.info["parameters"]
    assert parameters.startswith(PROMPT) and "Model hash: 0123456789" in parameters


def test_gallery_tab_shows_the_image_with_its_infotext(page: Any, server: RunningServer) -> None:
    open_tab(page, "Gallery")
    page.locator("#gallery-grid img").first.wait_for()
    assert "1 image" in page.locator("#gallery-summary").inner_text()
    page.locator("#gallery-grid img").first.click()
    page.locator("#gallery-infotext", has_text=PROMPT).wait_for()
    assert page.locator("#gallery-file :is(input, textarea)").input_value().startswith("txt2img-images/")
    page.locator("#gallery-image img").wait_for()
    screenshot(page, "gallery")

    page.click("#gallery-send")
    page.locator("#txt2img-message", has_text="Parameters restored").wait_for()
    assert page.locator("#txt2img-prompt textarea").input_value() == PROMPT


def test_history_restores_every_field(page: Any, server: RunningServer) -> None:
    seed = server.services.history.search("")[0].seeds[0]
    page.fill("#txt2img-prompt textarea", "something else")
    set_number(page, "#txt2img-steps input[type=number]", 7)
    set_number(page, "#txt2img-seed input", 5)

    open_tab(page, "History")
    page.locator("#history-grid img").first.wait_for()
    page.locator("#history-grid img").first.click()
    page.locator("#history-details", has_text=PROMPT).wait_for()
    assert str(seed) in page.locator("#history-details").inner_text()
    screenshot(page, "history")

    page.click("#history-restore")
    page.locator("#txt2img-message", has_text="Parameters restored").wait_for()
    assert page.locator("#txt2img-prompt textarea").input_value() == PROMPT
    assert page.locator("#txt2img-steps input[type=number]").input_value() == "20"
    assert page.locator("#txt2img-seed input").input_value() == str(seed)


def test_pnginfo_round_trip_back_into_txt2img(page: Any, server: RunningServer) -> None:
    image_path = saved_images(server)[0]
    page.fill("#txt2img-prompt textarea", "to be replaced")
    set_number(page, "#txt2img-seed input", -1)

    open_tab(page, "PNG Info")
    page.set_input_files("#pnginfo-image input[type=file]", str(image_path))
    page.locator("#pnginfo-table", has_text="Steps").wait_for()
    assert PROMPT in page.locator("#pnginfo-parameters textarea").input_value()
    screenshot(page, "pnginfo")

    page.click("#pnginfo-send")
    page.locator("#txt2img-message", has_text="Parameters restored").wait_for()
    assert page.locator("#txt2img-prompt textarea").input_value() == PROMPT
    seed = server.services.history.search("")[0].seeds[0]
    assert page.locator("#txt2img-seed input").input_value() == str(seed)


def test_an_image_without_metadata_gets_a_clear_message(page: Any, tmp_path: Path) -> None:
    from PIL import Image

    plain = tmp_path / "plain.png"
    Image.new("RGB", (32, 32), (10, 200, 10)).save(plain)
    open_tab(page, "PNG Info")
    page.set_input_files("#pnginfo-image input[type=file]", str(plain))
    page.locator("#pnginfo-message", has_text="no generation parameters").wait_for()
    assert page.locator("#pnginfo-send").is_disabled()


def test_interrupt_mid_run_keeps_what_was_done(page: Any, server: RunningServer) -> None:
    open_tab(page, "txt2img")
    before = len(saved_images(server))
    server.engine.step_delay = 0.1  # 20 steps: two seconds per image
    try:
        set_number(page, "#txt2img-batch-count input[type=number]", 3)
        set_number(page, "#txt2img-seed input", 100)
        generate(page, "a slow fox")
        page.locator("#txt2img-progress", has_text="Batch 2/3").wait_for()
        page.click("#txt2img-interrupt")
        text = wait_done(page)
    finally:
        server.engine.step_delay = 0.01
        set_number(page, "#txt2img-batch-count input[type=number]", 1)
    kept = re.search(r"Interrupted: kept (\d+) image", text)
    assert kept is not None, text
    # The first batch was done before Interrupt; the third was never started.
    assert 1 <= int(kept.group(1)) <= 2
    assert len(saved_images(server)) == before + int(kept.group(1))
    screenshot(page, "txt2img-interrupted")


def test_bad_values_get_a_message_not_a_traceback(page: Any) -> None:
    set_number(page, "#txt2img-seed input", -5)  # below -1 (random): refused
    page.click("#txt2img-generate")
    error = page.locator("#txt2img-progress .sdweb-error")
    error.wait_for()
    assert "seed" in error.inner_text() and "Traceback" not in page.content()
    set_number(page, "#txt2img-seed input", -1)


def test_settings_are_applied_and_persisted(page: Any, server: RunningServer) -> None:
    open_tab(page, "Settings")
    set_number(page, "#setting-jpeg_quality input", 91)
    page.click("#settings-apply")
    page.locator("#settings-result", has_text="Applied 1 change").wait_for()
    assert server.services.options.get("jpeg_quality") == 91
    assert '"jpeg_quality": 91' in server.services.settings.paths.config_file.read_text()
    screenshot(page, "settings")


def test_a_bad_setting_gets_a_message_naming_it_and_nothing_is_stored(page: Any,
                                                                       server: RunningServer) -> None:
    open_tab(page, "Settings")
    box = "#setting-outdir_txt2img_samples"
    field = page.locator(f"{box} textarea, {box} input").first
    field.fill("../../escape")
    set_number(page, "#setting-jpeg_quality input", 77)
    page.click("#settings-apply")
    error = page.locator("#settings-result .sdweb-error")
    error.wait_for()
    assert "outdir_txt2img_samples" in error.inner_text() and "nothing was changed" in error.inner_text()
    assert server.services.options.get("jpeg_quality") != 77  # all or nothing
    assert server.services.options.get("outdir_txt2img_samples") == "outputs/txt2img-images"
    field.fill("outputs/txt2img-images")
    set_number(page, "#setting-jpeg_quality input", server.services.options.get("jpeg_quality"))


def test_every_other_tab_renders(page: Any) -> None:
    for tab in ("Extensions",):
        if page.get_by_role("tab", name=tab).count():
            open_tab(page, tab)
            time.sleep(0.5)
            screenshot(page, tab.lower())


def test_login_is_required_when_auth_is_set(browser: Any, tmp_path: Path) -> None:
    with serve(tmp_path, gradio_auth=(("alice", "wonderland"),), listen=True) as secured:
        context = browser.new_context()
        try:
            login = context.new_page()
            login.set_default_timeout(TIMEOUT_MS)
            login.goto(secured.url)
            login.locator("input[type=password]").wait_for()
            assert login.locator("#txt2img-prompt").count() == 0
            screenshot(login, "login")
            login.locator("input[type=text]").first.fill("alice")
            login.locator("input[type=password]").fill("wrong")
            login.keyboard.press("Enter")
            login.get_by_text(re.compile("incorrect", re.IGNORECASE)).wait_for()
            login.locator("input[type=text]").first.fill("alice")  # a failed login clears the form
            login.locator("input[type=password]").fill("wonderland")
            login.get_by_role("button", name="Login").click()
            login.wait_for_selector("#txt2img-prompt textarea")
            # Logged in, on the LAN, with a login set: no warning banner.
            assert login.locator("#sdweb-listen-warning").count() == 0
        finally:
            context.close()


def test_listen_without_login_shows_the_warning_banner(browser: Any, tmp_path: Path) -> None:
    with serve(tmp_path, listen=True) as open_server:
        context = browser.new_context()
        try:
            opened = context.new_page()
            opened.set_default_timeout(TIMEOUT_MS)
            opened.goto(open_server.url)
            opened.locator("#sdweb-listen-warning").wait_for()
            assert "--gradio-auth" in opened.locator("#sdweb-listen-warning").inner_text()
        finally:
            context.close()


def test_save_the_prompt_as_a_style_and_apply_it(page: Any, server: RunningServer) -> None:
    open_tab(page, "txt2img")
    page.fill("#txt2img-prompt textarea", "oil painting, {prompt}")
    page.fill("#txt2img-negative-prompt textarea", "photo")
    page.get_by_text("Save prompt as a style").click()
    page.fill("#txt2img-style-name textarea, #txt2img-style-name input", "painterly")
    page.click("#txt2img-save-style")
    page.locator("#txt2img-message", has_text="Saved style 'painterly'").wait_for()
    assert "painterly" in server.services.settings.paths.styles_file.read_text(encoding="utf-8-sig")

    page.fill("#txt2img-prompt textarea", "a cat")
    page.fill("#txt2img-negative-prompt textarea", "")
    styles = page.locator("#txt2img-styles input")
    styles.click()
    styles.fill("painterly")
    styles.press("Enter")
    page.click("#txt2img-apply-styles")
    page.locator("#txt2img-message", has_text="Applied painterly").wait_for()
    assert page.locator("#txt2img-prompt textarea").input_value() == "oil painting, a cat"
    assert page.locator("#txt2img-negative-prompt textarea").input_value() == "photo"


def test_two_users_share_the_queue_and_each_sees_their_own_job(
    browser: Any, page: Any, server: RunningServer
) -> None:
    open_tab(page, "txt2img")
    other_context = browser.new_context(viewport={"width": 1400, "height": 1000})
    # The first job is held at its first step until the second user's job has queued and left (a slow
    # job instead raced the clock: on a busy machine it could end before the second was interrupted).
    held = threading.Event()
    server.engine.gate = held
    try:
        other = other_context.new_page()
        other.set_default_timeout(TIMEOUT_MS)
        other.goto(server.url)
        other.wait_for_selector("#txt2img-prompt textarea")
        generate(page, "first user")
        page.locator("#txt2img-progress", has_text="Step").wait_for()
        other.fill("#txt2img-prompt textarea", "second user")
        other.press("#txt2img-prompt textarea", "Control+Enter")  # A1111's shortcut
        other.locator("#txt2img-progress", has_text="position 1 in the queue").wait_for()
        # The second user changes their mind while queued: only their job goes, the first runs on.
        other.click("#txt2img-interrupt")
        other.locator("#txt2img-progress", has_text="Interrupted before it started").wait_for()
        running = server.services.generation.current
        assert running is not None and running.params.prompt == "first user"
        held.set()
        other.press("#txt2img-prompt textarea", "Control+Enter")
        assert "Done: 1 image" in wait_done(page)
        other.locator("#txt2img-progress", has_text="Done: 1 image").wait_for()
        assert "first user" in page.locator("#txt2img-infotext").inner_text()
        assert "second user" in other.locator("#txt2img-infotext").inner_text()
    finally:
        held.set()
        server.engine.gate = None
        other_context.close()


def test_an_engine_failure_is_a_message(page: Any, server: RunningServer) -> None:
    server.engine.fail_with = RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")
    try:
        generate(page, "too big")
        error = page.locator("#txt2img-progress .sdweb-error")
        error.wait_for()
        assert "out of memory" in error.inner_text() and "smaller size" in error.inner_text()
    finally:
        server.engine.fail_with = None


def test_gallery_delete_asks_first_then_deletes(page: Any, server: RunningServer) -> None:
    before = saved_images(server)
    # Opening the tab lists the folder afresh. (No ↻ as well: its listing, the same text, could answer
    # after the click below and clear the selection it made.)
    open_tab(page, "Gallery")
    page.locator("#gallery-summary", has_text=f"{len(before)} images").wait_for()
    page.locator("#gallery-grid img").first.click()
    name = page.locator("#gallery-file :is(input, textarea)")
    page.wait_for_function("el => el.value.length > 0", arg=name.element_handle())
    chosen = server.root / "outputs" / name.input_value()
    page.click("#gallery-delete")
    page.locator("#gallery-delete", has_text="Really delete").wait_for()
    assert chosen.exists()  # one click only asks
    page.click("#gallery-delete")
    page.locator("#gallery-status", has_text="Deleted").wait_for()
    assert not chosen.exists() and len(saved_images(server)) == len(before) - 1
    page.locator("#gallery-summary", has_text=f"{len(before) - 1} images").wait_for()


def test_history_delete_asks_first_and_keeps_the_image_files(page: Any, server: RunningServer) -> None:
    history = server.services.history
    before, files = history.count(), saved_images(server)
    # Opening the tab searches afresh. (No Search as well: its answer, the same text, could come after
    # the click below and clear the selection it made.)
    open_tab(page, "History")
    page.locator("#history-summary", has_text=f"{before} generations").wait_for()
    page.locator("#history-grid img").first.click()
    page.locator("#history-details", has_text="Seeds").wait_for()
    page.click("#history-delete")
    page.locator("#history-delete", has_text="Really delete").wait_for()
    assert history.count() == before  # one click only asks
    page.click("#history-delete")
    page.locator("#history-status", has_text="Entry deleted").wait_for()
    assert history.count() == before - 1 and saved_images(server) == files

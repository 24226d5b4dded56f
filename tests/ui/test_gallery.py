"""Gallery paging over outputs/: newest first, one page at a time, fast for 10,000 images."""

from __future__ import annotations

import time
from pathlib import Path

from PIL import Image

from sdweb.images.store import ImageStore
from sdweb.ui.tabs.gallery import PER_PAGE, image_infotext, load_page, output_folders, parse_folder


def _touch_images(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(count):
        (folder / f"{number:05d}-{1000 + number}.png").touch()


def test_empty_outputs_say_where_images_will_appear(tmp_path: Path) -> None:
    page = load_page(ImageStore(tmp_path / "outputs"), "txt2img-images", None, 1)
    assert page.files == [] and page.date is None
    assert "No images yet" in page.summary


def test_newest_date_and_newest_image_come_first_and_pages_clamp(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "outputs")
    _touch_images(store.images_dir("txt2img") / "2026-11-24", 3)
    _touch_images(store.images_dir("txt2img") / "2026-11-25", PER_PAGE + 4)

    first = load_page(store, "txt2img-images", None, 1)
    assert first.dates == ["2026-11-25", "2026-11-24"] and first.date == "2026-11-25"
    assert first.total == PER_PAGE + 4 and first.pages == 2 and len(first.files) == PER_PAGE
    assert Path(first.files[0]).name.startswith(f"{PER_PAGE + 3:05d}-")

    second = load_page(store, "txt2img-images", "2026-11-25", 2)
    assert len(second.files) == 4 and Path(second.files[-1]).name.startswith("00000-")
    assert load_page(store, "txt2img-images", "2026-11-25", 99).page == 2
    assert load_page(store, "txt2img-images", "2026-11-25", 0).page == 1
    older = load_page(store, "txt2img-images", "2026-11-24", 1)
    assert older.total == 3 and "page 1 of 1" in older.summary


def test_an_unknown_date_falls_back_to_the_newest(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "outputs")
    _touch_images(store.images_dir("txt2img") / "2026-11-25", 2)
    assert load_page(store, "txt2img-images", "../../etc", 1).date == "2026-11-25"


def test_every_kind_of_output_folder_is_offered(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "outputs")
    assert output_folders(store) == ["txt2img-images"]  # before anything was made
    _touch_images(store.images_dir("img2img") / "2026-11-25", 2)
    _touch_images(store.grids_dir("txt2img") / "2026-11-25", 1)
    (store.root / "not-a-kind here").mkdir()
    assert output_folders(store) == ["txt2img-images", "img2img-images", "txt2img-grids"]
    assert load_page(store, "img2img-images", None, 1).total == 2
    assert parse_folder("../etc") == ("txt2img", False)


def test_grids_are_a_separate_folder(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "outputs")
    _touch_images(store.images_dir("txt2img") / "2026-11-25", 2)
    _touch_images(store.grids_dir("txt2img") / "2026-11-25", 1)
    assert load_page(store, "txt2img-grids", None, 1).total == 1


def test_a_page_of_ten_thousand_images_lists_quickly(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "outputs")
    _touch_images(store.images_dir("txt2img") / "2026-11-25", 10_000)
    started = time.perf_counter()
    page = load_page(store, "txt2img-images", None, 100)
    elapsed = time.perf_counter() - started
    assert page.total == 10_000 and len(page.files) == PER_PAGE and page.page == 100
    assert elapsed < 1.0, f"listing one page took {elapsed:.2f} s"


def test_infotext_of_a_saved_image_and_of_one_without(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "outputs", fsync=False)
    saved = store.save(
        Image.new("RGB", (8, 8)), infotext="a cat\nSteps: 5, Sampler: Euler, Seed: 1", seed=1, kind="txt2img"
    )
    text, message = image_infotext(str(saved))
    assert text.startswith("a cat") and message is None
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    text, message = image_infotext(str(plain))
    assert text == "" and message and "no generation parameters" in message

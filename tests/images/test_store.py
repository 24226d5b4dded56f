"""The outputs folder: A1111 names, a never-overwriting counter, atomic writes, metadata, the path gate."""

from __future__ import annotations

import os
import threading
import time
import urllib.parse
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image

from sdweb.images.metadata import read_image_metadata
from sdweb.images.store import ImageStore, PathOutsideOutputsError, grid_shape, make_grid

NOW = datetime(2026, 11, 25, 18, 30)
INFOTEXT = (
    "a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, "
    "Seed: 42, Size: 64x64, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: 0.1.0"
)


@pytest.fixture()
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "outputs", fsync=False)


def image(color: str = "red", size: tuple[int, int] = (64, 64)) -> Image.Image:
    return Image.new("RGB", size, color)


def test_first_save_uses_a1111_layout_and_name(store: ImageStore) -> None:
    path = store.save(image(), infotext=INFOTEXT, seed=42, now=NOW)
    assert path == store.root / "txt2img-images" / "2026-11-25" / "00000-42.png"
    assert path.is_file()


def test_counter_continues_after_restart(tmp_path: Path) -> None:
    first = ImageStore(tmp_path / "outputs", fsync=False)
    names = [first.save(image(), infotext=INFOTEXT, seed=s, now=NOW).name for s in (7, 8)]
    assert names == ["00000-7.png", "00001-8.png"]
    # A file copied in by hand with a higher number moves the counter on.
    (first.root / "txt2img-images" / "2026-11-25" / "00041-99.png").write_bytes(b"")
    restarted = ImageStore(tmp_path / "outputs", fsync=False)
    assert restarted.save(image(), infotext=INFOTEXT, seed=9, now=NOW).name == "00042-9.png"


def test_two_instances_never_overwrite_each_other(tmp_path: Path) -> None:
    # Two stores on one folder stand in for two processes: each has its own idea of the counter.
    one = ImageStore(tmp_path / "outputs", fsync=False)
    two = ImageStore(tmp_path / "outputs", fsync=False)
    a = one.save(image("red"), infotext=INFOTEXT, seed=1, now=NOW)
    b = two.save(image("blue"), infotext=INFOTEXT, seed=1, now=NOW)
    c = one.save(image("green"), infotext=INFOTEXT, seed=1, now=NOW)  # its cached counter is stale
    assert len({a, b, c}) == 3
    assert Image.open(a).getpixel((0, 0)) == (255, 0, 0)
    assert Image.open(b).getpixel((0, 0)) == (0, 0, 255)


def test_concurrent_saves_from_threads_all_land_with_distinct_names(store: ImageStore) -> None:
    results: list[Path] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker(index: int) -> None:
        try:
            start.wait()
            for j in range(5):
                path = store.save(image(), infotext=INFOTEXT, seed=index * 100 + j, now=NOW)
                with lock:
                    results.append(path)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(results) == 40 and len(set(results)) == 40
    folder = store.root / "txt2img-images" / "2026-11-25"
    files = sorted(p.name for p in folder.iterdir())
    assert len(files) == 40
    assert sorted(int(name.split("-")[0]) for name in files) == list(range(40))


def test_writer_failing_midway_leaves_no_file(store: ImageStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.save(image(), infotext=INFOTEXT, seed=1, now=NOW)

    def broken_encode(self_image: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        fp.write(b"\x89PNG\r\n\x1a\n" + b"\x00" * 1000)  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_encode)
    with pytest.raises(OSError, match="disk full"):
        store.save(image(), infotext=INFOTEXT, seed=2, now=NOW)
    folder = store.root / "txt2img-images" / "2026-11-25"
    assert sorted(os.listdir(folder)) == ["00000-1.png"]  # no partial file, no temp file left


def test_temp_files_left_by_a_crash_are_cleaned_up(tmp_path: Path) -> None:
    folder = tmp_path / "outputs" / "txt2img-images" / "2026-11-25"
    folder.mkdir(parents=True)
    stale = folder / ".tmp-0123456789abcdef.png"
    fresh = folder / ".tmp-fedcba9876543210.png"
    stale.write_bytes(b"\x89PNG half")
    fresh.write_bytes(b"\x89PNG in flight")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    ImageStore(tmp_path / "outputs", fsync=False).save(image(), infotext=INFOTEXT, seed=1, now=NOW)
    assert not stale.exists()
    assert fresh.exists()  # may belong to a save still running in another process
    assert ImageStore(tmp_path / "outputs").list_images("txt2img", "2026-11-25")[0].name == "00000-1.png"


@pytest.mark.parametrize(
    "fmt, suffix", [("png", ".png"), ("jpg", ".jpg"), ("jpeg", ".jpg"), ("webp", ".webp")]
)
def test_metadata_readable_back_in_every_format(store: ImageStore, fmt: str, suffix: str) -> None:
    text = INFOTEXT.replace("a cat", "un chat été, 猫 (masterpiece:1.2)")
    path = store.save(image(), infotext=text, seed=42, fmt=fmt, now=NOW)
    assert path.suffix == suffix
    with Image.open(path) as opened:
        meta = read_image_metadata(opened)
    assert meta.parameters == text
    assert meta.source == "a1111"


def test_png_latin1_infotext_is_a_plain_text_chunk(store: ImageStore) -> None:
    path = store.save(image(), infotext=INFOTEXT, seed=42, now=NOW)
    data = path.read_bytes()
    assert b"tEXtparameters\x00" + INFOTEXT.encode("latin-1") in data


def test_rgba_saved_as_jpeg_and_bad_requests_refused(store: ImageStore) -> None:
    path = store.save(image().convert("RGBA"), infotext=INFOTEXT, seed=1, fmt="jpg", now=NOW)
    assert Image.open(path).mode == "RGB"
    with pytest.raises(ValueError, match="png, jpg, webp"):
        store.save(image(), infotext=INFOTEXT, seed=1, fmt="bmp", now=NOW)
    with pytest.raises(ValueError, match="JPEG EXIF"):
        store.save(image(), infotext="x" * 40_000, seed=1, fmt="jpg", now=NOW)
    with pytest.raises(ValueError, match="kind"):
        store.save(image(), infotext=INFOTEXT, seed=1, kind="../evil", now=NOW)


def test_grid_is_near_square_and_saved_in_grids_folder(store: ImageStore) -> None:
    assert grid_shape(1) == (1, 1)
    assert grid_shape(2) == (1, 2)
    assert grid_shape(4) == (2, 2)
    assert grid_shape(6) == (2, 3)
    assert grid_shape(9) == (3, 3)
    assert grid_shape(3, rows=5) == (3, 1)
    colors = ["red", "green", "blue", "white", "yellow"]
    grid = make_grid([image(c) for c in colors])
    assert grid.size == (3 * 64, 2 * 64)
    assert grid.getpixel((64 + 1, 1)) == (0, 128, 0)  # second image, first row
    assert grid.getpixel((2 * 64 + 1, 64 + 1)) == (0, 0, 0)  # the empty sixth cell is black
    path = store.save_grid([image(c) for c in colors], infotext=INFOTEXT, seed=42, now=NOW)
    assert path == store.root / "txt2img-grids" / "2026-11-25" / "grid-0000.png"
    again = store.save_grid([image()], infotext=INFOTEXT, seed=43, now=NOW)
    assert again.name == "grid-0001.png"
    with Image.open(path) as opened:
        assert opened.size == (192, 128)
        assert read_image_metadata(opened).parameters == INFOTEXT


def test_gallery_lists_dates_and_pages_newest_first(store: ImageStore) -> None:
    for day in (23, 25, 24):
        for seed in range(3):
            store.save(image(), infotext=INFOTEXT, seed=seed, now=datetime(2026, 11, day, 12))
    assert store.list_dates("txt2img") == ["2026-11-25", "2026-11-24", "2026-11-23"]
    assert store.list_dates("img2img") == []
    page = store.list_images("txt2img", "2026-11-24", offset=0, limit=2)
    assert [p.name for p in page] == ["00002-2.png", "00001-1.png"]
    assert [p.name for p in store.list_images("txt2img", "2026-11-24", offset=2, limit=2)] == ["00000-0.png"]
    assert store.total("txt2img", "2026-11-24") == 3
    assert store.total("txt2img", "2026-01-01") == 0
    # A new image shows up at the top right away.
    store.save(image(), infotext=INFOTEXT, seed=77, now=datetime(2026, 11, 24, 13))
    assert store.list_images("txt2img", "2026-11-24", limit=1)[0].name == "00003-77.png"


def test_listing_10000_images_is_fast(store: ImageStore) -> None:
    folder = store.images_dir("txt2img") / "2026-11-25"
    folder.mkdir(parents=True)
    for number in range(10_000):
        (folder / f"{number:05d}-{1000 + number}.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    started = time.perf_counter()
    page = store.list_images("txt2img", "2026-11-25", offset=100, limit=50)
    total = store.total("txt2img", "2026-11-25")
    elapsed = time.perf_counter() - started
    assert total == 10_000
    assert page[0].name == "09899-10899.png" and len(page) == 50
    assert elapsed < 0.5, f"listing took {elapsed:.3f}s"
    # The next save continues after the highest number.
    assert store.save(image(), infotext=INFOTEXT, seed=5, now=NOW).name == "10000-5.png"


def test_resolve_and_relative_round_trip(store: ImageStore) -> None:
    path = store.save(image(), infotext=INFOTEXT, seed=42, now=NOW)
    relative = store.relative(path)
    assert relative == "txt2img-images/2026-11-25/00000-42.png"
    assert store.resolve(relative) == path.resolve()


@pytest.mark.parametrize(
    "attempt",
    [
        "../secret.txt",
        "txt2img-images/../../secret.txt",
        urllib.parse.unquote("..%2f..%2fsecret.txt"),
        urllib.parse.unquote("txt2img-images%2f..%2f..%2fsecret.txt"),
        "/etc/passwd",
        "//etc/passwd",
        "C:/Windows/win.ini",
        "c:secret.txt",
        "..\\secret.txt",
        "txt2img-images\\..\\..\\secret.txt",
        "txt2img-images/\x00/../secret.txt",
        "secret.txt\x00.png",
        "~/secret.txt",
        "",
        "..",
    ],
)
def test_path_traversal_refused(store: ImageStore, attempt: str) -> None:
    (store.root.parent / "secret.txt").write_text("secret")
    store.root.mkdir(parents=True, exist_ok=True)
    with pytest.raises(PathOutsideOutputsError):
        store.resolve(attempt)
    with pytest.raises(PathOutsideOutputsError):
        store.delete(attempt)
    assert (store.root.parent / "secret.txt").exists()


def test_still_encoded_traversal_stays_inside(store: ImageStore) -> None:
    # Not decoded: a literal name with '%' can only name a file inside outputs.
    store.root.mkdir(parents=True)
    resolved = store.resolve("..%2f..%2fsecret.txt")
    assert resolved.parent == store.root.resolve()


def test_symlink_escaping_outputs_refused(store: ImageStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"secret")
    folder = store.images_dir() / "2026-11-25"
    folder.mkdir(parents=True)
    (folder / "00001-1.png").symlink_to(outside / "secret.png")
    (store.root / "linkdir").symlink_to(outside, target_is_directory=True)
    for attempt in ("txt2img-images/2026-11-25/00001-1.png", "linkdir/secret.png", "linkdir"):
        with pytest.raises(PathOutsideOutputsError):
            store.resolve(attempt)
    with pytest.raises(PathOutsideOutputsError):
        store.delete("linkdir/secret.png")
    assert (outside / "secret.png").exists()
    assert store.list_images("txt2img", "2026-11-25") == []  # the link is not offered in the gallery


def test_delete_removes_an_image_and_refreshes_the_listing(store: ImageStore) -> None:
    first = store.save(image(), infotext=INFOTEXT, seed=1, now=NOW)
    second = store.save(image(), infotext=INFOTEXT, seed=2, now=NOW)
    assert store.total("txt2img", "2026-11-25") == 2
    store.delete(store.relative(second))
    assert not second.exists() and first.exists()
    assert store.list_images("txt2img", "2026-11-25") == [first.resolve()]
    with pytest.raises(FileNotFoundError):
        store.delete(store.relative(first) + ".missing")
    with pytest.raises(IsADirectoryError):
        store.delete("txt2img-images/2026-11-25")
    # The counter does not reuse the deleted number within this run.
    assert store.save(image(), infotext=INFOTEXT, seed=3, now=NOW).name == "00002-3.png"


def test_custom_folder_and_kinds(store: ImageStore, tmp_path: Path) -> None:
    custom = store.save(image(), infotext=INFOTEXT, seed=1, folder=tmp_path / "mine", now=NOW)
    assert custom == tmp_path / "mine" / "2026-11-25" / "00000-1.png"
    img2img = store.save(image(), infotext=INFOTEXT, seed=1, kind="img2img", now=NOW)
    assert img2img.parent.parent.name == "img2img-images"

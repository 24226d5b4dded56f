"""History tab pieces: paged search, details, and restoring an entry into the form."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from sdweb.history.store import HistoryEntry, HistoryStore
from sdweb.params import GenerationParams
from sdweb.ui.fields import params_from_form
from sdweb.ui.tabs.history import details_html, restore_values, search_page, thumbnail_image
from tests.fakes import make_services


def _entry(prompt: str, seed: int, **kwargs: object) -> HistoryEntry:
    return HistoryEntry(
        params=GenerationParams(prompt=prompt, seed=seed),
        seeds=[seed, seed + 1],
        subseeds=[5, 6],
        model_title="fake-model",
        model_hash="0123456789",
        **kwargs,
    )


def test_search_pages_newest_first_and_counts_matches(tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "history.db") as history:
        for number in range(30):
            history.add(_entry(f"castle number {number}" if number % 2 else f"forest {number}", number))
        page, entries = search_page(history, "", 1, per_page=12)
        assert page.total == 30 and page.pages == 3 and len(entries) == 12
        assert entries[0].params.prompt == "castle number 29"
        page, entries = search_page(history, "castle", 5, per_page=12)
        assert page.total == 15 and page.page == 2 and len(entries) == 3  # clamped to the last page
        assert all("castle" in entry.params.prompt for entry in entries)
        assert "15 generations matching 'castle'" in page.summary
        page, entries = search_page(history, "nothing-like-this", 1)
        assert entries == [] and "Nothing matches" in page.summary


def test_details_mark_deleted_files_and_thumbnails_survive(tmp_path: Path) -> None:
    kept = tmp_path / "kept.png"
    Image.new("RGB", (4, 4)).save(kept)
    entry = _entry("a cat", 1, output_paths=[str(kept), str(tmp_path / "gone.png")], thumbnail=None)
    text = details_html(entry)
    assert "a cat" in text and "1, 2" in text and "fake-model" in text
    assert "gone.png (deleted)" in text and "kept.png (deleted)" not in text
    assert thumbnail_image(entry).size == (64, 64)  # a placeholder, not an error


def test_restore_gives_the_concrete_seed_and_the_checkpoint_on_disk(tmp_path: Path) -> None:
    services, _ = make_services(tmp_path)
    try:
        info = services.models.list_checkpoints()[0]
        params = GenerationParams(
            prompt="a boat", seed=-1, subseed=-1, steps=9, width=384, checkpoint=info.name
        )
        entry = HistoryEntry(
            params=params.model_copy(update={"prompt": "a boat, oil painting", "styles": ("painterly",)}),
            seeds=[777],
            subseeds=[888],
            model_title="renamed",
            model_hash=None,
        )
        values, notes = restore_values(services, entry)
        restored = params_from_form(values)
        assert notes == []
        assert (
            restored.seed == 777 and restored.subseed == 888 and restored.steps == 9 and restored.width == 384
        )
        assert values["checkpoint"] == info.title
        # The stored prompt has its style merged in already: restoring selects no style again.
        assert restored.prompt == "a boat, oil painting" and restored.styles == ()

        missing = HistoryEntry(
            params=GenerationParams(prompt="x"), seeds=[1], model_title="gone-model", model_hash="ffffffffff"
        )
        values, notes = restore_values(services, missing)
        assert "checkpoint" not in values and "gone-model" in notes[0]
    finally:
        services.worker.close()

"""Prompt history: stored, found by prompt words, safe from threads and odd queries, kept across restarts."""

from __future__ import annotations

import io
import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image

from sdweb.history.store import (
    HistoryDatabaseError,
    HistoryEntry,
    HistoryStore,
    fts_query,
    make_thumbnail,
)
from sdweb.params import GenerationParams

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


def entry(prompt: str, negative: str = "", *, minutes: int = 0, **kwargs: object) -> HistoryEntry:
    params = GenerationParams(prompt=prompt, negative_prompt=negative, seed=100 + minutes, steps=25,
                              sampler_name="DPM++ 2M", scheduler="Karras", cfg_scale=6.5,
                              width=512, height=768, batch_size=2, clip_skip=2)
    defaults: dict[str, object] = {
        "params": params,
        "seeds": [100 + minutes, 101 + minutes],
        "subseeds": [5, 6],
        "model_title": "v1-5-pruned-emaonly.safetensors [6ce0161689]",
        "model_hash": "6ce0161689",
        "created_at": T0 + timedelta(minutes=minutes),
        "output_paths": [],
        "infotexts": [f"{prompt}\nSteps: 25, Sampler: DPM++ 2M, CFG scale: 6.5"],
    }
    defaults.update(kwargs)
    return HistoryEntry(**defaults)  # type: ignore[arg-type]


@pytest.fixture(params=[True, False], ids=["fts5", "like"])
def history(request: pytest.FixtureRequest, tmp_path: Path) -> HistoryStore:
    store = HistoryStore(tmp_path / "history.db", use_fts=request.param)
    yield store
    store.close()


def test_add_and_get_keep_every_field(history: HistoryStore) -> None:
    thumb = make_thumbnail(Image.new("RGB", (512, 768), "teal"))
    original = entry("a cat in a hat", "blurry", thumbnail=thumb, extra={"interrupted": True},
                     output_paths=["/out/00001-100.png", "/out/00002-101.png"])
    entry_id = history.add(original)
    got = history.get(entry_id)
    assert got is not None
    assert got.id == entry_id
    assert got.params == original.params  # every txt2img field restorable
    assert got.seeds == (100, 101) and got.subseeds == (5, 6)
    assert got.model_title == original.model_title and got.model_hash == "6ce0161689"
    assert got.created_at == T0
    assert got.output_paths == ("/out/00001-100.png", "/out/00002-101.png")
    assert got.infotexts == original.infotexts
    assert got.thumbnail == thumb
    assert dict(got.extra) == {"interrupted": True}
    assert history.get(entry_id + 1000) is None


def test_thumbnail_helper_and_limits(history: HistoryStore) -> None:
    thumb = make_thumbnail(Image.new("RGBA", (1024, 256), (255, 0, 0, 128)))
    with Image.open(io.BytesIO(thumb)) as opened:
        assert opened.format == "PNG"
        assert opened.size == (128, 32)
    big = io.BytesIO()
    Image.new("RGB", (256, 256)).save(big, format="PNG")
    with pytest.raises(ValueError, match="128"):
        history.add(entry("x", thumbnail=big.getvalue()))
    with pytest.raises(ValueError, match="PNG"):
        history.add(entry("x", thumbnail=b"GIF89a..."))


def test_search_finds_words_in_prompt_and_negative_newest_first(history: HistoryStore) -> None:
    history.add(entry("a red fox in the snow", "blurry", minutes=1))
    history.add(entry("(masterpiece:1.2), a red car", "lowres, bad_hands", minutes=2))
    history.add(entry("portrait of a woman", "red eyes", minutes=3))
    history.add(entry("a blue whale", "", minutes=4))

    assert [e.prompt for e in history.search()] == [
        "a blue whale", "portrait of a woman", "(masterpiece:1.2), a red car", "a red fox in the snow",
    ]
    assert [e.prompt for e in history.search("red")] == [
        "portrait of a woman", "(masterpiece:1.2), a red car", "a red fox in the snow",
    ]
    assert history.count("red") == 3
    assert [e.prompt for e in history.search("red fox")] == ["a red fox in the snow"]
    assert [e.prompt for e in history.search("lowres")] == ["(masterpiece:1.2), a red car"]
    assert [e.prompt for e in history.search("masterp")] == ["(masterpiece:1.2), a red car"]
    assert [e.prompt for e in history.search("(masterpiece:1.2)")] == ["(masterpiece:1.2), a red car"]
    assert history.search("zebra") == []
    assert history.count("") == 4
    page = history.search("", offset=1, limit=2)
    assert [e.prompt for e in page] == ["portrait of a woman", "(masterpiece:1.2), a red car"]


@pytest.mark.parametrize(
    "query",
    ['(', ')', '"', 'a"b', '""', "'", "NEAR(", "AND", "OR red", "red AND", "*", "-red", "^red",
     "prompt:red", "col:", "{a b}", "\\", "%", "_", "red)))", "😀", "日本", "NOT", "a + b"],
)
def test_punctuation_and_fts_syntax_never_raise(history: HistoryStore, query: str) -> None:
    history.add(entry("a red fox (detailed:1.1) 100% _under_ score"))
    results = history.search(query)
    assert isinstance(results, list)
    assert history.count(query) == len(results)


def test_like_fallback_escapes_wildcards(tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "h.db", use_fts=False) as history:
        history.add(entry("100% cotton"))
        history.add(entry("1000 cats"))
        assert [e.prompt for e in history.search("100%")] == ["100% cotton"]
        assert history.count("_") == 0


def test_fts_query_quotes_every_user_word() -> None:
    assert fts_query("red fox") == '"red"* AND "fox"*'
    assert fts_query('"red fox" NEAR(') == '"red fox" AND "NEAR"*'
    assert fts_query("(masterpiece:1.2)") == '"masterpiece 1 2"*'
    assert fts_query("((( ))) :") is None


def test_delete_entry(history: HistoryStore) -> None:
    keep = history.add(entry("keep me", minutes=1))
    gone = history.add(entry("delete me", minutes=2))
    assert history.delete(gone) is True
    assert history.delete(gone) is False
    assert history.get(gone) is None
    assert [e.id for e in history.search("")] == [keep]
    assert history.search("delete") == []


def test_deleting_output_images_keeps_the_entry(history: HistoryStore, tmp_path: Path) -> None:
    image_path = tmp_path / "00001-100.png"
    Image.new("RGB", (64, 64)).save(image_path)
    thumb = make_thumbnail(Image.open(image_path))
    entry_id = history.add(entry("a lighthouse", output_paths=[str(image_path)], thumbnail=thumb))
    image_path.unlink()
    got = history.get(entry_id)
    assert got is not None
    assert got.params.prompt == "a lighthouse" and got.thumbnail == thumb
    assert got.output_paths == (str(image_path),)
    assert got.existing_paths() == []
    assert [e.id for e in history.search("lighthouse")] == [entry_id]


def test_survives_restart(tmp_path: Path) -> None:
    db = tmp_path / "data" / "history.db"
    with HistoryStore(db) as first:
        entry_id = first.add(entry("a quiet harbour at dawn"))
    with HistoryStore(db) as second:
        got = second.get(entry_id)
        assert got is not None and got.params.steps == 25
        assert [e.id for e in second.search("harbour")] == [entry_id]
        assert second.add(entry("another")) == entry_id + 1


def test_index_is_rebuilt_when_fts_comes_back(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    with HistoryStore(db, use_fts=True) as history:
        history.add(entry("first sunset"))
    with HistoryStore(db, use_fts=False) as history:  # as if opened where SQLite lacks FTS5
        history.add(entry("second sunset"))
    with HistoryStore(db, use_fts=True) as history:
        assert history.count("sunset") == 2


def test_newer_schema_is_refused_not_damaged(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    HistoryStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (99)")
    with pytest.raises(HistoryDatabaseError, match="newer sdweb"):
        HistoryStore(db)
    not_a_db = tmp_path / "garbage.db"
    not_a_db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(HistoryDatabaseError, match="not a usable history database"):
        HistoryStore(not_a_db)


def test_params_this_version_refuses_are_dropped_not_fatal(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    with HistoryStore(db) as history:
        entry_id = history.add(entry("old entry"))
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE entries SET params_json = json_set(params_json, '$.steps', 99999, '$.removed_field', 1)"
        )
    with HistoryStore(db) as history:
        got = history.get(entry_id)
        assert got is not None
        assert got.params.prompt == "old entry"
        assert got.params.steps == 20  # the refused value is dropped, the rest kept
        assert got.params.sampler_name == "DPM++ 2M"


def test_threads_add_and_search_at_once(history: HistoryStore) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def writer(index: int) -> None:
        try:
            start.wait()
            for j in range(20):
                history.add(entry(f"thread {index} picture {j} of a castle", minutes=index * 100 + j))
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    def reader() -> None:
        try:
            start.wait()
            for _ in range(20):
                history.search("castle", limit=10)
                history.count("castle")
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert history.count("castle") == 80
    assert history.count("\"thread 3 picture\"") == 20


def test_extra_values_that_are_not_json_are_kept_as_text(history: HistoryStore) -> None:
    entry_id = history.add(entry("x", extra={"grid_path": Path("/out/grid-0001.png"), "n": 2}))
    got = history.get(entry_id)
    assert got is not None and dict(got.extra) == {"grid_path": "/out/grid-0001.png", "n": 2}


def test_naive_time_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        entry("x", created_at=datetime(2026, 1, 1))


def test_update_replaces_a_row_keeping_its_time_and_search(history: HistoryStore) -> None:
    first = history.add(entry("a harbour at dawn", seeds=[5], output_paths=["a.png"]))
    created = history.get(first).created_at  # type: ignore[union-attr]
    later = entry("a harbour at dusk", seeds=[5, 6], output_paths=["a.png", "b.png"], minutes=30)
    assert history.update(first, later)
    got = history.get(first)
    assert got is not None and got.created_at == created
    assert got.seeds == (5, 6) and got.output_paths == ("a.png", "b.png")
    assert [e.id for e in history.search("dusk")] == [first] and history.search("dawn") == []
    assert not history.update(first + 100, later)

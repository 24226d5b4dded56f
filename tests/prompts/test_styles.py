"""styles.csv: reading and writing A1111's file, and applying styles to prompts."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sdweb.prompts.styles import (
    PromptStyle,
    StyleFileError,
    StyleStore,
    UnknownStyleError,
    merge_style_text,
)

# A styles.csv byte for byte as A1111 writes it (csv.DictWriter, utf-8-sig, "\r\n", minimal quoting).
A1111_STYLES_CSV = (
    b"\xef\xbb\xbfname,prompt,negative_prompt\r\n"
    b'cinematic,"cinematic still {prompt} . emotional, harmonious, vignette","anime, cartoon, graphic"\r\n'
    b'Quality,"masterpiece, best quality","lowres, bad anatomy"\r\n'
    b"plain,film grain,\r\n"
    b'"quoted ""name""","two\nlines",\r\n'
)


@pytest.fixture
def a1111_file(tmp_path: Path) -> Path:
    path = tmp_path / "styles.csv"
    path.write_bytes(A1111_STYLES_CSV)
    return path


def test_reads_the_file_a1111_writes(a1111_file: Path) -> None:
    store = StyleStore(a1111_file)
    assert store.names() == ["cinematic", "Quality", "plain", 'quoted "name"']
    assert store.get("cinematic") == PromptStyle(
        "cinematic", "cinematic still {prompt} . emotional, harmonious, vignette", "anime, cartoon, graphic"
    )
    assert store.get("plain").negative_prompt == ""
    assert store.get('quoted "name"').prompt == "two\nlines"


def test_rewriting_an_a1111_file_keeps_it_byte_for_byte(a1111_file: Path) -> None:
    store = StyleStore(a1111_file)
    store.save(store.get("Quality"))
    assert a1111_file.read_bytes() == A1111_STYLES_CSV


def test_missing_file_is_an_empty_store_and_save_creates_it(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "styles.csv"
    store = StyleStore(path)
    assert store.list() == []
    assert store.apply("a cat", "blurry", []) == ("a cat", "blurry")
    store.save(PromptStyle("q", "masterpiece", "lowres"))
    assert path.read_bytes() == b"\xef\xbb\xbfname,prompt,negative_prompt\r\nq,masterpiece,lowres\r\n"
    assert StyleStore(path).get("q") == PromptStyle("q", "masterpiece", "lowres")


def test_round_trip_of_awkward_text(tmp_path: Path) -> None:
    path = tmp_path / "styles.csv"
    awkward = PromptStyle('a, "b"', 'x, "y"\nz, ünïcödé {prompt}', " leading space, trailing comma,")
    StyleStore(path).save(awkward)
    again = StyleStore(path).get('a, "b"')
    assert (again.name, again.prompt, again.negative_prompt) == (
        awkward.name,
        awkward.prompt,
        awkward.negative_prompt,
    )


def test_save_replaces_in_place_and_keeps_the_others(a1111_file: Path) -> None:
    store = StyleStore(a1111_file)
    store.save(PromptStyle("Quality", "best quality", ""))
    store.save(PromptStyle("new", "new style", "neg"))
    assert store.names() == ["cinematic", "Quality", "plain", 'quoted "name"', "new"]
    assert store.get("Quality") == PromptStyle("Quality", "best quality", "")
    assert store.get("cinematic").negative_prompt == "anime, cartoon, graphic"
    # The version before the last save is kept next to it, as A1111 does.
    backup = (a1111_file.parent / "styles.csv.bak").read_bytes()
    assert b"Quality,best quality,\r\n" in backup
    assert b"new," not in backup


def test_save_keeps_file_mode_and_leaves_no_temporary_files(a1111_file: Path) -> None:
    os.chmod(a1111_file, 0o640)
    StyleStore(a1111_file).save(PromptStyle("x", "y", "z"))
    assert stat.S_IMODE(a1111_file.stat().st_mode) == 0o640
    assert sorted(p.name for p in a1111_file.parent.iterdir()) == ["styles.csv", "styles.csv.bak"]


def test_delete(a1111_file: Path) -> None:
    store = StyleStore(a1111_file)
    store.delete("plain")
    assert "plain" not in StyleStore(a1111_file).names()
    with pytest.raises(UnknownStyleError, match="plain"):
        store.delete("plain")


def test_save_rejects_names_a1111_would_not_read_back(tmp_path: Path) -> None:
    store = StyleStore(tmp_path / "styles.csv")
    with pytest.raises(ValueError, match="name"):
        store.save(PromptStyle("  ", "x"))
    with pytest.raises(ValueError, match="comment"):
        store.save(PromptStyle("#x", "x"))


def test_edits_on_disk_are_picked_up(a1111_file: Path) -> None:
    store = StyleStore(a1111_file)
    assert "later" not in store.names()
    with a1111_file.open("a", encoding="utf-8", newline="") as file:
        file.write("later,added by hand,\r\n")
    assert store.get("later").prompt == "added by hand"


def test_extra_columns_and_old_text_column_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "styles.csv"
    path.write_text(
        "name, text, negative_prompt, author\n"
        "# a comment row,ignored,,\n"
        "old, old style text, bad, me\n"
        ",nameless,,\n"
        "short\n",
        encoding="utf-8",
    )
    store = StyleStore(path)
    assert store.names() == ["old", "short"]
    assert store.get("old") == PromptStyle("old", "old style text", "bad")
    assert store.get("short") == PromptStyle("short", "", "")
    store.save(PromptStyle("new", "n", ""))
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    assert lines[0] == "name,prompt,negative_prompt,author"
    assert lines[1] == "old,old style text,bad,me"
    assert lines[-1] == "new,n,,"


def test_file_without_name_column_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "styles.csv"
    path.write_text("title,prompt\nx,y\n", encoding="utf-8")
    store = StyleStore(path)
    with pytest.raises(StyleFileError, match="no 'name' column"):
        store.list()
    with pytest.raises(StyleFileError):
        store.save(PromptStyle("x", "y"))  # never overwrite a file we could not read
    assert path.read_text(encoding="utf-8") == "title,prompt\nx,y\n"
    # Generating without styles does not depend on the file.
    assert store.apply("a cat", "", []) == ("a cat", "")


def test_empty_file_is_an_empty_store(tmp_path: Path) -> None:
    path = tmp_path / "styles.csv"
    path.write_bytes(b"")
    assert StyleStore(path).list() == []


# --- applying ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("style_text", "prompt", "expected"),
    [
        ("masterpiece", "a cat", "a cat, masterpiece"),
        ("  masterpiece ", " a cat ", "a cat, masterpiece"),
        ("masterpiece", "", "masterpiece"),
        ("", "a cat", "a cat"),
        ("", "", ""),
        ("photo of {prompt}, 8k", "a cat", "photo of a cat, 8k"),
        ("{prompt}, {prompt}", " a cat", " a cat,  a cat"),
        ("photo of {prompt}", "", "photo of "),
    ],
)
def test_merge_style_text(style_text: str, prompt: str, expected: str) -> None:
    assert merge_style_text(style_text, prompt) == expected


def test_apply_uses_placeholder_or_appends_in_order(a1111_file: Path) -> None:
    store = StyleStore(a1111_file)
    prompt, negative = store.apply("a cat", "blurry", ["cinematic", "Quality"])
    assert prompt == "cinematic still a cat . emotional, harmonious, vignette, masterpiece, best quality"
    assert negative == "blurry, anime, cartoon, graphic, lowres, bad anatomy"
    # The order matters: the placeholder then wraps the earlier style's text too.
    prompt, _ = store.apply("a cat", "", ["Quality", "cinematic"])
    assert prompt == "cinematic still a cat, masterpiece, best quality . emotional, harmonious, vignette"


def test_unknown_style_names_the_known_ones(a1111_file: Path) -> None:
    store = StyleStore(a1111_file)
    with pytest.raises(UnknownStyleError) as info:
        store.apply("a cat", "", ["Quality", "nope"])
    message = str(info.value)
    assert "'nope'" in message
    assert "'cinematic', 'Quality', 'plain'" in message
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnknownStyleError, match="no styles in"):
        StyleStore(a1111_file.parent / "missing.csv").get("x")


def test_extract_undoes_apply(a1111_file: Path) -> None:
    store = StyleStore(a1111_file)
    styled = store.apply("a cat", "blurry", ["cinematic", "Quality"])
    assert store.extract(*styled) == (["cinematic", "Quality"], "a cat", "blurry")
    assert store.extract("a dog", "blurry") == ([], "a dog", "blurry")
    assert store.extract(*styled, names=["Quality"]) == (
        ["Quality"],
        "cinematic still a cat . emotional, harmonious, vignette",
        "blurry, anime, cartoon, graphic",
    )

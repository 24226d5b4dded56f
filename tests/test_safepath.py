"""The one path gate (sdweb.safepath): no user-supplied string names a path outside its folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sdweb.safepath import UnsafePathError, confine, folder_option, plain_name, shown_path

ESCAPES = [
    "../outside",
    "a/../../outside",
    "a/b/../../../outside",
    "..",
    "/etc/passwd",
    "~/secrets",
    "~root",
    "..\\..\\outside",
    "a\\..\\..\\outside",
    "C:\\Windows\\System32",
    "C:/Windows",
    "c:relative",
    "\\\\server\\share\\x",
    "a/b:stream",
    "ok\x00.png",
    "line\nbreak",
    "",
    " padded ",
]


@pytest.mark.parametrize("text", ESCAPES)
def test_names_that_could_leave_the_folder_are_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(UnsafePathError):
        confine(tmp_path, text)


@pytest.mark.parametrize("text", ["a.png", "sub/dir/a.png", "sub\\dir\\a.png", "./a", "a/./b"])
def test_plain_relative_names_stay_inside(tmp_path: Path, text: str) -> None:
    path = confine(tmp_path, text)
    assert path.is_relative_to(tmp_path.resolve())


def test_backslashes_can_be_refused_outright(tmp_path: Path) -> None:
    with pytest.raises(UnsafePathError, match="backslash"):
        confine(tmp_path, "sub\\a.png", backslash_is_separator=False)


def test_a_symlink_leading_outside_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "link")
    (root / "real").mkdir()
    os.symlink(root / "real", root / "inner-link")
    with pytest.raises(UnsafePathError, match="outside"):
        confine(root, "link/file.png")
    assert confine(root, "inner-link/file.png") == (root / "real" / "file.png").resolve()


def test_messages_never_show_the_servers_folder(tmp_path: Path) -> None:
    for text in ESCAPES:
        with pytest.raises(UnsafePathError) as caught:
            confine(tmp_path, text)
        assert str(tmp_path) not in str(caught.value)


def test_folder_options_are_relative_unless_allowed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    assert folder_option("outputs/mine", data) == (data / "outputs" / "mine").resolve()
    assert folder_option(str(data / "outputs"), data) == (data / "outputs").resolve()  # inside: fine
    for text in (str(tmp_path / "elsewhere"), "../elsewhere", "C:\\x", "\\\\host\\share"):
        with pytest.raises(UnsafePathError, match="relative to the data folder|'..'|relative"):
            folder_option(text, data)
    assert folder_option(str(tmp_path / "elsewhere"), data, allow_outside=True) == tmp_path / "elsewhere"
    with pytest.raises(UnsafePathError):
        folder_option("/tmp/x\x00y", data, allow_outside=True)


@pytest.mark.parametrize("name", ["merged", "my model v2"])
def test_plain_names(name: str) -> None:
    assert plain_name(name) == name


@pytest.mark.parametrize("name", ["a/b", "a\\b", "../a", ".hidden", "C:a", "a?b", "a\x00"])
def test_not_plain_names(name: str) -> None:
    with pytest.raises(UnsafePathError):
        plain_name(name)


def test_shown_paths_are_relative_to_the_data_folder(tmp_path: Path) -> None:
    assert shown_path(tmp_path / "models" / "VAE", tmp_path) == "models/VAE"
    assert shown_path(Path("/somewhere/else/models/VAE"), tmp_path) == "VAE"

r"""The one gate between a user-supplied string and a path on disk.

Every place where text from a request, a form or config.json becomes a file or folder (output folders,
output images, merged checkpoint names, extension archives, extension folders) goes through
:func:`confine` (or :func:`relative_parts` / :func:`plain_name` for the checks alone), so no string
can name a path outside the folder it belongs to. What is refused, whatever the server's OS:

* NUL bytes and control characters, empty names;
* absolute paths (``/etc``), home paths (``~``), drive letters (``C:``, ``C:\\x``) and UNC paths
  (``\\\\host\\share``);
* ``..`` parts, with either separator (``a\\..\\..\\b`` is as refused as ``a/../../b``);
* a symlink inside the folder whose target lies outside it (the real path is checked).

Messages name the value and what is allowed, never the server's absolute folder (see
:func:`shown_path`): they are meant for remote clients.

Part of the kernel: imports nothing of sdweb.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafePathError(ValueError):
    """A user-supplied path that would lead outside its folder (or cannot be a path at all)."""


def relative_parts(text: str, *, what: str = "path", backslash_is_separator: bool = True) -> tuple[str, ...]:
    r"""The parts of ``text`` as a path relative to some folder; raise :class:`UnsafePathError` if it
    is absolute, has ``..`` parts, a drive letter, NUL/control characters or is empty.

    ``backslash_is_separator``: treat ``\\`` as a folder separator (Windows users type it); when False a
    backslash is refused outright.
    """
    if not isinstance(text, str):
        raise UnsafePathError(f"{what} must be text, got {type(text).__name__}")
    if "\x00" in text:
        raise UnsafePathError(f"{what} contains a NUL byte")
    if any(ord(char) < 32 for char in text):
        raise UnsafePathError(f"{what} {text!r} contains a control character")
    if not text.strip() or text.strip() != text:
        raise UnsafePathError(f"{what} {text!r} must be a non-empty path without surrounding spaces")
    if "\\" in text:
        if not backslash_is_separator:
            raise UnsafePathError(f"{what} {text!r} contains a backslash; use '/'")
        text = text.replace("\\", "/")
    if text.startswith(("/", "~")) or _DRIVE.match(text):
        raise UnsafePathError(f"{what} {text!r} must be relative (no leading '/', '~' or drive letter)")
    parts = tuple(part for part in PurePosixPath(text).parts if part != ".")
    if any(part == ".." for part in parts):
        raise UnsafePathError(f"{what} {text!r} must not contain '..'")
    if any(":" in part for part in parts):  # Windows alternate data streams, drive-relative paths
        raise UnsafePathError(f"{what} {text!r} must not contain ':'")
    if not parts:
        raise UnsafePathError(f"{what} {text!r} names no file or folder")
    return parts


def is_inside(path: Path, root: Path) -> bool:
    """Whether ``path``'s real location (symlinks followed) is ``root`` or inside it."""
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(path))
    return real == real_root or real_root in real.parents


def confine(root: Path, text: str, *, what: str = "path", backslash_is_separator: bool = True) -> Path:
    """The real path ``text`` names inside ``root``; :class:`UnsafePathError` when it would lead
    outside it (by its spelling, or through a symlink). The file need not exist.
    """
    parts = relative_parts(text, what=what, backslash_is_separator=backslash_is_separator)
    real_root = Path(os.path.realpath(root))
    candidate = Path(os.path.realpath(real_root.joinpath(*parts)))
    if candidate != real_root and real_root not in candidate.parents:
        raise UnsafePathError(f"{what} {text!r} leads outside its folder")
    return candidate


def plain_name(text: str, *, what: str = "name") -> str:
    """``text`` if it is a single file name (no folders, no separators, no leading dot); else raise."""
    parts = relative_parts(text, what=what, backslash_is_separator=True)
    if len(parts) != 1 or "/" in text or "\\" in text:
        raise UnsafePathError(f"{what} {text!r} must be a plain name, without folders")
    if text.startswith("."):
        raise UnsafePathError(f"{what} {text!r} must not start with '.'")
    bad = set(text) & set('<>:"|?*')
    if bad:
        raise UnsafePathError(f"{what} {text!r} must not contain {' '.join(sorted(bad))}")
    return text


def folder_option(
    text: str, data_root: Path, *, what: str = "folder", allow_outside: bool = False
) -> Path:
    """The folder an output-folder setting names: relative to ``data_root`` (and inside it), or, only
    with ``allow_outside``, an absolute path anywhere. Raises :class:`UnsafePathError`.
    """
    if isinstance(text, str) and allow_outside and "\x00" not in text:
        expanded = os.path.expanduser(text)
        if os.path.isabs(expanded) or _DRIVE.match(text) or text.startswith("\\\\"):
            return Path(expanded)
    if isinstance(text, str) and (text.startswith(("/", "~", "\\")) or _DRIVE.match(text)):
        inside = False
        if "\x00" not in text and os.path.isabs(text):
            inside = is_inside(Path(text), data_root)
        if inside:
            return Path(os.path.realpath(text))
        raise UnsafePathError(f"{what} {text!r} must be a folder relative to the data folder (such as "
                              f"'outputs/txt2img-images'); absolute paths outside it are refused")
    return confine(data_root, text, what=what)


def shown_path(path: Path | str, data_root: Path) -> str:
    """``path`` as a message to a client may show it: relative to the data folder when inside it,
    else only its last part (never the server's absolute layout).
    """
    path = Path(path)
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(data_root)).as_posix() or "."
    except ValueError:
        pass
    try:
        return Path(os.path.realpath(path)).relative_to(os.path.realpath(data_root)).as_posix() or "."
    except ValueError:
        return path.name or "."


#: An absolute POSIX path in a message (not a URL: nothing before its first "/" may be a word or ":").
_ABS_POSIX = re.compile(r"(?<![\w.:/\\-])/[^\s/'\"<>|;,()\[\]{}]+(?:/[^\s/'\"<>|;,()\[\]{}]*)*")
#: An absolute Windows path (``C:\x\y`` or ``C:/x/y``) or a UNC path.
_ABS_WINDOWS = re.compile(r"(?<![\w])(?:[A-Za-z]:|\\\\[^\s\\/]+)[\\/][^\s'\"<>|;,()\[\]{}]*")


class PathScrubber:
    """Rewrites the server's absolute paths in a message meant for a client.

    Paths inside the data folder become relative to it (``models/VAE``); the folders named in
    ``folders`` (say ``--vae-dir``) become their label; any other absolute path becomes its last part.
    Server logs keep the full text: use this only on what is sent.
    """

    def __init__(self, data_root: Path, folders: dict[Path, str] | None = None) -> None:
        prefixes: dict[str, str] = {}
        for folder, label in {**(folders or {}), Path(data_root): ""}.items():
            for form in {os.path.abspath(folder), os.path.realpath(folder)}:
                prefixes[form.rstrip("/\\")] = label
        self._prefixes = sorted(prefixes.items(), key=lambda item: len(item[0]), reverse=True)

    def __call__(self, text: str) -> str:
        if not text:
            return text
        for prefix, label in self._prefixes:
            if not prefix or prefix not in text:
                continue
            text = re.sub(re.escape(prefix) + r"(?P<rest>[\\/][^\s'\"<>|;,()\[\]{}]*)?",
                          lambda match, label=label: _relabel(label, match.group("rest")), text)
        text = _ABS_POSIX.sub(_last_part_posix, text)
        return _ABS_WINDOWS.sub(lambda match: _last_part(match.group(0)), text)


def _relabel(label: str, rest: str | None) -> str:
    rest = (rest or "").replace("\\", "/").lstrip("/")
    if not label:
        return rest or "the data folder"
    return f"{label}/{rest}" if rest else label


def _last_part(path: str) -> str:
    parts = [part for part in re.split(r"[\\/]", path) if part]
    return parts[-1] if parts else path


def _last_part_posix(match: re.Match[str]) -> str:
    path = match.group(0)
    first = path.split("/")[1]
    # Only real filesystem paths: "/sdapi/v1/options" in "use POST /sdapi/v1/options" stays.
    if not first or not os.path.exists("/" + first):
        return path
    return _last_part(path)


_client_scrubber: PathScrubber | None = None


def set_client_scrubber(scrubber: PathScrubber | None) -> None:
    """The scrubber :func:`for_client` uses (set once by the app for the UI's messages)."""
    global _client_scrubber
    _client_scrubber = scrubber


def for_client(text: str) -> str:
    """``text`` without the server's absolute paths (see :class:`PathScrubber`)."""
    scrubber = _client_scrubber or PathScrubber(Path(os.getcwd()))
    return scrubber(text)

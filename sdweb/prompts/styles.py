"""Prompt styles: the A1111 ``styles.csv`` file and how a style changes a prompt.

A style is a named pair of texts (prompt, negative prompt). Applying it either fills the ``{prompt}``
placeholder with the user's prompt or appends the style text after ", ". The file is the one A1111
reads and writes (columns ``name,prompt,negative_prompt``, UTF-8 with a byte-order mark, CSV quoting),
so a user can copy theirs over and back. :class:`StyleStore` owns that file: it re-reads it when it
changes on disk and rewrites it atomically, keeping other styles and any extra columns.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["PromptStyle", "StyleFileError", "StyleStore", "UnknownStyleError", "merge_style_text"]

PROMPT_PLACEHOLDER = "{prompt}"
_COLUMNS = ("name", "prompt", "negative_prompt")
# A1111 writes UTF-8 with a byte-order mark; reading with utf-8-sig accepts files with and without one.
_ENCODING = "utf-8-sig"


class UnknownStyleError(ValueError):
    """A style name that is not in styles.csv; the message lists the ones that are."""


class StyleFileError(ValueError):
    """styles.csv exists but cannot be used (no ``name`` column, unreadable)."""


@dataclass(frozen=True)
class PromptStyle:
    """One row of styles.csv.

    Attributes:
        name: What the user picks in the UI or sends in the API's ``styles`` list.
        prompt: Text merged into the prompt (may contain ``{prompt}``).
        negative_prompt: Text merged into the negative prompt (may contain ``{prompt}``).
        extra: Columns other than the three above, kept so that rewriting the file loses nothing.
    """

    name: str
    prompt: str = ""
    negative_prompt: str = ""
    extra: tuple[tuple[str, str], ...] = field(default=(), compare=False)


def merge_style_text(style_text: str, prompt: str) -> str:
    """Merge one style text into a prompt, as A1111 does.

    With ``{prompt}`` in the style text, every placeholder is replaced by the prompt as it is. Without,
    the style text is appended after ", " (both sides stripped; an empty side adds no comma).
    """
    if PROMPT_PLACEHOLDER in style_text:
        return style_text.replace(PROMPT_PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def _extract_style_text(style_text: str, prompt: str) -> tuple[bool, str]:
    """Undo :func:`merge_style_text` when ``prompt`` looks like its result; (matched, original prompt)."""
    stripped_prompt = prompt.strip()
    stripped_style = style_text.strip()
    if PROMPT_PLACEHOLDER in stripped_style:
        left, _, right = stripped_style.partition(PROMPT_PLACEHOLDER)
        if (
            len(stripped_prompt) >= len(left) + len(right)
            and stripped_prompt.startswith(left)
            and stripped_prompt.endswith(right)
        ):
            return True, stripped_prompt[len(left) : len(stripped_prompt) - len(right)]
        return False, prompt
    if stripped_prompt.endswith(stripped_style):
        original = stripped_prompt[: len(stripped_prompt) - len(stripped_style)]
        if original.endswith(", "):
            original = original[:-2]
        return True, original
    return False, prompt


@dataclass(frozen=True)
class _Snapshot:
    """The parsed file and the stat that says whether it is still current."""

    stamp: tuple[int, int] | None
    styles: dict[str, PromptStyle]
    extra_columns: tuple[str, ...]


class StyleStore:
    """The styles in one ``styles.csv``.

    Reads are cheap: the file is parsed again only when its size or modification time changes, so
    edits made in a text editor (or by A1111 on the same file) show up. Writes hold a lock, re-read the
    file, change one style and replace the file atomically (a temporary file then ``os.replace``), after
    copying the previous version to ``styles.csv.bak`` as A1111 does. A missing file is an empty store;
    the first :meth:`save` creates it.
    """

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None

    @property
    def path(self) -> Path:
        return self._path

    # 1. Reading ------------------------------------------------------------------------------------

    def list(self) -> list[PromptStyle]:
        """All styles, in file order."""
        return list(self._current().styles.values())

    def names(self) -> list[str]:
        """All style names, in file order (what the UI dropdown shows)."""
        return list(self._current().styles)

    def get(self, name: str) -> PromptStyle:
        """The style called ``name``.

        Raises:
            UnknownStyleError: No such style; the message lists the known names.
        """
        styles = self._current().styles
        if name not in styles:
            raise self._unknown([name], styles)
        return styles[name]

    def apply(self, prompt: str, negative_prompt: str, names: Sequence[str]) -> tuple[str, str]:
        """Apply styles in the given order to a prompt and a negative prompt; returns both.

        Raises:
            UnknownStyleError: Any name is not a style (nothing is applied then).
        """
        if not names:
            return prompt, negative_prompt
        styles = self._current().styles
        missing = [name for name in names if name not in styles]
        if missing:
            raise self._unknown(missing, styles)
        for name in names:
            style = styles[name]
            prompt = merge_style_text(style.prompt, prompt)
            negative_prompt = merge_style_text(style.negative_prompt, negative_prompt)
        return prompt, negative_prompt

    def extract(
        self, prompt: str, negative_prompt: str, names: Iterable[str] | None = None
    ) -> tuple[list[str], str, str]:
        """Find styles that were applied to a prompt pair and take them out again (A1111's "extract").

        Tries ``names`` (default: every style) repeatedly until none matches both texts. Returns the
        styles found, in the order they would be applied, and the prompts without them.

        Raises:
            UnknownStyleError: A name in ``names`` is not a style.
        """
        styles = self._current().styles
        if names is None:
            candidates = list(styles.values())
        else:
            wanted = list(names)
            missing = [name for name in wanted if name not in styles]
            if missing:
                raise self._unknown(missing, styles)
            candidates = [styles[name] for name in wanted]
        found: list[str] = []
        while True:
            for style in candidates:
                if not style.prompt and not style.negative_prompt:
                    continue
                matched, new_prompt = _extract_style_text(style.prompt, prompt)
                if not matched:
                    continue
                matched, new_negative = _extract_style_text(style.negative_prompt, negative_prompt)
                if not matched:
                    continue
                prompt, negative_prompt = new_prompt, new_negative
                candidates.remove(style)
                found.append(style.name)
                break
            else:
                break
        found.reverse()
        return found, prompt, negative_prompt

    # 2. Writing ------------------------------------------------------------------------------------

    def save(self, style: PromptStyle) -> None:
        """Add a style, or replace the one with the same name (keeping its place and extra columns).

        Raises:
            ValueError: The name is empty or starts with "#" (A1111 reads such rows as comments).
        """
        name = style.name
        if not name.strip():
            raise ValueError("a style needs a name")
        if name.startswith("#"):
            raise ValueError(f"style name {name!r} starts with '#': styles.csv treats such rows as comments")
        with self._lock:
            snapshot = self._read()
            styles = dict(snapshot.styles)
            previous = styles.get(name)
            if not style.extra and previous is not None:
                style = PromptStyle(name, style.prompt, style.negative_prompt, previous.extra)
            styles[name] = style
            self._write(styles, snapshot.extra_columns)
        logger.info("saved style %r to %s", name, self._path)

    def delete(self, name: str) -> None:
        """Remove a style.

        Raises:
            UnknownStyleError: No such style.
        """
        with self._lock:
            snapshot = self._read()
            if name not in snapshot.styles:
                raise self._unknown([name], snapshot.styles)
            styles = {key: value for key, value in snapshot.styles.items() if key != name}
            self._write(styles, snapshot.extra_columns)
        logger.info("deleted style %r from %s", name, self._path)

    # 3. The file -----------------------------------------------------------------------------------

    def _current(self) -> _Snapshot:
        with self._lock:
            return self._read()

    def _stamp(self) -> tuple[int, int] | None:
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def _read(self) -> _Snapshot:
        """Parse the file unless the cached parse is still current. Caller holds the lock."""
        stamp = self._stamp()
        if self._snapshot is not None and self._snapshot.stamp == stamp:
            return self._snapshot
        if stamp is None:
            snapshot = _Snapshot(None, {}, ())
        else:
            try:
                # newline="": line breaks inside quoted fields are data and must stay as written.
                with self._path.open(encoding=_ENCODING, newline="") as file:
                    text = file.read()
            except (OSError, UnicodeDecodeError) as exc:
                raise StyleFileError(f"cannot read styles file {self._path}: {exc}") from exc
            snapshot = self._parse(text, stamp)
        self._snapshot = snapshot
        return snapshot

    def _parse(self, text: str, stamp: tuple[int, int]) -> _Snapshot:
        reader = csv.DictReader(io.StringIO(text, newline=""), skipinitialspace=True)
        header = [column for column in (reader.fieldnames or []) if column is not None]
        if not header:
            return _Snapshot(stamp, {}, ())
        if "name" not in header:
            raise StyleFileError(
                f"styles file {self._path} has no 'name' column (header: {', '.join(header)}); "
                "the first line should be: name,prompt,negative_prompt"
            )
        # A1111's first format had "name, text"; "text" then is the prompt.
        prompt_column = "prompt" if "prompt" in header else "text" if "text" in header else None
        known = {"name", "negative_prompt", *([prompt_column] if prompt_column else [])}
        extra_columns = tuple(column for column in header if column not in known)
        styles: dict[str, PromptStyle] = {}
        for row in reader:
            name = row.get("name") or ""
            if not name.strip() or name.startswith("#"):
                continue
            styles[name] = PromptStyle(
                name=name,
                prompt=(row.get(prompt_column) or "") if prompt_column else "",
                negative_prompt=row.get("negative_prompt") or "",
                extra=tuple((column, row.get(column) or "") for column in extra_columns),
            )
        return _Snapshot(stamp, styles, extra_columns)

    def _write(self, styles: dict[str, PromptStyle], extra_columns: tuple[str, ...]) -> None:
        """Write every style to a temporary file next to the real one, then swap. Caller holds the lock."""
        columns = list(_COLUMNS)
        for style in styles.values():
            for column, _ in style.extra:
                if column not in columns:
                    columns.append(column)
        for column in extra_columns:
            if column not in columns:
                columns.append(column)

        buffer = io.StringIO(newline="")
        # The csv module's default dialect is what A1111 writes: "\r\n" line ends, minimal quoting.
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        for style in styles.values():
            row = {"name": style.name, "prompt": style.prompt, "negative_prompt": style.negative_prompt}
            row.update({column: value for column, value in style.extra if column not in _COLUMNS})
            writer.writerow(row)

        self._path.parent.mkdir(parents=True, exist_ok=True)
        mode = 0o644
        if self._path.exists():
            mode = self._path.stat().st_mode & 0o777
            shutil.copy2(self._path, self._path.with_name(self._path.name + ".bak"))
        handle, temporary = tempfile.mkstemp(prefix=f".{self._path.name}.", dir=self._path.parent)
        try:
            # mkstemp makes the file private (0600); keep the mode the user's file had.
            os.chmod(temporary, mode)
            with os.fdopen(handle, "w", encoding=_ENCODING, newline="") as file:
                file.write(buffer.getvalue())
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self._path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        self._snapshot = None

    def _unknown(self, missing: Sequence[str], styles: dict[str, PromptStyle]) -> UnknownStyleError:
        known = ", ".join(repr(name) for name in styles) or f"none (no styles in {self._path})"
        label = "style" if len(missing) == 1 else "styles"
        return UnknownStyleError(
            f"unknown {label} {', '.join(repr(name) for name in missing)}; known: {known}"
        )

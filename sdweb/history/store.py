"""Prompt history: every generation request, its seeds, model and outputs, in one SQLite file.

This module owns ``history.db`` (under the data folder):

* :class:`HistoryEntry` is one generation: the full :class:`GenerationParams` (stored as JSON), the
  concrete seeds, the model, the time, the output paths and infotexts, and a small PNG thumbnail
  kept in the database itself, so the history still shows the picture after its file is deleted.
* :class:`HistoryStore` adds, gets, deletes and searches entries, newest first. Search is SQLite FTS5
  full-text search over prompt and negative prompt; any user text is turned into a safe FTS query
  (punctuation and quotes never raise). Where the SQLite build lacks FTS5 it searches with LIKE.
* The schema carries a version number and a list of migrations, so an older file is upgraded in place
  and a file written by a newer sdweb is refused instead of being damaged.

Only the standard library's ``sqlite3`` and Pillow (for :func:`make_thumbnail`).
"""

from __future__ import annotations

import io
import json
import logging
import re
import sqlite3
import struct
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any

from PIL import Image
from pydantic import ValidationError

from sdweb.params import GenerationParams

logger = logging.getLogger(__name__)

#: Largest side of a stored thumbnail, in pixels.
THUMBNAIL_MAX_SIDE = 128
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: The schema, one step per version. Never edit a step that has shipped; add the next one.
_MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE entries (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            created_at TEXT NOT NULL,
            prompt TEXT NOT NULL,
            negative_prompt TEXT NOT NULL,
            params_json TEXT NOT NULL,
            seeds_json TEXT NOT NULL,
            subseeds_json TEXT NOT NULL,
            model_title TEXT,
            model_hash TEXT,
            output_paths_json TEXT NOT NULL,
            infotexts_json TEXT NOT NULL,
            thumbnail BLOB,
            extra_json TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX entries_newest ON entries (created_at DESC, id DESC);
        """,
    ),
)
SCHEMA_VERSION = _MIGRATIONS[-1][0]

# The full-text index is kept apart from the versioned schema: a database made where FTS5 was missing
# gets its index (rebuilt from the table) the first time it is opened where FTS5 exists.
_FTS_TABLE_SQL = """
CREATE VIRTUAL TABLE IF NOT EXISTS entries_fts USING fts5(
    prompt, negative_prompt, content='entries', content_rowid='id', tokenize='unicode61'
)
"""
_FTS_TRIGGERS_SQL = """
CREATE TRIGGER entries_fts_insert AFTER INSERT ON entries BEGIN
    INSERT INTO entries_fts (rowid, prompt, negative_prompt)
    VALUES (new.id, new.prompt, new.negative_prompt);
END;
CREATE TRIGGER entries_fts_delete AFTER DELETE ON entries BEGIN
    INSERT INTO entries_fts (entries_fts, rowid, prompt, negative_prompt)
    VALUES ('delete', old.id, old.prompt, old.negative_prompt);
END;
CREATE TRIGGER entries_fts_update AFTER UPDATE OF prompt, negative_prompt ON entries BEGIN
    INSERT INTO entries_fts (entries_fts, rowid, prompt, negative_prompt)
    VALUES ('delete', old.id, old.prompt, old.negative_prompt);
    INSERT INTO entries_fts (rowid, prompt, negative_prompt)
    VALUES (new.id, new.prompt, new.negative_prompt);
END;
"""
_FTS_TRIGGERS = ("entries_fts_insert", "entries_fts_delete", "entries_fts_update")

_ENTRY_COLUMNS = (
    "id, created_at, params_json, seeds_json, subseeds_json, model_title, model_hash, "
    "output_paths_json, infotexts_json, thumbnail, extra_json, prompt, negative_prompt"
)


class HistoryDatabaseError(RuntimeError):
    """The history file cannot be used (written by a newer sdweb, or not a history database)."""


def make_thumbnail(image: Image.Image, max_side: int = THUMBNAIL_MAX_SIDE) -> bytes:
    """PNG bytes of ``image`` shrunk to fit ``max_side`` (aspect kept), for :attr:`HistoryEntry.thumbnail`."""
    if not 1 <= max_side <= THUMBNAIL_MAX_SIDE:
        raise ValueError(f"thumbnail side must be 1-{THUMBNAIL_MAX_SIDE} pixels (got {max_side})")
    thumb = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    thumb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    thumb.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _check_thumbnail(data: bytes | None) -> None:
    if data is None:
        return
    if not data.startswith(_PNG_SIGNATURE) or len(data) < 24 or data[12:16] != b"IHDR":
        raise ValueError("history thumbnail must be PNG bytes (use make_thumbnail(image))")
    width, height = struct.unpack(">II", data[16:24])
    if max(width, height) > THUMBNAIL_MAX_SIDE:
        raise ValueError(
            f"history thumbnail is {width}x{height}; at most {THUMBNAIL_MAX_SIDE} pixels a side "
            "(use make_thumbnail(image))"
        )


@dataclass(frozen=True)
class HistoryEntry:
    """One generation as the history keeps it. ``id`` is None until :meth:`HistoryStore.add`.

    Attributes:
        params: the request, with its concrete seed.
        seeds: the seed of each image, in output order.
        subseeds: the variation seed of each image.
        model_title: checkpoint title (``name.safetensors [shorthash]``).
        model_hash: its short hash.
        created_at: when it was made (UTC).
        output_paths: where the images were saved (they may have been deleted since).
        infotexts: the infotext of each image.
        thumbnail: PNG bytes, at most 128 px a side (:func:`make_thumbnail`).
        extra: further JSON-able facts (``{"interrupted": True, "grid_path": ...}``).
    """

    params: GenerationParams
    seeds: tuple[int, ...] = ()
    subseeds: tuple[int, ...] = ()
    model_title: str | None = None
    model_hash: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    output_paths: tuple[str, ...] = ()
    infotexts: tuple[str, ...] = ()
    thumbnail: bytes | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    id: int | None = None

    def __post_init__(self) -> None:
        # Accept lists from callers; keep the value object immutable.
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "subseeds", tuple(int(s) for s in self.subseeds))
        object.__setattr__(self, "output_paths", tuple(str(p) for p in self.output_paths))
        object.__setattr__(self, "infotexts", tuple(str(t) for t in self.infotexts))
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))
        if self.created_at.tzinfo is None:
            raise ValueError(
                "HistoryEntry.created_at must be timezone-aware (use datetime.now(timezone.utc))"
            )

    @property
    def prompt(self) -> str:
        return self.params.prompt

    @property
    def negative_prompt(self) -> str:
        return self.params.negative_prompt

    def existing_paths(self) -> list[str]:
        """The output paths whose files are still there."""
        return [path for path in self.output_paths if Path(path).is_file()]


def fts_query(text: str) -> str | None:
    """A safe FTS5 query for what a person typed, or None when it holds nothing to search for.

    Each whitespace-separated word becomes a quoted phrase of its letters and digits, matched as a
    prefix (``masterp`` finds ``masterpiece``; ``(masterpiece:1.2`` finds that sequence); text in double
    quotes is matched as an exact phrase. All parts must match. FTS5 syntax typed by the user
    (``AND``, ``NEAR(``, ``*``, ``:``, unbalanced quotes) is never interpreted.
    """
    parts: list[str] = []
    for quoted, bare in re.findall(r'"([^"]*)"?|(\S+)', text):
        words = re.findall(r"\w+", quoted or bare)
        if not words:
            continue
        phrase = '"' + " ".join(words) + '"'
        parts.append(phrase if quoted else phrase + "*")
    return " AND ".join(parts) if parts else None


def _like_terms(text: str) -> list[str]:
    terms = []
    for quoted, bare in re.findall(r'"([^"]*)"?|(\S+)', text):
        term = (quoted or bare).strip()
        if term:
            escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            terms.append(f"%{escaped}%")
    return terms


class HistoryStore:
    """The prompt history in SQLite (WAL). Safe to share between threads: one connection, one lock.

    Args:
        db_path: the database file (created with its folder when missing).
        use_fts: True to require FTS5, False to search with LIKE, None to use FTS5 when SQLite has it.
    """

    def __init__(self, db_path: Path, *, use_fts: bool | None = None) -> None:
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        # One connection shared under a lock: SQLite calls are short, and this keeps writers in order
        # without "database is locked" retries between our own threads.
        self._conn = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        try:
            self._conn.execute("PRAGMA busy_timeout = 5000")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
            self.fts_enabled = self._setup_fts(use_fts)
        except sqlite3.DatabaseError as error:
            self._conn.close()
            raise HistoryDatabaseError(f"{self.db_path} is not a usable history database: {error}") from None
        except BaseException:
            self._conn.close()
            raise

    # -- lifecycle ----------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- schema -------------------------------------------------------------------------------------

    def _migrate(self) -> None:
        with self._lock:
            self._conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = self._conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            current = row[0] or 0
            if current > SCHEMA_VERSION:
                raise HistoryDatabaseError(
                    f"{self.db_path} was written by a newer sdweb (history schema {current}, this version "
                    f"knows up to {SCHEMA_VERSION}); update sdweb or move the file away"
                )
            for version, script in _MIGRATIONS:
                if version <= current:
                    continue
                logger.info("upgrading history database %s to schema %d", self.db_path, version)
                self._run_script(f"{script}\nINSERT INTO schema_version (version) VALUES ({version});")

    def _run_script(self, script: str) -> None:
        """Run several statements as one transaction: all of them or none."""
        try:
            self._conn.executescript(f"BEGIN;\n{script}\nCOMMIT;")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    def _fts_available(self) -> bool:
        try:
            self._conn.execute("CREATE VIRTUAL TABLE temp.fts5_probe USING fts5(x)")
        except sqlite3.OperationalError:
            return False
        self._conn.execute("DROP TABLE temp.fts5_probe")
        return True

    def _setup_fts(self, use_fts: bool | None) -> bool:
        with self._lock:
            available = self._fts_available()
            if use_fts and not available:
                raise HistoryDatabaseError(
                    "this SQLite build has no FTS5; history search needs use_fts=False"
                )
            triggers = {
                row[0]
                for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
            }
            wanted = available if use_fts is None else use_fts
            if not wanted:
                # Triggers that feed an index we do not keep (or cannot: no FTS5 here) would make every
                # insert fail; drop them. The index is rebuilt when FTS comes back.
                for name in _FTS_TRIGGERS:
                    if name in triggers:
                        self._conn.execute(f"DROP TRIGGER {name}")
                if not available:
                    logger.info("SQLite has no FTS5: history search uses LIKE")
                return False
            if not set(_FTS_TRIGGERS) <= triggers:
                self._run_script(
                    _FTS_TABLE_SQL
                    + ";\n"
                    + "".join(f"DROP TRIGGER IF EXISTS {name};\n" for name in _FTS_TRIGGERS)
                    + _FTS_TRIGGERS_SQL
                    + "\nINSERT INTO entries_fts (entries_fts) VALUES ('rebuild');"
                )
            return True

    # -- writing ------------------------------------------------------------------------------------

    def add(self, entry: HistoryEntry) -> int:
        """Store ``entry`` and return its id."""
        _check_thumbnail(entry.thumbnail)
        values = (entry.created_at.astimezone(timezone.utc).isoformat(timespec="microseconds"),
                  *_content_values(entry))
        with self._lock:
            cursor = self._conn.execute(
                "INSERT INTO entries (created_at, prompt, negative_prompt, params_json, seeds_json, "
                "subseeds_json, model_title, model_hash, output_paths_json, infotexts_json, thumbnail, "
                "extra_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
            entry_id = cursor.lastrowid
        assert entry_id is not None
        logger.debug("history entry %d added", entry_id)
        return entry_id

    def update(self, entry_id: int, entry: HistoryEntry) -> bool:
        """Replace what entry ``entry_id`` holds with ``entry`` (its time of creation stays).

        A job's row is added with its first saved batch and updated as each later batch is saved, so
        a crash mid-job leaves a row listing every image saved before it. False when there is no such entry.
        """
        _check_thumbnail(entry.thumbnail)
        values = (*_content_values(entry), entry_id)
        with self._lock:
            cursor = self._conn.execute(
                "UPDATE entries SET prompt = ?, negative_prompt = ?, params_json = ?, seeds_json = ?, "
                "subseeds_json = ?, model_title = ?, model_hash = ?, output_paths_json = ?, "
                "infotexts_json = ?, thumbnail = ?, extra_json = ? WHERE id = ?",
                values,
            )
        return cursor.rowcount > 0

    def delete(self, entry_id: int) -> bool:
        """Remove one entry (its image files are left alone). False when there was no such entry."""
        with self._lock:
            cursor = self._conn.execute("DELETE FROM entries WHERE id = ?", (entry_id,))
        return cursor.rowcount > 0

    # -- reading ------------------------------------------------------------------------------------

    def get(self, entry_id: int) -> HistoryEntry | None:
        """The entry with this id, or None."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE id = ?", (entry_id,)
            ).fetchone()
        return None if row is None else self._entry_from_row(row)

    def _where(self, query: str) -> tuple[str, list[Any]]:
        if self.fts_enabled:
            match = fts_query(query)
            if match is None:
                return "", []
            return "WHERE id IN (SELECT rowid FROM entries_fts WHERE entries_fts MATCH ?)", [match]
        terms = _like_terms(query)
        if not terms:
            return "", []
        clause = " AND ".join(
            "(prompt LIKE ? ESCAPE '\\' OR negative_prompt LIKE ? ESCAPE '\\')" for _ in terms
        )
        return f"WHERE {clause}", [value for term in terms for value in (term, term)]

    def search(self, query: str = "", *, offset: int = 0, limit: int = 50) -> list[HistoryEntry]:
        """Entries whose prompt or negative prompt match ``query`` (all when empty), newest first."""
        if offset < 0 or limit < 0:
            raise ValueError(f"offset and limit must not be negative (got {offset}, {limit})")
        where, args = self._where(query)
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM entries {where} "
                "ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
        return [self._entry_from_row(row) for row in rows]

    def count(self, query: str = "") -> int:
        """How many entries :meth:`search` would page through for ``query``."""
        where, args = self._where(query)
        with self._lock:
            row = self._conn.execute(f"SELECT COUNT(*) FROM entries {where}", args).fetchone()
        return int(row[0])

    # -- rows -> entries ----------------------------------------------------------------------------

    def _entry_from_row(self, row: sqlite3.Row) -> HistoryEntry:
        return HistoryEntry(
            id=int(row["id"]),
            params=_params_from_json(row["params_json"], row["prompt"], row["negative_prompt"]),
            seeds=_json_list(row["seeds_json"]),
            subseeds=_json_list(row["subseeds_json"]),
            model_title=row["model_title"],
            model_hash=row["model_hash"],
            created_at=_parse_time(row["created_at"]),
            output_paths=_json_list(row["output_paths_json"]),
            infotexts=_json_list(row["infotexts_json"]),
            thumbnail=row["thumbnail"],
            extra=json.loads(row["extra_json"] or "{}"),
        )


def _json_list(text: str | None) -> Sequence[Any]:
    value = json.loads(text or "[]")
    return value if isinstance(value, list) else []


def _parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _params_from_json(text: str, prompt: str, negative_prompt: str) -> GenerationParams:
    """The stored request; fields a later sdweb no longer accepts are dropped (logged), never guessed."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        logger.warning("history entry has unreadable parameters; keeping only its prompts")
        return GenerationParams(prompt=prompt, negative_prompt=negative_prompt)
    try:
        return GenerationParams.model_validate(data)
    except ValidationError as error:
        refused = _refused_fields(error.errors())
        logger.warning("history entry: dropping parameters this version refuses: %s", ", ".join(refused))
    kept = {key: value for key, value in data.items() if key not in refused}
    try:
        return GenerationParams.model_validate(kept)
    except ValidationError:
        return GenerationParams(prompt=prompt, negative_prompt=negative_prompt)


def _refused_fields(errors: Iterable[Mapping[str, Any]]) -> list[str]:
    return sorted({str(item["loc"][0]) for item in errors if item.get("loc")})


def _content_values(entry: HistoryEntry) -> tuple[Any, ...]:
    """An entry's stored columns after ``created_at``, in the table's order (add and update share them)."""
    return (
        entry.params.prompt,
        entry.params.negative_prompt,
        entry.params.model_dump_json(),
        json.dumps(list(entry.seeds)),
        json.dumps(list(entry.subseeds)),
        entry.model_title,
        entry.model_hash,
        json.dumps(list(entry.output_paths), ensure_ascii=False),
        json.dumps(list(entry.infotexts), ensure_ascii=False),
        entry.thumbnail,
        json.dumps(dict(entry.extra), ensure_ascii=False, default=str),  # a Path or datetime: as text
    )

"""A1111-compatible model hashes and the on-disk cache that makes each file hashed only once.

Owns the hash formats other tools read back from infotext (see shared/reference/a1111-infotext.md):

* checkpoint hash: sha256 of the whole file; the "Model hash" written in infotext is its first 10 hex
  characters (:func:`short_hash`);
* legacy hash (infotexts before 2023): sha256 of the 64 KiB starting at offset 1 MiB, first 8 hex.
  Like A1111, a file shorter than that hashes whatever bytes lie in the window, so any file below 1 MiB
  gets the hash of no bytes at all (``e3b0c442``);
* LoRA hash ("Lora hashes"): first 12 hex of sha256 over the bytes after the safetensors header, so
  editing a file's metadata does not change it.

:class:`HashCache` keeps computed hashes in ``<cache_dir>/hashes.json`` (or a named ``.json`` file)
keyed by absolute path and checked against size and modification time: a replaced or edited file is
hashed again. Pure python, no torch: listing checkpoints must stay cheap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024
LEGACY_OFFSET = 0x100000
LEGACY_LENGTH = 0x10000
SHORT_HASH_LENGTH = 10
LEGACY_HASH_LENGTH = 8
LORA_HASH_LENGTH = 12
CACHE_FILE_NAME = "hashes.json"
_CACHE_VERSION = 1

HashKind = Literal["sha256", "legacy", "data_sha256"]
#: Called with (bytes hashed so far, total bytes) while a file is hashed.
ProgressCallback = Callable[[int, int], None]


def _hash_stream(path: Path, start: int = 0, on_progress: ProgressCallback | None = None) -> str:
    digest = hashlib.sha256()
    total = max(path.stat().st_size - start, 0)
    done = 0
    with path.open("rb") as handle:
        handle.seek(start)
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
            done += len(chunk)
            if on_progress is not None:
                on_progress(done, total)
    return digest.hexdigest()


def file_sha256(path: Path, on_progress: ProgressCallback | None = None) -> str:
    """sha256 (64 hex) of the whole file, read in 1 MiB chunks so memory stays flat for any size."""
    return _hash_stream(path, 0, on_progress)


def short_hash(sha256: str) -> str:
    """A1111's "Model hash": the first 10 hex characters of the full sha256."""
    return sha256[:SHORT_HASH_LENGTH]


def legacy_hash(path: Path) -> str:
    """A1111's pre-2023 hash: sha256 of the 64 KiB at offset 1 MiB, first 8 hex characters."""
    with path.open("rb") as handle:
        handle.seek(LEGACY_OFFSET)
        window = handle.read(LEGACY_LENGTH)
    return hashlib.sha256(window).hexdigest()[:LEGACY_HASH_LENGTH]


def safetensors_data_offset(path: Path) -> int:
    """Where tensor data starts in a safetensors file: after the 8-byte length and the JSON header."""
    with path.open("rb") as handle:
        prefix = handle.read(8)
    if len(prefix) != 8:
        raise ValueError(f"{path} is too short to be a safetensors file ({len(prefix)} bytes)")
    header_length = int.from_bytes(prefix, "little")
    if 8 + header_length > path.stat().st_size:
        raise ValueError(f"{path}: safetensors header claims {header_length} bytes, more than the file holds")
    return 8 + header_length


def safetensors_data_sha256(path: Path, on_progress: ProgressCallback | None = None) -> str:
    """sha256 over the tensor bytes of a safetensors file (everything after its header)."""
    return _hash_stream(path, safetensors_data_offset(path), on_progress)


def lora_hash(path: Path) -> str:
    """The hash A1111 writes in "Lora hashes": first 12 hex of :func:`safetensors_data_sha256`."""
    return safetensors_data_sha256(path)[:LORA_HASH_LENGTH]


@dataclass(frozen=True)
class _FileStamp:
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> _FileStamp:
        stat = path.stat()
        return cls(size=stat.st_size, mtime_ns=stat.st_mtime_ns)

    def matches(self, entry: dict[str, object]) -> bool:
        return entry.get("size") == self.size and entry.get("mtime_ns") == self.mtime_ns


class HashCache:
    """Hashes remembered in ``<cache_dir>/hashes.json`` by absolute path, size and mtime.

    Thread-safe: one lock guards the table and the file; hashing itself runs outside that lock, under a
    per-file lock, so two threads asking for the same file hash it once while other files proceed.
    Every new hash is written at once (temp file + rename), so an interrupted ``hash_all`` keeps
    what it finished and the file is never left half-written. An unreadable cache file is set aside
    (``hashes.json.bad``) and the cache starts empty: hashes are always recomputable.
    """

    def __init__(self, location: Path) -> None:
        """``location``: the cache folder (the file is ``hashes.json`` in it), or a ``.json`` file path."""
        location = Path(location)
        self._path = location if location.suffix.lower() == ".json" else location / CACHE_FILE_NAME
        self._lock = threading.RLock()
        self._file_locks: dict[str, threading.Lock] = {}
        self._entries: dict[str, dict[str, object]] = self._load()
        self._dirty = False

    @property
    def path(self) -> Path:
        return self._path

    # -- reading --------------------------------------------------------------------------------
    def get(self, path: Path, kind: HashKind = "sha256") -> str | None:
        """The cached hash if the file is unchanged since it was computed, else None. Never hashes."""
        key = self._key(path)
        try:
            stamp = _FileStamp.of(path)
        except OSError:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or not stamp.matches(entry):
                return None
            value = entry.get(kind)
        return value if isinstance(value, str) else None

    # -- computing ------------------------------------------------------------------------------
    def sha256(self, path: Path, on_progress: ProgressCallback | None = None) -> str:
        """Full-file sha256, from the cache or computed (streaming) and stored."""
        return self._get_or_compute(path, "sha256", lambda: file_sha256(path, on_progress))

    def legacy_hash(self, path: Path) -> str:
        """A1111's legacy 8-hex hash, from the cache or computed (reads 64 KiB) and stored."""
        return self._get_or_compute(path, "legacy", lambda: legacy_hash(path))

    def data_sha256(self, path: Path, on_progress: ProgressCallback | None = None) -> str:
        """sha256 of a safetensors file's tensor bytes (the LoRA hash is its first 12 hex)."""
        return self._get_or_compute(path, "data_sha256", lambda: safetensors_data_sha256(path, on_progress))

    def lora_hash(self, path: Path) -> str:
        """The 12-hex "Lora hashes" value of a safetensors LoRA, from the cache or computed and stored."""
        return self.data_sha256(path)[:LORA_HASH_LENGTH]

    # -- other facts about a file version (the registry keeps detection results here) -----------------
    def get_fact(self, path: Path, name: str) -> object | None:
        """A JSON value stored with :meth:`put_fact` for the current version of ``path``, else None."""
        try:
            stamp = _FileStamp.of(path)
        except OSError:
            return None
        with self._lock:
            entry = self._entries.get(self._key(path))
            if entry is None or not stamp.matches(entry):
                return None
            facts = entry.get("facts")
            return facts.get(name) if isinstance(facts, dict) else None

    def put_fact(self, path: Path, name: str, value: object, *, save: bool = True) -> None:
        """Remember a JSON value for this version of ``path``; dropped with its hashes when it changes.

        ``save=False`` defers writing the file to :meth:`flush` (one write after scanning many files).
        """
        stamp = _FileStamp.of(path)
        key = self._key(path)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or not stamp.matches(entry):
                entry = {"size": stamp.size, "mtime_ns": stamp.mtime_ns}
                self._entries[key] = entry
            facts = entry.setdefault("facts", {})
            if isinstance(facts, dict):
                facts[name] = value
            self._dirty = True
            if save:
                self._save()

    def flush(self) -> None:
        """Write changes deferred by ``put_fact(..., save=False)``."""
        with self._lock:
            if self._dirty:
                self._save()

    def forget(self, path: Path) -> None:
        """Drop every cached hash of ``path`` (say, after the file was deleted)."""
        with self._lock:
            if self._entries.pop(self._key(path), None) is not None:
                self._save()

    def _get_or_compute(self, path: Path, kind: HashKind, compute: Callable[[], str]) -> str:
        cached = self.get(path, kind)
        if cached is not None:
            return cached
        key = self._key(path)
        with self._lock:
            file_lock = self._file_locks.setdefault(key, threading.Lock())
        with file_lock:
            # Another thread may have finished the same file while this one waited.
            cached = self.get(path, kind)
            if cached is not None:
                return cached
            before = _FileStamp.of(path)
            if kind == "sha256" and before.size > 64 * CHUNK_SIZE:
                logger.info("hashing %s (%.1f GB), once", path, before.size / 1e9)
            value = compute()
            after = _FileStamp.of(path)
            if after != before:
                # The file changed while it was read: the hash matches neither version, so keep none.
                logger.warning("%s changed while it was hashed; not caching the result", path)
                return value
            with self._lock:
                entry = self._entries.get(key)
                if entry is None or not after.matches(entry):
                    entry = {"size": after.size, "mtime_ns": after.mtime_ns}
                    self._entries[key] = entry
                entry[kind] = value
                self._save()
        return value

    # -- persistence ----------------------------------------------------------------------------
    @staticmethod
    def _key(path: Path) -> str:
        return str(Path(os.path.abspath(path)))

    def _load(self) -> dict[str, dict[str, object]]:
        try:
            raw = self._path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            logger.warning("could not read hash cache %s (%s); hashes will be recomputed", self._path, exc)
            return {}
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("version") != _CACHE_VERSION:
                raise ValueError("unexpected layout")
            entries = data["entries"]
            if not isinstance(entries, dict):
                raise ValueError("entries is not an object")
            return {key: value for key, value in entries.items() if isinstance(value, dict)}
        except (ValueError, KeyError) as exc:
            backup = self._path.with_name(self._path.name + ".bad")
            logger.warning("hash cache %s is unreadable (%s); moved to %s, hashes will be recomputed",
                           self._path, exc, backup)
            try:
                self._path.replace(backup)
            except OSError:
                pass
            return {}

    def _save(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"version": _CACHE_VERSION, "entries": self._entries}
        fd, tmp = tempfile.mkstemp(prefix=".hashes-", suffix=".json", dir=self._path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(payload, handle, indent=1, sort_keys=True)
            os.replace(tmp, self._path)
            self._dirty = False
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

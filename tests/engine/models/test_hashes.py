"""Checkpoint hashes match A1111's (checked against hashlib) and are computed once per file version."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from pathlib import Path

import pytest

from sdweb.engine.models import hashes
from sdweb.engine.models.hashes import HashCache


def write_bytes(path: Path, size: int, seed: int = 0) -> bytes:
    data = (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]
    # Make every 64 KiB region distinct so a hash of the wrong window cannot match by accident.
    data = bytearray(data)
    for offset in range(0, size, 0x10000):
        data[offset : offset + 4] = struct.pack("<I", offset // 0x10000)
    path.write_bytes(bytes(data))
    return bytes(data)


def test_file_sha256_matches_hashlib_across_chunks(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    data = write_bytes(path, 3 * hashes.CHUNK_SIZE + 12345)

    full = hashes.file_sha256(path)

    assert full == hashlib.sha256(data).hexdigest()
    assert hashes.short_hash(full) == full[:10]


def test_legacy_hash_reads_64k_at_one_mebibyte(tmp_path: Path) -> None:
    path = tmp_path / "old.ckpt"
    data = write_bytes(path, 0x100000 + 0x10000 + 5000)

    assert hashes.legacy_hash(path) == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert hashes.legacy_hash(path) != hashlib.sha256(data[:0x10000]).hexdigest()[:8]


def test_legacy_hash_of_short_files_follows_a1111(tmp_path: Path) -> None:
    tiny = tmp_path / "tiny.safetensors"
    write_bytes(tiny, 1000)
    partial = tmp_path / "partial.safetensors"
    data = write_bytes(partial, 0x100000 + 100)

    # A1111 seeks past the end and hashes the (empty) read: every file < 1 MiB shares this hash.
    assert hashes.legacy_hash(tiny) == "e3b0c442"
    assert hashes.legacy_hash(partial) == hashlib.sha256(data[0x100000:]).hexdigest()[:8]


def write_safetensors_bytes(path: Path, header: dict, payload: bytes) -> None:
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + payload)


def test_lora_hash_ignores_header_and_metadata(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 16
    tensors = {"w": {"dtype": "U8", "shape": [len(payload)], "data_offsets": [0, len(payload)]}}
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    write_safetensors_bytes(first, {**tensors, "__metadata__": {"ss_name": "one"}}, payload)
    write_safetensors_bytes(second, {**tensors, "__metadata__": {"ss_name": "other name"}}, payload)

    assert hashes.lora_hash(first) == hashlib.sha256(payload).hexdigest()[:12]
    assert HashCache(tmp_path / "cache").lora_hash(first) == hashes.lora_hash(first)
    assert hashes.lora_hash(first) == hashes.lora_hash(second)
    assert hashes.file_sha256(first) != hashes.file_sha256(second)


def test_lora_hash_rejects_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b"{}")

    with pytest.raises(ValueError, match="broken.safetensors"):
        hashes.lora_hash(path)


def test_cache_hashes_once_and_persists_across_instances(tmp_path: Path, monkeypatch) -> None:
    model = tmp_path / "models" / "m.safetensors"
    model.parent.mkdir()
    data = write_bytes(model, 200_000)
    cache_dir = tmp_path / "cache"

    first = HashCache(cache_dir)
    assert first.get(model) is None
    assert first.sha256(model) == hashlib.sha256(data).hexdigest()

    calls: list[Path] = []
    monkeypatch.setattr(hashes, "file_sha256", lambda path, on_progress=None: calls.append(path) or "x")
    second = HashCache(cache_dir)

    assert second.get(model) == hashlib.sha256(data).hexdigest()
    assert second.sha256(model) == hashlib.sha256(data).hexdigest()
    assert calls == []
    assert (cache_dir / "hashes.json").exists()


def test_cache_rehashes_a_changed_file(tmp_path: Path) -> None:
    model = tmp_path / "m.safetensors"
    write_bytes(model, 100_000, seed=1)
    cache = HashCache(tmp_path / "cache")
    old = cache.sha256(model)

    new_data = write_bytes(model, 100_000, seed=2)  # same size, new content
    stat = model.stat()
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

    assert cache.get(model) is None
    assert cache.sha256(model) == hashlib.sha256(new_data).hexdigest() != old
    assert HashCache(tmp_path / "cache").get(model) == hashlib.sha256(new_data).hexdigest()


def test_cache_detects_size_change_even_with_same_mtime(tmp_path: Path) -> None:
    model = tmp_path / "m.safetensors"
    write_bytes(model, 50_000)
    cache = HashCache(tmp_path / "cache")
    cache.sha256(model)
    mtime_ns = model.stat().st_mtime_ns

    data = write_bytes(model, 60_000)
    os.utime(model, ns=(mtime_ns, mtime_ns))

    assert cache.get(model) is None
    assert cache.sha256(model) == hashlib.sha256(data).hexdigest()


def test_cache_keeps_each_hash_kind(tmp_path: Path) -> None:
    model = tmp_path / "m.safetensors"
    payload = b"\x01" * 5000
    header = {"w": {"dtype": "U8", "shape": [5000], "data_offsets": [0, 5000]}}
    write_safetensors_bytes(model, header, payload)
    cache = HashCache(tmp_path / "cache")

    cache.sha256(model)
    cache.legacy_hash(model)
    cache.data_sha256(model)
    reread = HashCache(tmp_path / "cache")

    assert reread.get(model, "sha256") == hashlib.sha256(model.read_bytes()).hexdigest()
    assert reread.get(model, "legacy") == "e3b0c442"
    assert reread.get(model, "data_sha256") == hashlib.sha256(payload).hexdigest()


def test_corrupt_cache_file_is_set_aside(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / "hashes.json").write_text("{not json", encoding="utf-8")
    model = tmp_path / "m.safetensors"
    data = write_bytes(model, 1000)

    cache = HashCache(cache_dir)

    assert cache.sha256(model) == hashlib.sha256(data).hexdigest()
    assert (cache_dir / "hashes.json.bad").read_text(encoding="utf-8") == "{not json"
    assert json.loads((cache_dir / "hashes.json").read_text(encoding="utf-8"))["version"] == 1


def test_concurrent_requests_hash_a_file_once(tmp_path: Path, monkeypatch) -> None:
    model = tmp_path / "m.safetensors"
    data = write_bytes(model, 300_000)
    cache = HashCache(tmp_path / "cache")
    real = hashes.file_sha256
    calls: list[Path] = []
    started = threading.Event()

    def slow_hash(path: Path, on_progress=None) -> str:
        calls.append(path)
        started.set()
        threading.Event().wait(0.2)
        return real(path, on_progress)

    monkeypatch.setattr(hashes, "file_sha256", slow_hash)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(cache.sha256(model))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert results == [hashlib.sha256(data).hexdigest()] * 4
    assert len(calls) == 1


def test_missing_file_has_no_cached_hash(tmp_path: Path) -> None:
    cache = HashCache(tmp_path / "cache")

    assert cache.get(tmp_path / "gone.safetensors") is None
    with pytest.raises(FileNotFoundError):
        cache.sha256(tmp_path / "gone.safetensors")


def test_facts_are_kept_per_file_version(tmp_path: Path) -> None:
    model = tmp_path / "m.safetensors"
    write_bytes(model, 2000, seed=1)
    cache = HashCache(tmp_path / "cache")

    cache.put_fact(model, "detection", {"family": "sd1"}, save=False)
    assert HashCache(tmp_path / "cache").get_fact(model, "detection") is None  # not written yet
    cache.flush()
    assert HashCache(tmp_path / "cache").get_fact(model, "detection") == {"family": "sd1"}

    write_bytes(model, 3000, seed=2)
    assert cache.get_fact(model, "detection") is None


def test_cache_location_may_be_a_folder_or_a_json_file(tmp_path: Path) -> None:
    model = tmp_path / "m.safetensors"
    data = write_bytes(model, 1000)

    HashCache(tmp_path / "cache-dir").sha256(model)
    HashCache(tmp_path / "elsewhere" / "model-hashes.json").sha256(model)

    assert (tmp_path / "cache-dir" / "hashes.json").is_file()
    assert (tmp_path / "elsewhere" / "model-hashes.json").is_file()
    reread = HashCache(tmp_path / "elsewhere" / "model-hashes.json")
    assert reread.get(model) == hashlib.sha256(data).hexdigest()

"""The safetensors header parser and the streaming, casting tensor reader."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sdweb.engine.models.errors import CheckpointReadError
from sdweb.engine.models.safetensors_io import (
    iter_safetensors_tensors,
    read_safetensors_header,
    read_safetensors_tensors,
)


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "sample.safetensors"
    tensors = {
        "a.weight": torch.randn(3, 4),
        "b.bias": torch.randn(5).to(torch.float16),
        "c.ids": torch.arange(7, dtype=torch.int64),
        "d.bf16": torch.randn(2, 2).to(torch.bfloat16),
        "e.scalar": torch.tensor(1.5),
    }
    save_file(tensors, str(path), metadata={"format": "pt", "ss_note": "hello"})
    return path


def test_header_lists_every_key_with_dtype_shape_and_metadata(sample: Path) -> None:
    header = read_safetensors_header(sample)

    assert header.shapes() == {
        "a.weight": (3, 4),
        "b.bias": (5,),
        "c.ids": (7,),
        "d.bf16": (2, 2),
        "e.scalar": (),
    }
    assert header.entries["b.bias"].dtype == "F16"
    assert header.entries["d.bf16"].dtype == "BF16"
    assert header.metadata == {"format": "pt", "ss_note": "hello"}
    assert header.tensor_bytes == 3 * 4 * 4 + 5 * 2 + 7 * 8 + 2 * 2 * 2 + 4


def test_streamed_tensors_equal_the_safetensors_library(sample: Path) -> None:
    expected = load_file(str(sample))

    got = read_safetensors_tensors(sample)

    assert set(got) == set(expected)
    for key, tensor in expected.items():
        assert got[key].dtype == tensor.dtype
        assert torch.equal(got[key], tensor)


def test_reader_casts_floats_to_the_target_and_leaves_integers(sample: Path) -> None:
    expected = load_file(str(sample))

    got = dict(iter_safetensors_tensors(sample, dtype_for=lambda key: torch.float32))

    assert got["b.bias"].dtype == torch.float32
    assert torch.equal(got["b.bias"], expected["b.bias"].float())
    assert got["d.bf16"].dtype == torch.float32
    assert got["c.ids"].dtype == torch.int64


def test_reader_skips_excluded_keys(sample: Path) -> None:
    got = read_safetensors_tensors(sample, include=lambda key: key.startswith(("a.", "c.")))

    assert sorted(got) == ["a.weight", "c.ids"]


def test_streamed_tensors_own_their_memory(sample: Path) -> None:
    # Each tensor must be its own allocation: no view into a buffer/mmap that would keep the file resident.
    got = read_safetensors_tensors(sample)

    pointers = {t.untyped_storage().data_ptr() for t in got.values()}
    assert len(pointers) == len(got)
    for tensor in got.values():
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()


def test_truncated_file_is_reported_as_truncated(sample: Path, tmp_path: Path) -> None:
    data = sample.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-20])

    with pytest.raises(CheckpointReadError, match=r"cut\.safetensors: truncated.*incomplete download"):
        read_safetensors_header(cut)


def test_file_cut_inside_the_header_is_reported_as_truncated(sample: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(sample.read_bytes()[:40])

    with pytest.raises(CheckpointReadError, match="truncated"):
        read_safetensors_header(cut)


@pytest.mark.parametrize(
    "content",
    [b"", b"abc", os.urandom(4096), struct.pack("<Q", 11) + b"not json!!!", struct.pack("<Q", 2) + b"[]"],
    ids=["empty", "short", "random", "not-json", "json-list"],
)
def test_garbage_is_not_a_safetensors_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(content)

    with pytest.raises(CheckpointReadError, match=r"garbage\.safetensors: .*not a safetensors file"):
        read_safetensors_header(path)


def test_header_with_inconsistent_sizes_is_refused(tmp_path: Path) -> None:
    header = json.dumps({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)

    with pytest.raises(CheckpointReadError, match=r"'x' claims 8 bytes"):
        read_safetensors_header(path)


def test_header_reading_does_not_import_torch(sample: Path) -> None:
    # The registry lists folders with this module; importing torch there would cost seconds per start.
    code = (
        "import sys; from sdweb.engine.models.safetensors_io import read_safetensors_header; "
        "import sdweb.engine.models.detect; "
        f"read_safetensors_header(__import__('pathlib').Path({str(sample)!r})); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

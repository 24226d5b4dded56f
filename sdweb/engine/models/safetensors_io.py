"""Reading ``.safetensors`` files: the header (cheap, pure Python) and the tensors (streamed, one at a time).

The header is 8 bytes of little-endian length followed by that many bytes of JSON: ``{key: {"dtype",
"shape", "data_offsets"}, "__metadata__": {...}}``. Listing and detection need only that, so
:func:`read_safetensors_header` never imports torch.

:func:`iter_safetensors_tensors` reads tensors with plain ``readinto`` calls (not ``mmap``: a mapped
file's pages would be counted in the process's resident memory next to the converted copies) and casts
each to its target dtype before reading the next one. That is what keeps a load's peak memory close to
the size of the loaded model instead of file size + model size.
"""

from __future__ import annotations

import json
import logging
import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sdweb.engine.models.errors import CheckpointReadError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: Bytes per element of each safetensors dtype name.
DTYPE_SIZES: dict[str, int] = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
}
#: A real header is a few hundred KiB; anything above this is not a safetensors file.
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives in the file: ``start``/``end`` are absolute file offsets."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class SafetensorsHeader:
    """The parsed header of one file."""

    path: Path
    entries: dict[str, TensorEntry]
    metadata: dict[str, str] = field(default_factory=dict)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {key: entry.shape for key, entry in self.entries.items()}

    @property
    def tensor_bytes(self) -> int:
        return sum(entry.nbytes for entry in self.entries.values())


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """Parse and validate the header of ``path``.

    Raises:
        CheckpointReadError: the file is too short, truncated, or not a safetensors file at all.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _not_safetensors(path, f"{size} bytes, too short for a header")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES or header_len < 2:
                raise _not_safetensors(
                    path,
                    f"its first 8 bytes give an impossible header length {header_len}; "
                    "is it a pickle .ckpt renamed to .safetensors?",
                )
            if 8 + header_len > size:
                raise CheckpointReadError(
                    f"{path.name}: truncated: the header needs {header_len} bytes but the file has "
                    f"{size - 8} after the length (an incomplete download?)"
                )
            raw = f.read(header_len)
    except OSError as exc:
        raise CheckpointReadError(f"{path.name}: cannot be read: {exc}") from exc
    try:
        parsed = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _not_safetensors(path, f"its header is not JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise _not_safetensors(path, "its header is not a JSON object")
    return _parse_entries(path, parsed, data_start=8 + header_len, file_size=size)


def _not_safetensors(path: Path, why: str) -> CheckpointReadError:
    # The wording matches the pickle refusal: to a user both mean "this file will not be loaded".
    return CheckpointReadError(f"{path.name}: unsafe or invalid checkpoint: not a safetensors file ({why})")


def _parse_entries(
    path: Path, parsed: dict[str, object], *, data_start: int, file_size: int
) -> SafetensorsHeader:
    metadata_raw = parsed.pop("__metadata__", None) or {}
    metadata = {str(k): str(v) for k, v in metadata_raw.items()} if isinstance(metadata_raw, dict) else {}
    entries: dict[str, TensorEntry] = {}
    data_end = data_start
    for key, info in parsed.items():
        try:
            dtype = str(info["dtype"])  # type: ignore[index]
            shape = tuple(int(d) for d in info["shape"])  # type: ignore[index]
            begin, end = (int(o) for o in info["data_offsets"])  # type: ignore[index]
        except (TypeError, KeyError, ValueError) as exc:
            raise CheckpointReadError(f"{path.name}: malformed safetensors header entry for {key!r}") from exc
        if dtype not in DTYPE_SIZES:
            raise CheckpointReadError(f"{path.name}: tensor {key!r} has unknown dtype {dtype!r}")
        expected = math.prod(shape) * DTYPE_SIZES[dtype]
        if end - begin != expected or begin < 0:
            raise CheckpointReadError(
                f"{path.name}: tensor {key!r} claims {end - begin} bytes but shape {list(shape)} "
                f"of {dtype} needs {expected}"
            )
        entries[key] = TensorEntry(dtype=dtype, shape=shape, start=data_start + begin, end=data_start + end)
        data_end = max(data_end, data_start + end)
    if data_end > file_size:
        raise CheckpointReadError(
            f"{path.name}: truncated: the header describes {data_end - data_start} bytes of tensor data but "
            f"the file holds {file_size - data_start} (an incomplete download? re-download it)"
        )
    return SafetensorsHeader(path=path, entries=entries, metadata=metadata)


def _torch_dtype(name: str) -> torch.dtype:
    import torch

    table = {
        "F64": torch.float64,
        "F32": torch.float32,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "I64": torch.int64,
        "I32": torch.int32,
        "I16": torch.int16,
        "I8": torch.int8,
        "U8": torch.uint8,
        "BOOL": torch.bool,
    }
    for fp8 in ("F8_E4M3", "F8_E5M2"):
        attr = {"F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}[fp8]
        if hasattr(torch, attr):
            table[fp8] = getattr(torch, attr)
    if name not in table:
        raise CheckpointReadError(f"tensors of dtype {name} cannot be loaded by this torch")
    return table[name]


def iter_safetensors_tensors(
    path: Path,
    *,
    header: SafetensorsHeader | None = None,
    include: Callable[[str], bool] | None = None,
    dtype_for: Callable[[str], torch.dtype | None] | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(key, tensor)`` in file order, each read into its own CPU tensor and cast as it goes.

    Args:
        path: the ``.safetensors`` file.
        header: its header, if already read.
        include: keys for which it returns False are skipped without being read (EMA copies, extras).
        dtype_for: the dtype a floating-point tensor is cast to (None: keep the file's dtype). Integer and
            bool tensors are never cast.
    """
    import torch

    header = header or read_safetensors_header(path)
    ordered = sorted(header.entries.items(), key=lambda item: item[1].start)
    with Path(path).open("rb", buffering=0) as f:
        for key, entry in ordered:
            if include is not None and not include(key):
                continue
            source_dtype = _torch_dtype(entry.dtype)
            tensor = torch.empty(entry.shape, dtype=source_dtype)
            if entry.nbytes:
                f.seek(entry.start)
                _read_exactly(f, tensor.view(-1).view(torch.uint8).numpy(), path, key)
            target = dtype_for(key) if dtype_for is not None else None
            if target is not None and tensor.is_floating_point() and target != tensor.dtype:
                tensor = tensor.to(target)
            yield key, tensor


def _read_exactly(f: object, buffer: object, path: Path, key: str) -> None:
    view = memoryview(buffer).cast("B")  # type: ignore[arg-type]
    filled = 0
    while filled < len(view):
        n = f.readinto(view[filled:])  # type: ignore[attr-defined]
        if not n:
            raise CheckpointReadError(f"{Path(path).name}: truncated while reading tensor {key!r}")
        filled += n


def read_safetensors_tensors(
    path: Path,
    *,
    header: SafetensorsHeader | None = None,
    include: Callable[[str], bool] | None = None,
    dtype_for: Callable[[str], torch.dtype | None] | None = None,
) -> dict[str, torch.Tensor]:
    """All (included) tensors of ``path`` as a dict, read by :func:`iter_safetensors_tensors`."""
    return dict(iter_safetensors_tensors(path, header=header, include=include, dtype_for=dtype_for))


def safetensors_dtype(tensor: torch.Tensor) -> str:
    """The safetensors dtype name of ``tensor`` ("F16", "F32", "I64" ...)."""
    import torch

    names = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
             torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
             torch.bool: "BOOL"}
    if tensor.dtype not in names:
        raise CheckpointReadError(f"tensors of dtype {tensor.dtype} cannot be written to safetensors here")
    return names[tensor.dtype]


def write_safetensors(
    path: Path,
    layout: list[tuple[str, str, tuple[int, ...]]],
    tensors: Iterator[tuple[str, torch.Tensor]],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a ``.safetensors`` file one tensor at a time: memory holds one tensor, never the whole model.

    ``layout`` lists ``(key, dtype name, shape)`` in the order ``tensors`` yields them (the header is
    written first, so it must be known up front); a tensor that does not match its entry is an error.
    The file is written under a hidden temporary name beside ``path`` and renamed when complete, so a
    crash or an error never leaves a half-written checkpoint where the model list looks.
    """
    import os

    header: dict[str, object] = {}
    offset = 0
    for key, dtype, shape in layout:
        size = math.prod(shape) * DTYPE_SIZES[dtype]
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as the format's writer does
    path = Path(path)
    temp = path.with_name(f".{path.name}.partial")
    try:
        with temp.open("wb") as f:
            f.write(struct.pack("<Q", len(encoded)))
            f.write(encoded)
            expected = iter(layout)
            for key, tensor in tensors:
                want_key, want_dtype, want_shape = next(expected)
                got = (key, safetensors_dtype(tensor), tuple(tensor.shape))
                if got != (want_key, want_dtype, tuple(want_shape)):
                    raise CheckpointReadError(f"{path.name}: tensor {got} does not match the header entry "
                                              f"{(want_key, want_dtype, tuple(want_shape))}")
                flat = tensor.detach().contiguous().reshape(-1)
                if flat.numel():
                    f.write(memoryview(flat.view(torch_uint8()).numpy()))
            if next(expected, None) is not None:
                raise CheckpointReadError(f"{path.name}: fewer tensors were written than the header lists")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def torch_uint8() -> torch.dtype:
    import torch

    return torch.uint8

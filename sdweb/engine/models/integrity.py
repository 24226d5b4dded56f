"""Is this model file whole? A cheap check made when a checkpoint is chosen, before the engine loads it.

An interrupted download, a file still being copied, or a web page saved under a model's name would
otherwise fail deep inside loading (or, for a cut pickle, half-load). What is read, never the weights:

* ``.safetensors``: the header; its tensors must fit in the file (the header reader's checks);
* ``.ckpt`` / ``.pt`` (PyTorch): a zip archive's central directory (it sits at the end, so a cut file
  has none), or a legacy pickle's protocol byte;
* ``.gguf``: the magic bytes;
* diffusers folders: nothing here (each part is checked when loaded).

Torch-free. Raises :class:`CheckpointReadError` (a ValueError) whose message starts with the file name
and says what to do.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from sdweb.engine.models.errors import CheckpointReadError

_PICKLE_PROTOCOLS = range(2, 6)


def check_model_file(path: Path, kind: str) -> None:
    """Raise :class:`CheckpointReadError` when ``path`` (of ``kind``) is cut, corrupt or not a model."""
    path = Path(path)
    if kind == "diffusers":
        return
    if kind == "safetensors":
        from sdweb.engine.models.safetensors_io import read_safetensors_header

        read_safetensors_header(path)
        return
    try:
        with path.open("rb") as handle:
            start = handle.read(8)
    except OSError as exc:
        raise CheckpointReadError(f"{path.name}: cannot be read: {exc.strerror or exc}") from exc
    if kind == "gguf":
        if start[:4] != b"GGUF":
            raise CheckpointReadError(f"{path.name}: not a GGUF file (it starts with {_shown(start)}); "
                                      "download it again")
        return
    # PyTorch: a zip archive (torch.save since 1.6) or a legacy pickle.
    if start[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as archive:
                archive.infolist()
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise CheckpointReadError(
                f"{path.name}: truncated or corrupt PyTorch checkpoint ({exc}); an incomplete download? "
                "download it again") from exc
        return
    if len(start) >= 2 and start[0] == 0x80 and start[1] in _PICKLE_PROTOCOLS:
        return
    raise CheckpointReadError(f"{path.name}: not a PyTorch checkpoint (it starts with {_shown(start)}); "
                              "a web page or text saved under a model's name? download it again")


def _shown(start: bytes) -> str:
    if not start:
        return "nothing: the file is empty"
    text = start.decode("ascii", "replace")
    if text.isprintable():
        return repr(text)
    return start.hex(" ")

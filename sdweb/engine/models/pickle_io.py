"""Pickle checkpoints (``.ckpt`` / ``.pt`` / ``.pth``) read with torch's weights-only unpickler: no code in
the file ever runs; a file that asks for more than tensors and plain containers is refused, naming what it
asked for. Beside :mod:`~sdweb.engine.models.safetensors_io` and :mod:`~sdweb.engine.models.gguf_io`.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch

from sdweb.engine.models.errors import UnsafeCheckpointError, UnsupportedCheckpointError


def torch_load_weights_only(path: Path) -> dict[str, torch.Tensor]:
    """Read a ``.ckpt``/``.pt`` with the weights-only unpickler and return its flat tensor dict.

    Raises:
        UnsafeCheckpointError: the pickle needs anything beyond tensors and plain containers (it could run
            code), or is not a torch file at all.
    """
    path = Path(path)
    # Zip-format files can be memory-mapped, so the pickle's tensors are not all copied up front.
    is_zip = zipfile.is_zipfile(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        ModuleNotFoundError,
        ImportError,
        KeyError,
        IndexError,
        OSError,
        zipfile.BadZipFile,
    ) as exc:
        # The unpickler's message names the global it refused: worth showing, in one line.
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
        if refused:
            first_line = f"it asks to run or import {refused.group(1)}"
        elif found:
            first_line = found.group(1)
        else:
            first_line = next((line for line in text.splitlines() if line.strip()), type(exc).__name__)
        raise UnsafeCheckpointError(
            f"{path.name}: unsafe or invalid checkpoint: it cannot be read as plain weights "
            f"({first_line[:200]}). Prefer a .safetensors version of this model."
        ) from exc
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not state:
        raise UnsupportedCheckpointError(f"{path.name}: the file holds no state dict of tensors")
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise UnsupportedCheckpointError(f"{path.name}: the file holds no tensors")
    return tensors

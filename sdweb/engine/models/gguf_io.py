"""Reading ``.gguf`` transformer files (city96's Flux/SD 3.5 conversions): names and shapes, no torch.

GGUF is an optional extra (``pip install 'sdweb[gguf]'``, the pure-Python ``gguf`` package): listing a
``.gguf`` file without it reports what to install instead of failing. The reader memory-maps the file
and only the tensor table is read here. GGUF stores dimensions innermost first; :func:`read_gguf_shapes`
gives them in torch's order, the logical (dequantized) shape whatever the quantization.
The tensors themselves are loaded by diffusers' GGUF support in :mod:`sdweb.engine.models.flow_loader`.
"""

from __future__ import annotations

import importlib.util
import logging
from collections import Counter
from pathlib import Path

from sdweb.engine.models.errors import CheckpointReadError, UnsupportedCheckpointError

logger = logging.getLogger(__name__)

GGUF_EXTRA_HINT = "GGUF files need the optional gguf package: pip install 'sdweb[gguf]' (or pip install gguf)"


def gguf_available() -> bool:
    return importlib.util.find_spec("gguf") is not None


def _reader(path: Path) -> object:
    if not gguf_available():
        raise UnsupportedCheckpointError(f"{path.name}: {GGUF_EXTRA_HINT}")
    from gguf import GGUFReader

    try:
        return GGUFReader(str(path))
    except (ValueError, OSError, KeyError, IndexError) as exc:
        raise CheckpointReadError(f"{path.name}: not a readable GGUF file ({exc})") from exc


def read_gguf_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's name and logical shape (torch order)."""
    reader = _reader(Path(path))
    return {str(t.name): tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors}  # type: ignore[attr-defined]


def gguf_quantization(path: Path) -> str:
    """The most common quantization type of the file's weights ("Q4_K", "Q8_0", "F16"...), for logs."""
    reader = _reader(Path(path))
    counts = Counter(t.tensor_type.name for t in reader.tensors if len(t.shape) > 1)  # type: ignore[attr-defined]
    return counts.most_common(1)[0][0] if counts else "?"

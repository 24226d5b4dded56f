"""Reading ``.gguf`` transformer files (city96's Flux/SD 3.5 conversions).

GGUF is an optional extra (``pip install 'sdweb[gguf]'``, the pure-Python ``gguf`` package): listing a
``.gguf`` file without it reports what to install instead of failing. The ``gguf`` reader memory-maps the
file; listing (:func:`read_gguf_shapes`, no torch) reads only the tensor table. GGUF stores dimensions
innermost first; :func:`read_gguf_shapes` gives them in torch's order, the logical (dequantized) shape
whatever the quantization.

:func:`read_gguf_state` reads the tensors for diffusers' GGUF support (``GGUFParameter``, dequantized per
layer at run time in :mod:`sdweb.engine.models.flow_loader`). It takes only the offsets from the mapped
table and reads each tensor with ``readinto`` into its own buffer: copying out of the mapping (as
diffusers' ``load_gguf_checkpoint`` does) leaves every touched page of the file resident next to the
copy, twice the transformer at the load's peak. Quantized tensors stay quantized; F32/F16 ones (norms,
biases) are cast to the compute dtype one by one as they are read.
"""

from __future__ import annotations

import importlib.util
import logging
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from sdweb.engine.models.errors import CheckpointReadError, UnsupportedCheckpointError

if TYPE_CHECKING:
    import torch

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


def read_gguf_state(
    path: Path, *, prefix: str = "", plain_dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix`` (which is cut off their names), read one at a time.

    Quantized tensors come back as diffusers' ``GGUFParameter`` (bytes in the file's block layout, the
    quantization type attached); unquantized F32/F16 ones as plain tensors cast to ``plain_dtype``.
    A quantization diffusers cannot dequantize is refused before anything is read.
    """
    import numpy as np
    import torch
    from diffusers.quantizers.gguf.utils import SUPPORTED_GGUF_QUANT_TYPES, GGUFParameter
    from gguf import GGMLQuantizationType

    from sdweb.engine.models.safetensors_io import _read_exactly

    path = Path(path)
    reader = _reader(path)
    plain = (GGMLQuantizationType.F32, GGMLQuantizationType.F16)
    wanted = [t for t in reader.tensors if str(t.name).startswith(prefix)]  # type: ignore[attr-defined]
    known = {q.name for q in (*plain, *SUPPORTED_GGUF_QUANT_TYPES)}
    unsupported = sorted({t.tensor_type.name for t in wanted} - known)
    if unsupported:
        raise UnsupportedCheckpointError(
            f"{path.name}: the quantization type(s) {', '.join(unsupported)} cannot be dequantized by the "
            f"installed diffusers (it knows {', '.join(q.name for q in SUPPORTED_GGUF_QUANT_TYPES)})"
        )
    swapped = getattr(reader, "byte_order", "I") != "I"
    state: dict[str, torch.Tensor] = {}
    with path.open("rb", buffering=0) as f:
        for item in wanted:
            name = str(item.name)[len(prefix) :]
            layout = item.data  # a view of the mapping: its shape and dtype only, no page is touched
            if swapped:  # a big-endian file: let numpy swap it (rare; costs the mapped pages)
                array = np.ascontiguousarray(layout.byteswap().view(layout.dtype.newbyteorder()))
            else:
                array = np.empty(layout.shape, dtype=layout.dtype)
                if array.nbytes:
                    f.seek(int(item.data_offset))
                    _read_exactly(f, array.reshape(-1).view(np.uint8), path, name)
            tensor = torch.from_numpy(array)
            if item.tensor_type in plain:
                if plain_dtype is not None and tensor.is_floating_point():
                    tensor = tensor.to(plain_dtype)
                state[name] = tensor
            else:
                state[name] = GGUFParameter(tensor, quant_type=item.tensor_type)
    del reader
    return state

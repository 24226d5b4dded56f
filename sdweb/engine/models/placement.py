"""Where a loaded pipeline lives on a CUDA machine: all on the GPU, or offloaded because it does not fit.

Policy, decided per model right after it is loaded (and logged with the reason):

* ``--medvram`` / ``--lowvram`` (``runtime.offload`` "model" / "sequential") force that offload.
* Otherwise, on CUDA, the pipeline's weights (their real stored bytes: fp8 and GGUF count as what they are)
  plus a working margin (activations, the VAE decode) are compared with the GPU's free memory:
  it fits -> everything on the GPU; only its largest component fits -> "model" offload (diffusers'
  ``enable_model_cpu_offload``: each component moves to the GPU while it runs); not even that ->
  "sequential" offload (weights streamed layer by layer, slowest, smallest).
* On CPU and MPS nothing is offloaded (there is no separate GPU memory to save).

Pure arithmetic over numbers the caller measures (:func:`choose_offload`), so it is tested without a GPU;
:func:`fit_runtime` measures them (``torch.cuda.mem_get_info``) and returns the runtime to apply.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import torch

logger = logging.getLogger(__name__)

#: Memory kept free beside the weights for activations, attention and the VAE decode at 1024 px.
WORKING_MARGIN_BYTES = 3 * 1024**3
#: The margin is at least this share of the weights (large models have large activations).
WORKING_MARGIN_SHARE = 0.15


@dataclass(frozen=True)
class Placement:
    offload: str  # "none", "model" or "sequential"
    reason: str


def component_bytes(pipe: Any) -> dict[str, int]:
    """Bytes held by each ``torch.nn.Module`` component of ``pipe`` (each storage once)."""
    sizes: dict[str, int] = {}
    for name, module in (getattr(pipe, "components", {}) or {}).items():
        if not isinstance(module, torch.nn.Module):
            continue
        seen: set[int] = set()
        total = 0
        for tensor in (*module.parameters(), *module.buffers()):
            if tensor.device.type == "meta":
                continue
            storage = tensor.untyped_storage()
            if storage.data_ptr() in seen:
                continue
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        sizes[name] = total
    return sizes


def _margin(total: int) -> int:
    return max(WORKING_MARGIN_BYTES, int(total * WORKING_MARGIN_SHARE))


def _gib(value: int) -> str:
    return f"{value / 1024**3:.1f} GiB"


def choose_offload(
    sizes: dict[str, int], *, free: int | None, forced: str = "none", device_type: str = "cuda"
) -> Placement:
    """The offload for a pipeline with component ``sizes`` (bytes) on a GPU with ``free`` bytes free."""
    if forced != "none":
        flag = "--medvram" if forced == "model" else "--lowvram"
        return Placement(forced, f"{forced} offload forced by {flag}")
    if device_type != "cuda" or free is None:
        return Placement("none", f"no offload on {device_type}")
    total = sum(sizes.values())
    largest_name, largest = max(sizes.items(), key=lambda item: item[1], default=("", 0))
    if total + _margin(total) <= free:
        return Placement("none", f"the model ({_gib(total)}) fits the {_gib(free)} of free GPU memory")
    if largest + _margin(largest) <= free:
        return Placement(
            "model",
            f"the model ({_gib(total)}) does not fit the {_gib(free)} of free GPU "
            f"memory, its largest part ({largest_name}, {_gib(largest)}) does: "
            "model offload (each component on the GPU while it runs)",
        )
    return Placement(
        "sequential",
        f"not even its largest part ({largest_name}, {_gib(largest)}) fits the "
        f"{_gib(free)} of free GPU memory: sequential offload (layer by layer)",
    )


def fit_runtime(pipe: Any, runtime: Any, name: str) -> Any:
    """``runtime`` with the offload :func:`choose_offload` picks for ``pipe`` (logged with the reason)."""
    device = torch.device(runtime.device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return runtime  # no separate GPU memory to fit (CPU, MPS): the runtime's own offload applies
    free, _total = torch.cuda.mem_get_info(device)
    placement = choose_offload(
        component_bytes(pipe), free=free, forced=runtime.offload, device_type=device.type
    )
    logger.info("%s: %s", name, placement.reason)
    if placement.offload == runtime.offload:
        return runtime
    return replace(
        runtime, offload=placement.offload, reasons=(*runtime.reasons, f"{name}: {placement.reason}")
    )

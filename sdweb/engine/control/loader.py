"""Build a diffusers ``ControlNetModel`` from a ControlNet file or folder, offline and safely.

1. Read the tensors: ``.safetensors`` streamed and cast as read; ``.pth``/``.ckpt`` only through the
   checkpoint loader's weights-only unpickler (a pickle that wants to run code is refused); a diffusers
   folder is its ``diffusion_pytorch_model.safetensors`` (or ``.bin``, weights-only as well).
2. Original-layout files get diffusers key names: diffusers' own ``convert_controlnet_checkpoint``
   for the UNet-copy part, our mapping for the hint encoder (any number of blocks) and SDXL's
   ``label_emb``.
3. The config comes from the shapes (:func:`sdweb.engine.control.detect.infer_controlnet_config`),
   with the checkpoint's UNet config for attention heads; the model is built on the meta device and
   adopts the tensors that were read (``assign=True``): the weights exist once.

Nothing here asks a hub.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import ControlNetModel

from sdweb.engine.control.detect import ControlDetection, detect_controlnet, infer_controlnet_config
from sdweb.engine.models.components import assign_weights
from sdweb.engine.models.errors import UnsupportedCheckpointError
from sdweb.engine.models.pickle_io import torch_load_weights_only
from sdweb.engine.models.safetensors_io import iter_safetensors_tensors, read_safetensors_header

logger = logging.getLogger(__name__)

#: Weight files of a diffusers ControlNet folder, preferred first.
FOLDER_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
)


def weights_file(path: Path) -> Path:
    """The file holding a ControlNet's weights: the file itself, or a diffusers folder's weights file."""
    if path.is_dir():
        for candidate in FOLDER_WEIGHTS:
            if (path / candidate).is_file():
                return path / candidate
        raise UnsupportedCheckpointError(f"{path.name}: a folder without {FOLDER_WEIGHTS[0]}")
    return path


def read_controlnet_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of a ControlNet file's tensors (safetensors header only; pickles are read weights-only)."""
    file = weights_file(path)
    if file.suffix.lower() == ".safetensors":
        return read_safetensors_header(file).shapes()
    return {key: tuple(value.shape) for key, value in torch_load_weights_only(file).items()}


def read_controlnet_state(path: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    file = weights_file(path)
    if file.suffix.lower() == ".safetensors":
        return dict(iter_safetensors_tensors(file, dtype_for=lambda _key: dtype))
    state = torch_load_weights_only(file)
    return {key: (value.to(dtype) if value.is_floating_point() else value) for key, value in state.items()}


def original_to_diffusers(state: Mapping[str, Any], detection: ControlDetection) -> dict[str, Any]:
    """Diffusers key names for an original-layout state dict (values are moved, never copied).

    Works on tensors and on shapes alike (the values are only renamed).
    """
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    prefix = detection.prefix
    plain = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    if "time_embed.0.weight" not in plain:
        raise UnsupportedCheckpointError("original-layout ControlNet without time_embed")
    levels_resnets = _layers_per_block(plain)
    converted = dict(convert_controlnet_checkpoint(plain, {"layers_per_block": levels_resnets}))
    # The hint encoder: convolutions at even indices: conv_in, then the blocks, then conv_out.
    converted = {
        key: value for key, value in converted.items() if not key.startswith("controlnet_cond_embedding.")
    }
    hint = sorted({int(key.split(".")[1]) for key in plain if key.startswith("input_hint_block.")})
    if len(hint) < 2:
        raise UnsupportedCheckpointError("original-layout ControlNet without its hint encoder")
    names = ["conv_in"] + [f"blocks.{i}" for i in range(len(hint) - 2)] + ["conv_out"]
    for index, target in zip(hint, names, strict=True):
        for part in ("weight", "bias"):
            source = plain[f"input_hint_block.{index}.{part}"]
            converted[f"controlnet_cond_embedding.{target}.{part}"] = source
    label_emb = (("label_emb.0.0", "add_embedding.linear_1"), ("label_emb.0.2", "add_embedding.linear_2"))
    for ldm, new in label_emb:
        for part in ("weight", "bias"):
            if f"{ldm}.{part}" in plain:
                converted[f"{new}.{part}"] = plain[f"{ldm}.{part}"]
    return {key: value for key, value in converted.items() if value is not None}


def _layers_per_block(plain: Mapping[str, Any]) -> int:
    """Resnets per level of an original-layout state: input blocks before the first downsampler."""
    index = 1
    while f"input_blocks.{index}.0.in_layers.2.weight" in plain:
        index += 1
    if index == 1:
        raise UnsupportedCheckpointError("original-layout ControlNet without input blocks")
    return index - 1


def load_controlnet(
    path: Path,
    *,
    name: str,
    dtype: torch.dtype,
    device: torch.device | str,
    unet_config: Mapping[str, Any] | None = None,
) -> tuple[ControlNetModel, ControlDetection]:
    """The ControlNet at ``path`` as an eval-mode ``ControlNetModel`` on ``device``, and its detection."""
    state = read_controlnet_state(path, dtype)
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    detection = detect_controlnet(shapes, name=name)
    if detection.layout == "original":
        state = original_to_diffusers(state, detection)
        shapes = {key: tuple(value.shape) for key, value in state.items()}
    config = infer_controlnet_config(shapes, detection.family, name=name, unet_config=unet_config)
    with init_empty_weights():
        model = ControlNetModel(**config)
    assign_weights(model, state, what="ControlNet", name=name)
    model.to(device)  # the tensors were cast as they were read
    logger.info("loaded ControlNet %s (%s, %s layout)", name, detection.family_label, detection.layout)
    return model, detection


# ---------------------------------------------------------------------------------------------------
# T2I-Adapters
# ---------------------------------------------------------------------------------------------------


def _count_keys(shapes: Mapping[str, Any], template: str) -> int:
    n = 0
    while template.format(n) in shapes:
        n += 1
    return n


def original_t2i_to_diffusers(state: Mapping[str, Any]) -> dict[str, Any]:
    """The original T2I-Adapter layout (``body.K.block1`` ...) in diffusers' key names."""
    blocks = _count_keys(state, "body.{}.block1.weight")
    starts = [k for k in range(blocks) if f"body.{k}.in_conv.weight" in state or k == 0]
    per_level = starts[1] - starts[0] if len(starts) > 1 else blocks
    out: dict[str, Any] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "conv_in":
            out[f"adapter.{key}"] = value
        elif parts[0] == "body":
            level, index = divmod(int(parts[1]), per_level)
            rest = ".".join(parts[2:])
            if rest.startswith("in_conv."):
                out[f"adapter.body.{level}.{rest}"] = value
            else:
                out[f"adapter.body.{level}.resnets.{index}.{rest}"] = value
    return out


def load_t2i_adapter(path: Path, *, name: str, dtype: torch.dtype, device: Any) -> Any:
    """A diffusers ``T2IAdapter`` with its config read from the shapes (full and XL adapters)."""
    from diffusers import T2IAdapter

    state = read_controlnet_state(path, dtype)
    if "adapter.conv_in.weight" not in state:
        state = original_t2i_to_diffusers(state)
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    if any(".out_conv." in key for key in shapes):
        raise UnsupportedCheckpointError(f"{name}: a light T2I-Adapter, which sdweb does not run yet")
    levels = _count_keys(shapes, "adapter.body.{}.resnets.0.block1.weight")
    channels = [shapes[f"adapter.body.{level}.resnets.0.block1.weight"][0] for level in range(levels)]
    in_features = shapes["adapter.conv_in.weight"][1]
    downscale = round((in_features / 3) ** 0.5)
    config = {
        "in_channels": 3,
        "channels": channels,
        "num_res_blocks": _count_keys(shapes, "adapter.body.0.resnets.{}.block1.weight"),
        "downscale_factor": downscale,
        "adapter_type": "full_adapter_xl" if downscale == 16 else "full_adapter",
    }
    with init_empty_weights():
        model = T2IAdapter(**config)
    try:
        assign_weights(model, state, what="T2I-Adapter", name=name)
    except RuntimeError as exc:  # a layout whose layers differ in size from diffusers' adapters
        raise UnsupportedCheckpointError(
            f"{name}: a T2I-Adapter layout sdweb does not run ({exc})"[:400]
        ) from exc
    model.to(device)
    return model

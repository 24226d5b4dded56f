"""What a ControlNet file is, from its keys and shapes alone: layout, family, and its diffusers config.

Pure Python (no torch), like :mod:`sdweb.engine.models.detect`: the ControlNet library calls
:func:`detect_controlnet` with a safetensors header's shapes while listing ``models/ControlNet``; the
loader calls :func:`infer_controlnet_config` on the shapes of the (converted) state dict before it
builds anything.

Two layouts are read:

* **original** (``control_v11p_sd15_canny.pth`` and its ``.safetensors`` twins): LDM key names under
  ``control_model.`` (sometimes without the prefix): ``input_blocks``, ``zero_convs``,
  ``input_hint_block``, ``middle_block(_out)``, SDXL's ``label_emb``.
* **diffusers** (``diffusion_pytorch_model.safetensors`` of a ``ControlNetModel``, single file or
  folder): ``controlnet_cond_embedding``, ``controlnet_down_blocks``, ``down_blocks``...

The family is what the weights say: SDXL's added (``label_emb`` / ``add_embedding``) embeddings, else
SD 2.x's linear attention projections, else SD 1.x. Widths, resnets per level, transformer depths,
cross-attention width, hint-block widths and input channels are read from shapes; what shapes cannot
tell (attention heads, SDXL's time-id width) is taken from the checkpoint's UNet when the job loads the
model, or else the family's convention.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sdweb.engine.models.errors import UnsupportedCheckpointError
from sdweb.engine.models.shape_facts import Shapes, count_indices

ControlLayout = Literal["original", "diffusers"]

#: Where the original layout keeps its keys.
ORIGINAL_PREFIX = "control_model."
#: SD 2.x / SDXL size their attention heads at 64 channels; SD 1.x has 8 heads everywhere.
HEAD_CHANNELS = 64
SD1_NUM_HEADS = 8
#: SDXL's size/crop ids are embedded 256 wide each (the released models' convention).
SDXL_TIME_ID_WIDTH = 256
FAMILY_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}


@dataclass(frozen=True)
class ControlDetection:
    """A ControlNet file's layout, family (``sd1`` / ``sd2`` / ``sdxl``) and where its keys sit."""

    layout: ControlLayout
    family: str
    prefix: str = ""

    @property
    def family_label(self) -> str:
        return FAMILY_LABELS.get(self.family, self.family)


def _has(shapes: Shapes, prefix: str) -> bool:
    return any(key.startswith(prefix) for key in shapes)


def detect_controlnet(shapes: Shapes, *, name: str) -> ControlDetection:
    """Layout and family of a ControlNet file; UnsupportedCheckpointError saying what it is otherwise."""
    if "controlnet_cond_embedding.conv_in.weight" in shapes and "controlnet_down_blocks.0.weight" in shapes:
        linear = any(len(shape) == 2 for key, shape in shapes.items() if key.endswith(".proj_in.weight"))
        if "add_embedding.linear_1.weight" in shapes:
            family = "sdxl"
        else:
            family = "sd2" if linear else "sd1"
        return ControlDetection("diffusers", family)
    for prefix in (ORIGINAL_PREFIX, ""):
        if prefix + "input_hint_block.0.weight" in shapes and prefix + "zero_convs.0.0.weight" in shapes:
            linear = any(len(shape) == 2 for key, shape in shapes.items()
                         if key.startswith(prefix) and key.endswith(".proj_in.weight"))
            if prefix + "label_emb.0.0.weight" in shapes:
                family = "sdxl"
            else:
                family = "sd2" if linear else "sd1"
            return ControlDetection("original", family, prefix)
    keys = list(shapes)
    if not keys:
        raise UnsupportedCheckpointError(f"{name}: not a ControlNet model: the file holds no tensors")
    checkpoint_prefixes = ("model.diffusion_model.", "cond_stage_model.", "conditioner.")
    if any(_has(shapes, prefix) for prefix in checkpoint_prefixes):
        why = "a Stable Diffusion checkpoint (put it in models/Stable-diffusion)"
    elif any("lora_" in key for key in keys[:200]):
        why = "a LoRA (put it in models/Lora)"
    elif _has(shapes, "image_proj.") or _has(shapes, "ip_adapter."):
        why = "an IP-Adapter, which sdweb does not run yet"
    elif _has(shapes, "adapter.") or _has(shapes, "body."):
        why = "a T2I-Adapter, which sdweb does not run yet"
    else:
        why = f"no ControlNet keys ({len(keys)} tensors, e.g. {', '.join(keys[:2])})"
    raise UnsupportedCheckpointError(f"{name}: not a ControlNet model sdweb runs: {why}")


def infer_controlnet_config(shapes: Shapes, family: str, *, name: str,
                            unet_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``ControlNetModel`` config of a state dict in diffusers key names (convert originals first).

    ``unet_config`` (the checkpoint's UNet) supplies what shapes cannot: attention heads and SDXL's
    time-id width, when its widths match; else the family's convention.
    """

    def fail(why: str) -> UnsupportedCheckpointError:
        return UnsupportedCheckpointError(f"{name}: unknown ControlNet layout ({why})")

    conv_in = shapes.get("conv_in.weight")
    if conv_in is None or len(conv_in) != 4:
        raise fail("no conv_in convolution")
    levels = count_indices(shapes, "down_blocks.{}.resnets.0.conv1.weight")
    if levels == 0:
        raise fail("no down blocks")
    layers_per_block = count_indices(shapes, "down_blocks.0.resnets.{}.conv1.weight")
    widths: list[int] = []
    down_types: list[str] = []
    depths: list[int] = []
    for level in range(levels):
        if count_indices(shapes, f"down_blocks.{level}.resnets.{{}}.conv1.weight") != layers_per_block:
            raise fail("uneven resnets per level")
        widths.append(shapes[f"down_blocks.{level}.resnets.0.conv1.weight"][0])
        depth = count_indices(
            shapes, f"down_blocks.{level}.attentions.0.transformer_blocks.{{}}.attn1.to_q.weight")
        down_types.append("CrossAttnDownBlock2D" if depth else "DownBlock2D")
        depths.append(depth or 1)
    n_zero_convs = count_indices(shapes, "controlnet_down_blocks.{}.weight")
    if n_zero_convs != 1 + levels * layers_per_block + (levels - 1):
        raise fail(f"{n_zero_convs} zero convolutions for {levels} levels of {layers_per_block} resnets")
    attn_key = next((k for k in shapes if k.endswith("attn2.to_k.weight")), None)
    proj_in = next((k for k in shapes if k.endswith(".proj_in.weight")), None)
    if attn_key is None or proj_in is None:
        raise fail("no cross-attention layers")
    # The hint encoder: conv_in, then (same width, stride-2 next width) pairs, then conv_out.
    hint_in = shapes.get("controlnet_cond_embedding.conv_in.weight")
    if hint_in is None:
        raise fail("no conditioning embedding")
    hint_widths = [hint_in[0]]
    n_hint_blocks = count_indices(shapes, "controlnet_cond_embedding.blocks.{}.weight")
    if n_hint_blocks % 2:
        raise fail("odd number of conditioning-embedding blocks")
    for index in range(1, n_hint_blocks, 2):
        hint_widths.append(shapes[f"controlnet_cond_embedding.blocks.{index}.weight"][0])
    mid_depth = count_indices(shapes, "mid_block.attentions.0.transformer_blocks.{}.attn1.to_q.weight")
    config: dict[str, Any] = {
        "in_channels": conv_in[1],
        "conditioning_channels": hint_in[1],
        "conditioning_embedding_out_channels": hint_widths,
        "block_out_channels": widths,
        "layers_per_block": layers_per_block,
        "down_block_types": down_types,
        "cross_attention_dim": shapes[attn_key][1],
        "use_linear_projection": len(shapes[proj_in]) == 2,
        "transformer_layers_per_block": depths,
        "mid_block_type": "UNetMidBlock2DCrossAttn" if mid_depth else "UNetMidBlock2D",
        "norm_num_groups": 32 if all(width % 32 == 0 for width in widths) else 8,
    }
    unet = dict(unet_config or {})
    fits_unet = list(unet.get("block_out_channels") or ()) == widths
    heads = unet.get("attention_head_dim") if fits_unet else None
    if heads is None:
        heads = SD1_NUM_HEADS if family == "sd1" else [max(1, width // HEAD_CHANNELS) for width in widths]
    config["attention_head_dim"] = list(heads) if isinstance(heads, list | tuple) else heads
    if fits_unet and unet.get("num_attention_heads") is not None:
        config["num_attention_heads"] = unet["num_attention_heads"]
    if fits_unet and "upcast_attention" in unet:
        config["upcast_attention"] = bool(unet["upcast_attention"])
    added = shapes.get("add_embedding.linear_1.weight")
    if added is not None:
        config["addition_embed_type"] = "text_time"
        config["projection_class_embeddings_input_dim"] = added[1]
        time_width = unet.get("addition_time_embed_dim") if fits_unet else None
        config["addition_time_embed_dim"] = int(time_width or SDXL_TIME_ID_WIDTH)
    return config


def is_t2i_adapter(shapes: Mapping[str, Any]) -> bool:
    """A T2I-Adapter: diffusers' ``adapter.*`` keys, or the original ``conv_in`` + ``body.N.block1``."""
    return ("adapter.conv_in.weight" in shapes and "adapter.body.0.resnets.0.block1.weight" in shapes) or (
        "conv_in.weight" in shapes and "body.0.block1.weight" in shapes)


def t2i_adapter_family(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """``sdxl`` for the 16x-downscaling XL adapters; None (SD 1.x or 2.x, checked at use) otherwise."""
    conv_in = shapes.get("adapter.conv_in.weight") or shapes.get("conv_in.weight")
    return "sdxl" if conv_in is not None and conv_in[1] == 3 * 16 * 16 else None

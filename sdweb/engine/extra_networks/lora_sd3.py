"""kohya / ComfyUI-style SD 3.x LoRA files as the peft keys diffusers' SD3 pipeline loads.

diffusers converts kohya's key layout for SD 1.x/SDXL and Flux but not for SD 3.x: a file trained with
kohya's sd-scripts (``lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight``, ``lora_te1_...``) or
saved with the MMDiT module paths (``diffusion_model.joint_blocks.0.x_block.attn.qkv.lora_down.weight``)
would match no layer. :func:`kohya_sd3_to_peft` maps it onto ``SD3Transformer2DModel`` / the CLIP text
encoders, with the same module correspondence as diffusers' checkpoint converter
(``convert_sd3_transformer_checkpoint_to_diffusers``):

* fused ``attn.qkv`` (and ``attn2.qkv``, the MMDiT-X second attention of SD 3.5 Medium) becomes
  ``to_q``/``to_k``/``to_v`` (``add_{q,k,v}_proj`` for the context stream): the shared down matrix for
  each, the up matrix cut in three along its rows;
* ``adaLN_modulation.1`` layers whose shift/scale halves diffusers stores the other way round (the last
  context block, the final layer) get their up rows swapped the same way;
* kohya's ``alpha / rank`` scale is folded into the up matrix, so peft's own scale is 1.

Text encoder keys ``lora_te1_`` (CLIP-L) and ``lora_te2_`` (CLIP-G) map to ``text_encoder`` /
``text_encoder_2``; ``lora_te3_`` (T5) has no counterpart in diffusers' SD3 LoRA loader and is refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

#: kohya's module name (dots as underscores, after ``lora_unet_``) outside the joint blocks -> diffusers'.
_GLOBAL = {
    "x_embedder_proj": "pos_embed.proj",
    "t_embedder_mlp_0": "time_text_embed.timestep_embedder.linear_1",
    "t_embedder_mlp_2": "time_text_embed.timestep_embedder.linear_2",
    "y_embedder_mlp_0": "time_text_embed.text_embedder.linear_1",
    "y_embedder_mlp_2": "time_text_embed.text_embedder.linear_2",
    "context_embedder": "context_embedder",
    "final_layer_linear": "proj_out",
    "final_layer_adaLN_modulation_1": "norm_out.linear",
}
#: Inside joint block i: (stream, kohya part) -> diffusers' module(s) under ``transformer_blocks.i.``.
_BLOCK = {
    ("x_block", "attn_qkv"): ("attn.to_q", "attn.to_k", "attn.to_v"),
    ("x_block", "attn_proj"): ("attn.to_out.0",),
    ("x_block", "attn2_qkv"): ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
    ("x_block", "attn2_proj"): ("attn2.to_out.0",),
    ("x_block", "mlp_fc1"): ("ff.net.0.proj",),
    ("x_block", "mlp_fc2"): ("ff.net.2",),
    ("x_block", "adaLN_modulation_1"): ("norm1.linear",),
    ("context_block", "attn_qkv"): ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    ("context_block", "attn_proj"): ("attn.to_add_out",),
    ("context_block", "mlp_fc1"): ("ff_context.net.0.proj",),
    ("context_block", "mlp_fc2"): ("ff_context.net.2",),
    ("context_block", "adaLN_modulation_1"): ("norm1_context.linear",),
}
_BLOCK_RE = re.compile(r"joint_blocks_(\d+)_(x_block|context_block)_(\w+)")
_TE_RE = re.compile(r"text_model_encoder_layers_(\d+)_(self_attn_(?:q|k|v|out)_proj|mlp_fc[12])")
_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha", ".lora_A.weight", ".lora_B.weight")


class Sd3LoraKeyError(ValueError):
    """A kohya-style SD 3.x LoRA key that names no layer of the model."""


def is_kohya_sd3(state: Mapping[str, Any]) -> bool:
    """True for a file in kohya's (``lora_unet_joint_blocks_*``) or MMDiT-path (``diffusion_model.``) form."""
    return any(key.startswith(("lora_unet_", "lora_te1_", "lora_te2_", "lora_te3_", "diffusion_model."))
               for key in state)


def _module_name(key: str) -> tuple[str, str] | None:
    """``(kohya module name, suffix)`` of a key, MMDiT-path keys turned into kohya's names."""
    for suffix in _SUFFIXES:
        if key.endswith(suffix):
            name = key[: -len(suffix)]
            if name.startswith("diffusion_model."):
                name = "lora_unet_" + name.removeprefix("diffusion_model.").replace(".", "_")
            return name, suffix
    return None


def _targets(name: str, num_layers: int) -> tuple[str, tuple[str, ...], bool]:
    """``(component, diffusers modules, swap up halves)`` for one kohya module name."""
    if name.startswith("lora_unet_"):
        rest = name.removeprefix("lora_unet_")
        if rest in _GLOBAL:
            return "transformer", (_GLOBAL[rest],), rest == "final_layer_adaLN_modulation_1"
        match = _BLOCK_RE.fullmatch(rest)
        if match is not None:
            index, stream, part = int(match.group(1)), match.group(2), match.group(3)
            modules = _BLOCK.get((stream, part))
            last = index == num_layers - 1
            if modules is not None and index < num_layers:
                if stream == "context_block" and last and part != "adaLN_modulation_1":
                    modules = None  # the last context block only modulates (diffusers: context_pre_only)
                if modules is not None:
                    swap = stream == "context_block" and last
                    return "transformer", tuple(f"transformer_blocks.{index}.{m}" for m in modules), swap
    for prefix, component in (("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2")):
        if name.startswith(prefix):
            match = _TE_RE.fullmatch(name.removeprefix(prefix))
            if match is not None:
                part = match.group(2)
                module = part.replace("self_attn_", "self_attn.").replace("mlp_", "mlp.")
                return component, (f"text_model.encoder.layers.{match.group(1)}.{module}",), False
    if name.startswith("lora_te3_"):
        raise Sd3LoraKeyError("it has T5 (lora_te3_) weights, which diffusers' SD 3.x LoRA loader "
                              "cannot apply")
    raise Sd3LoraKeyError(f"its layer {name!r} is not a layer of this SD 3.x model")


def kohya_sd3_to_peft(state: Mapping[str, Any], num_layers: int) -> dict[str, Any]:
    """The peft-format state dict (``transformer.``/``text_encoder.``/``text_encoder_2.`` keys) of ``state``.

    Raises:
        Sd3LoraKeyError: a key names no layer of an SD 3.x model with ``num_layers`` joint blocks.
    """
    import torch

    grouped: dict[str, dict[str, Any]] = {}
    for key, value in state.items():
        if key.endswith(".dora_scale"):
            raise Sd3LoraKeyError("it is a DoRA (dora_scale weights), which is not supported for SD 3.x")
        parsed = _module_name(key)
        if parsed is None:
            raise Sd3LoraKeyError(f"its key {key!r} is not a LoRA weight")
        name, suffix = parsed
        grouped.setdefault(name, {})[suffix] = value
    out: dict[str, Any] = {}
    for name, parts in grouped.items():
        down = parts.get(".lora_down.weight", parts.get(".lora_A.weight"))
        up = parts.get(".lora_up.weight", parts.get(".lora_B.weight"))
        if down is None or up is None:
            raise Sd3LoraKeyError(f"its layer {name!r} lacks its down or up matrix")
        component, modules, swap = _targets(name, num_layers)
        rank = int(down.shape[0])
        alpha = parts.get(".alpha")
        scale = float(alpha) / rank if alpha is not None else 1.0
        up = up.float() * scale
        if swap:
            first, second = up.chunk(2, dim=0)
            up = torch.cat([second, first])
        ups = up.chunk(len(modules), dim=0) if len(modules) > 1 else (up,)
        for module, part in zip(modules, ups, strict=True):
            out[f"{component}.{module}.lora_A.weight"] = down.float().contiguous()
            out[f"{component}.{module}.lora_B.weight"] = part.contiguous()
    return out

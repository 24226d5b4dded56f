"""Flux.1 transformer keys: Black Forest Labs' original layout <-> diffusers' ``FluxTransformer2DModel``.

diffusers' own converter (``convert_flux_transformer_checkpoint_to_diffusers``) splits the single blocks'
fused ``linear1`` at the released width (3072) and MLP ratio, so a pruned or reduced-size Flux file breaks
it. This mapping takes every split size from the config detection read off the tensors
(:func:`sdweb.engine.models.detect_flow.infer_flux_config`), and it runs both ways: :func:`flux_to_bfl`
writes the original layout (tests and benchmarks write real files with it; ``flux_to_diffusers`` of its
output gives the input back, which the tests check).

Fused q/k/v (and q/k/v/MLP) weights are split with ``torch.split`` along the rows, which also works on
GGUF-quantized tensors (a quantized row is a row of blocks), so quantized weights stay quantized.
The final layer's modulation is stored (shift, scale) by BFL and (scale, shift) by diffusers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from typing import Any

import torch

logger = logging.getLogger(__name__)

#: One-to-one renames outside the blocks (BFL name -> diffusers name), for ``.weight`` and ``.bias``.
_GLOBAL = {
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "txt_in": "context_embedder",
    "img_in": "x_embedder",
    "final_layer.linear": "proj_out",
}
#: Per double block: BFL suffix -> diffusers suffix (``.weight``/``.bias`` appended to both).
_DOUBLE = {
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
}
#: Per double block, q/k norm scales (no bias).
_DOUBLE_NORMS = {
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
}
_DOUBLE_QKV = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
_SINGLE = {"modulation.lin": "norm.linear", "linear2": "proj_out"}
_SINGLE_NORMS = {"norm.query_norm.scale": "attn.norm_q.weight", "norm.key_norm.scale": "attn.norm_k.weight"}
_SINGLE_FUSED = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def flux_to_diffusers(
    state: MutableMapping[str, torch.Tensor], config: Mapping[str, Any], prefix: str = ""
) -> dict[str, torch.Tensor]:
    """Convert BFL keys under ``prefix`` to diffusers keys, taking the tensors out of ``state``.

    ``config``: the detected ``FluxTransformer2DModel`` config (widths and block counts).
    """
    inner = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    mlp = 4 * inner
    out: dict[str, torch.Tensor] = {}

    def take(key: str) -> torch.Tensor:
        return state.pop(prefix + key)

    def rename(old: str, new: str) -> None:
        for part in (".weight", ".bias"):
            if prefix + old + part in state:
                out[new + part] = take(old + part)

    for old, new in _GLOBAL.items():
        rename(old, new)
    for part in (".weight", ".bias"):
        out["norm_out.linear" + part] = _swap_halves(take("final_layer.adaLN_modulation.1" + part))
    for i in range(int(config["num_layers"])):
        block, new_block = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for old, new in _DOUBLE.items():
            rename(block + old, new_block + new)
        for old, new in _DOUBLE_NORMS.items():
            out[new_block + new] = take(block + old)
        for old, names in _DOUBLE_QKV.items():
            for part in (".weight", ".bias"):
                for name, piece in zip(
                    names, torch.split(take(block + old + part), inner, dim=0), strict=True
                ):
                    out[new_block + name + part] = piece
    for i in range(int(config["num_single_layers"])):
        block, new_block = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        for old, new in _SINGLE.items():
            rename(block + old, new_block + new)
        for old, new in _SINGLE_NORMS.items():
            out[new_block + new] = take(block + old)
        for part in (".weight", ".bias"):
            pieces = torch.split(take(block + "linear1" + part), [inner, inner, inner, mlp], dim=0)
            for name, piece in zip(_SINGLE_FUSED, pieces, strict=True):
                out[new_block + name + part] = piece
    return out


def flux_to_bfl(
    state: Mapping[str, torch.Tensor], config: Mapping[str, Any], prefix: str = ""
) -> dict[str, torch.Tensor]:
    """The inverse of :func:`flux_to_diffusers`: a diffusers state dict in BFL's layout under ``prefix``."""
    out: dict[str, torch.Tensor] = {}

    def put(key: str, tensor: torch.Tensor) -> None:
        out[prefix + key] = tensor.contiguous()

    def rename(old: str, new: str) -> None:
        for part in (".weight", ".bias"):
            if new + part in state:
                put(old + part, state[new + part])

    for old, new in _GLOBAL.items():
        rename(old, new)
    for part in (".weight", ".bias"):
        put("final_layer.adaLN_modulation.1" + part, _swap_halves(state["norm_out.linear" + part]))
    for i in range(int(config["num_layers"])):
        block, new_block = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for old, new in _DOUBLE.items():
            rename(block + old, new_block + new)
        for old, new in _DOUBLE_NORMS.items():
            put(block + old, state[new_block + new])
        for old, names in _DOUBLE_QKV.items():
            for part in (".weight", ".bias"):
                put(block + old + part, torch.cat([state[new_block + name + part] for name in names]))
    for i in range(int(config["num_single_layers"])):
        block, new_block = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        for old, new in _SINGLE.items():
            rename(block + old, new_block + new)
        for old, new in _SINGLE_NORMS.items():
            put(block + old, state[new_block + new])
        for part in (".weight", ".bias"):
            put(
                block + "linear1" + part,
                torch.cat([state[new_block + name + part] for name in _SINGLE_FUSED]),
            )
    return out

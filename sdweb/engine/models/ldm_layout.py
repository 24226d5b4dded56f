"""diffusers -> original LDM key layout: turn diffusers state dicts back into what community single-file
checkpoints hold (``model.diffusion_model.*``, ``first_stage_model.*``,
``cond_stage_model.transformer.text_model.*``, OpenCLIP's ``cond_stage_model.model.*`` / SDXL's
``conditioner.embedders.*``).

The loader goes the other way with diffusers' own converters; this direction is ours. It writes the demo
model's single-file checkpoint (``demo_model/export.py``) and the tests' tiny checkpoints, so every test of
the loader reads files in the layout users have. Pure key renaming (and OpenCLIP's fused attention
projections); no model is built here.
"""

from __future__ import annotations

from typing import Any

import torch

_RESNET_TO_LDM = (
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("time_emb_proj.", "emb_layers.1."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("conv_shortcut.", "skip_connection."),
)
_UNET_TOP_LEVEL = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}


def _resnet_rest(rest: str) -> str:
    for new, old in _RESNET_TO_LDM:
        if rest.startswith(new):
            return old + rest[len(new) :]
    raise KeyError(f"unexpected resnet key {rest}")


def unet_key_to_ldm(key: str, config: dict[str, Any]) -> str:
    """The ``model.diffusion_model.*`` name of one ``UNet2DConditionModel`` key."""
    per_level = config["layers_per_block"] + 1
    parts = key.split(".")
    top = next((k for k in _UNET_TOP_LEVEL if key.startswith(k)), None)
    if top is not None:
        new = _UNET_TOP_LEVEL[top] + key[len(top) :]
    elif parts[0] in ("down_blocks", "up_blocks"):
        block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        first = 1 + block * per_level if parts[0] == "down_blocks" else block * per_level
        name = "input_blocks" if parts[0] == "down_blocks" else "output_blocks"
        if kind == "resnets":
            new = f"{name}.{first + index}.0.{_resnet_rest(rest)}"
        elif kind == "attentions":
            new = f"{name}.{first + index}.1.{rest}"
        elif kind == "downsamplers":
            new = f"{name}.{first + per_level - 1}.0.op.{'.'.join(parts[5:])}"
        else:  # upsamplers sit after the last resnet and its attention, if the level has one
            slot = 2 if "CrossAttn" in config["up_block_types"][block] else 1
            new = f"{name}.{first + per_level - 1}.{slot}.conv.{'.'.join(parts[5:])}"
    elif parts[0] == "mid_block":
        kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        new = (
            f"middle_block.{2 * index}.{_resnet_rest(rest)}"
            if kind == "resnets"
            else f"middle_block.1.{rest}"
        )
    else:
        raise KeyError(f"unexpected UNet key {key}")
    return "model.diffusion_model." + new


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Rename a ``UNet2DConditionModel`` state dict to ``model.diffusion_model.*`` LDM keys."""
    return {unet_key_to_ldm(key, config): tensor for key, tensor in state.items()}


_VAE_ATTENTION = {
    "group_norm.": "norm.",
    "to_q.": "q.",
    "to_k.": "k.",
    "to_v.": "v.",
    "to_out.0.": "proj_out.",
}


def vae_key_to_ldm(key: str, n_levels: int) -> str:
    """The original name of one ``AutoencoderKL`` key (without the ``first_stage_model.`` prefix)."""
    parts = key.split(".")
    side = parts[0]
    if side in ("quant_conv", "post_quant_conv") or parts[1] in ("conv_in", "conv_out"):
        return key
    if parts[1] == "conv_norm_out":
        return f"{side}.norm_out.{parts[2]}"
    if parts[1] in ("down_blocks", "up_blocks"):
        level = int(parts[2])
        # The decoder's up blocks are numbered from the bottom in the original layout.
        head = f"encoder.down.{level}" if parts[1] == "down_blocks" else f"decoder.up.{n_levels - 1 - level}"
        if parts[3] == "resnets":
            return f"{head}.block.{parts[4]}.{'.'.join(parts[5:]).replace('conv_shortcut.', 'nin_shortcut.')}"
        sampler = "downsample" if parts[1] == "down_blocks" else "upsample"
        return f"{head}.{sampler}.conv.{parts[-1]}"
    if parts[1] == "mid_block":
        rest = ".".join(parts[4:])
        if parts[2] == "resnets":
            return f"{side}.mid.block_{int(parts[3]) + 1}.{rest.replace('conv_shortcut.', 'nin_shortcut.')}"
        name = next(v + rest[len(k) :] for k, v in _VAE_ATTENTION.items() if rest.startswith(k))
        return f"{side}.mid.attn_1.{name}"
    raise KeyError(f"unexpected VAE key {key}")


def vae_levels(keys: Any) -> int:
    return 1 + max(int(k.split(".")[2]) for k in keys if k.startswith("decoder.up_blocks."))


def vae_to_ldm(state: dict[str, torch.Tensor], prefix: str = "first_stage_model.") -> dict[str, torch.Tensor]:
    """Rename an ``AutoencoderKL`` state dict to the original VAE layout (attention as 1x1 convs)."""
    n_levels = vae_levels(state)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        new = vae_key_to_ldm(key, n_levels)
        if ".mid.attn_1." in new and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]
        out[prefix + new] = tensor
    return out


def _strip_text_model(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("text_model."): v for k, v in state.items()}


def clip_to_ldm(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Hugging Face CLIP text model keys under ``prefix`` + ``text_model.`` (SD1, SDXL's first encoder)."""
    out = {
        f"{prefix}text_model.{k}": v
        for k, v in _strip_text_model(state).items()
        if k != "text_projection.weight"
    }
    # Community SD1 files carry CLIP's position ids too; the loader must tolerate them.
    out[f"{prefix}text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    return out


def open_clip_to_ldm(
    state: dict[str, torch.Tensor],
    prefix: str,
    *,
    extra_last_layer: bool,
    projection: torch.Tensor | None = None,
    seed: int = 1,
) -> dict[str, torch.Tensor]:
    """OpenCLIP layout (``transformer.resblocks.N.attn.in_proj_weight``...) under ``prefix``.

    ``extra_last_layer`` appends one more random resblock, as SD 2.x files hold the 24th layer that its
    penultimate-layer conditioning never runs (random weights drawn from ``seed``).
    """
    flat = _strip_text_model(state)
    out: dict[str, torch.Tensor] = {
        prefix + "token_embedding.weight": flat["embeddings.token_embedding.weight"],
        prefix + "positional_embedding": flat["embeddings.position_embedding.weight"],
        prefix + "ln_final.weight": flat["final_layer_norm.weight"],
        prefix + "ln_final.bias": flat["final_layer_norm.bias"],
    }
    layers = 1 + max(int(k.split(".")[2]) for k in flat if k.startswith("encoder.layers."))
    renames = {
        "self_attn.out_proj.": "attn.out_proj.",
        "layer_norm1.": "ln_1.",
        "layer_norm2.": "ln_2.",
        "mlp.fc1.": "mlp.c_fc.",
        "mlp.fc2.": "mlp.c_proj.",
    }
    for n in range(layers):
        src = f"encoder.layers.{n}."
        dst = f"{prefix}transformer.resblocks.{n}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                [flat[f"{src}self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")]
            )
        for key, tensor in flat.items():
            if (
                key.startswith(src)
                and ".self_attn." not in key
                or key.startswith(src + "self_attn.out_proj.")
            ):
                rest = key[len(src) :]
                new = next(v + rest[len(k) :] for k, v in renames.items() if rest.startswith(k))
                out[dst + new] = tensor
    if extra_last_layer:
        generator = torch.Generator().manual_seed(seed)
        for key in [k for k in out if k.startswith(f"{prefix}transformer.resblocks.0.")]:
            like = out[key]
            extra = key.replace("resblocks.0.", f"resblocks.{layers}.")
            out[extra] = torch.randn(like.shape, generator=generator, dtype=like.dtype) * 0.02
    if "text_projection.weight" in flat:
        out[prefix + "text_projection"] = flat["text_projection.weight"].T.contiguous()
    elif projection is not None:
        out[prefix + "text_projection"] = projection
    return out

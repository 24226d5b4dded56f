"""Facts read from a state dict's key names and tensor shapes alone: the shape-determined parts of the
UNet, CLIP text encoder and VAE configs, and which UNet variant (plain, inpainting ...) a channel count is.

Pure Python (no torch). :mod:`sdweb.engine.models.detect` (SD 1/2/XL checkpoints), ``detect_flow`` (SD3 /
Flux) and :mod:`sdweb.engine.control.detect` (ControlNet) build their detections from these.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sdweb.engine.models.errors import UnsupportedCheckpointError

Shapes = Mapping[str, tuple[int, ...]]

#: CLIP's BPE vocabulary: the bundled tokenizers only fit text encoders with this many embeddings.
CLIP_VOCAB_SIZE = 49408
#: SD 2.x and SDXL size attention heads at 64 channels each (LDM's ``num_head_channels: 64``).
HEAD_CHANNELS = 64




def count_indices(shapes: Shapes, template: str) -> int:
    """How many consecutive indices ``n`` make ``template.format(n)`` a key."""
    n = 0
    while template.format(n) in shapes:
        n += 1
    return n


def describe_shapes(shapes: Shapes, limit: int = 3) -> str:
    keys = list(shapes)
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} tensors, e.g. {shown}" if keys else "no tensors"


def infer_unet_config(shapes: Shapes, prefix: str, *, name: str) -> dict[str, Any]:
    """The shape-determined part of a ``UNet2DConditionModel`` config, from LDM (``input_blocks``) keys."""

    def fail(why: str) -> UnsupportedCheckpointError:
        return UnsupportedCheckpointError(f"{name}: unknown UNet layout ({why})")

    conv_in = shapes.get(prefix + "input_blocks.0.0.weight")
    conv_out = shapes.get(prefix + "out.2.weight")
    if conv_in is None or conv_out is None or len(conv_in) != 4:
        raise fail("no input_blocks.0.0 / out.2 convolution")
    model_channels, in_channels = conv_in[0], conv_in[1]

    # 1. Down path: resnets (with optional transformers) until a downsampler closes each level.
    levels: list[list[tuple[int, int]]] = [[]]  # per level: (resnet out channels, transformer depth)
    i = 1
    while True:
        if prefix + f"input_blocks.{i}.0.op.weight" in shapes:
            levels.append([])
        elif prefix + f"input_blocks.{i}.0.in_layers.2.weight" in shapes:
            out = shapes[prefix + f"input_blocks.{i}.0.in_layers.2.weight"][0]
            depth = count_indices(
                shapes, prefix + f"input_blocks.{i}.1.transformer_blocks.{{}}.attn1.to_q.weight")
            levels[-1].append((out, depth))
        else:
            break
        i += 1
    if not levels[-1]:
        raise fail("the last down level is empty")
    layers_per_block = len(levels[0])
    if layers_per_block == 0 or any(len(level) != layers_per_block for level in levels):
        raise fail(f"uneven resnets per level: {[len(level) for level in levels]}")
    block_out_channels = []
    down_block_types = []
    depths = []
    for level in levels:
        widths = {out for out, _ in level}
        level_depths = {depth for _, depth in level}
        if len(widths) != 1 or len(level_depths) != 1:
            raise fail("mixed widths or transformer depths inside one level")
        block_out_channels.append(widths.pop())
        depth = level_depths.pop()
        down_block_types.append("CrossAttnDownBlock2D" if depth else "DownBlock2D")
        depths.append(depth or 1)

    # 2. Up path: layers_per_block + 1 resnets per level, mirrored.
    n_out = count_indices(shapes, prefix + "output_blocks.{}.0.in_layers.2.weight")
    if n_out != len(levels) * (layers_per_block + 1):
        raise fail(f"{n_out} output blocks for {len(levels)} levels of {layers_per_block} resnets")
    up_block_types = []
    up_depths = []
    for level in range(len(levels)):
        level_depths = {
            count_indices(shapes, prefix + f"output_blocks.{b}.1.transformer_blocks.{{}}.attn1.to_q.weight")
            for b in range(level * (layers_per_block + 1), (level + 1) * (layers_per_block + 1))
        }
        if len(level_depths) != 1:
            raise fail("mixed transformer depths inside one up level")
        depth = level_depths.pop()
        up_block_types.append("CrossAttnUpBlock2D" if depth else "UpBlock2D")
        up_depths.append(depth or 1)

    # 3. Middle: resnet, transformer, resnet - or nothing (BK-SDM removes it).
    mid_depth = count_indices(shapes, prefix + "middle_block.1.transformer_blocks.{}.attn1.to_q.weight")
    has_middle = any(k.startswith(prefix + "middle_block.") for k in shapes)
    if has_middle and not mid_depth:
        raise fail("a middle block without attention")

    # 4. Attention facts from the first transformer found.
    attn_key = next((k for k in shapes if k.startswith(prefix) and k.endswith("attn2.to_k.weight")), None)
    proj_in = next((k for k in shapes if k.startswith(prefix) and k.endswith(".proj_in.weight")), None)
    if attn_key is None or proj_in is None:
        raise fail("no cross-attention layers")
    config: dict[str, Any] = {
        "in_channels": in_channels,
        "out_channels": conv_out[0],
        "block_out_channels": block_out_channels,
        "layers_per_block": layers_per_block,
        "down_block_types": down_block_types,
        "up_block_types": up_block_types,
        "cross_attention_dim": shapes[attn_key][1],
        "use_linear_projection": len(shapes[proj_in]) == 2,
        "transformer_layers_per_block": depths if len(set(depths)) > 1 else depths[0],
        "mid_block_type": "UNetMidBlock2DCrossAttn" if has_middle else None,
    }
    if list(reversed(depths)) != up_depths:
        config["reverse_transformer_layers_per_block"] = up_depths
    if has_middle and mid_depth != depths[-1]:
        raise fail(f"middle depth {mid_depth} differs from the last level's {depths[-1]}")
    if block_out_channels[0] != model_channels:
        raise fail("conv_in width differs from the first level's width")
    label_emb = shapes.get(prefix + "label_emb.0.0.weight")
    if label_emb is not None:
        config["projection_class_embeddings_input_dim"] = label_emb[1]
    return config


def infer_hf_clip(shapes: Shapes, prefix: str, *, name: str) -> dict[str, Any]:
    """CLIP text config facts from Hugging Face layout keys (``embeddings.token_embedding.weight``...)."""
    token = shapes[prefix + "embeddings.token_embedding.weight"]
    position = shapes.get(prefix + "embeddings.position_embedding.weight", (77, token[1]))
    layers = count_indices(shapes, prefix + "encoder.layers.{}.self_attn.q_proj.weight")
    fc1 = shapes.get(prefix + "encoder.layers.0.mlp.fc1.weight")
    if not layers or fc1 is None:
        raise UnsupportedCheckpointError(f"{name}: text encoder at {prefix} has no transformer layers")
    return _clip_facts(
        name, vocab=token[0], hidden=token[1], positions=position[0], layers=layers, intermediate=fc1[0]
    )


def infer_open_clip(shapes: Shapes, prefix: str, *, name: str, drop_last: bool) -> dict[str, Any]:
    """CLIP text config facts from OpenCLIP layout keys (``transformer.resblocks.N.attn.in_proj_weight``)."""
    token = shapes[prefix + "token_embedding.weight"]
    position = shapes.get(prefix + "positional_embedding", (77, token[1]))
    layers = count_indices(shapes, prefix + "transformer.resblocks.{}.attn.in_proj_weight")
    fc = shapes.get(prefix + "transformer.resblocks.0.mlp.c_fc.weight")
    if not layers or fc is None:
        raise UnsupportedCheckpointError(f"{name}: text encoder at {prefix} has no transformer layers")
    # SD 2.x conditions on the penultimate layer: the last resblock is in the file but never runs.
    facts = _clip_facts(
        name,
        vocab=token[0],
        hidden=token[1],
        positions=position[0],
        layers=layers - 1 if drop_last else layers,
        intermediate=fc[0],
    )
    projection = shapes.get(prefix + "text_projection")
    if projection is not None and len(projection) == 2:
        facts["projection_dim"] = projection[1]
    return facts


def _clip_facts(
    name: str, *, vocab: int, hidden: int, positions: int, layers: int, intermediate: int
) -> dict[str, Any]:
    if vocab != CLIP_VOCAB_SIZE:
        raise UnsupportedCheckpointError(
            f"{name}: text encoder has a {vocab}-token vocabulary; "
            f"the bundled CLIP tokenizer has {CLIP_VOCAB_SIZE}"
        )
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "max_position_embeddings": positions,
        "num_hidden_layers": layers,
        "intermediate_size": intermediate,
        "num_attention_heads": max(1, hidden // HEAD_CHANNELS),
    }


def infer_vae_config(shapes: Shapes, prefix: str = "", *, name: str) -> dict[str, Any]:
    """The shape-determined part of an ``AutoencoderKL`` config from LDM or diffusers VAE keys."""
    conv_in = shapes.get(prefix + "encoder.conv_in.weight")
    dec_in = shapes.get(prefix + "decoder.conv_in.weight")
    dec_out = shapes.get(prefix + "decoder.conv_out.weight")
    if conv_in is None or dec_in is None or dec_out is None:
        raise UnsupportedCheckpointError(
            f"{name}: no VAE encoder/decoder found under {prefix or 'the top level'}"
        )
    ldm = prefix + "encoder.down.0.block.0.conv1.weight" in shapes
    if ldm:
        levels = count_indices(shapes, prefix + "encoder.down.{}.block.0.conv2.weight")
        widths = [shapes[prefix + f"encoder.down.{i}.block.0.conv2.weight"][0] for i in range(levels)]
        per_level = count_indices(shapes, prefix + "encoder.down.0.block.{}.conv1.weight")
    else:
        levels = count_indices(shapes, prefix + "encoder.down_blocks.{}.resnets.0.conv2.weight")
        widths = [
            shapes[prefix + f"encoder.down_blocks.{i}.resnets.0.conv2.weight"][0] for i in range(levels)
        ]
        per_level = count_indices(shapes, prefix + "encoder.down_blocks.0.resnets.{}.conv1.weight")
    if not levels or not per_level:
        raise UnsupportedCheckpointError(f"{name}: unknown VAE layout (no encoder blocks)")
    return {
        "in_channels": conv_in[1],
        "out_channels": dec_out[0],
        "latent_channels": dec_in[1],
        "block_out_channels": widths,
        "layers_per_block": per_level,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
    }


def is_ldm_vae(shapes: Shapes, prefix: str = "") -> bool:
    """True for original-layout VAE keys (``encoder.down.0.block.0``), False for diffusers keys."""
    return prefix + "encoder.down.0.block.0.conv1.weight" in shapes


#: UNet input channels -> (family suffix, why sdweb cannot run it or None). Latents have 4 channels;
#: inpainting models add a mask and the masked image's latents (4 + 1 + 4), depth-to-image a depth map
#: (4 + 1), instruct-pix2pix the source image's latents (4 + 4).
_CHANNEL_VARIANTS: dict[int, tuple[str, str | None]] = {
    4: ("", None),
    9: ("-inpaint", None),
    5: ("-depth", "depth-to-image checkpoints (5 UNet input channels: latents + a depth map) need a depth "
                  "estimator sdweb does not have; sdweb runs plain (4-channel) and inpainting (9-channel) "
                  "models"),
    8: ("-pix2pix", "instruct-pix2pix checkpoints (8 UNet input channels: latents + the source image) are "
                    "not supported; sdweb runs plain (4-channel) and inpainting (9-channel) models"),
}


def unet_variant(in_channels: int, *, name: str) -> tuple[str, str | None]:
    """``(family suffix, unsupported reason or None)`` for a UNet taking ``in_channels`` inputs.

    Raises:
        UnsupportedCheckpointError: a channel count no Stable Diffusion variant uses.
    """
    found = _CHANNEL_VARIANTS.get(int(in_channels))
    if found is None:
        raise UnsupportedCheckpointError(
            f"{name}: UNet with {in_channels} input channels is no Stable Diffusion model sdweb knows"
        )
    return found

"""Stable Diffusion 3.x and Flux.1 checkpoints (flow-matching transformers), from keys and shapes alone.

Pure Python (no torch), like :mod:`sdweb.engine.models.detect`, which calls :func:`detect_flow_checkpoint`
before its UNet families. It recognises:

* **all-in-one files**: the transformer under ``model.diffusion_model.`` with any of its text encoders
  (``text_encoders.clip_l.`` / ``clip_g.`` / ``t5xxl.``) and its VAE (``first_stage_model.`` or ``vae.``),
  as the SD 3.5 releases and the common Flux "checkpoint" files ship;
* **transformer-only files** in the original layouts: Black Forest Labs' ``flux1-dev.safetensors``
  (bare ``double_blocks.*``), SD 3.5's MMDiT (``joint_blocks.*``, bare or prefixed), and GGUF
  conversions of either (same key names);
* **standalone modules** (:func:`detect_module`): CLIP-L / CLIP-G / T5-XXL text encoders in
  ``models/text_encoder`` and 16-channel VAEs (``ae.safetensors``) in ``models/VAE``.

Every dimension is read from the tensors: width, depth, head size (from the q/k norms where the model has
them), double/single block counts, joint-attention and pooled widths, the guidance embedder (Flux dev vs
schnell), MMDiT-X dual-attention layers and q/k RMS norms (SD 3.5 Medium vs Large), latent channels and
patch size. What weights cannot tell comes from the bundled configs in ``sdweb/data/configs/{sd3,flux}``:
scheduler shift, VAE scaling/shift factors, text-encoder activations, Flux's RoPE axis split.

A :class:`~sdweb.engine.models.detect.Detection` for these families has ``config_family`` ``sd3`` or
``flux``, a ``transformer_config`` instead of a ``unet_config``, the modules the file itself carries
(``embedded``) and the module slots the family needs (``required``) or can use (``optional``); the loader
fills the missing ones from the user's module files (:mod:`sdweb.engine.models.modules`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdweb.engine.models.errors import UnsupportedCheckpointError
from sdweb.engine.models.shape_facts import Shapes, count_indices, infer_vae_config, is_ldm_vae

logger = logging.getLogger(__name__)


CONFIGS_DIR = Path(__file__).resolve().parents[2] / "data" / "configs"

#: Where the transformer sits in a file: under the LDM-style prefix (all-in-one files) or bare.
TRANSFORMER_PREFIXES = ("model.diffusion_model.", "")
#: Module prefixes inside all-in-one SD3 / Flux files (ComfyUI's and Stability's layout).
MODULE_PREFIXES: dict[str, str] = {
    "clip_l": "text_encoders.clip_l.transformer.",
    "clip_g": "text_encoders.clip_g.transformer.",
    "t5xxl": "text_encoders.t5xxl.transformer.",
}
VAE_PREFIXES = ("first_stage_model.", "vae.")
#: Module slots, in the order the pipelines take their text encoders.
SLOTS = ("clip_l", "clip_g", "t5xxl", "vae")
SLOT_LABELS: dict[str, str] = {
    "clip_l": "CLIP-L text encoder (clip_l.safetensors)",
    "clip_g": "CLIP-G text encoder (clip_g.safetensors)",
    "t5xxl": "T5-XXL text encoder (t5xxl_fp16.safetensors or t5xxl_fp8_e4m3fn.safetensors)",
    "vae": "16-channel VAE (ae.safetensors for Flux, the SD 3.5 VAE for SD 3.5)",
}
#: The width CLIP-L and CLIP-G have in every released model: a standalone file of either width is that one.
CLIP_L_WIDTH = 768
CLIP_G_WIDTH = 1280
#: SD3 sizes attention heads at 64 channels when no q/k norm tells the head size.
SD3_HEAD_CHANNELS = 64
#: Flux's transformer always has an MLP four times its width (diffusers' blocks cannot be built otherwise).
FLUX_MLP_RATIO = 4
#: Flux input channels -> (family suffix, why sdweb cannot run it or None): 64 = 16 latent channels packed
#: 2x2; Fill adds the masked image and the mask (384), Depth/Canny a control image (128).
_FLUX_VARIANTS: dict[int, tuple[str, str | None]] = {
    64: ("", None),
    384: (
        "-fill",
        "FLUX.1 Fill (384 input channels: latents + masked image + mask) is not supported yet; "
        "use FLUX.1 dev or schnell (inpainting works with them)",
    ),
    128: (
        "-control",
        "FLUX.1 Depth/Canny (128 input channels: latents + a control image) are not supported "
        "yet; use FLUX.1 dev or schnell",
    ),
}


@dataclass(frozen=True)
class ModuleInfo:
    """A text encoder or VAE found in a file (inside a checkpoint, or a standalone module file).

    Attributes:
        kind: ``clip``, ``t5`` or ``vae``.
        slots: the pipeline slots it can fill (``clip_l``/``clip_g`` for a CLIP, ``t5xxl``, ``vae``).
        prefix: the key prefix of its tensors in the file ("" for a standalone file).
        config: its shape-determined config (``CLIPTextConfig`` / ``T5Config`` / ``AutoencoderKL`` kwargs).
        width: hidden width (text encoders) or latent channels (VAE).
        pooled_width: a CLIP's pooled output width (its projection width when it has one).
        layout: ``hf`` (transformers keys), ``ldm`` (original VAE keys) or ``diffusers`` (diffusers VAE).
    """

    kind: str
    slots: tuple[str, ...]
    prefix: str
    config: dict[str, Any]
    width: int
    pooled_width: int = 0
    layout: str = "hf"

    __hash__ = None  # type: ignore[assignment]  # holds a dict


def bundled_flow_config(family: str, component: str) -> dict[str, Any]:
    """A bundled public config of the ``sd3`` or ``flux`` folder."""
    folder = CONFIGS_DIR / family
    path = (
        folder / "scheduler" / "scheduler_config.json"
        if component == "scheduler"
        else (folder / component / "config.json")
    )
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------
# Facts read from shapes
# --------------------------------------------------------------------------------------------------


def _indices(shapes: Shapes, pattern: str) -> list[int]:
    found = {int(m.group(1)) for key in shapes if (m := re.match(pattern, key))}
    return sorted(found)


def transformer_prefix(shapes: Shapes) -> tuple[str, str] | None:
    """``(family, prefix)`` of a Flux or SD3 transformer in ``shapes``, or None."""
    for prefix in TRANSFORMER_PREFIXES:
        if prefix + "double_blocks.0.img_attn.qkv.weight" in shapes:
            return "flux", prefix
        if prefix + "joint_blocks.0.x_block.attn.qkv.weight" in shapes:
            return "sd3", prefix
    return None


def infer_flux_config(shapes: Shapes, prefix: str, *, name: str) -> dict[str, Any]:
    """``FluxTransformer2DModel`` config from BFL keys; every size from the tensors."""

    def need(key: str) -> tuple[int, ...]:
        shape = shapes.get(prefix + key)
        if shape is None:
            raise UnsupportedCheckpointError(f"{name}: Flux-like transformer without {prefix}{key}")
        return shape

    inner, in_channels = need("img_in.weight")
    context = need("txt_in.weight")[1]
    pooled = need("vector_in.in_layer.weight")[1]
    head_dim = need("double_blocks.0.img_attn.norm.query_norm.scale")[0]
    mlp = need("double_blocks.0.img_mlp.0.weight")[0]
    out_rows = need("final_layer.linear.weight")[0]
    double = _indices(shapes, re.escape(prefix) + r"double_blocks\.(\d+)\.img_attn\.qkv\.weight$")
    single = _indices(shapes, re.escape(prefix) + r"single_blocks\.(\d+)\.linear1\.weight$")
    if double != list(range(len(double))) or single != list(range(len(single))):
        raise UnsupportedCheckpointError(
            f"{name}: Flux transformer with missing blocks (double {double[:3]}..., single {single[:3]}...)"
        )
    if inner % head_dim:
        raise UnsupportedCheckpointError(
            f"{name}: width {inner} is not a multiple of the head size {head_dim}"
        )
    if mlp != FLUX_MLP_RATIO * inner:
        raise UnsupportedCheckpointError(
            f"{name}: Flux transformer with a {mlp}-wide MLP for width {inner}; diffusers' Flux blocks need "
            f"{FLUX_MLP_RATIO}x the width"
        )
    if single:
        linear1 = need("single_blocks.0.linear1.weight")[0]
        if linear1 != 3 * inner + mlp:
            raise UnsupportedCheckpointError(
                f"{name}: single block linear1 has {linear1} rows, not 3 x {inner} + {mlp}"
            )
    return {
        **bundled_flow_config("flux", "transformer"),
        "in_channels": in_channels,
        "out_channels": out_rows,
        "num_layers": len(double),
        "num_single_layers": len(single),
        "attention_head_dim": head_dim,
        "num_attention_heads": inner // head_dim,
        "joint_attention_dim": context,
        "pooled_projection_dim": pooled,
        "guidance_embeds": prefix + "guidance_in.in_layer.weight" in shapes,
        "axes_dims_rope": list(rope_axes(head_dim)),
    }


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """Flux's RoPE split of one head over (index, row, column): 16/56/56 of 128, kept in proportion.

    RoPE has no weights, so a reduced head size cannot say how it was split; each part stays even.
    """
    first = max(2, 2 * round(head_dim / 16))
    second = (head_dim - first) // 2 // 2 * 2
    return first, second, head_dim - first - second


def infer_sd3_config(shapes: Shapes, prefix: str, *, name: str) -> dict[str, Any]:
    """``SD3Transformer2DModel`` config from MMDiT keys; every size from the tensors."""

    def need(key: str) -> tuple[int, ...]:
        shape = shapes.get(prefix + key)
        if shape is None:
            raise UnsupportedCheckpointError(f"{name}: SD3-like transformer without {prefix}{key}")
        return shape

    inner, in_channels, patch, _ = need("x_embedder.proj.weight")
    positions = need("pos_embed")[1]
    side = int(round(positions**0.5))
    if side * side != positions:
        raise UnsupportedCheckpointError(f"{name}: {positions} position embeddings are not a square grid")
    caption, context = need("context_embedder.weight")
    pooled = need("y_embedder.mlp.0.weight")[1]
    out_rows = need("final_layer.linear.weight")[0]
    layers = _indices(shapes, re.escape(prefix) + r"joint_blocks\.(\d+)\.x_block\.attn\.qkv\.weight$")
    if layers != list(range(len(layers))):
        raise UnsupportedCheckpointError(f"{name}: SD3 transformer with missing joint blocks")
    dual = _indices(shapes, re.escape(prefix) + r"joint_blocks\.(\d+)\.x_block\.attn2\.qkv\.weight$")
    ln_q = shapes.get(prefix + "joint_blocks.0.x_block.attn.ln_q.weight")
    head_dim = ln_q[0] if ln_q is not None else SD3_HEAD_CHANNELS
    if inner % head_dim:
        raise UnsupportedCheckpointError(
            f"{name}: width {inner} is not a multiple of the head size {head_dim}"
        )
    if caption != inner:
        raise UnsupportedCheckpointError(
            f"{name}: context projection {caption} differs from the width {inner}"
        )
    return {
        **bundled_flow_config("sd3", "transformer"),
        "in_channels": in_channels,
        "out_channels": out_rows // (patch * patch),
        "patch_size": patch,
        "num_layers": len(layers),
        "attention_head_dim": head_dim,
        "num_attention_heads": inner // head_dim,
        "caption_projection_dim": caption,
        "joint_attention_dim": context,
        "pooled_projection_dim": pooled,
        "pos_embed_max_size": side,
        "dual_attention_layers": dual,
        "qk_norm": "rms_norm" if ln_q is not None else None,
    }


# --------------------------------------------------------------------------------------------------
# Modules (text encoders, VAE)
# --------------------------------------------------------------------------------------------------


def _clip_module(shapes: Shapes, prefix: str, *, name: str) -> ModuleInfo | None:
    base = (
        prefix + "text_model."
        if prefix + "text_model.embeddings.token_embedding.weight" in shapes
        else (prefix if prefix + "embeddings.token_embedding.weight" in shapes else None)
    )
    if base is None:
        return None
    vocab, hidden = shapes[base + "embeddings.token_embedding.weight"]
    positions = shapes.get(base + "embeddings.position_embedding.weight", (77, hidden))[0]
    layers = count_indices(shapes, base + "encoder.layers.{}.self_attn.q_proj.weight")
    fc1 = shapes.get(base + "encoder.layers.0.mlp.fc1.weight")
    if not layers or fc1 is None:
        raise UnsupportedCheckpointError(f"{name}: CLIP text encoder at {base} has no transformer layers")
    projection = shapes.get(prefix + "text_projection.weight") or shapes.get(base + "text_projection.weight")
    config: dict[str, Any] = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "max_position_embeddings": positions,
        "num_hidden_layers": layers,
        "intermediate_size": fc1[0],
        "num_attention_heads": max(1, hidden // 64),
    }
    if projection is not None:
        config["projection_dim"] = projection[0]
    lowered = Path(name).name.lower()
    if hidden == CLIP_G_WIDTH or re.search(r"clip[_-]?g\b|clip_g|bigg", lowered):
        slots: tuple[str, ...] = ("clip_g",)
    elif hidden == CLIP_L_WIDTH or re.search(r"clip[_-]?l\b|clip_l", lowered):
        slots = ("clip_l",)
    else:  # a reduced-size CLIP: its width decides where it fits
        slots = ("clip_l", "clip_g")
    return ModuleInfo(
        kind="clip",
        slots=slots,
        prefix=prefix,
        config=config,
        width=hidden,
        pooled_width=projection[0] if projection is not None else hidden,
    )


def _t5_module(shapes: Shapes, prefix: str, *, name: str) -> ModuleInfo | None:
    q = shapes.get(prefix + "encoder.block.0.layer.0.SelfAttention.q.weight")
    if q is None:
        return None
    embed = shapes.get(prefix + "shared.weight") or shapes.get(prefix + "encoder.embed_tokens.weight")
    bias = shapes.get(prefix + "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    if embed is None or bias is None:
        raise UnsupportedCheckpointError(
            f"{name}: T5 encoder at {prefix or 'the top level'} without its "
            "token embedding or relative attention bias"
        )
    vocab, d_model = embed
    buckets, heads = bias
    gated = prefix + "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in shapes
    wi = shapes.get(
        prefix
        + (
            "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"
            if gated
            else "encoder.block.0.layer.1.DenseReluDense.wi.weight"
        )
    )
    if wi is None:
        raise UnsupportedCheckpointError(f"{name}: T5 encoder without its feed-forward layers")
    layers = count_indices(shapes, prefix + "encoder.block.{}.layer.0.SelfAttention.q.weight")
    config = {
        "vocab_size": vocab,
        "d_model": d_model,
        "d_kv": q[0] // heads,
        "num_heads": heads,
        "num_layers": layers,
        "d_ff": wi[0],
        "relative_attention_num_buckets": buckets,
        "feed_forward_proj": "gated-gelu" if gated else "relu",
    }
    return ModuleInfo(kind="t5", slots=("t5xxl",), prefix=prefix, config=config, width=d_model)


def _vae_module(shapes: Shapes, prefix: str, *, name: str) -> ModuleInfo | None:
    if prefix + "decoder.conv_in.weight" not in shapes or prefix + "encoder.conv_in.weight" not in shapes:
        return None
    config = infer_vae_config(shapes, prefix, name=name)
    config["use_quant_conv"] = prefix + "quant_conv.weight" in shapes
    config["use_post_quant_conv"] = prefix + "post_quant_conv.weight" in shapes
    return ModuleInfo(
        kind="vae",
        slots=("vae",),
        prefix=prefix,
        config=config,
        width=int(config["latent_channels"]),
        layout="ldm" if is_ldm_vae(shapes, prefix) else "diffusers",
    )


def detect_module(shapes: Shapes, *, name: str, prefix: str = "") -> ModuleInfo | None:
    """What module ``shapes`` (under ``prefix``) holds: a CLIP, a T5 encoder, a VAE, or None."""
    for probe in (_t5_module, _clip_module, _vae_module):
        found = probe(shapes, prefix, name=name)
        if found is not None:
            return found
    return None


def embedded_modules(shapes: Shapes, *, name: str) -> dict[str, ModuleInfo]:
    """The text encoders and VAE an all-in-one file carries, by slot."""
    found: dict[str, ModuleInfo] = {}
    for slot, prefix in MODULE_PREFIXES.items():
        if any(key.startswith(prefix) for key in shapes):
            module = detect_module(shapes, name=name, prefix=prefix)
            if module is None:
                raise UnsupportedCheckpointError(
                    f"{name}: the {slot} weights under {prefix} are not a text encoder sdweb knows"
                )
            found[slot] = ModuleInfo(
                kind=module.kind,
                slots=(slot,),
                prefix=module.prefix,
                config=module.config,
                width=module.width,
                pooled_width=module.pooled_width,
                layout=module.layout,
            )
    for prefix in VAE_PREFIXES:
        if any(key.startswith(prefix) for key in shapes):
            module = _vae_module(shapes, prefix, name=name)
            if module is not None:
                found["vae"] = module
                break
    return found


# --------------------------------------------------------------------------------------------------
# Slots: which module fits where
# --------------------------------------------------------------------------------------------------


def module_problem(
    family: str,
    transformer: Mapping[str, Any],
    slot: str,
    module: ModuleInfo,
    others: Mapping[str, ModuleInfo] | None = None,
) -> str | None:
    """Why ``module`` cannot fill ``slot`` of a ``family`` model with ``transformer`` config, or None."""
    if slot not in module.slots:
        kinds = {"clip": "a CLIP text encoder", "t5": "a T5 text encoder", "vae": "a VAE"}
        kind = kinds.get(module.kind, module.kind)
        return f"it is {kind} ({'/'.join(module.slots)}), not a {SLOT_LABELS[slot]}"
    if slot == "vae":
        channels = _latent_channels(family, transformer)
        if module.width != channels:
            return f"it has {module.width} latent channels; this model needs {channels}"
        return None
    if slot == "t5xxl":
        need = int(transformer["joint_attention_dim"])
        if module.width != need:
            return f"it is {module.width} wide; this model's text attention is {need} wide"
        return None
    if family == "flux":  # the one CLIP: its pooled output feeds vector_in
        need = int(transformer["pooled_projection_dim"])
        if module.width != need:
            return f"it is {module.width} wide; this model's pooled text input is {need} wide (a CLIP-L)"
        return None
    # SD3: CLIP-L and CLIP-G side by side, padded to the joint width; their projections make the pooled input.
    if "projection_dim" not in module.config:
        return "it has no text projection; SD 3.x needs CLIP-L and CLIP-G with theirs"
    if module.width > int(transformer["joint_attention_dim"]):
        return f"it is {module.width} wide, wider than the model's text attention"
    other_slot = "clip_g" if slot == "clip_l" else "clip_l"
    other = (others or {}).get(other_slot)
    if other is not None:
        total = module.pooled_width + other.pooled_width
        if total != int(transformer["pooled_projection_dim"]):
            return (
                f"its pooled width {module.pooled_width} plus the {other_slot}'s {other.pooled_width} is "
                f"{total}; this model's pooled text input is {transformer['pooled_projection_dim']} wide"
            )
    return None


def _latent_channels(family: str, transformer: Mapping[str, Any]) -> int:
    if family == "flux":
        return int(transformer["in_channels"]) // 4
    return int(transformer["in_channels"])


# --------------------------------------------------------------------------------------------------
# The families
# --------------------------------------------------------------------------------------------------


def detect_flow_checkpoint(shapes: Shapes, *, name: str) -> Any | None:
    """A :class:`~sdweb.engine.models.detect.Detection` for an SD3/Flux file, or None for other files.

    Raises:
        UnsupportedCheckpointError: an SD3/Flux-like file that cannot be run (the message says why).
    """
    from sdweb.engine.models.detect import Detection

    found = transformer_prefix(shapes)
    if found is None:
        return None
    family, prefix = found
    if "scaled_fp8" in shapes or any(key.endswith(".scale_weight") for key in shapes):
        raise UnsupportedCheckpointError(
            f"{name}: a 'scaled fp8' file (weights with per-layer scale_weight tensors) is not supported; "
            "use the plain fp8 (float8_e4m3fn), fp16/bf16 or GGUF version of this model"
        )
    modules = embedded_modules(shapes, name=name)
    reason: str | None = None
    if family == "flux":
        config = infer_flux_config(shapes, prefix, name=name)
        suffix, reason = _FLUX_VARIANTS.get(
            int(config["in_channels"]),
            (
                "-unknown",
                f"a Flux transformer with {config['in_channels']} input channels is no FLUX.1 "
                "model sdweb knows",
            ),
        )
        variant = "flux-dev" if config["guidance_embeds"] else "flux-schnell"
        family_name = variant + suffix
        required: tuple[str, ...] = ("clip_l", "t5xxl", "vae")
        optional: tuple[str, ...] = ()
    else:
        config = infer_sd3_config(shapes, prefix, name=name)
        if config["dual_attention_layers"]:
            family_name = "sd3.5-medium"  # MMDiT-X
        elif config["qk_norm"]:
            turbo = "turbo" in Path(name).name.lower()
            family_name = "sd3.5-large-turbo" if turbo else "sd3.5-large"
        else:
            family_name = "sd3"
        required = ("clip_l", "clip_g", "vae")
        optional = ("t5xxl",)
    for slot, module in modules.items():
        problem = module_problem(family, config, slot, module, modules)
        if problem is not None:
            raise UnsupportedCheckpointError(f"{name}: its {slot} does not fit its transformer: {problem}")
    config_family = "flux" if family == "flux" else "sd3"
    logger.debug(
        "%s: %s transformer (%s), modules in the file: %s",
        name,
        family_name,
        prefix or "bare keys",
        ", ".join(modules) or "none",
    )
    return Detection(
        family=family_name,
        config_family=config_family,
        prediction_type="flow",
        unet_config={},
        vae_config=_vae_config(config_family, modules.get("vae")),
        text_encoder_configs=(),
        scheduler_config=bundled_flow_config(config_family, "scheduler"),
        unsupported_reason=reason,
        transformer_config=config,
        transformer_prefix=prefix,
        modules=modules,
        required=required,
        optional=optional,
    )


def _vae_config(family: str, module: ModuleInfo | None) -> dict[str, Any] | None:
    if module is None:
        return None
    return vae_config_for(family, module)


def vae_config_for(family: str, module: ModuleInfo) -> dict[str, Any]:
    """The ``AutoencoderKL`` config of a VAE module used with a ``family`` model (scaling from the family)."""
    return {**bundled_flow_config(family, "vae"), **module.config}


def text_encoder_config_for(family: str, slot: str, module: ModuleInfo) -> dict[str, Any]:
    """A text encoder's config: the family's public one with the module's shape facts over it."""
    component = {
        "sd3": {"clip_l": "text_encoder", "clip_g": "text_encoder_2", "t5xxl": "text_encoder_3"},
        "flux": {"clip_l": "text_encoder", "t5xxl": "text_encoder_2"},
    }[family][slot]
    base = bundled_flow_config(family, component)
    skipped = {"architectures", "model_type", "torch_dtype", "dtype", "transformers_version", "_name_or_path"}
    return {**{k: v for k, v in base.items() if k not in skipped and not k.startswith("_")}, **module.config}


def detect_flow_folder(folder: Path, pipeline: str, read: Any) -> Any:
    """Detection for a diffusers folder of ``StableDiffusion3Pipeline`` or ``FluxPipeline`` (pure JSON)."""
    from sdweb.engine.models.detect import Detection

    transformer = read("transformer", "config.json")
    scheduler = read("scheduler", "scheduler_config.json")
    vae = read("vae", "config.json")
    if pipeline == "FluxPipeline":
        config_family = "flux"
        family, reason = _FLUX_VARIANTS.get(int(transformer.get("in_channels", 64)), ("-unknown", "unknown"))
        family = ("flux-dev" if transformer.get("guidance_embeds") else "flux-schnell") + family
    else:
        config_family, reason = "sd3", None
        if transformer.get("dual_attention_layers"):
            family = "sd3.5-medium"
        elif transformer.get("qk_norm"):
            family = "sd3.5-large-turbo" if "turbo" in folder.name.lower() else "sd3.5-large"
        else:
            family = "sd3"
    return Detection(
        family=family,
        config_family=config_family,
        prediction_type="flow",
        unet_config={},
        vae_config=vae,
        text_encoder_configs=(),
        scheduler_config=scheduler,
        unsupported_reason=reason,
        transformer_config=transformer,
    )

"""Which Stable Diffusion family a checkpoint is, and its component configs, from keys and shapes alone.

Pure Python (no torch): the registry calls :func:`detect_checkpoint` with the shapes from a safetensors
header while listing a folder. The loader calls it again with the same shapes before building anything.

What the weights determine is read from them: channel widths, block counts, resnets per block,
transformer depth, cross-attention width, in/out channels, SDXL's added embedding widths, and the text
encoders' width, depth and MLP size. What weights cannot tell (attention head counts, scheduler, tokenizer,
VAE scaling factor) comes from the family's convention and the configs bundled in
``sdweb/data/configs/<family>/`` (the public SD 1.5, SD 2.1 and SDXL 1.0 configs). So a
reduced-size model (BK-SDM, small-sd, our tiny test models) goes through the same path as a full-size
SD 1.5. The readers of shapes are in :mod:`sdweb.engine.models.shape_facts`, shared with the SD3/Flux
and ControlNet detectors.

Families are small classes tried most specific first (:data:`FAMILIES`); each either declines or
returns a :class:`Detection`. Files that are not full checkpoints (LoRA, VAE, embeddings, other
architectures) get an :class:`UnsupportedCheckpointError` saying what they look like.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from sdweb.engine.models.errors import UnsupportedCheckpointError
from sdweb.engine.models.shape_facts import (
    HEAD_CHANNELS,
    Shapes,
    describe_shapes,
    infer_hf_clip,
    infer_open_clip,
    infer_unet_config,
    infer_vae_config,
    unet_variant,
)

logger = logging.getLogger(__name__)

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "data" / "configs"
TOKENIZERS_DIR = Path(__file__).resolve().parents[2] / "data" / "tokenizers"

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_CLIP_PREFIXES = ("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer.")
SD2_OPENCLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."
SDXL_REFINER_OPENCLIP_PREFIX = "conditioner.embedders.0.model."
#: SD 1.x uses 8 heads at every level (LDM's ``num_heads: 8``).
SD1_NUM_HEADS = 8


@dataclass(frozen=True)
class Detection:
    """What a checkpoint is and how to build its components.

    Attributes:
        family: ``sd1``, ``sd2``, ``sd2-v``, ``sdxl``, or a variant (``sd1-inpaint``, ``sdxl-refiner``, ...).
        config_family: the folder under ``sdweb/data/configs`` holding its bundled configs (sd1/sd2/sdxl).
        prediction_type: ``epsilon`` or ``v_prediction``.
        unet_config: ``UNet2DConditionModel`` config.
        vae_config: ``AutoencoderKL`` config, or None when the file carries no VAE.
        text_encoder_configs: ``CLIPTextConfig`` kwargs, one per text encoder (two for SDXL).
        scheduler_config: the bundled scheduler config with this model's prediction type.
        unsupported_reason: set for variants sdweb recognises but cannot run yet.
        transformer_config: flow-matching transformer families (``sd3``, ``flux``; see
            :mod:`sdweb.engine.models.detect_flow`): the transformer's config (``unet_config`` is empty).
        transformer_prefix: where the transformer's keys sit in the file ("" or ``model.diffusion_model.``).
        modules: the text encoders and VAE the file itself carries, by slot (``clip_l``, ``vae``...).
        required: the module slots the family cannot run without; ``optional``: those it can use.
    """

    family: str
    config_family: str
    prediction_type: str
    unet_config: dict[str, Any]
    vae_config: dict[str, Any] | None
    text_encoder_configs: tuple[dict[str, Any], ...]
    scheduler_config: dict[str, Any]
    unsupported_reason: str | None = None
    transformer_config: dict[str, Any] | None = None
    transformer_prefix: str = ""
    modules: Mapping[str, Any] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()

    __hash__ = None  # type: ignore[assignment]  # holds dicts

    @property
    def text_encoder_config(self) -> dict[str, Any]:
        return self.text_encoder_configs[0]

    @property
    def is_sdxl(self) -> bool:
        return self.config_family == "sdxl"

    @property
    def supported(self) -> bool:
        return self.unsupported_reason is None

    @property
    def is_flow(self) -> bool:
        """A flow-matching transformer model (SD 3.x, Flux) rather than a UNet one."""
        return self.transformer_config is not None

    @property
    def missing_modules(self) -> tuple[str, ...]:
        """Required module slots the file does not carry (to be chosen from the module folders)."""
        return tuple(slot for slot in self.required if slot not in self.modules)

    @property
    def tokenizer_dirs(self) -> tuple[Path, ...]:
        """The bundled tokenizer folder for each text encoder."""
        if self.config_family == "sdxl":
            return (TOKENIZERS_DIR / "sd1", TOKENIZERS_DIR / "sd2")
        if self.config_family == "sd3":  # CLIP-L, CLIP-G (same BPE, "!" padding), T5
            return (TOKENIZERS_DIR / "sd1", TOKENIZERS_DIR / "sd2", TOKENIZERS_DIR / "t5")
        if self.config_family == "flux":
            return (TOKENIZERS_DIR / "sd1", TOKENIZERS_DIR / "t5")
        return (TOKENIZERS_DIR / self.config_family,)


def bundled_config(config_family: str, component: str) -> dict[str, Any]:
    """A bundled public config: ``component`` is ``unet``, ``vae``, ``text_encoder``, ``scheduler``..."""
    if component == "model_index":
        path = CONFIGS_DIR / config_family / "model_index.json"
    elif component == "scheduler":
        path = CONFIGS_DIR / config_family / "scheduler" / "scheduler_config.json"
    else:
        path = CONFIGS_DIR / config_family / component / "config.json"
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------
# Families
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Facts:
    """What the families look at, read once."""

    name: str
    shapes: Shapes
    yaml_text: str | None

    def has_prefix(self, prefix: str) -> bool:
        return any(key.startswith(prefix) for key in self.shapes)


class _Family:
    """One model family: ``matches`` looks at keys only; ``detect`` infers the configs."""

    name: ClassVar[str]
    config_family: ClassVar[str]
    hidden_acts: ClassVar[tuple[str, ...]]

    def matches(self, facts: _Facts) -> bool:
        raise NotImplementedError

    def text_encoders(self, facts: _Facts) -> list[dict[str, Any]]:
        raise NotImplementedError

    def prediction_type(self, facts: _Facts) -> str:
        return "v_prediction" if "v_pred" in facts.shapes else "epsilon"

    def family_name(self, facts: _Facts, prediction_type: str) -> str:
        return self.name

    def unet_conventions(self, config: dict[str, Any]) -> dict[str, Any]:
        """Head counts: 64 channels per head, as SD 2.x and SDXL use."""
        return {"attention_head_dim": [max(1, c // HEAD_CHANNELS) for c in config["block_out_channels"]]}

    def variant(self, facts: _Facts, unet: dict[str, Any]) -> tuple[str, str | None]:
        """Family suffix from the UNet's input channels, and the reason when sdweb cannot run it."""
        return unet_variant(unet["in_channels"], name=facts.name)

    def detect(self, facts: _Facts) -> Detection:
        name = facts.name
        # 1. UNet: shape facts over the bundled config, plus head-count conventions.
        inferred = infer_unet_config(facts.shapes, UNET_PREFIX, name=name)
        unet = {**bundled_config(self.config_family, "unet"), **inferred}
        unet.update(self.unet_conventions(unet))
        unet.update(self.extra_unet(facts, unet))
        if unet.get("mid_block_type") is None:
            unet["mid_block_type"] = None
        # 2. Text encoders, checked against the UNet's context width.
        encoders = self.text_encoders(facts)
        context = sum(te["hidden_size"] for te in encoders)
        if context != unet["cross_attention_dim"]:
            raise UnsupportedCheckpointError(
                f"{name}: the UNet attends to {unet['cross_attention_dim']}-wide text "
                f"but the text encoder(s) give {context}: a mixed or damaged checkpoint"
            )
        bundled_te = ["text_encoder", "text_encoder_2"]
        te_configs = tuple(
            {
                **bundled_config(self.config_family, bundled_te[i]),
                **facts_i,
                "hidden_act": self.hidden_acts[i],
            }
            for i, facts_i in enumerate(encoders)
        )
        # 3. VAE, if the file has one.
        vae: dict[str, Any] | None = None
        if any(key.startswith(VAE_PREFIX) for key in facts.shapes):
            vae = {
                **bundled_config(self.config_family, "vae"),
                **infer_vae_config(facts.shapes, VAE_PREFIX, name=name),
            }
        # 4. Prediction type, family name, scheduler.
        prediction = self.prediction_type(facts)
        suffix, reason = self.variant(facts, unet)
        scheduler = {**bundled_config(self.config_family, "scheduler"), "prediction_type": prediction}
        family = self.family_name(facts, prediction) + suffix
        self.adjust(family, unet, vae)
        return Detection(
            family=family,
            config_family=self.config_family,
            prediction_type=prediction,
            unet_config=unet,
            vae_config=vae,
            text_encoder_configs=te_configs,
            scheduler_config=scheduler,
            unsupported_reason=reason,
        )

    def extra_unet(self, facts: _Facts, unet: dict[str, Any]) -> dict[str, Any]:
        return {}

    def adjust(self, family: str, unet: dict[str, Any], vae: dict[str, Any] | None) -> None:
        """Family-specific conventions that depend on the final family name."""


class _SDXLRefiner(_Family):
    name = "sdxl-refiner"
    config_family = "sdxl"
    hidden_acts = ("gelu",)

    def matches(self, facts: _Facts) -> bool:
        return facts.has_prefix(SDXL_REFINER_OPENCLIP_PREFIX) and facts.has_prefix(UNET_PREFIX)

    def detect(self, facts: _Facts) -> Detection:
        detection = super().detect(facts)
        return Detection(
            **{
                **detection.__dict__,
                "unsupported_reason": (
                    "the SDXL refiner only refines SDXL base images (img2img), which sdweb does not run yet; "
                    "load an SDXL base checkpoint"
                ),
            }
        )

    def text_encoders(self, facts: _Facts) -> list[dict[str, Any]]:
        return [
            infer_open_clip(facts.shapes, SDXL_REFINER_OPENCLIP_PREFIX, name=facts.name, drop_last=False)
        ]

    def extra_unet(self, facts: _Facts, unet: dict[str, Any]) -> dict[str, Any]:
        return _sdxl_added_embeddings(facts, unet, self.text_encoders(facts)[-1], time_ids=5)


class _SDXL(_Family):
    name = "sdxl"
    config_family = "sdxl"
    hidden_acts = ("quick_gelu", "gelu")

    def matches(self, facts: _Facts) -> bool:
        return facts.has_prefix(SDXL_OPENCLIP_PREFIX) and facts.has_prefix(UNET_PREFIX)

    def text_encoders(self, facts: _Facts) -> list[dict[str, Any]]:
        if not facts.has_prefix(SDXL_CLIP_PREFIX):
            raise UnsupportedCheckpointError(
                f"{facts.name}: SDXL-like checkpoint without its first text encoder ({SDXL_CLIP_PREFIX}*)"
            )
        return [
            infer_hf_clip(facts.shapes, SDXL_CLIP_PREFIX, name=facts.name),
            infer_open_clip(facts.shapes, SDXL_OPENCLIP_PREFIX, name=facts.name, drop_last=False),
        ]

    def extra_unet(self, facts: _Facts, unet: dict[str, Any]) -> dict[str, Any]:
        return _sdxl_added_embeddings(facts, unet, self.text_encoders(facts)[-1], time_ids=6)


def _sdxl_added_embeddings(
    facts: _Facts, unet: dict[str, Any], pooled_te: dict[str, Any], *, time_ids: int
) -> dict[str, Any]:
    """SDXL's added conditioning: pooled text (projection width) + ``time_ids`` sinusoidal size/crop ids."""
    adm = unet.get("projection_class_embeddings_input_dim")
    if adm is None:
        raise UnsupportedCheckpointError(
            f"{facts.name}: SDXL-like checkpoint without label_emb (added embeddings)"
        )
    pooled = pooled_te.get("projection_dim", pooled_te["hidden_size"])
    per_id, rest = divmod(adm - pooled, time_ids)
    if rest or per_id <= 0:
        raise UnsupportedCheckpointError(
            f"{facts.name}: added-embedding width {adm} does not fit {pooled} pooled + {time_ids} time ids"
        )
    return {"addition_embed_type": "text_time", "addition_time_embed_dim": per_id}


class _SD2(_Family):
    name = "sd2"
    config_family = "sd2"
    hidden_acts = ("gelu",)

    def matches(self, facts: _Facts) -> bool:
        return facts.has_prefix(SD2_OPENCLIP_PREFIX) and facts.has_prefix(UNET_PREFIX)

    def text_encoders(self, facts: _Facts) -> list[dict[str, Any]]:
        return [infer_open_clip(facts.shapes, SD2_OPENCLIP_PREFIX, name=facts.name, drop_last=True)]

    def prediction_type(self, facts: _Facts) -> str:
        # A1111's convention: a same-named .yaml decides; without one, SD 2.x means the 768-v model.
        if facts.yaml_text is not None:
            return "v_prediction" if _yaml_says_v(facts.yaml_text) else "epsilon"
        # Only the plain text-to-image 768 model is v; SD 2's inpainting and depth models are epsilon.
        conv_in = facts.shapes.get(UNET_PREFIX + "input_blocks.0.0.weight", (0, 4))
        return "v_prediction" if conv_in[1] == 4 else "epsilon"

    def family_name(self, facts: _Facts, prediction_type: str) -> str:
        return "sd2-v" if prediction_type == "v_prediction" else "sd2"

    def adjust(self, family: str, unet: dict[str, Any], vae: dict[str, Any] | None) -> None:
        if not family.startswith("sd2-v"):
            # The 512-base model: native 512 px, no attention upcast.
            unet["sample_size"] = 64
            unet["upcast_attention"] = False
            if vae is not None:
                vae["sample_size"] = 512


class _SD1(_Family):
    name = "sd1"
    config_family = "sd1"
    hidden_acts = ("quick_gelu",)

    def matches(self, facts: _Facts) -> bool:
        return facts.has_prefix("cond_stage_model.transformer.") and facts.has_prefix(UNET_PREFIX)

    def text_encoders(self, facts: _Facts) -> list[dict[str, Any]]:
        prefix = next(p for p in SD1_CLIP_PREFIXES if p + "embeddings.token_embedding.weight" in facts.shapes)
        return [infer_hf_clip(facts.shapes, prefix, name=facts.name)]

    def unet_conventions(self, config: dict[str, Any]) -> dict[str, Any]:
        return {"attention_head_dim": SD1_NUM_HEADS}


#: Most specific first.
FAMILIES: tuple[_Family, ...] = (_SDXLRefiner(), _SDXL(), _SD2(), _SD1())


def _yaml_says_v(yaml_text: str) -> bool:
    return (
        re.search(r"^\s*parameterization\s*:\s*[\"']?v[\"']?\s*(#.*)?$", yaml_text, re.MULTILINE) is not None
    )


#: Safetensors metadata keys under which a checkpoint may carry its own component configs as JSON, for
#: architectures shapes cannot describe (norm groups, head counts, latent scale): sdweb's bundled demo model
#: (written by demo_model/export.py). All four or none.
METADATA_CONFIG_KEYS: dict[str, str] = {
    "unet": "sdweb_unet_config",
    "vae": "sdweb_vae_config",
    "text_encoder": "sdweb_text_encoder_config",
    "scheduler": "sdweb_scheduler_config",
}


def apply_metadata_configs(
    detection: Detection, metadata: Mapping[str, str] | None, *, name: str
) -> Detection:
    """``detection`` with the component configs the file's safetensors metadata carries, when it does.

    The family (tokenizer, conventions) still comes from the shapes; only the configs are replaced.
    """
    present = [key for key in METADATA_CONFIG_KEYS.values() if key in (metadata or {})]
    if not present:
        return detection
    assert metadata is not None
    if detection.config_family == "sdxl":
        raise UnsupportedCheckpointError(
            f"{name}: component configs in the metadata are only read for SD 1.x/2.x")
    try:
        configs = {part: json.loads(metadata[key]) for part, key in METADATA_CONFIG_KEYS.items()}
    except KeyError as exc:
        raise UnsupportedCheckpointError(
            f"{name}: its metadata carries some component configs but not {exc.args[0]}") from exc
    except json.JSONDecodeError as exc:
        raise UnsupportedCheckpointError(
            f"{name}: a component config in its metadata is not JSON ({exc})") from exc
    if not all(isinstance(config, dict) for config in configs.values()):
        raise UnsupportedCheckpointError(
            f"{name}: the component configs in its metadata must be JSON objects")
    scheduler = configs["scheduler"]
    return replace(
        detection,
        unet_config=configs["unet"],
        vae_config=configs["vae"] if detection.vae_config is not None else None,
        text_encoder_configs=(configs["text_encoder"],),
        scheduler_config=scheduler,
        prediction_type=str(scheduler.get("prediction_type", detection.prediction_type)),
    )


def detect_checkpoint(
    shapes: Shapes, *, name: str, yaml_text: str | None = None, metadata: Mapping[str, str] | None = None
) -> Detection:
    """Detect the family of a single-file checkpoint from its keys and shapes.

    Args:
        shapes: every tensor's key and shape (from a safetensors header or a loaded state dict).
        name: the file name, used in error messages.
        yaml_text: the same-named ``.yaml`` beside the file, if any (A1111 convention for SD 2.x v/eps).
        metadata: the safetensors header metadata; component configs in it (:data:`METADATA_CONFIG_KEYS`)
            replace the inferred ones.

    Raises:
        UnsupportedCheckpointError: not a Stable Diffusion checkpoint sdweb knows; the message says what
            the file looks like instead.
    """
    from sdweb.engine.models.detect_flow import detect_flow_checkpoint

    flow = detect_flow_checkpoint(shapes, name=name)
    if flow is not None:
        return flow
    facts = _Facts(name=name, shapes=shapes, yaml_text=yaml_text)
    for family in FAMILIES:
        if family.matches(facts):
            detection = apply_metadata_configs(family.detect(facts), metadata, name=name)
            logger.debug("%s: detected %s (%s)", name, detection.family, detection.prediction_type)
            return detection
    raise UnsupportedCheckpointError(f"{name}: {_what_it_looks_like(facts)}")


def _what_it_looks_like(facts: _Facts) -> str:
    seen = describe_shapes(facts.shapes)
    keys = list(facts.shapes)
    if not keys:
        return "not a checkpoint: the file holds no tensors"
    joined = "\n".join(keys[:2000])
    if re.search(r"lora_(up|down|A|B)\b|\.lora_|^lora_(unet|te)|\.alpha$|hada_w|lokr_", joined, re.MULTILINE):
        return (
            f"looks like a LoRA ({len(keys)} tensors, e.g. {keys[0]}); put it in models/Lora "
            "and use it from the prompt, it is not a checkpoint"
        )
    if facts.has_prefix(UNET_PREFIX):
        return (
            f"has a Stable Diffusion UNet but no text encoder sdweb recognises ({seen}); "
            "a UNet-only or unknown-architecture file"
        )
    if "encoder.conv_in.weight" in facts.shapes and "decoder.conv_in.weight" in facts.shapes:
        return "looks like a VAE on its own, not a checkpoint; put it in models/VAE"
    if facts.has_prefix(VAE_PREFIX) and not facts.has_prefix(UNET_PREFIX):
        return "holds only VAE weights (first_stage_model.*), not a full checkpoint; put it in models/VAE"
    if {"emb_params", "string_to_param.*", "clip_l", "clip_g"} & set(keys) or (
        len(keys) <= 2 and all(len(s) == 2 and s[1] in (768, 1024, 1280) for s in facts.shapes.values())
    ):
        return "looks like a textual-inversion embedding, not a checkpoint; put it in the embeddings folder"
    if "conv_in.weight" in facts.shapes and any(k.startswith("down_blocks.") for k in keys):
        return "looks like a diffusers-format UNet alone; sdweb loads full checkpoints or diffusers folders"
    if any(k.startswith(("control_model.", "input_hint_block.")) for k in keys):
        return "looks like a ControlNet model, not a checkpoint"
    if any(("double_blocks." in k or "joint_blocks." in k) for k in keys):
        return (
            f"an architecture sdweb does not support (Flux/SD3-style transformer; {seen})"
        )
    return f"not a Stable Diffusion 1.x/2.x/XL checkpoint sdweb recognises ({seen})"


def detect_diffusers_folder(folder: Path) -> Detection:
    """Detection for a diffusers folder, from its ``model_index.json`` and component configs (pure JSON)."""
    name = folder.name

    def read(*parts: str) -> dict[str, Any]:
        path = folder.joinpath(*parts)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UnsupportedCheckpointError(
                f"{name}: diffusers folder without a readable {'/'.join(parts)}"
            ) from exc

    index = read("model_index.json")
    pipeline = index.get("_class_name", "").replace("InpaintPipeline", "Pipeline")
    if pipeline in ("StableDiffusion3Pipeline", "FluxPipeline"):
        from sdweb.engine.models.detect_flow import detect_flow_folder

        return detect_flow_folder(folder, pipeline, read)
    unet = read("unet", "config.json")
    scheduler = read("scheduler", "scheduler_config.json")
    vae = read("vae", "config.json") if (folder / "vae" / "config.json").is_file() else None
    encoders = [read(te, "config.json") for te in ("text_encoder", "text_encoder_2") if te in index]
    if pipeline == "StableDiffusionXLPipeline":
        config_family = family = "sdxl"
    elif pipeline == "StableDiffusionPipeline":
        config_family = "sd2" if encoders and encoders[0].get("hidden_act") == "gelu" else "sd1"
        family = config_family
    else:
        raise UnsupportedCheckpointError(
            f"{name}: diffusers pipeline {pipeline or '(none)'} is not supported"
        )
    prediction = scheduler.get("prediction_type", "epsilon")
    if config_family == "sd2" and prediction == "v_prediction":
        family = "sd2-v"
    suffix, reason = unet_variant(int(unet.get("in_channels", 4)), name=name)
    family += suffix
    return Detection(
        family=family,
        config_family=config_family,
        prediction_type=prediction,
        unet_config=unet,
        vae_config=vae,
        text_encoder_configs=tuple(encoders),
        scheduler_config=scheduler,
        unsupported_reason=reason,
    )

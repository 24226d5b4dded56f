"""Build diffusers / transformers modules from original-layout (LDM) state dicts, on the meta device.

Each builder makes the module without memory (``init_empty_weights``), renames the file's keys with
diffusers' own ``single_file_utils`` conversion functions, and adopts the tensors already read
(:func:`assign_weights`: ``load_state_dict(assign=True)``), so the weights exist once, never twice.
Used by the checkpoint loader (:mod:`sdweb.engine.models.loader`), the SD3/Flux loader and the
ControlNet / IP-Adapter loaders.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers import schedulers as diffusers_schedulers
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from sdweb.engine.models.detect import Detection
from sdweb.engine.models.errors import CheckpointReadError, UnsupportedCheckpointError

logger = logging.getLogger(__name__)

#: Keys a checkpoint may carry that the diffusers modules do not have, dropped without a warning.
IGNORABLE_SUFFIXES = ("position_ids", "logit_scale")


def assign_weights(module: torch.nn.Module, state: Mapping[str, torch.Tensor], *, what: str,
                   name: str) -> None:
    """Adopt ``state``'s tensors as ``module``'s parameters; every parameter must be covered (the
    :data:`IGNORABLE_SUFFIXES` keys a file may carry beyond them are dropped without a warning).
    """
    expected = set(module.state_dict().keys())
    missing = sorted(expected - set(state))
    if missing:
        raise UnsupportedCheckpointError(
            f"{name}: the {what} weights are incomplete "
            f"({len(missing)} missing, e.g. {', '.join(missing[:3])})"
        )
    extra = [k for k in state if k not in expected]
    unexpected = [k for k in extra if not k.endswith(IGNORABLE_SUFFIXES)]
    if unexpected:
        logger.warning(
            "%s: ignoring %d unexpected %s keys, e.g. %s", name, len(unexpected), what, unexpected[:3]
        )
    wanted = {k: v for k, v in state.items() if k in expected}
    module.load_state_dict(wanted, strict=True, assign=True)
    module.eval()
    module.requires_grad_(False)


def build_unet(detection: Detection, state: dict[str, torch.Tensor], name: str) -> UNet2DConditionModel:
    config = detection.unet_config
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    converted = convert_ldm_unet_checkpoint(state, config)
    assign_weights(unet, converted, what="UNet", name=name)
    return unet


def build_vae(config: Mapping[str, Any], ldm_state: Mapping[str, torch.Tensor], name: str) -> AutoencoderKL:
    """An ``AutoencoderKL`` from original-layout keys (with or without ``first_stage_model.``)."""
    with init_empty_weights():
        vae = AutoencoderKL.from_config(dict(config))
    converted = convert_ldm_vae_checkpoint(dict(ldm_state), dict(config))
    assign_weights(vae, converted, what="VAE", name=name)
    return vae


def clip_config(config: Mapping[str, Any]) -> CLIPTextConfig:
    # Bookkeeping fields of the public config.json; the dtype is the loader's choice, not the file's.
    skipped = {"architectures", "model_type", "torch_dtype", "dtype", "transformers_version"}
    return CLIPTextConfig(**{k: v for k, v in config.items() if not k.startswith("_") and k not in skipped})


def fit_text_model_prefix(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Diffusers' converters emit ``text_model.*``; transformers >= 5.6 flattened ``CLIPTextModel``."""
    wrapped = hasattr(model, "text_model")
    fitted: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        bare = key.removeprefix("text_model.")
        if wrapped and key != "text_projection.weight":
            fitted["text_model." + bare] = tensor
        else:
            fitted[bare] = tensor
    return fitted


def build_hf_clip(
    config: Mapping[str, Any], state: dict[str, torch.Tensor], prefix: str, *, name: str
) -> CLIPTextModel:
    with init_empty_weights():
        model = CLIPTextModel(clip_config(config))
    # Old SD1 files lack the ``text_model.`` level; give the converter the layout it expects.
    picked = {
        "cond_stage_model.transformer.text_model." + k[len(prefix) :]: v
        for k, v in state.items()
        if k.startswith(prefix)
    }
    converted = convert_ldm_clip_checkpoint(picked)
    assign_weights(model, fit_text_model_prefix(model, converted), what="text encoder", name=name)
    return model


def build_open_clip(
    config: Mapping[str, Any],
    state: dict[str, torch.Tensor],
    prefix: str,
    *,
    with_projection: bool,
    name: str,
) -> CLIPTextModel | CLIPTextModelWithProjection:
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    with init_empty_weights():
        model = cls(clip_config(config))
    picked = {k: v for k, v in state.items() if k.startswith(prefix)}
    converted = convert_open_clip_checkpoint(model, picked, prefix=prefix)
    # SD 2.x runs the penultimate layer: the file's last resblock has no place in the model.
    layers = int(config["num_hidden_layers"])
    converted = {
        k: v
        for k, v in converted.items()
        if not (".encoder.layers." in k and int(k.split(".encoder.layers.")[1].split(".")[0]) >= layers)
    }
    if not with_projection:
        converted.pop("text_projection.weight", None)
    assign_weights(model, fit_text_model_prefix(model, converted), what="text encoder", name=name)
    return model


def clip_tokenizer(folder: Path) -> CLIPTokenizer:
    """A bundled CLIP tokenizer (``sdweb/data/tokenizers/<name>``), offline; a clear error if missing."""
    if not (folder / "vocab.json").is_file():
        raise CheckpointReadError(f"bundled tokenizer files are missing from {folder}; reinstall sdweb")
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


def build_scheduler(config: Mapping[str, Any]) -> Any:
    """The scheduler named by a scheduler config's ``_class_name``, from that config."""
    class_name = config.get("_class_name", "PNDMScheduler")
    cls = getattr(diffusers_schedulers, class_name, None)
    if cls is None:
        raise UnsupportedCheckpointError(
            f"unknown scheduler class {class_name!r} in the model's scheduler config"
        )
    return cls.from_config(dict(config))


def pop_prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Move the keys under ``prefix`` out of ``state``: each tensor stays referenced exactly once."""
    picked = {k: state[k] for k in list(state) if k.startswith(prefix)}
    for key in picked:
        del state[key]
    return picked

"""Build an SD 3.x or Flux.1 pipeline from the file forms people download, offline and lean.

:func:`load_flow_checkpoint` takes a detection (:mod:`sdweb.engine.models.detect_flow`) and the module
files chosen for the slots the checkpoint lacks (:mod:`sdweb.engine.models.modules`), then:

1. Reads the tensors it needs, one at a time, cast as they are read (the transformer and text encoders to
   ``runtime.dtype``, the VAE to ``runtime.vae_dtype``). **fp8** weights (``float8_e4m3fn``/``e5m2``)
   are kept in fp8: each linear layer casts its weight to the compute dtype for its forward and drops the
   copy after (:func:`keep_fp8_storage`), so memory holds fp8; biases are kept at the compute dtype.
   **GGUF** transformers are read one tensor at a time (:func:`sdweb.engine.models.gguf_io.read_gguf_state`)
   and handed to diffusers' GGUF support (``GGUFQuantizationConfig``): the weights stay quantized and are
   dequantized per layer.
2. Builds each component on the meta device from its shape-derived config and adopts the tensors: the
   Flux transformer through sdweb's width-agnostic key mapping (:mod:`sdweb.engine.models.flux_layout`),
   the SD3 MMDiT through diffusers' ``convert_sd3_transformer_checkpoint_to_diffusers``, VAEs through
   :func:`sdweb.engine.models.loader.build_vae` / ``load_vae``, CLIP and T5 from Hugging Face keys.
3. Assembles ``StableDiffusion3Pipeline`` / ``FluxPipeline`` with the bundled tokenizers (CLIP-L, CLIP-G,
   T5) and the bundled flow-matching scheduler config.

Diffusers folders of these pipelines load with ``from_pretrained(local_files_only=True)``.
"""

from __future__ import annotations

import functools
import json
import logging
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import init_empty_weights
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from sdweb.engine.models.components import assign_weights, build_vae, clip_tokenizer
from sdweb.engine.models.detect import TOKENIZERS_DIR, Detection
from sdweb.engine.models.detect_flow import (
    ModuleInfo,
    bundled_flow_config,
    text_encoder_config_for,
    vae_config_for,
)
from sdweb.engine.models.errors import CheckpointReadError, UnsupportedCheckpointError
from sdweb.engine.models.flux_layout import flux_to_diffusers
from sdweb.engine.models.safetensors_io import iter_safetensors_tensors, read_safetensors_header

if TYPE_CHECKING:
    from sdweb.engine.devices import RuntimeConfig
    from sdweb.engine.models.modules import ModuleFile

logger = logging.getLogger(__name__)

FP8_DTYPES = tuple(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, name))
#: Layers upcast to the compute dtype when the rest stays fp8: embeddings and the patch projections.
_LAYERWISE_SKIP = ("pos_embed", "patch_embed", "^proj_in$", "^proj_out$", "shared")
#: Parts of an all-in-one file that are never the transformer (skipped when its keys are bare).
_OTHER_PARTS = ("text_encoders.", "first_stage_model.", "vae.", "cond_stage_model.", "conditioner.")
#: Where the offline T5 tokenizer lives, and what to do when it is missing.
T5_TOKENIZER_DIR = TOKENIZERS_DIR / "t5"


def load_flow_checkpoint(
    path: Path,
    name: str,
    kind: str,
    detection: Detection,
    runtime: RuntimeConfig,
    modules: Mapping[str, ModuleFile],
) -> DiffusionPipeline:
    """The pipeline for an SD3/Flux single file or GGUF transformer, with ``modules`` filling its gaps."""
    family = detection.config_family
    transformer_config = dict(detection.transformer_config or {})
    own = {slot: info for slot, info in detection.modules.items() if slot not in modules}
    # 1. Tensors of the main file: the transformer, and the modules it carries that are not replaced.
    if kind == "gguf":
        transformer = _gguf_transformer(
            path, family, transformer_config, detection.transformer_prefix, runtime
        )
        state: dict[str, torch.Tensor] = {}
    else:
        prefixes = tuple(info.prefix for info in own.values())
        prefix = detection.transformer_prefix

        def include(key: str) -> bool:
            if prefixes and key.startswith(prefixes):
                return True
            return key.startswith(prefix) and not key.startswith(_OTHER_PARTS)

        vae_prefix = own["vae"].prefix if "vae" in own else None
        state = _read(path, include, _dtype_for(runtime, vae_prefix))
        transformer_state = {
            k[len(prefix) :]: state.pop(k)
            for k in list(state)
            if k.startswith(prefix) and not (prefixes and k.startswith(prefixes))
        }
        transformer = _build_transformer(family, transformer_config, transformer_state, runtime, name)
        del transformer_state
    # 2. Modules: the file's own, then the chosen files.
    parts: dict[str, Any] = {}
    for slot, info in own.items():
        picked = {k[len(info.prefix) :]: state.pop(k) for k in list(state) if k.startswith(info.prefix)}
        parts[slot] = _build_module(family, slot, info, picked, runtime, name)
    state.clear()
    for slot, item in modules.items():
        parts[slot] = _load_module_file(family, slot, item, runtime)
    # 3. The pipeline.
    return assemble_pipeline(family, transformer, parts)


def assemble_pipeline(family: str, transformer: Any, parts: Mapping[str, Any]) -> DiffusionPipeline:
    """``StableDiffusion3Pipeline`` / ``FluxPipeline`` from built components and the bundled tokenizers."""
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(bundled_flow_config(family, "scheduler"))
    clip_tokenizer = _clip_tokenizer("sd1")
    t5 = parts.get("t5xxl")
    if family == "sd3":
        return StableDiffusion3Pipeline(
            transformer=transformer,
            scheduler=scheduler,
            vae=parts["vae"],
            text_encoder=parts["clip_l"],
            tokenizer=clip_tokenizer,
            text_encoder_2=parts["clip_g"],
            tokenizer_2=_clip_tokenizer("sd2"),
            text_encoder_3=t5,
            tokenizer_3=t5_tokenizer() if t5 is not None else None,
        )
    return FluxPipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=parts["vae"],
        text_encoder=parts["clip_l"],
        tokenizer=clip_tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer(),
    )


def load_flow_diffusers_folder(
    folder: Path, detection: Detection, runtime: RuntimeConfig
) -> DiffusionPipeline:
    """A diffusers folder of an SD3 or Flux pipeline, offline."""
    cls = StableDiffusion3Pipeline if detection.config_family == "sd3" else FluxPipeline
    try:
        pipe = cls.from_pretrained(str(folder), local_files_only=True, torch_dtype=runtime.dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointReadError(f"{folder.name}: the diffusers folder cannot be loaded: {exc}") from exc
    if runtime.vae_dtype != runtime.dtype:
        pipe.vae.to(dtype=runtime.vae_dtype)
    return pipe


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def _dtype_for(runtime: RuntimeConfig, vae_prefix: str | None) -> Callable[[str], torch.dtype | None]:
    def dtype_for(key: str) -> torch.dtype | None:
        if vae_prefix is not None and key.startswith(vae_prefix):
            return runtime.vae_dtype
        return runtime.dtype

    return dtype_for


def _read(
    path: Path, include: Callable[[str], bool], dtype_for: Callable[[str], torch.dtype | None]
) -> dict[str, torch.Tensor]:
    """Tensors of ``path``; fp8 weights stay fp8 (cast per layer at run time), the rest as ``dtype_for``."""
    header = read_safetensors_header(path)

    def target(key: str) -> torch.dtype | None:
        entry = header.entries[key]
        return None if entry.dtype.startswith("F8_") and len(entry.shape) == 2 else dtype_for(key)

    return dict(iter_safetensors_tensors(path, header=header, include=include, dtype_for=target))


def _has_fp8(module: torch.nn.Module) -> torch.dtype | None:
    return next((p.dtype for p in module.parameters() if p.dtype in FP8_DTYPES), None)


def keep_fp8_storage(module: torch.nn.Module, compute: torch.dtype, *, what: str) -> None:
    """fp8 weights of linear layers stay fp8 (cast to ``compute`` for each forward); biases and every other
    fp8 tensor go to ``compute`` (a bias is small, and fp8 would round it to 3 mantissa bits).

    Layers matching :data:`_LAYERWISE_SKIP` (embeddings, the patch projections) are upcast whole.
    The adaLN modulation layers stay fp8: their values are fp8 in the file, an upcast copy would only cost
    memory (a quarter of Flux). The input is cast too: T5 casts its hidden states to its output layer's
    weight dtype before calling it.
    """
    import re

    storage = _has_fp8(module)
    if storage is None:
        return
    skip = re.compile("|".join(_LAYERWISE_SKIP))
    kept = 0
    for name, sub in module.named_modules():
        linear = isinstance(sub, torch.nn.Linear)
        is_kept = linear and sub.weight.dtype in FP8_DTYPES and not skip.search(name)
        for attr, param in list(sub.named_parameters(recurse=False)):
            if param.dtype in FP8_DTYPES and not (is_kept and attr == "weight"):
                setattr(sub, attr, torch.nn.Parameter(param.data.to(compute), requires_grad=False))
        if is_kept:
            sub.forward = functools.partial(_fp8_linear_forward, sub, compute)  # type: ignore[method-assign]
            kept += 1
    logger.info(
        "%s: %d linear layers' weights stored in %s, computed layer by layer in %s",
        what,
        kept,
        str(storage).removeprefix("torch."),
        str(compute).removeprefix("torch."),
    )


def _fp8_linear_forward(layer: torch.nn.Linear, compute: torch.dtype, x: torch.Tensor) -> torch.Tensor:
    bias = layer.bias
    return torch.nn.functional.linear(
        x.to(compute), layer.weight.to(compute), bias.to(compute) if bias is not None else None
    )


# --------------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------------


def _build_transformer(
    family: str, config: dict[str, Any], state: dict[str, torch.Tensor], runtime: RuntimeConfig, name: str
) -> torch.nn.Module:
    model_config = {k: v for k, v in config.items() if not k.startswith("_")}
    if family == "flux":
        with init_empty_weights():
            model: torch.nn.Module = FluxTransformer2DModel.from_config(model_config)
        converted = flux_to_diffusers(state, model_config)
    else:
        from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

        with init_empty_weights():
            model = SD3Transformer2DModel.from_config(model_config)
        converted = convert_sd3_transformer_checkpoint_to_diffusers(state)
    if state:
        logger.warning("%s: %d transformer keys were not used, e.g. %s", name, len(state), list(state)[:3])
    assign_weights(model, converted, what="transformer", name=name)
    # The model holds the tensors now: without this reference, an fp8 weight upcast below is freed at once.
    converted.clear()
    keep_fp8_storage(model, runtime.dtype, what=f"{name} transformer")
    return model


def _gguf_transformer(
    path: Path, family: str, config: dict[str, Any], prefix: str, runtime: RuntimeConfig
) -> torch.nn.Module:
    """A GGUF transformer through diffusers' GGUF quantizer: weights stay quantized, dequantized per layer."""
    from sdweb.engine.models.gguf_io import GGUF_EXTRA_HINT, gguf_available, read_gguf_state

    if not gguf_available():
        raise UnsupportedCheckpointError(f"{path.name}: {GGUF_EXTRA_HINT}")
    from diffusers import GGUFQuantizationConfig

    compute = runtime.dtype
    # Streamed, quantized tensors kept quantized, the few plain ones already at the compute dtype (so
    # diffusers' own cast below makes no second copy of them).
    state = read_gguf_state(path, prefix=prefix, plain_dtype=compute)
    model_config = {k: v for k, v in config.items() if not k.startswith("_")}
    if family == "flux":
        converted = flux_to_diffusers(state, model_config)
        cls: Any = FluxTransformer2DModel
    else:
        from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

        converted = convert_sd3_transformer_checkpoint_to_diffusers(state)
        cls = SD3Transformer2DModel
    del state
    # from_single_file takes the config from a folder: the shape-derived one is written to a temporary one.
    with tempfile.TemporaryDirectory(prefix="sdweb-gguf-") as folder:
        (Path(folder) / "config.json").write_text(json.dumps({"_class_name": cls.__name__, **model_config}))
        model = cls.from_single_file(
            converted,
            config=folder,
            local_files_only=True,
            torch_dtype=compute,
            quantization_config=GGUFQuantizationConfig(compute_dtype=compute),
        )
    model.eval()
    model.requires_grad_(False)
    logger.info(
        "%s: GGUF weights stay quantized, dequantized per layer to %s",
        path.name,
        str(compute).removeprefix("torch."),
    )
    return model


def _build_module(
    family: str,
    slot: str,
    info: ModuleInfo,
    state: dict[str, torch.Tensor],
    runtime: RuntimeConfig,
    name: str,
) -> torch.nn.Module:
    if slot == "vae":
        config = {k: v for k, v in vae_config_for(family, info).items() if not k.startswith("_")}
        if info.layout == "ldm":
            return build_vae(config, state, name)
        with init_empty_weights():
            vae = AutoencoderKL.from_config(config)
        assign_weights(vae, state, what="VAE", name=name)
        return vae
    config = text_encoder_config_for(family, slot, info)
    if info.kind == "t5":
        with init_empty_weights():
            t5 = T5EncoderModel(T5Config(**config))
        if "shared.weight" not in state and "encoder.embed_tokens.weight" in state:
            state["shared.weight"] = state["encoder.embed_tokens.weight"]
        state.setdefault("encoder.embed_tokens.weight", state.get("shared.weight"))  # tied in T5
        assign_weights(t5, state, what=f"{slot} text encoder", name=name)
        t5.tie_weights()
        keep_fp8_storage(t5, runtime.dtype, what=f"{name} {slot}")
        return t5
    projected = family == "sd3"
    cls = CLIPTextModelWithProjection if projected else CLIPTextModel
    with init_empty_weights():
        clip = cls(CLIPTextConfig(**config))
    wrapped = hasattr(clip, "text_model")
    fitted: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        bare = key.removeprefix("text_model.")
        if bare.startswith("text_projection."):
            if projected:
                fitted[bare] = tensor
            continue
        fitted[("text_model." if wrapped else "") + bare] = tensor
    assign_weights(clip, fitted, what=f"{slot} text encoder", name=name)
    keep_fp8_storage(clip, runtime.dtype, what=f"{name} {slot}")
    return clip


def _load_module_file(family: str, slot: str, item: ModuleFile, runtime: RuntimeConfig) -> torch.nn.Module:
    assert item.module is not None
    info = item.module
    if slot == "vae":
        from sdweb.engine.models.loader import load_vae

        return load_vae(item.path, runtime.vae_dtype, base_config=vae_config_for(family, info))
    state = _read(item.path, lambda key: key.startswith(info.prefix), lambda _key: runtime.dtype)
    state = {k[len(info.prefix) :]: v for k, v in state.items()}
    module = _build_module(family, slot, info, state, runtime, item.name)
    logger.info("using %s as the %s", item.name, slot)
    return module


# --------------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------------


def _clip_tokenizer(folder: str) -> CLIPTokenizer:
    return clip_tokenizer(TOKENIZERS_DIR / folder)


def t5_tokenizer(folder: Path = T5_TOKENIZER_DIR) -> T5TokenizerFast:
    """The bundled T5 v1.1 tokenizer (no hub, no sentencepiece); a clear error naming the file if missing."""
    if not (folder / "tokenizer.json").is_file():
        raise CheckpointReadError(
            f"the T5 tokenizer file {folder / 'tokenizer.json'} is missing (it ships with sdweb; "
            "reinstall, or "
            "copy tokenizer.json of google/t5-v1_1-xxl, also in FLUX.1-dev/tokenizer_2, there)"
        )
    return T5TokenizerFast.from_pretrained(str(folder), local_files_only=True)


def storage_summary(pipe: DiffusionPipeline) -> dict[str, str]:
    """The dtype each component's largest weights are stored in (GGUF types by name), for logs and tests."""
    summary: dict[str, str] = {}
    for name, component in pipe.components.items():
        if not isinstance(component, torch.nn.Module):
            continue
        held: dict[str, int] = {}
        for param in component.parameters():
            quant = getattr(param, "quant_type", None)
            key = f"gguf:{quant.name}" if quant is not None else str(param.dtype).removeprefix("torch.")
            held[key] = held.get(key, 0) + param.numel()
        if held:
            summary[name] = max(held, key=lambda key: held[key])
    return summary

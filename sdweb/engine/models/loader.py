"""Build a ready diffusers pipeline from a checkpoint file or a diffusers folder, offline and lean.

Single-file checkpoints (``.safetensors``, ``.ckpt``/``.pt``) go through these steps:

1. Read the shapes (safetensors header, or the weights-only-unpickled dict) and detect the family
   (:mod:`sdweb.engine.models.detect`): component configs come from the weights and the bundled configs.
2. Read the tensors one at a time, cast each to its target dtype as it is read (UNet and text encoders to
   ``runtime.dtype``, the VAE to ``runtime.vae_dtype``, or fp32 where the VAE's config says
   ``force_upcast``: :func:`sdweb.engine.devices.vae_dtype_for`); EMA copies and unused keys are never read.
3. Build each component on the meta device (no memory), rename its keys with diffusers' own
   ``single_file_utils`` conversion functions, and ``load_state_dict(assign=True)`` so the module adopts
   the tensors that were read: the weights exist once, never twice.
4. Assemble ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline`` with the bundled tokenizer(s) and
   a scheduler from the bundled scheduler config, then :func:`sdweb.engine.devices.apply_runtime`.
   Inpainting checkpoints (``sd1-inpaint``...: a 9-channel UNet) get the same pipeline classes: the
   engine drives the components and adds the mask channels itself (:mod:`sdweb.engine.image_conditioning`).

Nothing here asks a hub: configs come from detection plus ``sdweb/data``; diffusers folders load with
``local_files_only=True``. Pickle files are only opened with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import init_empty_weights
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

from sdweb.engine.models.components import (
    assign_weights,
    build_hf_clip,
    build_open_clip,
    build_scheduler,
    build_unet,
    build_vae,
    clip_tokenizer,
    pop_prefixed,
)
from sdweb.engine.models.detect import (
    SD1_CLIP_PREFIXES,
    SD2_OPENCLIP_PREFIX,
    SDXL_CLIP_PREFIX,
    SDXL_OPENCLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    Detection,
    detect_checkpoint,
    detect_diffusers_folder,
)
from sdweb.engine.models.errors import (
    CheckpointReadError,
    UnsupportedCheckpointError,
)
from sdweb.engine.models.hashes import file_sha256, short_hash
from sdweb.engine.models.pickle_io import torch_load_weights_only
from sdweb.engine.models.safetensors_io import iter_safetensors_tensors, read_safetensors_header
from sdweb.engine.models.shape_facts import infer_vae_config, is_ldm_vae

if TYPE_CHECKING:
    from sdweb.engine.devices import RuntimeConfig
    from sdweb.engine.models.registry import CheckpointInfo

logger = logging.getLogger(__name__)

#: Key prefixes a Stable Diffusion pipeline uses; anything else in a file (EMA, schedules) is not read.
_USED_PREFIXES = (
    UNET_PREFIX,
    VAE_PREFIX,
    "cond_stage_model.",
    "conditioner.embedders.",
)
#: The parts of a standalone VAE file that make up an ``AutoencoderKL``.
_VAE_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


@dataclass
class LoadedModel:
    """A pipeline ready to run, with what it was loaded from."""

    info: CheckpointInfo
    detection: Detection
    pipe: DiffusionPipeline
    device: torch.device
    dtype: torch.dtype
    vae_name: str | None = None
    vae_hash: str | None = None
    #: SD 3.x / Flux: the text encoder / VAE files loaded beside the checkpoint (names in their folders).
    module_names: tuple[str, ...] = ()

    @property
    def family(self) -> str:
        return self.detection.family

    def nbytes(self) -> int:
        """Bytes held by the pipeline's weights and buffers (each storage counted once)."""
        seen: set[tuple[str, int]] = set()
        total = 0
        for module in _modules(self.pipe):
            for tensor in (*module.parameters(), *module.buffers()):
                if tensor.device.type == "meta":
                    continue
                key = (str(tensor.device), tensor.untyped_storage().data_ptr())
                if key in seen:
                    continue
                seen.add(key)
                total += tensor.untyped_storage().nbytes()
        return total

    def to(self, device: torch.device | str) -> LoadedModel:
        """Move the pipeline to ``device``; offloaded pipelines stay put (accelerate places their weights)."""
        device = torch.device(device)
        if _is_offloaded(self.pipe):
            logger.debug("%s is offloaded; not moving it to %s", self.info.name, device)
            return self
        self.pipe.to(device)
        self.device = device
        return self


def _is_offloaded(pipe: DiffusionPipeline) -> bool:
    return any(hasattr(module, "_hf_hook") for module in _modules(pipe))


def _modules(pipe: DiffusionPipeline) -> list[torch.nn.Module]:
    return [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------


def load_checkpoint(
    info: CheckpointInfo,
    runtime: RuntimeConfig,
    *,
    vae_path: Path | None = None,
    vae_hash: str | None = None,
    modules: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """Load ``info`` into a pipeline configured for ``runtime``.

    Args:
        info: the listed checkpoint (``info.kind``: ``safetensors``, ``ckpt``, ``gguf`` or ``diffusers``).
        runtime: device and precision; :func:`sdweb.engine.devices.apply_runtime` is applied at the end.
        vae_path: a standalone VAE file that replaces the checkpoint's own VAE.
        vae_hash: that VAE's short hash, when the caller knows it (computed here otherwise).
        modules: SD 3.x / Flux only: the module files (``sdweb.engine.models.modules.ModuleFile``) that fill
            the slots the checkpoint lacks or replace its own, by slot (``clip_l``, ``t5xxl``, ``vae``...);
            the VAE, if any, comes this way for these families rather than as ``vae_path``.

    Raises:
        UnsupportedCheckpointError: not a checkpoint sdweb can run (the message says what it is).
        UnsafeCheckpointError: a pickle that the weights-only unpickler refused.
        CheckpointReadError: truncated or corrupt file.
    """
    from sdweb.engine.devices import apply_runtime

    path = Path(info.path)
    started = time.perf_counter()
    logger.info("loading %s (%s) on %s as %s", info.name, info.kind, runtime.device, runtime.dtype)
    vae_path = Path(vae_path) if vae_path is not None else None
    if info.kind == "diffusers":
        detection, pipe = _load_diffusers_folder(path, runtime, vae_path)
    elif info.kind == "gguf" or modules is not None:
        from sdweb.engine.models.flow_loader import load_flow_checkpoint

        detection = detect_file(path, info.name, info.kind)
        _check_flow(detection, info.name, modules or {})
        pipe = load_flow_checkpoint(path, info.name, info.kind, detection, runtime, modules or {})
        if modules and "vae" in modules:
            vae_path = Path(modules["vae"].path)
    else:
        detection, pipe = _load_single_file(path, info.name, info.kind, runtime, vae_path)
    vae_name = None
    if vae_path is not None:
        vae_name = vae_path.name
        if vae_hash is None:
            vae_hash = short_hash(file_sha256(vae_path))
    else:
        vae_hash = None
    # On CUDA: offload when the model does not fit the free GPU memory (or --medvram/--lowvram say so).
    from sdweb.engine.models.placement import fit_runtime

    apply_runtime(pipe, fit_runtime(pipe, runtime, info.name))
    from sdweb.engine.accelerator import warm_up

    warm_up(pipe)  # the first-call costs at load, not on the user's first image
    logger.info("loaded %s as %s in %.1f s", info.name, detection.family, time.perf_counter() - started)
    return LoadedModel(
        info=info,
        detection=detection,
        pipe=pipe,
        device=torch.device(runtime.device),
        dtype=runtime.dtype,
        vae_name=vae_name,
        vae_hash=vae_hash,
        module_names=tuple(sorted(str(item.name) for item in (modules or {}).values())),
    )


def check_checkpoint(info: CheckpointInfo, vae_path: Path | None = None) -> None:
    """The cheap part of :func:`load_checkpoint`: is ``info`` a model sdweb can load? Reads no weights.

    Reads the safetensors header (or a diffusers folder's configs) and detects the family, so a wrong or
    unsupported file fails before the model cache frees room for it. Pickle files (``.ckpt``) are only
    checked to exist: their shapes cannot be read without reading their weights.

    Raises:
        UnsupportedCheckpointError, CheckpointReadError: as :func:`load_checkpoint` would.
    """
    path = Path(info.path)
    if vae_path is not None and not Path(vae_path).is_file():
        raise CheckpointReadError(f"the VAE file {Path(vae_path).name} does not exist")
    if info.kind == "diffusers":
        detection = detect_diffusers_folder(path)
        if detection.unsupported_reason:
            raise UnsupportedCheckpointError(
                f"{path.name}: not supported yet: {detection.unsupported_reason}")
    elif info.kind == "safetensors":
        header = read_safetensors_header(path)
        _usable_detection(path, info.name, header.shapes(), header.metadata, vae_path)
    elif not path.is_file():
        raise CheckpointReadError(f"{info.name}: the file does not exist")


def _usable_detection(path: Path, name: str, shapes: dict[str, tuple[int, ...]], metadata: Any,
                      vae_path: Path | None) -> Detection:
    detection = detect_checkpoint(shapes, name=name, yaml_text=_read_yaml_beside(path), metadata=metadata)
    if detection.unsupported_reason:
        raise UnsupportedCheckpointError(f"{name}: not supported yet: {detection.unsupported_reason}")
    if detection.is_flow:
        return detection  # SD 3.x / Flux: missing text encoders / VAE come as module files
    if detection.vae_config is None and vae_path is None:
        raise UnsupportedCheckpointError(
            f"{name}: the checkpoint has no VAE (first_stage_model.*); choose a VAE file for it"
        )
    return detection


# --------------------------------------------------------------------------------------------------
# Reading tensors
# --------------------------------------------------------------------------------------------------


def _is_used(key: str) -> bool:
    return key.startswith(_USED_PREFIXES) or key == "v_pred"


def read_checkpoint_shapes(
    path: Path, kind: str
) -> tuple[dict[str, tuple[int, ...]], dict[str, torch.Tensor] | None]:
    """Shapes of every tensor; for pickle files also the tensors (they cannot be read lazily)."""
    if kind == "safetensors":
        return read_safetensors_header(path).shapes(), None
    state = torch_load_weights_only(path)
    return {k: tuple(v.shape) for k, v in state.items()}, state


def _dtype_for(runtime: RuntimeConfig, vae_dtype: torch.dtype) -> Callable[[str], torch.dtype]:
    def dtype_for(key: str) -> torch.dtype:
        return vae_dtype if key.startswith(VAE_PREFIX) else runtime.dtype

    return dtype_for


def _read_tensors(
    path: Path,
    state: dict[str, torch.Tensor] | None,
    dtype_for: Callable[[str], torch.dtype],
    include: Callable[[str], bool],
) -> dict[str, torch.Tensor]:
    if state is None:
        return dict(iter_safetensors_tensors(path, include=include, dtype_for=dtype_for))
    # Pickle files: cast in place, one tensor at a time, dropping what the pipeline does not use.
    for key in list(state):
        if not include(key):
            del state[key]
            continue
        tensor = state[key]
        if tensor.is_floating_point() and tensor.dtype != dtype_for(key):
            state[key] = tensor.to(dtype_for(key))
    return state


def _read_yaml_beside(path: Path) -> str | None:
    yaml_path = path.with_suffix(".yaml")
    try:
        return yaml_path.read_text(encoding="utf-8") if yaml_path.is_file() else None
    except OSError:
        return None


# --------------------------------------------------------------------------------------------------
# Pipelines
# --------------------------------------------------------------------------------------------------


def detect_file(path: Path, name: str, kind: str) -> Detection:
    """The detection of a single file (safetensors header, GGUF tensor table, or an unpickled .ckpt)."""
    if kind == "gguf":
        from sdweb.engine.models.gguf_io import read_gguf_shapes

        detection = detect_checkpoint(read_gguf_shapes(path), name=name)
        if not detection.is_flow:
            raise UnsupportedCheckpointError(f"{name}: GGUF files are read for SD 3.x and Flux only")
        return detection
    shapes, _pickled = read_checkpoint_shapes(path, kind)
    metadata = read_safetensors_header(path).metadata if kind == "safetensors" else None
    return detect_checkpoint(shapes, name=name, yaml_text=_read_yaml_beside(path), metadata=metadata)


def _check_flow(detection: Detection, name: str, modules: Mapping[str, Any]) -> None:
    if detection.unsupported_reason:
        raise UnsupportedCheckpointError(f"{name}: not supported yet: {detection.unsupported_reason}")
    missing = [slot for slot in detection.missing_modules if slot not in modules]
    if missing:
        from sdweb.engine.models.errors import MissingModuleError

        raise MissingModuleError(f"{name}: the file has no {', '.join(missing)}; choose module files")


def _load_single_file(
    path: Path, name: str, kind: str, runtime: RuntimeConfig, vae_path: Path | None
) -> tuple[Detection, DiffusionPipeline]:
    # 1. Shapes and family.
    shapes, pickled = read_checkpoint_shapes(path, kind)
    # A file may carry its component configs in its metadata (the bundled demo model does).
    metadata = read_safetensors_header(path).metadata if kind == "safetensors" else None
    detection = _usable_detection(path, name, shapes, metadata, vae_path)
    if detection.is_flow:
        from sdweb.engine.models.flow_loader import load_flow_checkpoint

        if kind != "safetensors":
            raise UnsupportedCheckpointError(f"{name}: SD 3.x and Flux models are read from .safetensors "
                                             "or .gguf files")
        _check_flow(detection, name, {})
        return detection, load_flow_checkpoint(path, name, kind, detection, runtime, {})

    # 2. Tensors, cast as they are read (the file's own VAE is skipped when another one replaces it).
    def include(key: str) -> bool:
        return _is_used(key) and not (vae_path is not None and key.startswith(VAE_PREFIX))

    vae_dtype = _vae_dtype(runtime, detection)
    state = _read_tensors(path, pickled, _dtype_for(runtime, vae_dtype), include)
    del pickled
    # 3. Components, each taking its tensors out of ``state``.
    unet = build_unet(detection, pop_prefixed(state, UNET_PREFIX), name)
    if vae_path is not None:
        vae = load_vae(
            vae_path,
            vae_dtype,
            base_config=detection.vae_config,
            config_family=detection.config_family,
        )
    else:
        assert detection.vae_config is not None
        vae = build_vae(detection.vae_config, pop_prefixed(state, VAE_PREFIX), name)
    scheduler = build_scheduler(detection.scheduler_config)
    tokenizers = [clip_tokenizer(folder) for folder in detection.tokenizer_dirs]
    if detection.is_sdxl:
        te_1 = build_hf_clip(
            detection.text_encoder_configs[0],
            pop_prefixed(state, SDXL_CLIP_PREFIX),
            SDXL_CLIP_PREFIX,
            name=name,
        )
        te_2 = build_open_clip(
            detection.text_encoder_configs[1],
            pop_prefixed(state, SDXL_OPENCLIP_PREFIX),
            SDXL_OPENCLIP_PREFIX,
            with_projection=True,
            name=name,
        )
        state.clear()
        pipe: DiffusionPipeline = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=te_1,
            text_encoder_2=te_2,
            tokenizer=tokenizers[0],
            tokenizer_2=tokenizers[1],
            unet=unet,
            scheduler=scheduler,
            force_zeros_for_empty_prompt=True,
        )
    else:
        if detection.config_family == "sd2":
            te = build_open_clip(
                detection.text_encoder_config,
                pop_prefixed(state, SD2_OPENCLIP_PREFIX),
                SD2_OPENCLIP_PREFIX,
                with_projection=False,
                name=name,
            )
        else:
            prefix = next(p for p in SD1_CLIP_PREFIXES if p + "embeddings.token_embedding.weight" in shapes)
            te = build_hf_clip(
                detection.text_encoder_config, pop_prefixed(state, prefix), prefix, name=name
            )
        state.clear()
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=te,
            tokenizer=tokenizers[0],
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    return detection, pipe


def _load_diffusers_folder(
    folder: Path, runtime: RuntimeConfig, vae_path: Path | None
) -> tuple[Detection, DiffusionPipeline]:
    detection = detect_diffusers_folder(folder)
    if detection.unsupported_reason:
        raise UnsupportedCheckpointError(f"{folder.name}: not supported yet: {detection.unsupported_reason}")
    if detection.is_flow:
        from sdweb.engine.models.flow_loader import load_flow_diffusers_folder

        return detection, load_flow_diffusers_folder(folder, detection, runtime)
    cls = StableDiffusionXLPipeline if detection.is_sdxl else StableDiffusionPipeline
    extra: dict[str, Any] = {}
    if not detection.is_sdxl:
        extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    vae_dtype = _vae_dtype(runtime, detection)
    if vae_path is not None:
        extra["vae"] = load_vae(
            vae_path,
            vae_dtype,
            base_config=detection.vae_config,
            config_family=detection.config_family,
        )
    try:
        pipe = cls.from_pretrained(str(folder), local_files_only=True, torch_dtype=runtime.dtype, **extra)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointReadError(f"{folder.name}: the diffusers folder cannot be loaded: {exc}") from exc
    if vae_path is None and pipe.vae is not None and vae_dtype != runtime.dtype:
        pipe.vae.to(dtype=vae_dtype)
    return detection, pipe


def _vae_dtype(runtime: RuntimeConfig, detection: Detection) -> torch.dtype:
    """The runtime's VAE dtype, or fp32 where the family's VAE config says ``force_upcast`` (SDXL)."""
    from sdweb.engine.devices import vae_dtype_for
    from sdweb.engine.models.detect import bundled_config

    config = detection.vae_config
    if config is None:  # no VAE in the file: a VAE file stands in, configured as the family's
        config = bundled_config(detection.config_family, "vae")
    return vae_dtype_for(runtime, config)


# --------------------------------------------------------------------------------------------------
# VAE override
# --------------------------------------------------------------------------------------------------


def load_vae(
    path: Path,
    dtype: torch.dtype,
    *,
    base_config: Mapping[str, Any] | None = None,
    config_family: str = "sd1",
) -> AutoencoderKL:
    """A standalone VAE file (original keys, ``first_stage_model.``/``vae.`` prefixed, or diffusers keys).

    Shapes decide the architecture; ``base_config`` (the pipeline's own VAE config) supplies what shapes
    cannot (scaling factor, norm groups).
    """
    from sdweb.engine.models.detect import bundled_config

    path = Path(path)
    name = path.name
    if path.suffix.lower() == ".safetensors":
        header = read_safetensors_header(path)
        shapes = header.shapes()
        state = dict(iter_safetensors_tensors(path, header=header, dtype_for=lambda _key: dtype))
    else:
        state = {
            k: (v.to(dtype) if v.is_floating_point() else v) for k, v in torch_load_weights_only(path).items()
        }
        shapes = {k: tuple(v.shape) for k, v in state.items()}
    prefix = next((p for p in (VAE_PREFIX, "vae.") if any(k.startswith(p) for k in shapes)), "")
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        shapes = {k[len(prefix) :]: s for k, s in shapes.items() if k.startswith(prefix)}
    if any(k.startswith(UNET_PREFIX) for k in shapes):
        raise UnsupportedCheckpointError(
            f"{name}: this is a full checkpoint, not a VAE; put it in models/Stable-diffusion"
        )
    # Training-time VAE files also carry the discriminator and LPIPS weights (``loss.*``): not needed.
    state = {k: v for k, v in state.items() if k.startswith(_VAE_PARTS)}
    shapes = {k: s for k, s in shapes.items() if k.startswith(_VAE_PARTS)}
    config = {
        **(dict(base_config) if base_config else bundled_config(config_family, "vae")),
        **infer_vae_config(shapes, name=name),
    }
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    if is_ldm_vae(shapes):
        vae = build_vae(config, state, name)
    else:
        with init_empty_weights():
            vae = AutoencoderKL.from_config(config)
        assign_weights(vae, state, what="VAE", name=name)
    logger.info("using VAE %s", name)
    return vae

"""What happens on the accelerator while jobs run: execution device, offload hooks, memory, VAE precision.

:mod:`sdweb.engine.devices` decides once, at startup, how the app runs (device, dtypes, offload mode,
backend flags). This module does the work that follows from those decisions during and between jobs, in
one place, so the loops (txt2img, img2img, hires fix), the prompt encoder, the model cache, LoRA loading
and the upscalers call it instead of each knowing about CUDA:

1. **Execution device.** Where a pipeline's computation runs is what its accelerate offload hooks say
   (diffusers' ``_execution_device``), not ``module.device``: with ``--lowvram`` (sequential offload)
   the parameters live on ``meta`` between forwards, with ``--medvram`` (model offload) on the CPU.
   Inputs (token ids, noise, latents) are made on :func:`execution_device`.
2. **Offload between stages and after jobs.** Model offload (accelerate's ``cpu_offload_with_hook``
   chain text encoders -> UNet -> VAE) only sends a component back when the *next one in the chain*
   runs, and nothing after the VAE. So the loop sends idle components back itself
   (:func:`offload_idle`) before the text encoders run (the UNet of a hires first pass is still there)
   and after a VAE encode (img2img's init images) or decode, and :func:`job_scope` resets the hooks at
   the end of every job, also after an error or an interrupt (diffusers ends each ``__call__`` with
   ``maybe_free_model_hooks()`` for the same reason). Under sequential offload weights go back to
   ``meta`` after every forward; an error inside a forward can strand some on the accelerator, and the
   reset re-applies the offload then. :func:`offload_suspended` takes the hooks off while LoRA adapters
   are added or removed and puts them back with the same execution device (diffusers' own re-enable
   guesses the device, and fails where the execution device is the CPU).
3. **Memory.** :class:`DeviceMemory` hands cached-but-unused accelerator memory back to the driver
   (``torch.cuda.empty_cache()``) after a model is unloaded or switched, and after a job that left more
   than ``spare_limit`` of it, so other programs (and the next, larger model) can have it.
4. **VAE precision.** :func:`vae_decode` and :func:`vae_encode` check their output for NaN/inf: a VAE
   running in fp16 that overflows (the stock SDXL VAE does) is upcast to fp32 for good, with a warning,
   and the image is made again (A1111's "revert VAE to 32-bit"); NaN in the UNet's latents, or from a
   VAE already in fp32, is an error that says so, never a black picture. A VAE whose config says
   ``force_upcast`` (:func:`sdweb.engine.devices.vae_forces_upcast`) and that still runs in fp16 is
   upcast before its first use, as diffusers' SDXL pipelines do. Before its first use a VAE also gets
   the memory layout that is fastest where it runs (:func:`sdweb.engine.devices.vae_channels_last`:
   channels_last on the CPU, and on CUDA in half precision), whichever loader or VAE swap made it.
6. **Warm-up.** :func:`warm_up` runs each component once on a tiny input when a model is loaded (text
   encoders, UNet, VAE): the first-call costs (lazy kernel and library set-up, weights paged in from a
   memory-mapped file, the VAE's layout) are paid at load time, not by the user's first image.
5. **VAE memory.** Both also decide, per image, whether the pass runs whole or in tiles
   (:mod:`sdweb.engine.vae_tiling`: above the job's memory budget, or always with ``--vae-tiling``); a
   whole pass on CUDA that runs out of memory is made again in tiles of half the budget.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from sdweb.engine.devices import (
    OffloadMode,
    apply_offload,
    vae_channels_last,
    vae_forces_upcast,
)
from sdweb.engine.heap import heap_returned, trim_heap
from sdweb.engine.vae_tiling import TileLayout, decode_layout, encode_layout, tiled_decode, tiled_encode

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
#: Cached-but-unused accelerator memory a job may leave behind before it is handed back to the driver.
DEFAULT_SPARE_LIMIT = 256 * MIB


class NonFiniteOutputError(RuntimeError):
    """A model produced NaN or infinite values; the message says which model and what to try."""


# ---------------------------------------------------------------------------------------------
# 1. Execution device
# ---------------------------------------------------------------------------------------------


def _components(pipe: Any) -> list[torch.nn.Module]:
    components = getattr(pipe, "components", None) or {}
    return [module for module in components.values() if isinstance(module, torch.nn.Module)]


def _hook_devices(hook: Any) -> Iterator[Any]:
    if hook is None:
        return
    yield getattr(hook, "execution_device", None)
    for inner in getattr(hook, "hooks", ()) or ():  # accelerate's SequentialHook
        yield getattr(inner, "execution_device", None)


def _normalized(device: Any) -> torch.device:
    device = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
    return torch.device("cpu") if device.type == "cpu" else device


def module_execution_device(module: Any, default: Any = None) -> torch.device | None:
    """Where ``module``'s forward runs: its offload hooks' execution device, else its parameters' device.

    ``default`` (or None) when neither says (no hooks and the parameters on ``meta``).
    """
    modules = module.modules() if hasattr(module, "modules") else ()
    for sub in modules:
        for device in _hook_devices(getattr(sub, "_hf_hook", None)):
            if device is not None:
                return _normalized(device)
    for parameter in module.parameters() if hasattr(module, "parameters") else ():
        if parameter.device.type != "meta":
            return _normalized(parameter.device)
        break
    return _normalized(default) if default is not None else None


def execution_device(pipe: Any, default: Any = None) -> torch.device:
    """Where ``pipe``'s computation runs (see the module docstring); ``default``, else CPU, when unknown."""
    for component in _components(pipe):
        for sub in component.modules():
            for device in _hook_devices(getattr(sub, "_hf_hook", None)):
                if device is not None:
                    return _normalized(device)
    if default is not None:
        return _normalized(default)
    for component in _components(pipe):
        found = module_execution_device(component)
        if found is not None:
            return found
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# 2. Offload hooks
# ---------------------------------------------------------------------------------------------


def _model_offload_hook(module: Any) -> Any:
    from accelerate.hooks import CpuOffload

    hook = getattr(module, "_hf_hook", None)
    return hook if isinstance(hook, CpuOffload) else None


def _sequential_hook(module: Any) -> bool:
    from accelerate.hooks import AlignDevicesHook

    hook = getattr(module, "_hf_hook", None)
    hooks = [hook, *(getattr(hook, "hooks", ()) or ())]
    return any(isinstance(item, AlignDevicesHook) for item in hooks)


def offload_mode(pipe: Any) -> OffloadMode:
    """Which accelerate offload the pipeline's components are under: "model", "sequential" or "none"."""
    components = _components(pipe)
    if any(_model_offload_hook(component) is not None for component in components):
        return "model"
    if any(_sequential_hook(component) for component in components):
        return "sequential"
    return "none"


def inference_context(pipe: Any) -> AbstractContextManager[Any]:
    """What the loop runs under: ``torch.inference_mode()``, except under sequential offload.

    accelerate's sequential offload makes new ``Parameter`` objects around each submodule's forward, and
    tensors made in inference mode cannot become Parameters; there it is ``torch.no_grad()`` (what
    diffusers' pipelines always use).
    """
    return torch.no_grad() if offload_mode(pipe) == "sequential" else torch.inference_mode()


def offload_module(module: Any) -> None:
    """Send one model-offloaded component back to the CPU now (no-op without model offload)."""
    hook = _model_offload_hook(module)
    if hook is not None:
        hook.init_hook(module)  # what accelerate's own offload() does: module.to("cpu")


def offload_idle(pipe: Any) -> None:
    """Model offload: send every component back to the CPU, so the next one to run is alone on the device."""
    for component in _components(pipe):
        offload_module(component)


def _stranded_weights(pipe: Any) -> bool:
    """Sequential offload: are weights still on the device (a forward that raised skips putting them back)?"""
    for component in _components(pipe):
        for sub in component.modules():
            hook = getattr(sub, "_hf_hook", None)
            if hook is None or not getattr(hook, "offload", False):
                continue
            if any(parameter.device.type != "meta" for parameter in sub.parameters(recurse=False)):
                return True
    return False


def reset_offload(pipe: Any) -> None:
    """After a job (or between its passes): no component stays on the accelerator that offload should free."""
    mode = offload_mode(pipe)
    if mode == "model":
        offload_idle(pipe)
    elif mode == "sequential" and _stranded_weights(pipe):
        logger.info("sequential offload: weights were left on the device by a failed step; offloading again")
        apply_offload(pipe, "sequential", execution_device(pipe))


@contextmanager
def offload_suspended(pipe: Any) -> Iterator[None]:
    """Take the offload hooks off for the block (weights back in CPU memory), then put them back.

    For changes to the modules themselves (LoRA adapters added or removed): hooks wrap the modules as they
    were, so they are rebuilt afterwards, with the execution device they had.
    """
    mode = offload_mode(pipe)
    if mode == "none":
        yield
        return
    device = execution_device(pipe)
    pipe.remove_all_hooks()  # sequential: each module's weights come back from the hooks' CPU copies
    try:
        yield
    finally:
        apply_offload(pipe, mode, device)


# ---------------------------------------------------------------------------------------------
# 3. Memory
# ---------------------------------------------------------------------------------------------


@dataclass
class DeviceMemory:
    """The accelerator's memory cache: how much is reserved, and handing the unused part back.

    On the CPU every figure is 0 and emptying does nothing. Tests subclass it to count what happens.
    """

    device: torch.device
    spare_limit: int = DEFAULT_SPARE_LIMIT

    def reserved(self) -> int:
        """Bytes the caching allocator holds (in use or cached)."""
        if self.device.type == "cuda" and torch.cuda.is_available():
            return int(torch.cuda.memory_reserved(self.device))
        if self.device.type == "mps":
            return int(torch.mps.driver_allocated_memory())
        return 0

    def allocated(self) -> int:
        """Bytes held by live tensors."""
        if self.device.type == "cuda" and torch.cuda.is_available():
            return int(torch.cuda.memory_allocated(self.device))
        if self.device.type == "mps":
            return int(torch.mps.current_allocated_memory())
        return 0

    def empty_cache(self) -> None:
        """Hand the cached-but-unused memory back to the driver."""
        if self.device.type == "cuda" and torch.cuda.is_available():
            with torch.cuda.device(self.device):
                torch.cuda.empty_cache()
        elif self.device.type == "mps":
            torch.mps.empty_cache()

    def release(self) -> None:
        """After models were dropped: collect them, then give their memory back (on the CPU the C heap's free
        pages: :func:`sdweb.engine.heap.trim_heap`).
        """
        gc.collect()
        if self.device.type == "cpu":
            trim_heap()
        before = self.reserved()
        self.empty_cache()
        after = self.reserved()
        if before != after:
            logger.info("freed %.0f MiB of %s memory", (before - after) / MIB, self.device)

    def after_job(self) -> None:
        """Give the cache back when a job left more than ``spare_limit`` of it unused."""
        spare = self.reserved() - self.allocated()
        if spare > self.spare_limit:
            self.empty_cache()
            logger.debug("job left %.0f MiB cached on %s: handed back", spare / MIB, self.device)


@contextmanager
def job_scope(pipe: Any, memory: DeviceMemory | None = None) -> Iterator[None]:
    """Around one job on ``pipe``: afterwards, whatever way it ends, reset the offload and tidy memory."""
    try:
        yield
    finally:
        try:
            reset_offload(pipe)
        finally:
            if memory is not None:
                memory.after_job()


# ---------------------------------------------------------------------------------------------
# 4. VAE precision
# ---------------------------------------------------------------------------------------------


def _finite(tensor: torch.Tensor) -> bool:
    return bool(torch.isfinite(tensor).all())


def upcast_vae(vae: Any, why: str) -> None:
    """Run ``vae`` in fp32 from now on (kept for the loaded model's life, as A1111's "revert to 32-bit")."""
    if vae.dtype == torch.float32:
        return
    logger.warning("VAE in fp32 from now on: %s", why)
    # Outside inference mode, so the new weights are ordinary tensors whatever the caller is in.
    with torch.inference_mode(False):
        vae.to(dtype=torch.float32)


def prepare_vae(vae: Any) -> None:
    """Before a VAE runs: upcast it when its config says fp16 is unsafe (``force_upcast``), and give it its
    best memory layout (cheap to check: one weight's strides).
    """
    if vae.dtype == torch.float16 and vae_forces_upcast(vae.config):
        upcast_vae(vae, "its config says force_upcast (it overflows in fp16)")
    weight = _first_conv_weight(vae)
    if weight is None or weight.device.type == "meta":  # sequential offload: the hooks place weights
        return
    if weight.is_contiguous(memory_format=torch.channels_last) or weight.shape[-2:] == (1, 1):
        return
    if vae_channels_last(weight.device, vae.dtype):
        logger.debug("VAE in channels_last on %s (%s)", weight.device, vae.dtype)
        with torch.inference_mode(False):  # ordinary weights, whatever mode the caller is in
            vae.to(memory_format=torch.channels_last)


def _first_conv_weight(vae: Any) -> torch.Tensor | None:
    decoder = getattr(vae, "decoder", None)
    conv = getattr(decoder, "conv_in", None)
    weight = getattr(conv, "weight", None)
    return weight if isinstance(weight, torch.Tensor) and weight.dim() == 4 else None


def vae_decode(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """``vae.decode`` of ``latents`` (already divided by the scaling factor), checked for NaN/inf.

    Returns ``(B, 3, H, W)`` in the VAE's dtype, roughly in [-1, 1].

    Raises:
        NonFiniteOutputError: the latents hold NaN/inf (the UNet overflowed), or the VAE gave NaN/inf in fp32.
    """
    if not _finite(latents):
        raise NonFiniteOutputError(
            "the UNet produced NaN or infinite values, so there is no image to decode. This happens when a "
            "model overflows in half precision: try --precision fp32 (--no-half), or another checkpoint")
    prepare_vae(vae)
    decoded = _decode(vae, latents.to(vae.dtype))
    if not _finite(decoded) and vae.dtype != torch.float32:
        upcast_vae(vae, f"decoding in {str(vae.dtype).removeprefix('torch.')} gave NaN/inf (retrying the "
                        "image in fp32; --no-half-vae starts in fp32)")
        decoded = _decode(vae, latents.to(vae.dtype))
    if not _finite(decoded):
        raise NonFiniteOutputError("the VAE produced NaN or infinite values even in fp32: the VAE file is "
                                   "probably damaged or does not belong to this model; choose another VAE")
    return decoded


def vae_encode(vae: Any, pixels: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """The latent distribution's mean of ``pixels`` (``(B, 3, H, W)`` in [-1, 1]) as float32, unscaled.

    Checked as :func:`vae_decode`. Under model offload the VAE goes back to the CPU afterwards: the UNet
    runs next and should be alone on the device.

    Raises:
        NonFiniteOutputError: the VAE gave NaN/inf even in fp32.
    """
    prepare_vae(vae)
    latents = _encode(vae, pixels.to(device=device, dtype=vae.dtype))
    if not _finite(latents) and vae.dtype != torch.float32:
        upcast_vae(vae, f"encoding in {str(vae.dtype).removeprefix('torch.')} gave NaN/inf (retrying in "
                        "fp32; --no-half-vae starts in fp32)")
        latents = _encode(vae, pixels.to(device=device, dtype=vae.dtype))
    offload_module(vae)
    if not _finite(latents):
        raise NonFiniteOutputError("the VAE produced NaN or infinite values even in fp32 while encoding the "
                                   "init image: the VAE file is probably damaged; choose another VAE")
    return latents.float()



def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _smaller(layout: TileLayout | None, side: int) -> TileLayout:
    tile = (layout.tile if layout is not None else side) // 2
    return TileLayout(tile=max(16, tile), whole_latent_stage=layout is not None and layout.whole_latent_stage)


def _decode(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Decode whole or in tiles (see :mod:`sdweb.engine.vae_tiling`); tiles again, smaller, after an OOM."""
    layout = decode_layout(vae, latents)
    try:
        if layout is None:
            return vae.decode(latents, return_dict=False)[0]
        logger.info("VAE decode of %dx%d latents in tiles of %d", latents.shape[-1], latents.shape[-2],
                    layout.tile)
        with heap_returned():  # the tile budget bounds what the pass holds, not what earlier work left
            return tiled_decode(vae, latents, layout).to(vae.dtype)
    except RuntimeError as exc:
        if latents.device.type == "cpu" or not _out_of_memory(exc):
            raise
    gc.collect()
    torch.cuda.empty_cache()
    smaller = _smaller(layout, max(latents.shape[-2:]))
    logger.warning("VAE decode ran out of memory; decoding again in tiles of %d", smaller.tile)
    return tiled_decode(vae, latents, smaller).to(vae.dtype)


def _encode(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    """The latent mean of ``pixels``, encoded whole or in tiles, as :func:`_decode`."""
    layout = encode_layout(vae, pixels)
    try:
        if layout is None:
            return vae.encode(pixels).latent_dist.mean
        logger.info("VAE encode of a %dx%d image in tiles of %d latent pixels", pixels.shape[-1],
                    pixels.shape[-2], layout.tile)
        with heap_returned():
            return tiled_encode(vae, pixels, layout).to(vae.dtype)
    except RuntimeError as exc:
        if pixels.device.type == "cpu" or not _out_of_memory(exc):
            raise
    gc.collect()
    torch.cuda.empty_cache()
    smaller = _smaller(layout, max(pixels.shape[-2:]) // 8)
    logger.warning("VAE encode ran out of memory; encoding again in tiles of %d latent pixels", smaller.tile)
    return tiled_encode(vae, pixels, smaller).to(vae.dtype)


# ---------------------------------------------------------------------------------------------
# 6. Warm-up
# ---------------------------------------------------------------------------------------------


def warm_up(pipe: Any) -> None:
    """Run the text encoders, the UNet and the VAE once on tiny inputs (see the module docstring).

    A few hundred milliseconds on a CPU. Skipped under offload (it would move every component to the
    device and back); a component that cannot be warmed up this way is logged and left alone: a
    warm-up never fails a load.
    """
    if offload_mode(pipe) != "none":
        return
    started = time.perf_counter()
    with torch.inference_mode():
        device = execution_device(pipe)
        context: torch.Tensor | None = None
        for name in ("text_encoder", "text_encoder_2"):
            encoder = getattr(pipe, name, None)
            tokenizer = getattr(pipe, "tokenizer" if name == "text_encoder" else "tokenizer_2", None)
            if encoder is None or tokenizer is None:
                continue
            if "t5" in str(getattr(getattr(encoder, "config", None), "model_type", "")):
                # Flux's text_encoder_2: a full T5-XXL forward over 512 tokens (tens of seconds on a CPU)
                # is no warm-up; its first-call cost is small next to its own run.
                continue
            try:
                ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                                truncation=True, return_tensors="pt").input_ids.to(device)
                hidden = encoder(ids, output_hidden_states=True).hidden_states[-2]
                context = hidden if context is None else torch.cat([context, hidden], dim=-1)
            except Exception as exc:  # never let a warm-up fail a load
                logger.debug("warm-up of %s skipped: %s", name, exc)
        unet = getattr(pipe, "unet", None)
        if unet is not None and context is not None:
            try:
                _warm_unet(unet, context, device)
            except Exception as exc:
                logger.debug("warm-up of the UNet skipped: %s", exc)
        vae = getattr(pipe, "vae", None)
        if vae is not None and hasattr(vae, "decode"):
            try:
                channels = int(getattr(vae.config, "latent_channels", 4))
                vae_decode(vae, torch.zeros(1, channels, 8, 8, device=device))
            except Exception as exc:
                logger.debug("warm-up of the VAE skipped: %s", exc)
    logger.info("warmed up in %.2f s", time.perf_counter() - started)


def _warm_unet(unet: Any, context: torch.Tensor, device: torch.device) -> None:
    config = unet.config
    batch = 2  # as with CFG
    sample = torch.zeros(batch, int(config.in_channels), 8, 8, device=device, dtype=unet.dtype)
    hidden = context.to(unet.dtype).repeat(batch, 1, 1)
    if hidden.shape[-1] != getattr(config, "cross_attention_dim", hidden.shape[-1]):
        return
    added = None
    if getattr(config, "addition_embed_type", None) == "text_time":  # SDXL micro-conditioning
        time_dim = int(config.addition_time_embed_dim)
        pooled = int(config.projection_class_embeddings_input_dim) - 6 * time_dim
        added = {"text_embeds": torch.zeros(batch, pooled, device=device, dtype=unet.dtype),
                 "time_ids": torch.zeros(batch, 6, device=device, dtype=unet.dtype)}
    timestep_cond = None
    if getattr(config, "time_cond_proj_dim", None):
        timestep_cond = torch.zeros(batch, int(config.time_cond_proj_dim), device=device, dtype=unet.dtype)
    unet(sample, torch.tensor(999, device=device), encoder_hidden_states=hidden, added_cond_kwargs=added,
         timestep_cond=timestep_cond, return_dict=False)

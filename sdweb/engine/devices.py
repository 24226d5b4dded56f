"""Where and how models run: device, precision, attention backend, offload, VAE tiling and CPU threads.

Owns two steps, kept apart so both are testable without a GPU:

1. :func:`resolve_runtime` turns the launch flags into a frozen :class:`RuntimeConfig`, once, at startup:
   device auto = CUDA > MPS > CPU; precision auto = fp16 on CUDA/MPS, on CPU bf16 where the CPU has
   native bf16 matrix units (AMX-BF16 or AVX512-BF16 in ``/proc/cpuinfo``; measured 3.5x faster than
   fp32 for the SD1.5 UNet here), else fp32; attention auto = xformers where it imports on CUDA, else
   PyTorch SDPA. Backend flags come from the GPU's name and compute capability: TF32 matmuls for fp32
   work on Ampere and newer (capability 8.0+); GTX 16xx cards (Turing without fp16 tensor cores, which
   give black images in fp16) get fp32 by default and cuDNN's autotuner (A1111's fix when fp16 is
   forced). The VAE's dtype per model follows its config's ``force_upcast`` (:func:`vae_dtype_for`).
   A request that cannot be honoured (``--xformers`` without xformers, ``--device cuda`` without
   CUDA) is an error naming the flag, never a silent switch to something else. Each choice
   carries its reason, logged and shown by :func:`describe_runtime` (API, UI, ``--list-models``).
2. :func:`apply_runtime` applies the config to one pipeline instance through diffusers' own per-instance
   switches (attention processors, offload hooks). VAE tiling (``--vae-tiling``: always) is decided per
   image by :mod:`sdweb.engine.vae_tiling`. Nothing is monkeypatched, and applying
   it again to the same pipeline gives the same result. :func:`apply_offload` places a pipeline with an
   explicit execution device (tests run offload with the CPU as that device; the resolver refuses it
   there). :func:`apply_backend_flags` sets torch's process-wide backend switches once, at startup.

What happens on the device while jobs run (execution device, offload between stages, memory, the VAE's
NaN guard) is :mod:`sdweb.engine.accelerator`'s.

CPU threads: :func:`configure_threads` calls ``torch.set_num_threads``. ``OMP_WAIT_POLICY=PASSIVE`` must be
set in the environment *before torch is first imported* (OpenMP reads it once, at load) so idle worker
threads sleep instead of spinning on a shared machine; the composition root does that, not this module.

CPU memory (the C heap under torch's CPU tensors) is :mod:`sdweb.engine.heap`'s.
"""

from __future__ import annotations

import importlib
import logging
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from sdweb.config import LaunchSettings

logger = logging.getLogger(__name__)

AttentionBackend = Literal["sdpa", "xformers", "sliced"]
OffloadMode = Literal["none", "model", "sequential"]

#: CPU flags (``/proc/cpuinfo``) meaning bf16 matrix multiplies run natively, not emulated through fp32.
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO_PATH = Path("/proc/cpuinfo")

_PRECISION_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


class RuntimeConfigError(ValueError):
    """A device/precision/attention flag that this machine cannot honour; the message names the flag."""


@dataclass(frozen=True)
class HardwareProbe:
    """What the machine offers, gathered once; tests build one by hand instead of probing."""

    cuda_device_count: int = 0
    cuda_bf16_supported: bool = False
    cuda_names: tuple[str, ...] = ()
    #: ``torch.cuda.get_device_capability`` per device: (8, 6) for an RTX 3090, (7, 5) for a GTX 1660.
    cuda_capabilities: tuple[tuple[int, int], ...] = ()
    mps_available: bool = False
    cpu_flags: frozenset[str] = frozenset()
    cpu_name: str = ""
    #: None: not checked yet (importing xformers is slow, so it is only tried when it could be used).
    xformers_importable: bool | None = None

    @property
    def cuda_available(self) -> bool:
        return self.cuda_device_count > 0

    @property
    def cpu_has_native_bf16(self) -> bool:
        return any(flag in self.cpu_flags for flag in CPU_BF16_FLAGS)


def read_cpuinfo(text: str) -> tuple[frozenset[str], str]:
    """The CPU feature flags and model name from ``/proc/cpuinfo`` text (x86 "flags", ARM "Features")."""
    flags: set[str] = set()
    name = ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key in ("flags", "features"):
            flags.update(value.split())
        elif key == "model name" and not name:
            name = value.strip()
    return frozenset(flags), name


def xformers_importable() -> bool:
    """Whether ``xformers.ops`` imports (a wheel built for another torch fails here, not just "missing")."""
    try:
        importlib.import_module("xformers.ops")
    except Exception as exc:  # ImportError, or a binary mismatch raising something else
        logger.debug("xformers is not usable: %s", exc)
        return False
    return True


def probe_hardware(cpuinfo_path: Path = CPUINFO_PATH) -> HardwareProbe:
    """Look at this machine: CUDA devices, MPS, CPU flags."""
    try:
        flags, cpu_name = read_cpuinfo(cpuinfo_path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        flags, cpu_name = frozenset(), ""  # macOS, Windows: no /proc; bf16 auto-detection is off there
    cpu_name = cpu_name or platform.processor()
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = getattr(torch.backends, "mps", None)
    return HardwareProbe(
        cuda_device_count=count,
        cuda_bf16_supported=bool(count and torch.cuda.is_bf16_supported()),
        cuda_names=tuple(torch.cuda.get_device_name(i) for i in range(count)),
        cuda_capabilities=tuple(tuple(torch.cuda.get_device_capability(i)) for i in range(count)),  # type: ignore[misc]
        mps_available=bool(mps is not None and mps.is_available()),
        cpu_flags=flags,
        cpu_name=cpu_name,
    )


@dataclass(frozen=True)
class RuntimeConfig:
    """How every pipeline runs on this machine; resolved once from the launch flags."""

    device: torch.device
    dtype: torch.dtype
    vae_dtype: torch.dtype
    attention: AttentionBackend
    offload: OffloadMode
    vae_tiling: bool
    threads: int
    device_name: str = ""
    #: TF32 tensor cores for fp32 matmuls/convolutions (Ampere and newer); see :func:`apply_backend_flags`.
    tf32: bool = False
    #: cuDNN's autotuner (GTX 16xx cards, where it avoids black images in fp16).
    cudnn_benchmark: bool = False
    #: Why each choice was made, in words ("bf16: the CPU has amx_bf16").
    reasons: tuple[str, ...] = field(default=())

    @property
    def is_accelerator(self) -> bool:
        return self.device.type != "cpu"

    @property
    def parking_device(self) -> torch.device | None:
        """Where the model cache moves models that are not in use; None where nothing should move.

        On CPU there is nowhere else to go; with offload hooks, accelerate places weights itself.
        """
        if not self.is_accelerator or self.offload != "none":
            return None
        return torch.device("cpu")

    @property
    def channels_last(self) -> bool:
        """channels_last UNet: faster for bf16 convolutions on CPU (oneDNN), measured here."""
        return self.device.type == "cpu" and self.dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------
# 1. Resolving the flags
# ---------------------------------------------------------------------------------------------


def resolve_runtime(settings: LaunchSettings, probe: HardwareProbe | None = None) -> RuntimeConfig:
    """The runtime for ``settings`` on this machine (``probe`` defaults to looking at it).

    Raises:
        RuntimeConfigError: a forced device, precision or attention backend this machine lacks.
    """
    probe = probe or probe_hardware()
    reasons: list[str] = []
    device, device_name = _resolve_device(settings.device, probe, reasons)
    capability = _capability(device, probe)
    gtx16 = is_gtx16(device_name, capability)
    dtype = _resolve_dtype(settings.precision, device, probe, reasons, gtx16=gtx16)
    if settings.no_half_vae or dtype == torch.float32:
        vae_dtype = torch.float32
        if settings.no_half_vae and dtype != torch.float32:
            reasons.append("VAE in fp32: --no-half-vae")
    else:
        vae_dtype = dtype
    attention = _resolve_attention(settings.attention, device, probe, reasons)
    offload: OffloadMode = settings.offload
    if offload != "none" and device.type == "cpu":
        logger.warning("--%s does nothing on CPU: the model is already in system memory",
                       "medvram" if offload == "model" else "lowvram")
        reasons.append(f"offload '{offload}' ignored: it moves weights off an accelerator; this is a CPU")
        offload = "none"
    elif offload != "none":
        reasons.append(f"offload: {offload} ({'--medvram' if offload == 'model' else '--lowvram'})")
    threads = settings.threads if settings.threads else default_thread_count()
    tf32, cudnn_benchmark = _resolve_backend_flags(device, device_name, capability, reasons)
    runtime = RuntimeConfig(
        device=device,
        dtype=dtype,
        vae_dtype=vae_dtype,
        attention=attention,
        offload=offload,
        vae_tiling=settings.vae_tiling,
        threads=threads,
        device_name=device_name,
        tf32=tf32,
        cudnn_benchmark=cudnn_benchmark,
        reasons=tuple(reasons),
    )
    logger.info(
        "runtime: %s (%s), %s (VAE %s), attention %s, offload %s%s, %d CPU threads",
        device, device_name or "?", _dtype_name(dtype), _dtype_name(vae_dtype), attention, offload,
        ", VAE tiling" if runtime.vae_tiling else "", threads,
    )
    for reason in reasons:
        logger.info("runtime: %s", reason)
    return runtime


def _resolve_device(requested: str, probe: HardwareProbe, reasons: list[str]) -> tuple[torch.device, str]:
    requested = (requested or "auto").strip().lower()
    if requested == "auto":
        if probe.cuda_available:
            reasons.append("device cuda: CUDA is available (auto prefers CUDA > MPS > CPU)")
            return torch.device("cuda", 0), probe.cuda_names[0] if probe.cuda_names else "CUDA"
        if probe.mps_available:
            reasons.append("device mps: Apple GPU available, no CUDA")
            return torch.device("mps"), "Apple MPS"
        reasons.append("device cpu: no CUDA or MPS device found")
        return torch.device("cpu"), probe.cpu_name
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise RuntimeConfigError(
            f"--device {requested!r} is not a device; use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda":
        if not probe.cuda_available:
            raise RuntimeConfigError(
                f"--device {requested} asked for CUDA, but torch sees no CUDA device (a CPU-only torch "
                f"build, or no NVIDIA driver); use --device cpu or install a CUDA build of torch"
            )
        index = device.index or 0
        if index >= probe.cuda_device_count:
            raise RuntimeConfigError(
                f"--device {requested}: there are only {probe.cuda_device_count} CUDA device(s) "
                f"(cuda:0..cuda:{probe.cuda_device_count - 1})"
            )
        reasons.append(f"device {requested}: --device")
        name = probe.cuda_names[index] if index < len(probe.cuda_names) else "CUDA"
        return torch.device("cuda", index), name
    if device.type == "mps":
        if not probe.mps_available:
            raise RuntimeConfigError("--device mps asked for an Apple GPU, but MPS is not available here")
        reasons.append("device mps: --device")
        return device, "Apple MPS"
    if device.type == "cpu":
        reasons.append("device cpu: --device cpu")
        return torch.device("cpu"), probe.cpu_name
    raise RuntimeConfigError(f"--device {requested!r} is not supported; use auto, cpu, cuda, cuda:N or mps")


def _capability(device: torch.device, probe: HardwareProbe) -> tuple[int, int] | None:
    if device.type != "cuda":
        return None
    index = device.index or 0
    return probe.cuda_capabilities[index] if index < len(probe.cuda_capabilities) else None


def is_gtx16(name: str, capability: tuple[int, int] | None) -> bool:
    """A GeForce GTX 16xx (Turing without fp16 tensor cores): fp16 there often gives black images."""
    return "GTX 16" in name.upper() and capability in (None, (7, 5))


def _resolve_backend_flags(device: torch.device, name: str, capability: tuple[int, int] | None,
                           reasons: list[str]) -> tuple[bool, bool]:
    if device.type != "cuda":
        return False, False
    tf32 = capability is not None and capability >= (8, 0)
    if tf32:
        reasons.append(f"TF32 on: compute capability {capability[0]}.{capability[1]} (Ampere or newer) "  # type: ignore[index]
                       "runs fp32 matmuls on tensor cores")
    benchmark = is_gtx16(name, capability)
    if benchmark:
        reasons.append(f"cuDNN benchmark on: {name} is a GTX 16xx card (fp16 gives black images without it)")
    return tf32, benchmark


def _resolve_dtype(
    requested: str, device: torch.device, probe: HardwareProbe, reasons: list[str], *, gtx16: bool = False
) -> torch.dtype:
    if requested != "auto":
        if requested not in _PRECISION_DTYPES:
            raise RuntimeConfigError(f"--precision {requested!r} is not one of auto, fp32, fp16, bf16")
        dtype = _PRECISION_DTYPES[requested]
        if dtype == torch.bfloat16 and device.type == "cuda" and not probe.cuda_bf16_supported:
            raise RuntimeConfigError(
                "--precision bf16: this GPU has no bf16 support; use --precision fp16 (or auto)"
            )
        if device.type == "cpu" and dtype == torch.float16:
            logger.warning("--precision fp16 on CPU is much slower than bf16/fp32 (no fp16 matrix units)")
        if device.type == "cpu" and dtype == torch.bfloat16 and not probe.cpu_has_native_bf16:
            logger.warning("--precision bf16 on a CPU without AMX/AVX512-BF16 is emulated and slow")
        if gtx16 and dtype == torch.float16:
            logger.warning("--precision fp16 on a GTX 16xx card may give black images; cuDNN benchmark is on "
                           "to avoid it. If images come out black, use --precision fp32")
        reasons.append(f"{requested}: --precision {requested}")
        return dtype
    if gtx16:
        reasons.append("fp32: GTX 16xx cards give black images in fp16 (--precision fp16 to try it anyway)")
        return torch.float32
    if device.type in ("cuda", "mps"):
        reasons.append(f"fp16: the default on {device.type.upper()}")
        return torch.float16
    native = [flag for flag in CPU_BF16_FLAGS if flag in probe.cpu_flags]
    if native:
        reasons.append(f"bf16: the CPU has native bf16 matrix units ({', '.join(native)})")
        return torch.bfloat16
    reasons.append("fp32: the CPU has no native bf16 (no amx_bf16/avx512_bf16 flag)")
    return torch.float32


def _resolve_attention(
    requested: str, device: torch.device, probe: HardwareProbe, reasons: list[str]
) -> AttentionBackend:
    if requested == "auto":
        if device.type == "cuda" and _xformers(probe):
            reasons.append("attention xformers: importable, on CUDA")
            return "xformers"
        why = "xformers is not usable" if device.type == "cuda" else f"xformers needs CUDA, not {device.type}"
        reasons.append(f"attention sdpa: PyTorch scaled_dot_product_attention ({why})")
        return "sdpa"
    if requested == "xformers":
        if device.type != "cuda":
            raise RuntimeConfigError(
                f"--xformers / --attention xformers needs a CUDA device, but this runs on {device.type}; "
                "use --attention sdpa (the default on CPU and MPS)"
            )
        if not _xformers(probe):
            raise RuntimeConfigError(
                "--xformers / --attention xformers: xformers is not installed or does not match this torch "
                "build; install it (pip install 'sdweb[xformers]') or use --attention sdpa"
            )
        reasons.append("attention xformers: --xformers")
        return "xformers"
    if requested in ("sdpa", "sliced"):
        reasons.append(f"attention {requested}: --attention {requested}")
        return requested  # type: ignore[return-value]
    raise RuntimeConfigError(f"--attention {requested!r} is not one of auto, sdpa, xformers, sliced")


def _xformers(probe: HardwareProbe) -> bool:
    return probe.xformers_importable if probe.xformers_importable is not None else xformers_importable()


# ---------------------------------------------------------------------------------------------
# 2. Applying it to a pipeline
# ---------------------------------------------------------------------------------------------


def apply_runtime(pipe: Any, runtime: RuntimeConfig) -> None:
    """Place this pipeline instance and set its attention, memory format, VAE tiling and offload.

    Call after the weights are loaded at ``runtime.dtype`` / ``runtime.vae_dtype`` (dtypes are the
    loader's job; this never changes them). With offload "none" the pipeline is moved to
    ``runtime.device`` here; with "model"/"sequential" accelerate's hooks installed here move each
    component when it runs, and the pipeline must not be moved by hand afterwards.
    """
    # 1. Attention: one processor for every attention layer of every component. SD 3.x / Flux transformers
    # keep their own joint-attention processors (already PyTorch SDPA); the settings apply to their VAE.
    if getattr(pipe, "transformer", None) is not None:
        if runtime.attention != "sdpa":
            logger.info("attention %s: applied to the VAE; the transformer keeps diffusers' SDPA processors",
                        runtime.attention)
        _set_processor(pipe, _sdpa_processor)
    elif runtime.attention == "xformers":
        if not xformers_importable():
            raise RuntimeConfigError(
                "attention xformers: xformers is not installed or does not match this torch build; "
                "install it (pip install 'sdweb[xformers]') or use --attention sdpa"
            )
        pipe.enable_xformers_memory_efficient_attention()
    elif runtime.attention == "sliced":
        _set_processor(pipe, _sdpa_processor)  # VAE attention has no slicing; give it SDPA
        pipe.enable_attention_slicing()
    else:
        _set_processor(pipe, _sdpa_processor)

    # 2. Memory format: channels_last UNet where it measured faster (CPU bf16).
    unet = getattr(pipe, "unet", None)
    if unet is not None and runtime.channels_last:
        unet.to(memory_format=torch.channels_last)

    # 3. VAE tiling for large images is sdweb.engine.vae_tiling's (budget-driven, one normalisation for
    # all tiles); diffusers' own tiling, which normalises each tile alone, stays off.
    vae = getattr(pipe, "vae", None)
    if vae is not None and hasattr(vae, "disable_tiling"):
        vae.disable_tiling()

    # 4. Placement: on the device, or accelerate hooks that move each component there when it runs.
    apply_offload(pipe, runtime.offload, runtime.device)
    logger.debug("applied runtime to %s: attention %s, offload %s", type(pipe).__name__,
                 runtime.attention, runtime.offload)


def apply_offload(pipe: Any, mode: OffloadMode, device: torch.device | str) -> None:
    """Place ``pipe`` for ``mode`` with ``device`` as the execution device.

    "none": moved to ``device``. "model" (--medvram): accelerate moves each whole component to ``device``
    when it runs and back to the CPU when the next one in the chain does. "sequential" (--lowvram): weights
    stay in CPU memory and each submodule's come to ``device`` only for its forward. ``device`` may be the
    CPU (tests run offload there; the resolver refuses it for users, where it would do nothing).
    """
    device = torch.device(device)
    if mode == "none":
        pipe.to(device)
    elif mode == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif mode == "sequential" and device.type == "cpu":
        _sequential_offload_to_cpu(pipe)
    elif mode == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        raise ValueError(f"offload mode must be none, model or sequential, got {mode!r}")


def _sequential_offload_to_cpu(pipe: Any) -> None:
    """Diffusers' sequential offload with the CPU as execution device, for tests.

    diffusers names the device ``cpu:0``, which accelerate takes for another device than the weights'
    ``cpu``: each forward then turns the offloaded ``Parameter`` objects into plain tensors and fails.
    This is the same placement (accelerate's ``cpu_offload`` per component) with ``cpu`` itself.
    """
    from accelerate import cpu_offload

    pipe.remove_all_hooks()
    excluded = set(getattr(pipe, "_exclude_from_cpu_offload", ()) or ())
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module) and name not in excluded:
            cpu_offload(component, torch.device("cpu"), offload_buffers=len(component._parameters) > 0)


def apply_backend_flags(runtime: RuntimeConfig) -> None:
    """Set torch's process-wide backend switches for ``runtime`` (TF32, cuDNN benchmark); once, at startup."""
    if runtime.device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = runtime.tf32
    torch.backends.cudnn.allow_tf32 = runtime.tf32
    torch.backends.cudnn.benchmark = runtime.cudnn_benchmark
    logger.info("CUDA backend: TF32 %s, cuDNN benchmark %s", "on" if runtime.tf32 else "off",
                "on" if runtime.cudnn_benchmark else "off")


def vae_forces_upcast(config: Any) -> bool:
    """Whether a VAE config says the VAE must not run in fp16 (``force_upcast``, as the SDXL VAE's says).

    Only a value written in the config counts: diffusers fills a missing ``force_upcast`` with True (and
    lists it in ``_use_default_values``), and SD 1.x/2.x VAE configs do not have it.
    """
    get = getattr(config, "get", None)
    if get is None:
        return False
    return bool(get("force_upcast", False)) and "force_upcast" not in (get("_use_default_values", None) or ())


def vae_channels_last(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a VAE on ``device`` in ``dtype`` runs faster in channels_last (NHWC) than contiguous.

    CPU: oneDNN's convolutions are NHWC-native; the SD VAE decode of 64x64 latents measured 2.5 s in bf16
    with channels_last vs 5.0 s without (issue 20), and not slower in fp32. CUDA in fp16/bf16: tensor-core
    convolutions are NHWC-native (cuDNN converts NCHW inputs on every call otherwise). MPS and CUDA fp32:
    left as they are (no measured gain).
    """
    if device.type == "cpu":
        return True
    return device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)


def vae_dtype_for(runtime: RuntimeConfig, vae_config: Any) -> torch.dtype:
    """The dtype a model's VAE is loaded in: the runtime's, except fp32 where fp16 would overflow."""
    if runtime.vae_dtype == torch.float16 and vae_forces_upcast(vae_config):
        logger.info("VAE in fp32: its config says force_upcast (it overflows in fp16)")
        return torch.float32
    return runtime.vae_dtype


def _sdpa_processor() -> Any:
    from diffusers.models.attention_processor import AttnProcessor2_0

    return AttnProcessor2_0()


def _set_processor(pipe: Any, make: Any) -> None:
    for component in _attention_components(pipe):
        component.set_attn_processor(make())


def _attention_components(pipe: Any) -> list[Any]:
    components = getattr(pipe, "components", {}) or {}
    return [
        module for name, module in components.items()
        if isinstance(module, torch.nn.Module) and hasattr(module, "set_attn_processor")
        and getattr(module, "attn_processors", None) and name != "transformer"
    ]


def attention_processor_names(pipe: Any) -> dict[str, set[str]]:
    """The attention processor classes in use, per component (for tests and the runtime panel)."""
    return {
        name: {type(proc).__name__ for proc in module.attn_processors.values()}
        for name, module in (getattr(pipe, "components", {}) or {}).items()
        if isinstance(module, torch.nn.Module) and getattr(module, "attn_processors", None)
    }


# ---------------------------------------------------------------------------------------------
# Threads and description
# ---------------------------------------------------------------------------------------------


def default_thread_count(cpuinfo_path: Path = CPUINFO_PATH) -> int:
    """Physical cores available to this process (as torch's own default: hyperthreads do not help)."""
    try:
        allowed: set[int] = set(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity API; assume two hardware threads per core
        return max(1, (os.cpu_count() or 2) // 2)
    try:
        text = cpuinfo_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return max(1, len(allowed))
    cores: set[tuple[str, str]] = set()
    for block in text.split("\n\n"):
        pairs = (line.partition(":") for line in block.splitlines())
        fields = {key.strip(): value.strip() for key, _, value in pairs}
        processor = fields.get("processor", "")
        if processor.isdigit() and int(processor) in allowed and "core id" in fields:
            cores.add((fields.get("physical id", "0"), fields["core id"]))
    return len(cores) if cores else max(1, len(allowed))


def configure_threads(count: int | None) -> int:
    """Use ``count`` CPU threads for torch ops (None or 0: :func:`default_thread_count`); return it.

    ``OMP_WAIT_POLICY=PASSIVE`` must already be in the environment before torch was imported; see the
    module docstring.
    """
    if count is not None and count < 0:
        raise ValueError(f"thread count must be >= 0, got {count}")
    wanted = count or default_thread_count()
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
        logger.info("torch uses %d CPU thread(s)", wanted)
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        logger.debug("OMP_WAIT_POLICY is not PASSIVE: idle OpenMP threads will spin")
    return wanted


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def describe_runtime(runtime: RuntimeConfig) -> dict[str, Any]:
    """The runtime as plain JSON-able values, for the API, the UI and logs."""
    return {
        "device": str(runtime.device),
        "device_name": runtime.device_name,
        "dtype": _dtype_name(runtime.dtype),
        "vae_dtype": _dtype_name(runtime.vae_dtype),
        "attention": runtime.attention,
        "offload": runtime.offload,
        "vae_tiling": runtime.vae_tiling,
        "channels_last": runtime.channels_last,
        "tf32": runtime.tf32,
        "cudnn_benchmark": runtime.cudnn_benchmark,
        "threads": runtime.threads,
        "torch": torch.__version__,
        "reasons": list(runtime.reasons),
    }

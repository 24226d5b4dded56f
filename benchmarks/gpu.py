"""GPU speed and memory: sdweb's loop beside diffusers' own pipeline, on the same random weights.

Usage::

    python benchmarks/gpu.py                       # CUDA: SD 1.5 shapes at 512, SDXL shapes at 1024
    python benchmarks/gpu.py --models sd15 --steps 12 --compile
    python benchmarks/gpu.py --json results.json   # also write the figures as JSON
    python benchmarks/gpu.py --smoke               # no GPU needed: tiny shapes on the CPU, checks it runs

What it measures, in one process, for each model shape (SD 1.5 at 512x512, SDXL at 1024x1024; full-size
architectures from sdweb's bundled configs with random weights, so a step costs what a real one does):

* **it/s**: denoising steps per second, batch 1 with CFG (the UNet sees batch 2), Euler a. Timestamps
  come from each loop's own per-step callback after ``torch.cuda.synchronize()``; the first step is a
  warm-up and is not counted.
* **peak VRAM**: ``torch.cuda.max_memory_allocated`` over the whole job (prompt encoding, the steps and
  the VAE decode, which is the peak at 1024), reset before each job.

for these variants, each driven by sdweb's ``run_txt2img`` and by diffusers' ``__call__`` on the same
pipeline object (same weights, same attention processors, same offload hooks):

* fp16 with PyTorch SDPA (sdweb's default attention), with xformers (when ``xformers.ops`` imports), and
  with ``--compile`` (opt-in: ``torch.compile`` of the UNet; dynamo keeps one graph per input shape, so
  the warm-up run at a size compiles it once for the runs after; where no compiler works, e.g. no
  triton or no C++ toolchain, it says so and the rows run eager);
* ``--medvram`` (model offload) and ``--lowvram`` (sequential offload), SDPA, with their peak VRAM.

``--smoke`` runs the same code with tiny shapes (64x64, the test suite's tiny SD1 and SDXL components)
on the CPU, offload with the CPU as execution device: it proves the script works on a machine without
a GPU. Its figures are not GPU figures: those need CUDA.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede the first torch import

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
CONFIGS = REPO_ROOT / "sdweb" / "data" / "configs"
TOKENIZERS = REPO_ROOT / "sdweb" / "data" / "tokenizers"
PROMPT = "a photograph of an astronaut riding a horse, highly detailed"
NEGATIVE = "blurry, low quality"
#: Model shape -> image size benchmarked.
SIZES = {"sd15": 512, "sdxl": 1024}


@dataclass
class Model:
    """What sdweb's loop needs of a loaded model (``LoadedModelLike``), for a pipeline built here."""

    pipe: Any
    device: Any
    dtype: Any
    family: str
    info: Any = None
    vae_name: str | None = None
    vae_hash: str | None = None


@dataclass
class Row:
    model: str
    size: int
    variant: str
    loop: str
    it_per_s: float | None = None
    peak_vram_mib: float | None = None
    seconds: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Random-weight pipelines
# ---------------------------------------------------------------------------------------------


def _config(family: str, component: str) -> dict[str, Any]:
    name = "scheduler_config.json" if component == "scheduler" else "config.json"
    config = json.loads((CONFIGS / family / component / name).read_text(encoding="utf-8"))
    return {key: value for key, value in config.items() if not key.startswith("_") or key == "_class_name"}


def _randomize(module: Any) -> Any:
    """Weights ~ N(0, 0.02), norm scales 1, biases 0: finite activations, so a step does real work."""
    import torch

    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.endswith("bias"):
                parameter.zero_()
            elif parameter.ndim == 1:
                parameter.fill_(1.0)
            else:
                parameter.normal_(0.0, 0.02)
    return module


def full_size_pipe(family: str, device: Any, dtype: Any) -> Any:
    """An SD 1.5- or SDXL-architecture pipeline from the bundled configs, random weights, on ``device``."""
    import torch
    from diffusers import (
        AutoencoderKL,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from sdweb.engine.models.components import build_scheduler

    folder = "sd1" if family == "sd15" else "sdxl"
    torch.manual_seed(0)

    def text_config(component: str) -> CLIPTextConfig:
        skipped = {"architectures", "model_type", "torch_dtype", "dtype", "transformers_version",
                   "_class_name"}
        return CLIPTextConfig(**{k: v for k, v in _config(folder, component).items() if k not in skipped})

    with torch.device(device):  # built on the device: random init there is fast
        unet = _randomize(UNet2DConditionModel.from_config(_config(folder, "unet")))
        vae = _randomize(AutoencoderKL.from_config(_config(folder, "vae")))
        text_encoder = _randomize(CLIPTextModel(text_config("text_encoder")))
        text_encoder_2 = (_randomize(CLIPTextModelWithProjection(text_config("text_encoder_2")))
                          if family == "sdxl" else None)
    scheduler = build_scheduler(_config(folder, "scheduler"))
    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZERS / "sd1"), local_files_only=True)
    if family == "sdxl":
        tokenizer_2 = CLIPTokenizer.from_pretrained(str(TOKENIZERS / "sd2"), local_files_only=True)
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                         tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet,
                                         scheduler=scheduler, force_zeros_for_empty_prompt=True)
    else:
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipe.to(dtype=dtype)
    return _inference_only(pipe)


def tiny_pipe(family: str, device: Any, dtype: Any) -> Any:
    """The test suite's tiny SD1 / SDXL components (``--smoke``)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from tests.fixtures.checkpoints import tiny_sd1_components, tiny_sdxl_components

    if family == "sdxl":
        pipe = StableDiffusionXLPipeline(**tiny_sdxl_components())
    else:
        pipe = StableDiffusionPipeline(**tiny_sd1_components())
    pipe.to(device, dtype)
    return _inference_only(pipe)


def _inference_only(pipe: Any) -> Any:
    """As sdweb's loader leaves a model: eval mode, no gradients wanted."""
    import torch

    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _per_second(stamps: list[float]) -> float | None:
    intervals = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return 1.0 / statistics.fmean(intervals) if intervals else None


def _reset_peak(device: Any) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: Any) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def run_sdweb(model: Model, size: int, steps: int) -> tuple[float | None, float | None, float]:
    from sdweb.engine.accelerator import job_scope
    from sdweb.engine.generate import run_txt2img
    from sdweb.engine.samplers import builtin
    from sdweb.engine.samplers.registry import SamplerRegistry
    from sdweb.params import GenerationParams, JobControl

    samplers = SamplerRegistry.from_plugin_results([("builtin", builtin.register_samplers())],
                                                   [("builtin", builtin.register_schedules())])
    params = GenerationParams(prompt=PROMPT, negative_prompt=NEGATIVE, steps=steps, width=size, height=size,
                              seed=1, subseed=1, clip_skip=1, rng="CPU", sampler_name="Euler a",
                              cfg_scale=7.0)
    stamps: list[float] = []
    device = model.device

    def on_step(_progress: Any) -> None:
        _sync(device)
        stamps.append(time.perf_counter())

    _reset_peak(device)
    started = time.perf_counter()
    with job_scope(model.pipe):  # as the Engine runs every job: offload reset afterwards
        run = run_txt2img(model, params, samplers=samplers, control=JobControl(), on_step=on_step)
    _sync(device)
    assert run.images, "sdweb made no image"
    return _per_second(stamps), _peak_mib(device), time.perf_counter() - started


def run_diffusers(model: Model, size: int, steps: int) -> tuple[float | None, float | None, float]:
    import torch
    from diffusers import EulerAncestralDiscreteScheduler

    pipe = model.pipe
    original = pipe.scheduler
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(original.config)
    stamps: list[float] = []
    device = model.device

    def on_step_end(_pipe: Any, _i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        _sync(device)
        stamps.append(time.perf_counter())
        return kwargs

    _reset_peak(device)
    started = time.perf_counter()
    try:  # as users call it (diffusers' __call__ runs under its own torch.no_grad)
        pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, height=size, width=size,
             guidance_scale=7.0, output_type="pil", callback_on_step_end=on_step_end,
             generator=torch.Generator("cpu").manual_seed(1))
        _sync(device)
    finally:
        pipe.scheduler = original
    return _per_second(stamps), _peak_mib(device), time.perf_counter() - started


def compile_unet(pipe: Any) -> str:
    """``torch.compile`` the UNet in place (one graph per input shape); "" or why it runs eager instead."""

    try:
        pipe.unet.compile(dynamic=False)
    except Exception as exc:  # an old torch, or no compiler backend at all
        return f"compile unavailable ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}): eager"
    return ""


def uncompile_unet(pipe: Any) -> None:
    # nn.Module.compile() keeps the compiled call here; clearing it gives back the eager module.
    pipe.unet._compiled_call_impl = None


def measure(model: Model, loop: str, size: int, steps: int) -> tuple[float | None, float | None, float, str]:
    """One job, warmed up first by a job at the same size (so compilation and autotuning are not timed)."""
    runner = run_sdweb if loop == "sdweb" else run_diffusers
    note = ""
    try:
        runner(model, size, 2)  # warm-up: kernels, cuDNN autotune, torch.compile's graph for this shape
    except Exception as exc:
        if getattr(model.pipe.unet, "_compiled_call_impl", None) is None:
            raise
        # The compiler failed at its first real use (no triton / no C++ toolchain): run eager.
        uncompile_unet(model.pipe)
        note = f"compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}): eager"
        runner(model, size, 2)
    it_s, peak, seconds = runner(model, size, steps)
    return it_s, peak, seconds, note


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def variants(args: argparse.Namespace, device: Any) -> list[tuple[str, str, str, bool]]:
    """(name, attention, offload, compile) rows to run."""
    from sdweb.engine.devices import xformers_importable

    half = "fp16" if device.type == "cuda" else "fp32"  # --smoke runs fp32 on the CPU
    rows = [(f"{half} sdpa", "sdpa", "none", False)]
    if device.type == "cuda" and xformers_importable():
        rows.append((f"{half} xformers", "xformers", "none", False))
    if args.compile:
        rows.append((f"{half} sdpa + compile", "sdpa", "none", True))
    rows += [("--medvram (model offload)", "sdpa", "model", False),
             ("--lowvram (sequential offload)", "sdpa", "sequential", False)]
    return rows


def bench_model(family: str, args: argparse.Namespace, device: Any, dtype: Any,
                skipped: list[str]) -> list[Row]:
    """Every variant on one pipeline (built once; each variant re-applies the runtime to it)."""
    from sdweb.engine.devices import RuntimeConfig, apply_runtime

    size = 64 if args.smoke else SIZES[family]
    label = "sd15" if family == "sd15" else "sdxl"
    rows: list[Row] = []
    print(f"\n== {label} shapes at {size}x{size}, {args.steps} steps ==", flush=True)
    pipe = (tiny_pipe if args.smoke else full_size_pipe)(family, device, dtype)
    model = Model(pipe=pipe, device=device, dtype=dtype, family="sdxl" if family == "sdxl" else "sd1")
    for name, attention, offload, compiled in variants(args, device):
        runtime = RuntimeConfig(device=device, dtype=dtype, vae_dtype=dtype, attention=attention,  # type: ignore[arg-type]
                                offload=offload, vae_tiling=False, threads=1)  # type: ignore[arg-type]
        apply_runtime(pipe, runtime)
        note = compile_unet(pipe) if compiled else ""
        for loop in ("sdweb", "diffusers"):
            _vae_as_loaded(pipe, loop, dtype)
            row = Row(model=label, size=size, variant=name, loop=loop, note=note)
            try:
                row.it_per_s, row.peak_vram_mib, row.seconds, failed = measure(model, loop, size, args.steps)
                row.note = failed or row.note
            except Exception as exc:
                row.note = f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            rows.append(row)
            print(_format(row), flush=True)
        if compiled:
            uncompile_unet(pipe)
    del model, pipe
    gc.collect()
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()
    for missing in skipped:
        print(f"  ({missing})")
    return rows


def _vae_as_loaded(pipe: Any, loop: str, dtype: Any) -> None:
    """The VAE's dtype as each one loads it: sdweb's loader keeps a force_upcast VAE (SDXL's) in fp32;
    diffusers loads it in the pipeline's dtype and upcasts it around each decode."""
    import torch

    from sdweb.engine.devices import vae_forces_upcast

    if dtype == torch.float16 and vae_forces_upcast(pipe.vae.config):
        pipe.vae.to(dtype=torch.float32 if loop == "sdweb" else torch.float16)


def _format(row: Row) -> str:
    speed = f"{row.it_per_s:7.2f} it/s" if row.it_per_s is not None else "      - it/s"
    peak = f"{row.peak_vram_mib:8.0f} MiB peak" if row.peak_vram_mib is not None else "   n/a (CPU) peak"
    return f"  {row.variant:<32} {row.loop:<9} {speed}  {peak}  {row.note}".rstrip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(SIZES), default=sorted(SIZES))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per job (the first is a warm-up)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the UNet")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: check that it runs")
    parser.add_argument("--json", type=Path, help="write the rows to this file as JSON")
    args = parser.parse_args()

    import torch

    if args.smoke:
        device, dtype = torch.device("cpu"), torch.float32
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
        args.steps = min(args.steps, 4)
    elif torch.cuda.is_available():
        device, dtype = torch.device("cuda", 0), torch.float16
    else:
        sys.exit("benchmarks/gpu.py measures a CUDA GPU and torch sees none here. GPU figures need CUDA; "
                 "--smoke runs the same code with tiny shapes on the CPU to check it works.")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {name}, {dtype}")
    if args.smoke:
        print("SMOKE RUN: tiny shapes on the CPU. These are not GPU figures; GPU figures need CUDA.")
    skipped: list[str] = []
    if device.type == "cuda":
        from sdweb.engine.devices import xformers_importable

        if not xformers_importable():
            skipped.append("xformers: not importable here, row left out")
    rows: list[Row] = []
    for family in args.models:
        rows += bench_model(family, args, device, dtype, skipped)
    if args.json is not None:
        payload = {"torch": torch.__version__, "device": name, "dtype": str(dtype), "smoke": args.smoke,
                   "steps": args.steps, "rows": [row.__dict__ for row in rows]}
        args.json.write_text(json.dumps(payload, indent=2), encoding="utf-8")
        print(f"\nwrote {args.json}")
    if any(row.note.startswith("FAILED") for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()

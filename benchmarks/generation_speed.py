"""Seconds per denoising step: bare diffusers' default vs sdweb's default path, and our loop's overhead.

Usage::

    python benchmarks/generation_speed.py                 # 256x256 and 512x512, 4 steps each
    python benchmarks/generation_speed.py --sizes 256 --steps 3

What it measures, in ONE process, on a full-size SD 1.5-architecture checkpoint with random weights
(``benchmarks/out/sd15-random-fp16.safetensors``, written once by ``tests.fixtures.checkpoints`` and
shared with ``model_load.py``; the per-step cost of random weights is the real one):

1. **diffusers default**: the checkpoint loaded in fp32 with PyTorch SDPA attention (diffusers' default
   processor), driven by diffusers' own ``StableDiffusionPipeline.__call__`` with ``prompt_embeds``.
2. **sdweb default**: the same file through sdweb's loader with the runtime sdweb picks on this machine
   (``resolve_runtime`` with default flags: bf16 + channels_last on a CPU with AMX/AVX512-BF16), driven
   by ``sdweb.engine.generate.run_txt2img``.
3. **raw UNet + scheduler**: the same bf16 pipe driven by the minimal loop (cat, UNet, CFG, step): what
   our loop is made of. Overhead = (sdweb - raw) / raw.
4. With ``--also-cast``: the fp32-loaded pipe of (1) cast in place with ``.to(bfloat16)`` + channels_last,
   driven by our loop: issue 3 saw such a cast model run 1.35x faster than one loaded straight into bf16,
   and this tells whether sdweb's loader (which casts each tensor as it reads it) pays that price.

Batch 1 with CFG (the UNet sees batch 2), sampler Euler a. The first step of each run is a warm-up and
is not counted; the figure is the mean of the other steps (timestamps from each loop's own per-step
callback). Threads: ``OMP_WAIT_POLICY=PASSIVE`` is set before torch is imported (idle OpenMP threads
sleep instead of spinning: on a shared 2-core box two spinning threads ran 2x slower than one whenever
anything else used the CPU), and every measurement uses the thread count sdweb's default runtime
chooses (physical cores, ``sdweb.engine.devices.default_thread_count``), so the comparison is
dtype/layout/loop only. Heavy: ~5 GB RAM, a few minutes at 512x512; run it on a quiet machine.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede the first torch import

import argparse  # noqa: E402
import gc  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
OUT_DIR = REPO_ROOT / "benchmarks" / "out"
CHECKPOINT = OUT_DIR / "sd15-random-fp16.safetensors"
PROMPT = "a photograph of an astronaut riding a horse, highly detailed"


def _checkpoint() -> Path:
    if not CHECKPOINT.exists():
        from tests.fixtures.checkpoints import full_size_sd15_checkpoint

        print(f"writing {CHECKPOINT} (once) ...", flush=True)
        full_size_sd15_checkpoint(CHECKPOINT)
    return CHECKPOINT


def _info(path: Path) -> Any:
    from sdweb.engine.models.registry import CheckpointInfo

    stat = path.stat()
    return CheckpointInfo(path=path, name=path.name, model_name=path.stem, kind="safetensors",
                          size=stat.st_size, mtime=stat.st_mtime, shorthash="0000000000")


def _default_runtime() -> Any:
    from sdweb.config import DataPaths, LaunchSettings
    from sdweb.engine.devices import resolve_runtime

    root = Path(tempfile.mkdtemp(prefix="sdweb-bench-"))
    return resolve_runtime(LaunchSettings(paths=DataPaths.from_root(root)))


def _fp32_runtime(threads: int) -> Any:
    import torch

    from sdweb.engine.devices import RuntimeConfig

    return RuntimeConfig(device=torch.device("cpu"), dtype=torch.float32, vae_dtype=torch.float32,
                         attention="sdpa", offload="none", vae_tiling=False, threads=threads)


def _per_step(stamps: list[float]) -> float:
    """Mean seconds per step from per-step timestamps, the first (warm-up) step left out."""
    intervals = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return statistics.fmean(intervals) if intervals else float("nan")


def bench_diffusers(pipe: Any, size: int, steps: int) -> float:
    """diffusers' own pipeline loop; timestamps from callback_on_step_end."""
    import torch
    from diffusers import EulerAncestralDiscreteScheduler

    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        embeds, negative = pipe.encode_prompt(PROMPT, "cpu", 1, True, "")
    stamps: list[float] = []

    def on_step_end(_pipe: Any, _i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        stamps.append(time.perf_counter())
        return kwargs

    pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, num_inference_steps=steps, height=size,
         width=size, guidance_scale=7.0, output_type="latent", callback_on_step_end=on_step_end,
         generator=torch.Generator("cpu").manual_seed(1))
    return _per_step(stamps)


def bench_sdweb(model: Any, size: int, steps: int) -> float:
    """sdweb's loop (run_txt2img); timestamps from its on_step callback."""
    from sdweb.engine.generate import run_txt2img
    from sdweb.engine.samplers import builtin
    from sdweb.engine.samplers.registry import SamplerRegistry
    from sdweb.params import GenerationParams, JobControl

    samplers = SamplerRegistry.from_plugin_results([("builtin", builtin.register_samplers())],
                                                   [("builtin", builtin.register_schedules())])
    params = GenerationParams(prompt=PROMPT, steps=steps, width=size, height=size, seed=1, subseed=1,
                              clip_skip=1, rng="CPU", sampler_name="Euler a", cfg_scale=7.0)
    stamps: list[float] = []
    run_txt2img(model, params, samplers=samplers, control=JobControl(),
                on_step=lambda _progress: stamps.append(time.perf_counter()), output_type="latent")
    return _per_step(stamps)


def bench_raw(pipe: Any, size: int, steps: int) -> float:
    """The bare calls our loop is made of: cat, UNet, CFG, scheduler step."""
    import torch
    from diffusers import EulerAncestralDiscreteScheduler

    unet = pipe.unet
    scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    with torch.inference_mode():
        embeds, negative = pipe.encode_prompt(PROMPT, "cpu", 1, True, "")
        context = torch.cat([negative, embeds]).to(unet.dtype)
        scale = pipe.vae_scale_factor
        generator = torch.Generator("cpu").manual_seed(1)
        latents = torch.randn((1, 4, size // scale, size // scale), generator=generator)
        latents = latents * scheduler.init_noise_sigma
        stamps: list[float] = []
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t).to(unet.dtype)
            output = unet(model_input, t, encoder_hidden_states=context, return_dict=False)[0].float()
            uncond, cond = output.chunk(2)
            guided = uncond + 7.0 * (cond - uncond)
            latents = scheduler.step(guided, t, latents, generator=generator).prev_sample
            stamps.append(time.perf_counter())
    return _per_step(stamps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--steps", type=int, default=4, help="steps per run; the first is a warm-up")
    parser.add_argument("--skip-diffusers", action="store_true")
    parser.add_argument("--also-cast", action="store_true",
                        help="also time the fp32-loaded pipe cast with .to(bfloat16) (see the docstring)")
    args = parser.parse_args()

    import torch

    from sdweb.engine.devices import configure_threads, describe_runtime
    from sdweb.engine.models.loader import load_checkpoint

    path = _checkpoint()
    runtime = _default_runtime()
    threads = configure_threads(runtime.threads)
    print(f"torch {torch.__version__}, {threads} thread(s), OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
    print(f"sdweb default runtime: {describe_runtime(runtime)}")
    results: dict[str, dict[int, float]] = {"diffusers": {}, "sdweb": {}, "raw": {}, "cast": {}}

    # 1. diffusers' default: fp32 weights, SDPA, diffusers' own loop.
    if not args.skip_diffusers:
        baseline = load_checkpoint(_info(path), _fp32_runtime(threads))  # applies SDPA, no channels_last
        for size in args.sizes:
            results["diffusers"][size] = bench_diffusers(baseline.pipe, size, args.steps)
            print(f"  diffusers fp32 {size}x{size}: {results['diffusers'][size]:.2f} s/step", flush=True)
        if args.also_cast and runtime.dtype != torch.float32:
            baseline.pipe.to(runtime.dtype)
            baseline.pipe.unet.to(memory_format=torch.channels_last)
            baseline.dtype = runtime.dtype
            for size in args.sizes:
                results["cast"][size] = bench_sdweb(baseline, size, args.steps)
                print(f"  fp32-loaded, cast .to({runtime.dtype}), our loop {size}x{size}: "
                      f"{results['cast'][size]:.2f} s/step", flush=True)
        del baseline
        gc.collect()

    # 2./3. sdweb's default path, then the raw calls on the same pipe.
    model = load_checkpoint(_info(path), runtime)
    for size in args.sizes:
        results["sdweb"][size] = bench_sdweb(model, size, args.steps)
        print(f"  sdweb {describe_runtime(runtime)['dtype']} {size}x{size}: "
              f"{results['sdweb'][size]:.2f} s/step", flush=True)
        results["raw"][size] = bench_raw(model.pipe, size, args.steps)
        print(f"  raw UNet+scheduler {size}x{size}: {results['raw'][size]:.2f} s/step", flush=True)

    print()
    print(f"{'size':>9} | {'diffusers fp32':>14} | {'sdweb default':>13} | {'speed-up':>8} | "
          f"{'raw calls':>9} | {'loop overhead':>13}")
    for size in args.sizes:
        base = results["diffusers"].get(size, float("nan"))
        ours, raw = results["sdweb"][size], results["raw"][size]
        print(f"{size:>4}x{size:<4} | {base:>12.2f} s | {ours:>11.2f} s | {base / ours:>7.2f}x | "
              f"{raw:>7.2f} s | {100 * (ours - raw) / raw:>+12.1f}%")
    for size, cast in results["cast"].items():
        print(f"{size:>4}x{size:<4}: fp32-loaded then cast {cast:.2f} s/step vs sdweb's loader "
              f"{results['sdweb'][size]:.2f} s/step")
    print("(s/step, batch 1 with CFG = UNet batch 2, Euler a, mean of steps 2..N)")


if __name__ == "__main__":
    main()

"""Seconds per denoising step with 0, 1 and 2 ControlNet units, on full-size SD 1.5 shapes.

Usage::

    python benchmarks/controlnet.py                       # 256x256, 4 steps
    python benchmarks/controlnet.py --sizes 512 --steps 6 # the size people use (slow on a CPU)

What it measures, in one process: the full-size SD 1.5-architecture checkpoint with random weights
(``benchmarks/out/sd15-random-fp16.safetensors``, shared with ``generation_speed.py``) and a full-size
ControlNet with random weights in the original ``control_model.*`` layout, the released models' hint
encoder included (``benchmarks/out/control_sd15_random-fp16.safetensors``, written once), both loaded
through sdweb's loaders with the runtime sdweb picks on this machine, driven by
``sdweb.engine.generate.run_txt2img`` (batch 1 with CFG, Euler a, ``module: none``). The first step of
each run is a warm-up and is not counted. Target (issue 14): one unit at most 1.5x the plain step.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede the first torch import

import argparse  # noqa: E402
import io  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
OUT_DIR = REPO_ROOT / "benchmarks" / "out"
CHECKPOINT = OUT_DIR / "sd15-random-fp16.safetensors"
CONTROLNET = OUT_DIR / "control_sd15_random-fp16.safetensors"
PROMPT = "a photograph of an astronaut riding a horse, highly detailed"


def _per_step(stamps: list[float]) -> float:
    intervals = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return statistics.fmean(intervals) if intervals else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256])
    parser.add_argument("--steps", type=int, default=4, help="steps per run; the first is a warm-up")
    args = parser.parse_args()

    import torch
    from PIL import Image

    from sdweb.config import DataPaths, LaunchSettings
    from sdweb.engine.control.controlnet import prepare_controlnets
    from sdweb.engine.control.library import ControlNetLibrary
    from sdweb.engine.devices import configure_threads, describe_runtime, resolve_runtime
    from sdweb.engine.generate import run_txt2img
    from sdweb.engine.models.loader import load_checkpoint
    from sdweb.engine.models.registry import CheckpointInfo
    from sdweb.engine.samplers import builtin
    from sdweb.engine.samplers.registry import SamplerRegistry
    from sdweb.images.control_maps import PreprocessorRegistry
    from sdweb.params import ControlNetUnit, GenerationParams, JobControl

    if not CHECKPOINT.exists():
        from tests.fixtures.checkpoints import full_size_sd15_checkpoint

        print(f"writing {CHECKPOINT} (once) ...", flush=True)
        full_size_sd15_checkpoint(CHECKPOINT)
    runtime = resolve_runtime(LaunchSettings(paths=DataPaths.from_root(Path(tempfile.mkdtemp()))))
    threads = configure_threads(runtime.threads)
    print(f"torch {torch.__version__}, {threads} thread(s); runtime {describe_runtime(runtime)}", flush=True)
    stat = CHECKPOINT.stat()
    info = CheckpointInfo(path=CHECKPOINT, name=CHECKPOINT.name, model_name=CHECKPOINT.stem,
                          kind="safetensors", size=stat.st_size, mtime=stat.st_mtime, shorthash="0000000000")
    model = load_checkpoint(info, runtime)
    if not CONTROLNET.exists():
        from tests.fixtures.controlnet import write_tiny_controlnet

        print(f"writing {CONTROLNET} (once) ...", flush=True)
        write_tiny_controlnet(CONTROLNET, model.pipe.unet, hint_widths=(16, 32, 96, 256), dtype=torch.float16)
    library = ControlNetLibrary([OUT_DIR])
    samplers = SamplerRegistry.from_plugin_results([("builtin", builtin.register_samplers())],
                                                   [("builtin", builtin.register_schedules())])
    buffer = io.BytesIO()
    Image.new("RGB", (512, 512), "white").save(buffer, format="PNG")
    unit = ControlNetUnit(model=CONTROLNET.stem, module="none", image=buffer.getvalue())

    results: dict[tuple[int, int], float] = {}
    for size in args.sizes:
        for count in (0, 1, 2):
            units = (unit,) * count
            params = GenerationParams(prompt=PROMPT, steps=args.steps, width=size, height=size, seed=1,
                                      subseed=1, clip_skip=1, rng="CPU", sampler_name="Euler a",
                                      cfg_scale=7.0, controlnet_units=units)
            job = prepare_controlnets(units, model=model, library=library,
                                      preprocessors=PreprocessorRegistry.with_builtins()) if units else None
            stamps: list[float] = []
            run_txt2img(model, params, samplers=samplers, control=JobControl(),
                        on_step=lambda _progress, stamps=stamps: stamps.append(time.perf_counter()),
                        output_type="latent", controlnets=job)
            results[(size, count)] = _per_step(stamps)
            print(f"  {size}x{size}, {count} unit(s): {results[(size, count)]:.3f} s/step", flush=True)
    print()
    print(f"{'size':>9} | {'no unit':>9} | {'1 unit':>15} | {'2 units':>15}")
    for size in args.sizes:
        plain = results[(size, 0)]
        one, two = results[(size, 1)], results[(size, 2)]
        print(f"{size:>4}x{size:<4} | {plain:>7.3f} s | {one:>7.3f} s {one / plain:>4.2f}x | "
              f"{two:>7.3f} s {two / plain:>4.2f}x")
    print("(s/step, batch 1 with CFG = UNet batch 2, Euler a, mean of steps 2..N; target: 1 unit <= 1.5x)")


if __name__ == "__main__":
    main()

"""Images per minute with 1 and 2 Ray workers, and the dispatch overhead per job vs the in-process worker.

Usage::

    python benchmarks/cluster.py                      # demo model, 64x64, 8 steps, 12 jobs per run
    python benchmarks/cluster.py --jobs 24 --steps 12

What it measures, on the bundled demo model (``sdweb/data/demo``) in a temporary data folder:

1. **In-process**: a plain sdweb (no cluster flags) with ``--threads 1``: the time of a 1-step job (mean of
   ``--overhead-jobs`` after a warm-up) and images per minute for ``--jobs`` one-image jobs queued at once.
2. **1 worker**: ``--workers local:1`` with ``--threads 1``: the same two figures. Dispatch overhead per
   job = its 1-step job time - the in-process one (goal: under 50 ms).
3. **2 workers**: ``--workers local:2``, one thread each: images per minute (goal: about 2x the 1-worker
   figure on a 2-core machine).

Each run warms every worker up first (model loaded), so model loading is not counted. The figures are
only meaningful on a quiet machine: anything else using the CPU cores skews the 2-worker speed-up first.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede the first torch import
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from sdweb.config import DataPaths, LaunchSettings  # noqa: E402
from sdweb.params import GenerationParams  # noqa: E402
from sdweb.services.factory import build_services  # noqa: E402

CHECKPOINT = "sdweb-demo-shapes.safetensors"


def params(steps: int, seed: int, **changes: Any) -> GenerationParams:
    return GenerationParams(
        prompt="a red circle on a blue background",
        steps=steps,
        width=64,
        height=64,
        seed=seed,
        sampler_name="Euler",
        checkpoint=CHECKPOINT,
        **changes,
    )


def wait_idle(services: Any, count: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(status.state == "idle" for status in services.generation.workers()) >= count:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{count} workers not ready in {timeout} s: {services.generation.workers()}")


def measure(services: Any, workers: int, args: argparse.Namespace) -> tuple[float, float]:
    """(mean seconds of a 1-step job, images per minute) for a started container."""
    generation = services.generation
    # Warm-up: every worker loads the model (a job per worker, all at once).
    for job in [generation.submit(params(1, seed), save=False) for seed in range(workers)]:
        job.wait(600)
    single: list[float] = []
    for seed in range(args.overhead_jobs):
        started = time.perf_counter()
        generation.generate(params(1, 100 + seed), save=False)
        single.append(time.perf_counter() - started)
    started = time.perf_counter()
    jobs = [generation.submit(params(args.steps, 1000 + seed), save=False) for seed in range(args.jobs)]
    for job in jobs:
        job.wait(1200)
    elapsed = time.perf_counter() - started
    return statistics.mean(single), args.jobs / elapsed * 60


def run(root: Path, workers: int | None, args: argparse.Namespace) -> tuple[float, float]:
    settings = LaunchSettings(paths=DataPaths.from_root(root), threads=1, workers=workers)
    services = build_services(settings, load_extensions=False)
    try:
        wait_idle(services, workers or 1)
        return measure(services, workers or 1, args)
    finally:
        services.worker.close(timeout=2)
        if workers is not None:
            import ray

            services.generation._workers.close(timeout=2)
            ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=12, help="one-image jobs queued at once per run")
    parser.add_argument("--steps", type=int, default=8, help="steps of each throughput job")
    parser.add_argument("--overhead-jobs", type=int, default=10, help="1-step jobs timed one after another")
    args = parser.parse_args()
    print(f"demo model 64x64, Euler, {args.steps} steps, {args.jobs} jobs per run; {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="sdweb-bench-") as folder:
        root = Path(folder)
        local_job, local_rate = run(root / "local", None, args)
        print(
            f"in-process worker: 1-step job {local_job * 1000:.0f} ms, {local_rate:.1f} images/min",
            flush=True,
        )
        # One data folder for both Ray runs: Ray keeps a process's first cluster token for its lifetime.
        one_job, one_rate = run(root / "ray", 1, args)
        print(
            f"1 Ray worker:      1-step job {one_job * 1000:.0f} ms, {one_rate:.1f} images/min "
            f"(dispatch overhead {(one_job - local_job) * 1000:+.0f} ms/job)",
            flush=True,
        )
        _two_job, two_rate = run(root / "ray", 2, args)
        print(
            f"2 Ray workers:     {two_rate:.1f} images/min ({two_rate / one_rate:.2f}x one worker)",
            flush=True,
        )


if __name__ == "__main__":
    main()

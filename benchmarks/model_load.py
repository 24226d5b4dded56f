"""Load time, peak memory and model switch time for a full-size SD 1.5 checkpoint on CPU.

Usage::

    python benchmarks/model_load.py            # ours + plain diffusers from_single_file + cache switch
    python benchmarks/model_load.py --skip-diffusers --skip-switch

Writes (once, cached) ``benchmarks/out/sd15-random-fp16.safetensors``: the SD 1.5 architecture with
random weights in fp16 (about 2.1 GB), in the original LDM key layout. Every measurement runs in a fresh
subprocess so peak RSS (``VmHWM``) belongs to that load alone; the RSS after imports is reported too, so
the load's own cost is visible. Heavy: about 5 GB of RAM for ours, 7 GB for diffusers' loader.

Measured 2026-11-25 on the 2-core shared dev box (CPU, fp16 file -> fp32, default threads):

    sdweb load_checkpoint       load 9.0 s | peak RSS 4.61 GiB (0.42 after imports) | model 3.97 GiB | 1.16x
    diffusers from_single_file  load 8.5 s | peak RSS 6.40 GiB (0.42 after imports) | model 3.97 GiB | 1.61x
    ModelCache switch between 2 cached bf16 models: median 0.0 ms, max 0.1 ms (CPU: nothing moves)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = REPO_ROOT / "benchmarks" / "out"
CHECKPOINT = OUT_DIR / "sd15-random-fp16.safetensors"
GIB = 1024**3


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _dtype(name: str) -> Any:
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def _runtime(dtype_name: str) -> Any:
    import torch

    from sdweb.engine.devices import RuntimeConfig

    dtype = _dtype(dtype_name)
    return RuntimeConfig(
        device=torch.device("cpu"),
        dtype=dtype,
        vae_dtype=dtype,
        attention="sdpa",
        offload="none",
        vae_tiling=False,
        threads=torch.get_num_threads(),
    )


def _info(path: Path) -> Any:
    from sdweb.engine.models.registry import CheckpointInfo

    stat = path.stat()
    return CheckpointInfo(
        path=path,
        name=path.name,
        model_name=path.stem,
        kind="safetensors",
        size=stat.st_size,
        mtime=stat.st_mtime,
    )


def _model_bytes(pipe: Any) -> int:
    import torch

    seen: set[int] = set()
    total = 0
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            for tensor in (*module.parameters(), *module.buffers()):
                ptr = tensor.untyped_storage().data_ptr()
                if ptr not in seen:
                    seen.add(ptr)
                    total += tensor.untyped_storage().nbytes()
    return total


# -- children: one measurement each --------------------------------------------------------------


def child_ours(path: Path, dtype_name: str, *, heap_reuse: bool = False) -> dict[str, Any]:
    from sdweb.engine.models.loader import load_checkpoint

    if heap_reuse:  # as the server's CPU engine runs (sdweb.engine.heap.configure_heap_reuse)
        from sdweb.engine.heap import configure_heap_reuse

        configure_heap_reuse("cpu")
    runtime = _runtime(dtype_name)
    baseline = _status_kib("VmRSS") * 1024
    started = time.perf_counter()
    model = load_checkpoint(_info(path), runtime)
    seconds = time.perf_counter() - started
    return {
        "load_s": seconds,
        "baseline_rss": baseline,
        "peak_rss": _status_kib("VmHWM") * 1024,
        "model_bytes": model.nbytes(),
    }


def child_diffusers(path: Path, dtype_name: str) -> dict[str, Any]:
    from diffusers import StableDiffusionPipeline

    config_dir = Path(tempfile.mkdtemp(prefix="sd1-config-"))
    try:
        # Our bundled SD1 configs as a diffusers config folder, with the bundled tokenizer beside them.
        shutil.copytree(REPO_ROOT / "sdweb" / "data" / "configs" / "sd1", config_dir, dirs_exist_ok=True)
        shutil.copytree(REPO_ROOT / "sdweb" / "data" / "tokenizers" / "sd1", config_dir / "tokenizer")
        baseline = _status_kib("VmRSS") * 1024
        started = time.perf_counter()
        pipe = StableDiffusionPipeline.from_single_file(
            str(path),
            config=str(config_dir),
            local_files_only=True,
            torch_dtype=_dtype(dtype_name),
            safety_checker=None,
            requires_safety_checker=False,
        )
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(config_dir, ignore_errors=True)
    return {
        "load_s": seconds,
        "baseline_rss": baseline,
        "peak_rss": _status_kib("VmHWM") * 1024,
        "model_bytes": _model_bytes(pipe),
    }


def child_switch(path: Path, dtype_name: str, rounds: int) -> dict[str, Any]:
    from sdweb.engine.models.cache import ModelCache
    from sdweb.engine.models.loader import load_checkpoint

    runtime = _runtime(dtype_name)
    # A second name for the same file: the cache keys on the path, so these are two models.
    second = path.with_name(f"{path.stem}-b{path.suffix}")
    if not second.exists():
        os.link(path, second)
    cache = ModelCache(
        lambda info, vae: load_checkpoint(info, runtime), capacity=2, offload_device=runtime.parking_device
    )
    infos = [_info(path), _info(second)]
    loads = []
    for info in infos:
        started = time.perf_counter()
        with cache.use(info):
            pass
        loads.append(time.perf_counter() - started)
    switches = []
    for i in range(rounds):
        started = time.perf_counter()
        with cache.use(infos[i % 2]) as model:
            assert model.info.path == infos[i % 2].path
        switches.append(time.perf_counter() - started)
    return {"loads_s": loads, "switch_s": switches, "peak_rss": _status_kib("VmHWM") * 1024}


# -- parent ----------------------------------------------------------------------------------------


def ensure_checkpoint() -> Path:
    if CHECKPOINT.exists():
        return CHECKPOINT
    print(f"writing {CHECKPOINT} (random SD 1.5 weights, fp16; once) ...", flush=True)
    started = time.perf_counter()
    code = (
        "import sys, torch; sys.path.insert(0, sys.argv[1]); "
        "from tests.fixtures.checkpoints import full_size_sd15_checkpoint; "
        "full_size_sd15_checkpoint(__import__('pathlib').Path(sys.argv[2]), torch.float16)"
    )
    partial = CHECKPOINT.with_suffix(".partial")
    subprocess.run([sys.executable, "-c", code, str(REPO_ROOT), str(partial)], check=True)
    partial.rename(CHECKPOINT)
    print(f"  written in {time.perf_counter() - started:.0f} s, {CHECKPOINT.stat().st_size / GIB:.2f} GiB")
    return CHECKPOINT


def run_child(kind: str, path: Path, dtype: str, extra: list[str] | None = None) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        kind,
        "--path",
        str(path),
        "--dtype",
        dtype,
    ]
    out = subprocess.run(cmd + (extra or []), check=True, capture_output=True, text=True, cwd=REPO_ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(label: str, result: dict[str, Any]) -> None:
    model = result["model_bytes"]
    peak = result["peak_rss"]
    own = peak - result["baseline_rss"]
    print(
        f"{label:<34} load {result['load_s']:6.1f} s | peak RSS {peak / GIB:5.2f} GiB "
        f"(after imports {result['baseline_rss'] / GIB:4.2f}) | model {model / GIB:5.2f} GiB | "
        f"peak/model {peak / model:4.2f} | (peak-imports)/model {own / model:4.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", choices=["ours", "ours-heap", "diffusers", "switch"])
    parser.add_argument("--path", type=Path)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument(
        "--switch-dtype",
        default="bf16",
        choices=["fp32", "fp16", "bf16"],
        help="dtype of the two cached models of the switch test (bf16 keeps RAM at ~5 GB)",
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--skip-diffusers", action="store_true")
    parser.add_argument("--skip-switch", action="store_true")
    args = parser.parse_args()

    if args.child:
        sys.path.insert(0, str(REPO_ROOT))
        import logging

        logging.basicConfig(level=logging.WARNING)
        if args.child in ("ours", "ours-heap"):
            result = child_ours(args.path, args.dtype, heap_reuse=args.child == "ours-heap")
        elif args.child == "diffusers":
            result = child_diffusers(args.path, args.dtype)
        else:
            result = child_switch(args.path, args.dtype, args.rounds)
        print(json.dumps(result))
        return

    path = ensure_checkpoint()
    print(
        f"checkpoint: {path.name}, {path.stat().st_size / GIB:.2f} GiB on disk (fp16), target {args.dtype}, "
        f"CPU threads {os.environ.get('OMP_NUM_THREADS', 'default')}"
    )
    report(f"sdweb load_checkpoint ({args.dtype})", run_child("ours", path, args.dtype))
    # The server's CPU engine keeps freed blocks in the heap (configure_heap_reuse): the same load there.
    report(f"  + CPU heap reuse ({args.dtype})", run_child("ours-heap", path, args.dtype))
    if not args.skip_diffusers:
        report(f"diffusers from_single_file ({args.dtype})", run_child("diffusers", path, args.dtype))
    if not args.skip_switch:
        result = run_child("switch", path, args.switch_dtype, ["--rounds", str(args.rounds)])
        switches = result["switch_s"]
        print(
            f"ModelCache switch between 2 cached {args.switch_dtype} models: "
            f"first loads {', '.join(f'{s:.1f}' for s in result['loads_s'])} s; "
            f"switch median {sorted(switches)[len(switches) // 2] * 1000:.1f} ms, "
            f"max {max(switches) * 1000:.1f} ms over {len(switches)} switches; "
            f"peak RSS {result['peak_rss'] / GIB:.2f} GiB"
        )


if __name__ == "__main__":
    main()

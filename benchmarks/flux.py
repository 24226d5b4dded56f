"""Flux.1 transformer speed and memory by storage form (bf16, fp8, GGUF Q4_0), beside diffusers' FluxPipeline.

Usage::

    python benchmarks/flux.py                         # CPU: full width, 1 double + 2 single blocks, 256 px
    python benchmarks/flux.py --double 19 --single 38 --size 1024 --steps 8    # the released shape (GPU)

What is measured, each form in a fresh subprocess (so peak memory belongs to that form alone):

* ``diffusers``: diffusers' own default, ``FluxTransformer2DModel.from_single_file`` (bf16) driven by
  ``FluxPipeline.__call__`` with precomputed prompt embeddings;
* ``sdweb-bf16`` / ``sdweb-fp8`` / ``sdweb-gguf-q4_0``: sdweb's loader (:func:`load_checkpoint` with
  module files picked from ``models/text_encoder`` / ``models/VAE``) and its flow loop
  (:mod:`sdweb.engine.families`), on the same weights stored as bf16, as float8_e4m3fn (computed layer by
  layer in bf16) and as GGUF Q4_0 (dequantized per layer);
* ``sdweb-aio-bf16``: the same bf16 weights as one all-in-one file (transformer, CLIP-L, T5, VAE).

Reported: load time, peak RSS while loading and the loaded model's bytes (their ratio), the same for the
transformer alone ("transf.": peak RSS growth from the start of the load until the transformer, built
first, is done, over its bytes), seconds per sampling step (median, CFG 1, Euler), peak RSS (CPU) or peak
CUDA memory (GPU) while generating, and the ratios to diffusers' default. RSS after importing torch,
diffusers, transformers and the loader is subtracted (code, not model). The weights are random with the
released width (3072, 24 heads, T5 width 4096, CLIP-L 768); the block count is what fits the machine,
stated in the output. The text encoders are one-layer stand-ins of the real widths (they run once per
job, not per step). Q4_0 rather than Q4_K_S: the ``gguf`` package can write Q4_0 but not the K-quants;
both dequantize per layer the same way. Files are written once into
``benchmarks/out/flux-<double>x<single>/`` (a few GB).

Measured on the 2-core shared dev box (CPU with avx512_bf16, other jobs running, so the s/step figures
are noisy: runs of the same form differ by 2x; a single process timing both bf16 transformers back to
back gave 8.2-8.5 s vs 8.7-9.6 s, i.e. the same speed),
``python benchmarks/flux.py --double 1 --single 2 --size 256 --steps 2``::

    form             load s  load peak  - imports     model  ratio transf.   s/step x diff.   peak RSS x diff.
    diffusers          14.3   1.21 GiB   0.90 GiB  1.44 GiB   0.63    0.70    12.78    1.00   2.39 GiB    1.00
    sdweb-bf16          7.2   2.56 GiB   2.13 GiB  1.91 GiB   1.11    1.03     5.06    0.40   2.70 GiB    1.13
    sdweb-fp8           2.3   1.92 GiB   1.49 GiB  1.27 GiB   1.17    1.03     4.37    0.34   2.21 GiB    0.92
    sdweb-gguf-q4_0     7.0   1.64 GiB   1.21 GiB  0.99 GiB   1.22    1.04    18.52    1.45   2.13 GiB    0.89
    sdweb-aio-bf16     10.6   2.44 GiB   2.01 GiB  1.91 GiB   1.05       -     3.97    0.31   2.63 GiB    1.10

(The fp8 row is from a later run, after fp8 files kept their adaLN modulation layers in fp8 as stored:
1.45 -> 1.27 GiB here; its "x diff." columns are against the diffusers row above.)
sdweb's load includes its warm-up (CLIP-L and the VAE run once on tiny inputs, ``accelerator.warm_up``):
about 0.15 GiB more at the load's peak here (the runs before the warm-up landed gave bf16 1.03, fp8
1.04, GGUF 1.06, all-in-one 1.03); the text encoders' and VAE's first calls, not the transformer's size.
Before GGUF files were streamed (diffusers' ``load_gguf_checkpoint`` copies out of a memory map, so the
file's pages stay resident beside the copies) the GGUF transformer's "transf." was 2.00, and fp8's was
1.22 while the converted state dict kept the fp8 originals of upcast layers alive. diffusers' ratio
is below 1 because it reads the file through a memory map (not every page of the model is counted as
resident at the peak). sdweb's "model" includes the stand-in text encoders (0.47 GiB) that diffusers' run
does not load. On a CPU fp8 and Q4_0 trade speed for memory (each step casts / dequantizes every layer);
the full 19 + 38 block transformer is 22.2 GiB in bf16, 11.1 GiB in fp8 and about 6.3 GiB in Q4_0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = REPO_ROOT / "benchmarks" / "out"
GIB = 1024**3
FORMS = ("diffusers", "sdweb-bf16", "sdweb-fp8", "sdweb-gguf-q4_0", "sdweb-aio-bf16")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak_rss() -> None:
    try:  # Linux: writing 5 to clear_refs resets VmHWM to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _folder(args: argparse.Namespace) -> Path:
    return OUT_DIR / f"flux-{args.double}x{args.single}"


# --------------------------------------------------------------------------------------------------
# Writing the files (parent process, once)
# --------------------------------------------------------------------------------------------------


def write_files(args: argparse.Namespace) -> Path:
    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from sdweb.engine.models.flux_layout import flux_to_bfl
    from sdweb.engine.models.ldm_layout import vae_to_ldm

    root = _folder(args)
    ckpt, te_dir, vae_dir = (
        root / "models" / "Stable-diffusion",
        root / "models" / "text_encoder",
        root / "models" / "VAE",
    )
    done = root / "done"
    if done.is_file():
        return root
    for folder in (ckpt, te_dir, vae_dir):
        folder.mkdir(parents=True, exist_ok=True)
    print(
        f"writing random full-width Flux weights ({args.double} double, {args.single} single blocks) "
        f"to {root} ...",
        flush=True,
    )
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = FluxTransformer2DModel(
            num_layers=args.double, num_single_layers=args.single, guidance_embeds=True
        ).to(torch.bfloat16)
    for param in model.parameters():  # diffusers' init is fine, but keep magnitudes small and finite
        torch.nn.init.normal_(param, std=0.02)
    state = flux_to_bfl({k: v.detach() for k, v in model.state_dict().items()}, dict(model.config))
    del model
    save_file(state, str(ckpt / "flux-bench-bf16.safetensors"))
    fp8 = {
        k: (v.to(torch.float8_e4m3fn) if v.ndim == 2 and k.endswith(".weight") else v)
        for k, v in state.items()
    }
    save_file(fp8, str(ckpt / "flux-bench-fp8.safetensors"))
    del fp8
    _write_gguf(state, ckpt / "flux-bench-Q4_0.gguf")
    del state
    clip = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=1,
            num_attention_heads=12,
            vocab_size=49408,
        )
    ).to(torch.bfloat16)
    save_file(_with_text_model(clip.state_dict()), str(te_dir / "clip_l.safetensors"))
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=32128,
            d_model=4096,
            d_kv=64,
            num_heads=64,
            num_layers=1,
            d_ff=1024,
            feed_forward_proj="gated-gelu",
        )
    ).to(torch.bfloat16)
    t5_state = {k: v for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}
    save_file(t5_state, str(te_dir / "t5xxl_fp16.safetensors"))
    vae = AutoencoderKL(
        latent_channels=16,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    save_file(
        vae_to_ldm(dict(vae.to(torch.bfloat16).state_dict()), prefix=""), str(vae_dir / "ae.safetensors")
    )
    done.write_text("ok")
    return root


def write_all_in_one(root: Path) -> Path:
    """``flux-bench-aio.safetensors``: the bf16 transformer with CLIP-L, T5 and the VAE in one file, under
    the prefixes the common all-in-one Flux checkpoints use (written once, from the module files)."""
    from safetensors.torch import load_file, save_file

    models = root / "models"
    path = models / "Stable-diffusion" / "flux-bench-aio.safetensors"
    if path.is_file():
        return path
    state: dict[str, Any] = {}
    for prefix, file in (
        ("model.diffusion_model.", "Stable-diffusion/flux-bench-bf16.safetensors"),
        ("text_encoders.clip_l.transformer.", "text_encoder/clip_l.safetensors"),
        ("text_encoders.t5xxl.transformer.", "text_encoder/t5xxl_fp16.safetensors"),
        ("vae.", "VAE/ae.safetensors"),
    ):
        state.update({prefix + key: value for key, value in load_file(str(models / file)).items()})
    save_file(state, str(path))
    return path


def _with_text_model(state: dict[str, Any]) -> dict[str, Any]:
    return {("text_model." + k.removeprefix("text_model.")): v.contiguous() for k, v in state.items()}


def _write_gguf(state: dict[str, Any], path: Path) -> None:
    import gguf
    import numpy as np
    from gguf import quants

    writer = gguf.GGUFWriter(str(path), arch="flux")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    q4 = gguf.GGMLQuantizationType.Q4_0
    for key, tensor in state.items():
        data = tensor.float().numpy()
        if tensor.ndim == 2 and data.shape[1] % 32 == 0 and key.endswith(".weight") and data.shape[0] > 64:
            writer.add_tensor(key, quants.quantize(data, q4), raw_dtype=q4)
        else:
            writer.add_tensor(key, data.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# --------------------------------------------------------------------------------------------------
# One form (child process)
# --------------------------------------------------------------------------------------------------


def _device_and_sync() -> tuple[Any, Any]:
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", 0), torch.cuda.synchronize
    return torch.device("cpu"), lambda: None


def run_form(form: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    root = _folder(args)
    device, sync = _device_and_sync()
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    _import_libraries(form)  # code, not the load: their resident pages are not the model's
    result: dict[str, Any] = {
        "form": form,
        "device": str(device),
        "threads": threads,
        "rss_after_imports": _status_kib("VmRSS") * 1024,
    }
    _reset_peak_rss()
    phase = _TransformerPhase()
    started = time.perf_counter()
    if form == "diffusers":
        pipe, model_bytes = _diffusers_pipe(root, device, phase)
    else:
        pipe, model_bytes, loaded = _sdweb_model(root, form, device, phase)
    sync()
    result["load_s"] = time.perf_counter() - started
    result["load_peak_rss"] = _status_kib("VmHWM") * 1024
    result["model_bytes"] = model_bytes
    result["transformer_growth"] = phase.growth
    result["transformer_bytes"] = phase.nbytes
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _reset_peak_rss()
    stamps: list[float] = []
    if form == "diffusers":
        _diffusers_generate(pipe, args, device, stamps, sync)
    else:
        _sdweb_generate(loaded, args, stamps, sync)
    steps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    result["s_per_step"] = sorted(steps)[len(steps) // 2] if steps else float("nan")
    result["run_peak_rss"] = _status_kib("VmHWM") * 1024
    if device.type == "cuda":
        result["run_peak_cuda"] = torch.cuda.max_memory_allocated()
    return result


def _import_libraries(form: str) -> None:
    import diffusers  # noqa: F401
    import transformers  # noqa: F401

    if form != "diffusers":
        import sdweb.engine.families
        import sdweb.engine.models.flow_loader
        import sdweb.engine.models.loader  # noqa: F401


class _TransformerPhase:
    """Peak RSS growth from the start of the load until the transformer is built (it is built first, before
    the text encoders and the VAE), against the transformer's bytes: the part of the load whose form differs.
    """

    def __init__(self) -> None:
        self.start = _status_kib("VmRSS") * 1024
        self.growth = 0
        self.nbytes = 0

    def measure(self, build: Any) -> Any:
        model = build()
        self.growth = _status_kib("VmHWM") * 1024 - self.start
        self.nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        return model

    def wrap(self, module: Any, name: str) -> None:
        original = getattr(module, name)

        def measured(*args: Any, **kwargs: Any) -> Any:
            return self.measure(lambda: original(*args, **kwargs))

        setattr(module, name, measured)


def _diffusers_pipe(root: Path, device: Any, phase: _TransformerPhase) -> tuple[Any, int]:
    import tempfile

    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    from sdweb.engine.models.detect import detect_checkpoint
    from sdweb.engine.models.detect_flow import bundled_flow_config
    from sdweb.engine.models.safetensors_io import read_safetensors_header

    path = root / "models" / "Stable-diffusion" / "flux-bench-bf16.safetensors"
    config = detect_checkpoint(read_safetensors_header(path).shapes(), name=path.name).transformer_config
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "config.json").write_text(json.dumps(config))
        transformer = phase.measure(
            lambda: FluxTransformer2DModel.from_single_file(
                str(path), config=folder, torch_dtype=torch.bfloat16, local_files_only=True
            )
        )
    vae = AutoencoderKL.from_single_file(
        str(root / "models" / "VAE" / "ae.safetensors"),
        config=_vae_config_dir(),
        torch_dtype=torch.bfloat16,
        local_files_only=True,
    )
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(bundled_flow_config("flux", "scheduler"))
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer,
    ).to(device)
    model_bytes = sum(p.numel() * p.element_size() for m in (transformer, vae) for p in m.parameters())
    return pipe, model_bytes


def _vae_config_dir() -> str:
    from sdweb.engine.models.detect_flow import CONFIGS_DIR

    return str(CONFIGS_DIR / "flux" / "vae")


def _diffusers_generate(
    pipe: Any, args: argparse.Namespace, device: Any, stamps: list[float], sync: Any
) -> None:
    import torch

    embeds = torch.randn(1, 512, 4096, dtype=torch.bfloat16, device=device)
    pooled = torch.randn(1, 768, dtype=torch.bfloat16, device=device)

    def on_step(_pipe: Any, _i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        sync()
        stamps.append(time.perf_counter())
        return kwargs

    with torch.inference_mode():
        pipe(
            prompt_embeds=embeds,
            pooled_prompt_embeds=pooled,
            height=args.size,
            width=args.size,
            num_inference_steps=args.steps,
            guidance_scale=3.5,
            generator=torch.Generator().manual_seed(0),
            callback_on_step_end=on_step,
        )


def _sdweb_model(root: Path, form: str, device: Any, phase: _TransformerPhase) -> tuple[Any, int, Any]:
    import torch

    from sdweb.engine.devices import RuntimeConfig
    from sdweb.engine.models import flow_loader
    from sdweb.engine.models.hashes import HashCache
    from sdweb.engine.models.loader import detect_file, load_checkpoint
    from sdweb.engine.models.modules import ModuleRegistry
    from sdweb.engine.models.registry import CheckpointRegistry

    name = {
        "sdweb-bf16": "flux-bench-bf16.safetensors",
        "sdweb-fp8": "flux-bench-fp8.safetensors",
        "sdweb-gguf-q4_0": "flux-bench-Q4_0.gguf",
        "sdweb-aio-bf16": "flux-bench-aio.safetensors",
    }[form]
    registry = CheckpointRegistry([root / "models" / "Stable-diffusion"], HashCache(root / "hashes.json"))
    info = registry.find(name)
    modules = ModuleRegistry(root / "models" / "text_encoder", root / "models" / "VAE")
    runtime = RuntimeConfig(
        device=device,
        dtype=torch.bfloat16,
        vae_dtype=torch.bfloat16,
        attention="sdpa",
        offload="none",
        vae_tiling=False,
        threads=torch.get_num_threads(),
    )
    phase.wrap(flow_loader, "_gguf_transformer" if form.endswith("gguf-q4_0") else "_build_transformer")
    picked = modules.resolve(detect_file(info.path, info.name, info.kind), checkpoint=info.name)
    loaded = load_checkpoint(info, runtime, modules=picked, vae_hash="0" * 10)
    return loaded.pipe, loaded.nbytes(), loaded


def _sdweb_generate(loaded: Any, args: argparse.Namespace, stamps: list[float], sync: Any) -> None:
    from sdweb.engine.families import FamilyJob, default_families
    from sdweb.params import GenerationParams, JobControl

    params = GenerationParams(
        prompt="a lighthouse at dusk",
        steps=args.steps,
        width=args.size,
        height=args.size,
        seed=0,
        subseed=0,
        clip_skip=1,
        rng="CPU",
        sampler_name="Euler",
        cfg_scale=1.0,
        distilled_cfg_scale=3.5,
    )

    def on_step(_step: Any) -> None:
        sync()
        stamps.append(time.perf_counter())

    family = default_families().for_family(loaded.family)
    # s/step comes from the gaps between step ends: prompt encoding (once per job) is not in it.
    family.txt2img(loaded, params, FamilyJob(samplers=None, control=JobControl(), on_step=on_step))


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--double", type=int, default=1, help="double-stream blocks (released: 19)")
    parser.add_argument("--single", type=int, default=2, help="single-stream blocks (released: 38)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (multiple of 16)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_form(args.child, args)))
        return
    write_files(args)
    if "sdweb-aio-bf16" in args.forms.split(","):
        write_all_in_one(_folder(args))
    results = []
    for form in args.forms.split(","):
        command = [
            sys.executable,
            __file__,
            "--child",
            form,
            "--double",
            str(args.double),
            "--single",
            str(args.single),
            "--size",
            str(args.size),
            "--steps",
            str(args.steps),
            "--threads",
            str(args.threads),
        ]
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            print(f"{form}: failed\n{done.stderr[-3000:]}", flush=True)
            continue
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{form}: done", flush=True)
    report(results, args)


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    if not results:
        return
    device = results[0]["device"]
    print(
        f"\nFlux transformer, full width (3072, 24 heads x 128, T5 4096, CLIP-L 768) with {args.double} "
        f"double + {args.single} single blocks (released: 19 + 38), {args.size}x{args.size}, {args.steps} "
        f"Euler steps, CFG 1, on {device}, {results[0]['threads']} threads"
    )
    base = next((r for r in results if r["form"] == "diffusers"), results[0])
    gpu = "run_peak_cuda" in base
    peak_name = "peak CUDA" if gpu else "peak RSS"
    print(f"{'form':16} {'load s':>6} {'load peak':>10} {'- imports':>10} {'model':>9} {'ratio':>6} "
          f"{'transf.':>6} {'s/step':>8} {'x diff.':>7} {peak_name:>10} {'x diff.':>7}")
    for item in results:
        peak = item["run_peak_cuda"] if gpu else item["run_peak_rss"]
        base_peak = base["run_peak_cuda"] if gpu else base["run_peak_rss"]
        own = item["load_peak_rss"] - item["rss_after_imports"]
        model = max(item["model_bytes"], 1)
        # An all-in-one file is read whole before its transformer is built: no transformer-only figure.
        transformer = (
            "-" if item["form"] == "sdweb-aio-bf16"
            else f"{item['transformer_growth'] / max(item['transformer_bytes'], 1):.2f}"
        )
        print(f"{item['form']:16} {item['load_s']:6.1f} {item['load_peak_rss'] / GIB:6.2f} GiB "
              f"{own / GIB:6.2f} GiB {model / GIB:5.2f} GiB {own / model:6.2f} {transformer:>7} "
              f"{item['s_per_step']:8.2f} "
              f"{item['s_per_step'] / base['s_per_step']:7.2f} {peak / GIB:6.2f} GiB {peak / base_peak:7.2f}")
    print("load peak: peak RSS while loading; '- imports': minus the RSS after importing torch, diffusers, "
          "transformers and the loader; ratio = that / the loaded model's bytes (sdweb's model includes the "
          "two stand-in text encoders, diffusers' run gets precomputed prompt embeddings); transf.: peak RSS "
          "growth from the start of the load until the transformer (loaded first) is built / its bytes")


if __name__ == "__main__":
    main()

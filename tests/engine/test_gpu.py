"""The engine itself on a CUDA GPU: fp16 VAEs, --medvram/--lowvram jobs, placement after jobs, memory.

Marked ``gpu`` (deselected by default; ``-m gpu`` selects them) and skipped without CUDA. Every test runs
sdweb's own loop (txt2img, img2img, hires fix, inpainting) on checkpoints loaded by sdweb's loader with a
runtime resolved from launch flags on this machine, as ``create_engine`` does.

``SDWEB_GPU_TEST_DEVICE=cpu`` runs the same jobs on the CPU (offload with the CPU as execution device,
fp32) to check the tests themselves on a machine without a GPU; what only a GPU can show (which
component sits on it, ``torch.cuda.memory_reserved``) is then not asserted.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from sdweb.config import DataPaths, LaunchSettings
from sdweb.engine.accelerator import DeviceMemory, offload_mode, vae_decode
from sdweb.engine.devices import RuntimeConfig, resolve_runtime
from sdweb.engine.extra_networks.lora import LoraLibrary
from sdweb.engine.models.cache import ModelCache
from sdweb.engine.models.detect import bundled_config
from sdweb.engine.models.loader import check_checkpoint, load_checkpoint
from sdweb.engine.runtime import Engine
from sdweb.engine.samplers.registry import SamplerRegistry
from sdweb.engine.upscalers import ModelUpscalers, UpscalerModelLibrary
from sdweb.params import GenerationParams, Img2ImgParams, JobControl, StepProgress
from tests.engine.conftest import tiny_params
from tests.engine.models.conftest import checkpoint_info
from tests.fixtures.checkpoints import write_tiny_sd1, write_tiny_sdxl
from tests.fixtures.lora import write_tiny_sd1_lora

DEVICE = torch.device(os.environ.get("SDWEB_GPU_TEST_DEVICE", "cuda"))
ON_GPU = DEVICE.type == "cuda"

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(ON_GPU and not torch.cuda.is_available(), reason="needs CUDA"),
]


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def runtime_for(tmp_path: Path, offload: str = "none") -> RuntimeConfig:
    """The runtime the launch flags give on this machine (``--medvram``: model, ``--lowvram``: sequential)."""
    if ON_GPU:
        run = resolve_runtime(LaunchSettings(paths=DataPaths.from_root(tmp_path), offload=offload))  # type: ignore[arg-type]
        assert run.device.type == "cuda" and run.dtype == torch.float16 and run.offload == offload
        return run
    return RuntimeConfig(device=DEVICE, dtype=torch.float32, vae_dtype=torch.float32, attention="sdpa",
                         offload=offload, vae_tiling=False, threads=1)  # type: ignore[arg-type]


@dataclasses.dataclass
class Registry:
    infos: dict[str, Any]

    def find(self, query: str) -> Any:
        return self.infos[query]


class NoVaes:
    def resolve(self, choice: Any, info: Any) -> None:
        return None


def engine_for(checkpoints: dict[str, Any], samplers: SamplerRegistry, run: RuntimeConfig, *,
               upscalers: Any = None, loras: Path | None = None) -> tuple[Engine, ModelCache]:
    """The engine as ``create_engine`` wires it: precheck, memory release, the runtime's device."""
    memory = DeviceMemory(run.device)
    cache = ModelCache(lambda info, vae: load_checkpoint(info, run), capacity=1,
                       offload_device=run.parking_device, precheck=check_checkpoint,
                       on_released=memory.release)
    engine = Engine(cache, Registry(checkpoints), NoVaes(), samplers, runtime=run, memory=memory,
                    upscalers=upscalers, loras=LoraLibrary(loras) if loras is not None else None)
    return engine, cache


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("gpu-checkpoints")
    return {
        "sd1": checkpoint_info(write_tiny_sd1(folder / "tiny-sd1.safetensors")),
        "sd1-inpainting": checkpoint_info(write_tiny_sd1(folder / "tiny-sd1-inpainting.safetensors",
                                                         in_channels=9)),
        "sdxl": checkpoint_info(write_tiny_sdxl(folder / "tiny-sdxl.safetensors")),
    }


def gradient(size: int = 64) -> Image.Image:
    ramp = np.linspace(0, 255, size, dtype=np.uint8)
    return Image.fromarray(np.stack([np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size)),
                                     np.full((size, size), 128, np.uint8)], axis=-1))


def centre_mask(size: int = 64) -> Image.Image:
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4:3 * size // 4, size // 4:3 * size // 4] = 255
    return Image.fromarray(mask, "L")


def img_params(**changes: Any) -> Img2ImgParams:
    return Img2ImgParams(**{**tiny_params().model_dump(), "denoising_strength": 0.6, **changes})


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def placement(pipe: Any) -> dict[str, set[str]]:
    """Device types holding each component's weights now."""
    return {name: {parameter.device.type for parameter in module.parameters()}
            for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}


def on_gpu(pipe: Any) -> set[str]:
    return {name for name, types in placement(pipe).items() if "cuda" in types}


JOBS: dict[str, Any] = {
    "txt2img": lambda engine, on_step: engine.txt2img(
        tiny_params(checkpoint="sd1", batch_size=2, sampler_name="Euler a"), control=JobControl(),
        on_step=on_step),
    "img2img": lambda engine, on_step: engine.img2img(
        img_params(checkpoint="sd1", sampler_name="DPM++ 2M"), [gradient()], control=JobControl(),
        on_step=on_step),
    "hires-latent": lambda engine, on_step: engine.txt2img(
        tiny_params(checkpoint="sd1", enable_hr=True, hr_scale=1.5, hr_upscaler="Latent"),
        control=JobControl(), on_step=on_step),
    "hires-lanczos": lambda engine, on_step: engine.txt2img(
        tiny_params(checkpoint="sd1", enable_hr=True, hr_scale=1.5, hr_upscaler="Lanczos"),
        control=JobControl(), on_step=on_step),
    "inpaint": lambda engine, on_step: engine.img2img(
        img_params(checkpoint="sd1", inpainting_fill=1), [gradient()], control=JobControl(), on_step=on_step,
        mask=centre_mask()),
    "inpainting-model": lambda engine, on_step: engine.img2img(
        img_params(checkpoint="sd1-inpainting"), [gradient()], control=JobControl(), on_step=on_step,
        mask=centre_mask()),
    "sdxl": lambda engine, on_step: engine.txt2img(
        tiny_params(checkpoint="sdxl", width=64, height=64), control=JobControl(), on_step=on_step),
}


# ---------------------------------------------------------------------------------------------
# fp16 VAEs
# ---------------------------------------------------------------------------------------------


def sdxl_shaped_vae(*, force_upcast: bool) -> AutoencoderKL:
    """The SDXL VAE's architecture, random weights scaled so that its activations overflow fp16."""
    config = {**bundled_config("sdxl", "vae"), "force_upcast": force_upcast}
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(config)
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(1e5)
    return vae.to(DEVICE, torch.float16 if ON_GPU else torch.float32).eval()


@pytest.mark.parametrize("force_upcast", [True, False])
def test_an_sdxl_shaped_vae_in_fp16_decodes_a_1024_image_to_finite_pixels(force_upcast: bool) -> None:
    vae = sdxl_shaped_vae(force_upcast=force_upcast)
    latents = torch.randn(1, 4, 128, 128, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    if ON_GPU:
        with torch.inference_mode():
            raw = vae.decode(latents.half()).sample
        assert not torch.isfinite(raw).all()  # what a plain fp16 decode gives: NaN, a black picture
    with torch.inference_mode():
        decoded = vae_decode(vae, latents)
    assert decoded.shape == (1, 3, 1024, 1024)
    assert torch.isfinite(decoded).all() and float(decoded.float().std()) > 0.01
    assert vae.dtype == torch.float32


def test_the_tiny_sdxl_model_loads_its_vae_in_fp32_and_makes_an_image(
        tmp_path: Path, checkpoints: dict[str, Any], samplers: SamplerRegistry) -> None:
    engine, cache = engine_for(checkpoints, samplers, runtime_for(tmp_path))
    run = JOBS["sdxl"](engine, lambda _: None)
    pipe = cache.current.pipe
    assert pipe.vae.dtype == torch.float32
    assert pipe.unet.dtype == (torch.float16 if ON_GPU else torch.float32)
    assert pixels(run.images[0].image).std() > 1.0


# ---------------------------------------------------------------------------------------------
# --medvram and --lowvram
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("offload", ["model", "sequential"])
def test_every_kind_of_job_under_offload_gives_the_images_of_the_plain_run(
        tmp_path: Path, checkpoints: dict[str, Any], samplers: SamplerRegistry, offload: str) -> None:
    plain, _ = engine_for(checkpoints, samplers, runtime_for(tmp_path))
    engine, cache = engine_for(checkpoints, samplers, runtime_for(tmp_path, offload))
    for name, job in JOBS.items():
        expected = [pixels(item.image) for item in job(plain, lambda _: None).images]
        got = [pixels(item.image) for item in job(engine, lambda _: None).images]
        assert len(got) == len(expected), name
        for a, b in zip(got, expected, strict=True):
            assert np.abs(a - b).mean() < 0.5 and np.abs(a - b).max() <= 8, name
        assert offload_mode(cache.current.pipe) == offload, name


@pytest.mark.parametrize(("offload", "during_steps"), [("none", {"text_encoder", "unet", "vae"}),
                                                       ("model", {"unet"}), ("sequential", set())])
def test_which_components_sit_on_the_gpu_during_and_after_each_job(
        tmp_path: Path, checkpoints: dict[str, Any], samplers: SamplerRegistry, offload: str,
        during_steps: set[str]) -> None:
    engine, cache = engine_for(checkpoints, samplers, runtime_for(tmp_path, offload))
    for name in ("txt2img", "img2img", "hires-latent", "hires-lanczos", "inpainting-model"):
        seen: list[set[str]] = []

        def on_step(step: StepProgress, seen: list[set[str]] = seen) -> None:
            seen.append(on_gpu(cache.current.pipe))

        JOBS[name](engine, on_step)
        if not ON_GPU:
            continue
        after = on_gpu(cache.current.pipe)
        if offload == "none":
            assert after == {"text_encoder", "unet", "vae"}, name
        else:
            assert after == set(), name  # --medvram: everything back in RAM; --lowvram: nothing stays
        # While the UNet denoises, the text encoder and the VAE are off the GPU (--medvram).
        assert seen and all(step == during_steps for step in seen), (name, seen)
    if offload == "sequential":
        meta_only = {types == {"meta"} for types in placement(cache.current.pipe).values()}
        assert meta_only == {True}


def test_an_interrupted_or_failed_medvram_job_leaves_nothing_on_the_gpu(
        tmp_path: Path, checkpoints: dict[str, Any], samplers: SamplerRegistry) -> None:
    engine, cache = engine_for(checkpoints, samplers, runtime_for(tmp_path, "model"))
    control = JobControl()
    run = engine.txt2img(tiny_params(checkpoint="sd1", n_iter=3), control=control,
                         on_step=lambda _: control.interrupt())
    assert run.interrupted
    if ON_GPU:
        assert on_gpu(cache.current.pipe) == set()

    def fail(step: StepProgress) -> None:
        raise RuntimeError("an extension's step callback failed")

    with pytest.raises(RuntimeError, match="step callback failed"):
        engine.img2img(img_params(checkpoint="sd1"), [gradient()], control=JobControl(), on_step=fail)
    if ON_GPU:
        assert on_gpu(cache.current.pipe) == set()


@pytest.mark.parametrize("offload", ["model", "sequential"])
def test_a_lora_under_offload_changes_the_image_as_on_the_plain_run(
        tmp_path: Path, checkpoints: dict[str, Any], samplers: SamplerRegistry, offload: str) -> None:
    plain, plain_cache = engine_for(checkpoints, samplers, runtime_for(tmp_path), loras=tmp_path / "Lora")
    first = plain.txt2img(tiny_params(checkpoint="sd1"), control=JobControl(), on_step=lambda _: None)
    write_tiny_sd1_lora(tmp_path / "Lora" / "detail.safetensors", plain_cache.current.pipe, seed=1)
    engine, cache = engine_for(checkpoints, samplers, runtime_for(tmp_path, offload), loras=tmp_path / "Lora")

    def image(which: Engine, prompt: str) -> np.ndarray:
        run = which.txt2img(tiny_params(checkpoint="sd1", prompt=prompt), control=JobControl(),
                            on_step=lambda _: None)
        return pixels(run.images[0].image)

    with_lora = image(engine, "a cat <lora:detail:1>")
    assert np.abs(with_lora - image(plain, "a cat <lora:detail:1>")).mean() < 0.5
    assert np.abs(with_lora - image(plain, "a cat")).mean() > 1.0
    assert offload_mode(cache.current.pipe) == offload
    assert not any(cache.current.pipe.get_list_adapters().values())
    assert np.abs(image(engine, "a cat") - image(plain, "a cat")).mean() < 0.5
    assert first.images


class TinyUpscaler(torch.nn.Module):
    """A 2x "super-resolution network" with weights, as spandrel's descriptor presents one."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 12, 3, padding=1)
        self.shuffle = torch.nn.PixelShuffle(2)
        self.scale = 2
        self.tiling = None
        self.supports_half = True
        self.supports_bfloat16 = True

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(pixels)).sigmoid()


def test_the_esrgan_model_visits_the_gpu_only_while_it_upscales_under_medvram(
        tmp_path: Path, checkpoints: dict[str, Any], samplers: SamplerRegistry) -> None:
    run = runtime_for(tmp_path, "model")
    (tmp_path / "ESRGAN").mkdir()
    (tmp_path / "ESRGAN" / "2x-Tiny.pth").write_bytes(b"")
    network = TinyUpscaler()
    upscalers = ModelUpscalers(UpscalerModelLibrary(tmp_path / "ESRGAN"), loader=lambda _path: network,
                               device=run.device, dtype=run.dtype, park_device="cpu",
                               memory=DeviceMemory(run.device))
    engine, cache = engine_for(checkpoints, samplers, run, upscalers=upscalers)
    params = tiny_params(checkpoint="sd1", enable_hr=True, hr_scale=1.5, hr_upscaler="2x-Tiny")
    result = engine.txt2img(params, control=JobControl(), on_step=lambda _: None)
    assert result.images[0].image.size == (96, 96)
    assert network.conv.weight.device.type == "cpu"
    if ON_GPU:
        assert on_gpu(cache.current.pipe) == set()


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not ON_GPU, reason="torch.cuda.memory_reserved needs CUDA")
def test_unloading_and_switching_models_hand_the_gpu_memory_back(
        tmp_path: Path, checkpoints: dict[str, Any], samplers: SamplerRegistry) -> None:
    mib = 1024 * 1024
    engine, cache = engine_for(checkpoints, samplers, runtime_for(tmp_path))
    # Warm up first: cuBLAS keeps a workspace for the process's life, which no unload can free.
    engine.txt2img(tiny_params(checkpoint="sd1"), control=JobControl(), on_step=lambda _: None)
    engine.unload_all()
    baseline = torch.cuda.memory_reserved(DEVICE)

    large = GenerationParams(**{**tiny_params(checkpoint="sd1").model_dump(), "width": 1024, "height": 1024,
                                "steps": 1})
    engine.txt2img(large, control=JobControl(), on_step=lambda _: None)
    sd1_bytes = cache.current.nbytes()
    loaded = torch.cuda.memory_reserved(DEVICE)
    assert loaded >= baseline + sd1_bytes
    engine.unload_all()
    assert cache.current is None
    assert torch.cuda.memory_reserved(DEVICE) <= baseline + 8 * mib, (baseline, loaded)

    engine.load(checkpoints["sd1"])
    engine.load(checkpoints["sdxl"])  # a switch: sd1 is dropped and its memory handed back
    sdxl_bytes = cache.current.nbytes()
    assert torch.cuda.memory_reserved(DEVICE) < baseline + sdxl_bytes + sd1_bytes

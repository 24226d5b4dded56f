"""The GPU path on the CPU: the engine under --medvram/--lowvram offload, the VAE's NaN guard, memory.

accelerate's offload hooks take any execution device, so these tests run the engine's own loop (not
diffusers' pipeline) under model offload (--medvram) and sequential offload (--lowvram) with the CPU as
that device. diffusers spells it ``cpu:0``, and a component accelerate brings onto the execution device
is moved with ``.to(cpu:0)`` while one sent back goes ``.to("cpu")``: :class:`Residency` reads which
components "sit on the device" from those calls. (On the CPU accelerate's chain never sends the previous
component back by itself, since its weights already report "cpu"; so the tests assert only what sdweb's
own code sends back. tests/engine/test_gpu.py checks real placement on CUDA.)
"""

from __future__ import annotations

import gc
import logging
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline
from PIL import Image

from sdweb.engine.accelerator import (
    DeviceMemory,
    NonFiniteOutputError,
    execution_device,
    offload_mode,
    vae_decode,
)
from sdweb.engine.devices import RuntimeConfig, apply_offload
from sdweb.engine.extra_networks.job import ExtraNetworks
from sdweb.engine.extra_networks.lora import LoraLibrary
from sdweb.engine.generate import run_txt2img
from sdweb.engine.img2img import run_img2img
from sdweb.engine.models.cache import ModelCache
from sdweb.engine.models.loader import check_checkpoint, load_checkpoint
from sdweb.engine.runtime import Engine
from sdweb.engine.samplers.registry import SamplerRegistry
from sdweb.params import GenerationParams, Img2ImgParams, JobControl, StepProgress
from tests.engine.conftest import TinyModel, tiny_params
from tests.engine.models.conftest import checkpoint_info
from tests.fixtures.checkpoints import tiny_sd1_components, write_tiny_sd1, write_tiny_sdxl
from tests.fixtures.lora import write_tiny_sd1_lora

CPU = torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def runtime(offload: str = "none", *, dtype: torch.dtype = torch.float32,
            vae_dtype: torch.dtype | None = None) -> RuntimeConfig:
    """A runtime built by hand: the resolver turns offload off on a CPU, the tests want it on."""
    return RuntimeConfig(device=CPU, dtype=dtype, vae_dtype=vae_dtype or dtype, attention="sdpa",
                         offload=offload, vae_tiling=False, threads=1)  # type: ignore[arg-type]


class Residency:
    """Which components were last moved onto the execution device (``cpu:0``) rather than sent back."""

    def __init__(self, pipe: Any) -> None:
        self.last: dict[str, str] = {}
        for name, module in pipe.components.items():
            if isinstance(module, torch.nn.Module):
                self._spy(name, module)

    def _spy(self, name: str, module: torch.nn.Module) -> None:
        original = module.to

        def to(*args: Any, **kwargs: Any) -> Any:
            device = kwargs.get("device", args[0] if args else None)
            if isinstance(device, (str, torch.device)):
                self.last[name] = str(device)
            return original(*args, **kwargs)

        module.to = to  # type: ignore[method-assign]

    def resident(self) -> set[str]:
        return {name for name, device in self.last.items() if device != "cpu"}


def fresh_pipe() -> StableDiffusionPipeline:
    """A tiny SD1 pipeline of its own (offload hooks change the instance; the session one stays plain)."""
    return StableDiffusionPipeline(**tiny_sd1_components())


def offloaded(mode: str) -> TinyModel:
    pipe = fresh_pipe()
    apply_offload(pipe, mode, CPU)  # type: ignore[arg-type]
    return TinyModel(pipe=pipe)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def gradient(size: int = 64) -> Image.Image:
    ramp = np.linspace(0, 255, size, dtype=np.uint8)
    return Image.fromarray(np.stack([np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size)),
                                     np.full((size, size), 128, np.uint8)], axis=-1))


def img_params(**changes: Any) -> Img2ImgParams:
    return Img2ImgParams(**{**tiny_params().model_dump(), "denoising_strength": 0.6, **changes})


def txt2img(model: Any, samplers: SamplerRegistry, params: GenerationParams | None = None,
            **kwargs: Any) -> Any:
    return run_txt2img(model, params or tiny_params(), samplers=samplers, control=kwargs.pop("control",
                       JobControl()), on_step=kwargs.pop("on_step", lambda _: None), **kwargs)


@dataclass
class FakeRegistry:
    infos: dict[str, Any]

    def find(self, query: str) -> Any:
        return self.infos[query]


class NoVaes:
    def resolve(self, choice: Any, info: Any) -> None:
        return None


@dataclass
class CountingMemory(DeviceMemory):
    """A device memory whose cache holds ``spare`` unused bytes after each job; counts what is emptied."""

    spare: int = 0
    emptied: int = 0
    released: int = 0
    events: list[str] = field(default_factory=list)

    def reserved(self) -> int:
        return self.spare

    def allocated(self) -> int:
        return 0

    def empty_cache(self) -> None:
        self.emptied += 1

    def release(self) -> None:
        self.released += 1
        super().release()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("gpu-path")
    return {"tiny-sd1": checkpoint_info(write_tiny_sd1(folder / "tiny-sd1.safetensors")),
            "tiny-sdxl": checkpoint_info(write_tiny_sdxl(folder / "tiny-sdxl.safetensors"))}


def engine_for(checkpoints: dict[str, Any], samplers: SamplerRegistry, run: RuntimeConfig,
               memory: DeviceMemory | None = None) -> tuple[Engine, ModelCache]:
    """The engine as create_engine builds it, around a hand-built runtime (offload with the CPU)."""
    cache = ModelCache(lambda info, vae: load_checkpoint(info, run), capacity=1,
                       offload_device=run.parking_device, precheck=check_checkpoint,
                       on_released=memory.release if memory is not None else None)
    engine = Engine(cache, FakeRegistry(checkpoints), NoVaes(), samplers, runtime=run, memory=memory)
    return engine, cache


# ---------------------------------------------------------------------------------------------
# Execution device
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "device", "weights"),
                         [("model", "cuda:0", "cpu"), ("sequential", "cpu", "meta")])
def test_the_execution_device_is_the_offload_hooks_not_where_the_weights_wait(mode: str, device: str,
                                                                              weights: str) -> None:
    # Model offload hooks may name a CUDA device on a CPU-only machine: nothing runs here, they are read.
    pipe = fresh_pipe()
    apply_offload(pipe, mode, device)  # type: ignore[arg-type]
    assert pipe.unet.device.type == weights
    assert execution_device(pipe) == torch.device(device)
    assert offload_mode(pipe) == mode
    assert execution_device(fresh_pipe(), default="cpu") == CPU


# ---------------------------------------------------------------------------------------------
# --lowvram and --medvram: the engine's own loop under accelerate's offload
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sequential", "model"])
def test_txt2img_img2img_and_hires_under_offload_give_the_images_of_the_plain_run(
        checkpoints: dict[str, Any], samplers: SamplerRegistry, mode: str) -> None:
    """--lowvram used to fail every job: token ids were made on the encoder's "device", meta."""
    plain, _ = engine_for(checkpoints, samplers, runtime("none"))
    engine, cache = engine_for(checkpoints, samplers, runtime(mode))
    hires = tiny_params(enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", steps=2, checkpoint="tiny-sd1")
    jobs = [
        lambda e: e.txt2img(tiny_params(checkpoint="tiny-sd1", batch_size=2), control=JobControl(),
                            on_step=lambda _: None),
        lambda e: e.img2img(img_params(checkpoint="tiny-sd1"), [gradient()], control=JobControl(),
                            on_step=lambda _: None),
        lambda e: e.txt2img(hires, control=JobControl(), on_step=lambda _: None),
    ]
    for job in jobs:
        expected = [pixels(item.image) for item in job(plain).images]
        got = [pixels(item.image) for item in job(engine).images]
        assert len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            assert np.abs(a - b).max() <= 1
    assert offload_mode(cache.current.pipe) == mode  # the hooks are still in place for the next job


def test_medvram_sends_every_component_back_after_each_job_also_after_errors_and_interrupts(
        samplers: SamplerRegistry) -> None:
    """diffusers ends every call with maybe_free_model_hooks(); the engine's loop must too."""
    model = offloaded("model")
    residency = Residency(model.pipe)
    engine = Engine(_OneModelCache(model), None, NoVaes(), samplers, runtime=runtime("model"))

    run = engine.txt2img(tiny_params(), control=JobControl(), on_step=lambda _: None)
    assert run.images and residency.resident() == set()

    def fail(step: StepProgress) -> None:
        raise RuntimeError("a hook of an extension failed")

    with pytest.raises(RuntimeError, match="extension failed"):
        engine.txt2img(tiny_params(), control=JobControl(), on_step=fail)
    assert residency.resident() == set()

    control = JobControl()
    engine.txt2img(tiny_params(n_iter=2), control=control, on_step=lambda _: control.interrupt())
    assert residency.resident() == set()


def test_medvram_img2img_never_has_the_vae_beside_the_unet(samplers: SamplerRegistry) -> None:
    model = offloaded("model")
    residency = Residency(model.pipe)
    during_steps: list[set[str]] = []
    for mask in (None, Image.new("L", (64, 64), 255)):
        run_img2img(model, img_params(n_iter=2), [gradient()], samplers=samplers, control=JobControl(),
                    on_step=lambda _: during_steps.append(residency.resident()), mask=mask)
    assert during_steps and all("unet" in seen and "vae" not in seen for seen in during_steps)


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_medvram_hires_runs_the_text_encoder_without_the_first_pass_models(
        samplers: SamplerRegistry, upscaler: str) -> None:
    from sdweb.engine.hires import run_hires_txt2img

    model = offloaded("model")
    residency = Residency(model.pipe)
    beside_text_encoder: list[set[str]] = []
    model.pipe.text_encoder.register_forward_pre_hook(
        lambda *_: beside_text_encoder.append(residency.resident() - {"text_encoder"}))
    run = run_hires_txt2img(model, tiny_params(enable_hr=True, hr_scale=1.5, hr_upscaler=upscaler),
                            samplers=samplers, control=JobControl(), on_step=lambda _: None)
    assert run.images[0].image.size == (96, 96)
    assert len(beside_text_encoder) == 2  # first pass and second pass
    assert beside_text_encoder == [set(), set()]


def test_lowvram_puts_back_weights_a_failed_forward_left_on_the_device(samplers: SamplerRegistry) -> None:
    model = offloaded("sequential")
    engine = Engine(_OneModelCache(model), None, NoVaes(), samplers, runtime=runtime("sequential"))

    def image() -> np.ndarray:
        run = engine.txt2img(tiny_params(), control=JobControl(), on_step=lambda _: None)
        return pixels(run.images[0].image)

    before = image()
    leaf = model.pipe.vae.decoder.conv_out
    working = leaf._old_forward

    def out_of_memory(*args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory (simulated, inside the forward)")

    leaf._old_forward = out_of_memory
    try:
        with pytest.raises(torch.OutOfMemoryError):
            engine.txt2img(tiny_params(), control=JobControl(), on_step=lambda _: None)
    finally:
        leaf._old_forward = working
    stranded = [name for name, weight in model.pipe.vae.named_parameters() if weight.device.type != "meta"]
    assert stranded == []
    assert np.array_equal(before, image())


@dataclass
class _OneModelCache:
    """The cache interface the Engine uses, holding one ready model (no loading)."""

    model: Any

    @property
    def current(self) -> Any:
        return self.model

    def use(self, info: Any, vae: Any = None) -> Any:
        from contextlib import nullcontext

        return nullcontext(self.model)

    def loaded(self) -> list[str]:
        return []

    def unload_all(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# LoRA and ESRGAN under offload
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_lora_under_offload_changes_the_image_as_without_offload_and_keeps_the_hooks(
        samplers: SamplerRegistry, tmp_path: Path, mode: str) -> None:
    plain = TinyModel(pipe=fresh_pipe())
    write_tiny_sd1_lora(tmp_path / "detail.safetensors", plain.pipe, seed=1)
    networks = ExtraNetworks(loras=LoraLibrary(tmp_path))
    model = offloaded(mode)

    def latents(which: TinyModel, prompt: str) -> torch.Tensor:
        return txt2img(which, samplers, tiny_params(prompt=prompt), output_type="latent",
                       extra_networks=networks).images[0].image

    with_lora = latents(model, "a cat <lora:detail:1>")
    assert float((with_lora - latents(plain, "a cat <lora:detail:1>")).abs().max()) <= 1e-4
    assert float((with_lora - latents(plain, "a cat")).abs().max()) > 1e-2
    assert offload_mode(model.pipe) == mode and execution_device(model.pipe) == CPU
    assert not any(model.pipe.get_list_adapters().values())
    assert float((latents(model, "a cat") - latents(plain, "a cat")).abs().max()) <= 1e-5


def test_medvram_keeps_the_esrgan_model_off_the_device_between_upscales(
        samplers: SamplerRegistry, tmp_path: Path) -> None:
    from sdweb.engine.hires import run_hires_txt2img
    from sdweb.engine.upscalers import ModelUpscalers, UpscalerModelLibrary
    from tests.engine.test_upscalers import FakeDescriptor

    (tmp_path / "2x-Fake.pth").write_bytes(b"")
    descriptor = FakeDescriptor(2)
    memory = CountingMemory(CPU, spare=DeviceMemory(CPU).spare_limit + 1)
    # The execution device spelt "cpu:0", as the offload hooks spell it, to tell it from the parking place.
    upscalers = ModelUpscalers(UpscalerModelLibrary(tmp_path), loader=lambda _path: descriptor,
                               device=torch.device("cpu", 0), dtype=torch.float32, park_device="cpu",
                               memory=memory)
    model = offloaded("model")
    run = run_hires_txt2img(model, tiny_params(enable_hr=True, hr_scale=1.5, hr_upscaler="2x-Fake"),
                            samplers=samplers, control=JobControl(), on_step=lambda _: None,
                            model_upscalers=upscalers)
    assert run.images[0].image.size == (96, 96)
    moves = [str(device) for device, _dtype in descriptor.moved_to]
    assert moves == ["cpu", "cpu:0", "cpu"]  # loaded into RAM, on the device to upscale, back
    assert memory.emptied == 1


# ---------------------------------------------------------------------------------------------
# VAE precision
# ---------------------------------------------------------------------------------------------


def overflowing_vae(pipe: StableDiffusionPipeline) -> AutoencoderKL:
    """The pipeline's VAE in fp16 with weights scaled so its activations pass 65504 (fp16's largest)."""
    vae = pipe.vae
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(1e5)
        vae.encoder.conv_in.weight.mul_(1e5)
    return vae.to(torch.float16)


def test_a_vae_that_overflows_in_fp16_gives_the_fp32_image_not_a_black_one(
        samplers: SamplerRegistry, caplog: pytest.LogCaptureFixture) -> None:
    reference = TinyModel(pipe=fresh_pipe())
    with torch.no_grad():
        reference.pipe.vae.decoder.conv_in.weight.mul_(1e5)
        reference.pipe.vae.encoder.conv_in.weight.mul_(1e5)
    expected = pixels(txt2img(reference, samplers).images[0].image)
    model = TinyModel(pipe=fresh_pipe())
    overflowing_vae(model.pipe)
    latents = txt2img(model, samplers, output_type="latent").images[0].image
    with torch.inference_mode():
        raw = model.pipe.vae.decode((latents / 0.18215).half()).sample
    assert not torch.isfinite(raw).all()  # the fp16 VAE does overflow

    with caplog.at_level(logging.WARNING, logger="sdweb.engine.accelerator"):
        image = pixels(txt2img(model, samplers).images[0].image)
    assert image.std() > 1.0
    assert np.abs(image - expected).max() <= 1
    assert model.pipe.vae.dtype == torch.float32  # kept in fp32 for the next jobs
    assert any("VAE in fp32" in record.getMessage() and "NaN" in record.getMessage()
               for record in caplog.records)


def test_an_init_image_through_an_overflowing_fp16_vae_encoder_is_retried_in_fp32(
        samplers: SamplerRegistry, caplog: pytest.LogCaptureFixture) -> None:
    reference = TinyModel(pipe=fresh_pipe())
    with torch.no_grad():
        reference.pipe.vae.decoder.conv_in.weight.mul_(1e5)
        reference.pipe.vae.encoder.conv_in.weight.mul_(1e5)
    params = img_params(denoising_strength=0.0)  # the init image through the VAE and back
    expected = pixels(run_img2img(reference, params, [gradient()], samplers=samplers, control=JobControl(),
                                  on_step=lambda _: None).images[0].image)
    model = TinyModel(pipe=fresh_pipe())
    overflowing_vae(model.pipe)
    with caplog.at_level(logging.WARNING, logger="sdweb.engine.accelerator"):
        got = pixels(run_img2img(model, params, [gradient()], samplers=samplers, control=JobControl(),
                                 on_step=lambda _: None).images[0].image)
    assert np.abs(got - expected).max() <= 1
    assert any("encoding in float16 gave NaN" in record.getMessage() for record in caplog.records)


def test_nan_latents_are_an_error_that_names_the_unet_not_a_black_image() -> None:
    vae = fresh_pipe().vae
    with pytest.raises(NonFiniteOutputError, match="UNet produced NaN.*--precision fp32"):
        vae_decode(vae, torch.full((1, 4, 8, 8), float("nan")))


def test_the_sdxl_vae_config_force_upcast_is_honoured(checkpoints: dict[str, Any]) -> None:
    half = runtime(dtype=torch.float16)
    sdxl = load_checkpoint(checkpoints["tiny-sdxl"], half)
    sd1 = load_checkpoint(checkpoints["tiny-sd1"], half)
    assert (sdxl.pipe.unet.dtype, sdxl.pipe.vae.dtype) == (torch.float16, torch.float32)
    assert (sd1.pipe.unet.dtype, sd1.pipe.vae.dtype) == (torch.float16, torch.float16)  # no force_upcast


def test_a_force_upcast_vae_built_in_fp16_is_upcast_before_it_decodes() -> None:
    components = tiny_sd1_components()
    config = {key: value for key, value in components["vae"].config.items() if not key.startswith("_")}
    vae = AutoencoderKL.from_config({**config, "force_upcast": True})
    vae.load_state_dict(components["vae"].state_dict())
    vae.to(torch.float16)
    with torch.inference_mode():
        vae_decode(vae, torch.zeros(1, 4, 8, 8))
    assert vae.dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------


def test_unload_and_switch_drop_every_reference_and_hand_the_memory_back(
        checkpoints: dict[str, Any], samplers: SamplerRegistry) -> None:
    memory = CountingMemory(CPU)
    engine, cache = engine_for(checkpoints, samplers, runtime("model"), memory)
    engine.txt2img(tiny_params(checkpoint="tiny-sd1"), control=JobControl(), on_step=lambda _: None)
    first = weakref.ref(cache.current.pipe)
    first_unet = weakref.ref(cache.current.pipe.unet)
    engine.txt2img(tiny_params(checkpoint="tiny-sdxl"), control=JobControl(), on_step=lambda _: None)
    gc.collect()
    assert first() is None and first_unet() is None
    assert memory.released == 1
    second = weakref.ref(cache.current.pipe)

    engine.unload_all()
    gc.collect()
    assert second() is None and cache.current is None
    assert memory.released == 3  # the switch, the cache's unload, and the engine's after the upscalers


def test_cached_memory_a_job_leaves_goes_back_when_it_is_large(samplers: SamplerRegistry) -> None:
    limit = DeviceMemory(CPU).spare_limit
    for spare, emptied in ((limit // 2, 0), (limit * 4, 1)):
        memory = CountingMemory(CPU, spare=spare)
        engine = Engine(_OneModelCache(TinyModel(pipe=fresh_pipe())), None, NoVaes(), samplers,
                        runtime=runtime(), memory=memory)
        engine.txt2img(tiny_params(), control=JobControl(), on_step=lambda _: None)
        assert memory.emptied == emptied


def test_device_memory_empties_the_cuda_cache_on_a_cuda_device(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty"))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 3 << 30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1 << 30)
    monkeypatch.setattr(torch.cuda, "device", lambda device: _NullContext())
    memory = DeviceMemory(torch.device("cuda", 0))
    memory.after_job()  # 2 GiB cached and unused
    memory.release()
    assert calls == ["empty", "empty"]
    assert DeviceMemory(CPU).reserved() == 0


class _NullContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None

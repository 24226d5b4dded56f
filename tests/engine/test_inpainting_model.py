"""Dedicated inpainting checkpoints (9-channel UNet: latents, mask, masked-image latents): listed with their
family, loaded from a real file, and run for inpainting, img2img, txt2img and hires fix with the mask and
the masked picture the UNet was trained to see; other extra-channel models are refused with a reason."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image

from sdweb.engine.devices import RuntimeConfig
from sdweb.engine.generate import run_txt2img
from sdweb.engine.hires import run_hires_txt2img
from sdweb.engine.img2img import run_img2img
from sdweb.engine.models.hashes import HashCache
from sdweb.engine.models.loader import LoadedModel, load_checkpoint
from sdweb.engine.models.registry import CheckpointInfo, CheckpointRegistry
from sdweb.params import JobControl
from tests.engine.conftest import TinyModel, tiny_params
from tests.engine.test_img2img import _gradient, _pixels, img_params
from tests.fixtures.checkpoints import tiny_sdxl_components, write_tiny_sd1

FAMILY = "sd1-inpaint"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[CheckpointRegistry, Path]:
    root = tmp_path_factory.mktemp("inpainting-models")
    folder = root / "Stable-diffusion"
    write_tiny_sd1(folder / "tiny-inpainting.safetensors", in_channels=9)
    write_tiny_sd1(folder / "tiny-depth.safetensors", in_channels=5)
    return CheckpointRegistry([folder], HashCache(root / "cache")), folder


def _listed(registry: CheckpointRegistry, name: str) -> CheckpointInfo:
    return next(info for info in registry.refresh() if info.name == name)


@pytest.fixture(scope="module")
def inpaint_model(model_dir: tuple[CheckpointRegistry, Path]) -> LoadedModel:
    registry, _ = model_dir
    runtime = RuntimeConfig(device=torch.device("cpu"), dtype=torch.float32, vae_dtype=torch.float32,
                            attention="sdpa", offload="none", vae_tiling=False, threads=1)
    return load_checkpoint(_listed(registry, "tiny-inpainting.safetensors"), runtime)


@contextmanager
def unet_inputs(pipe: Any) -> Iterator[list[torch.Tensor]]:
    """Every ``sample`` the UNet is called with while the block runs (a removable forward pre-hook)."""
    seen: list[torch.Tensor] = []

    def record(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        sample = args[0] if args else kwargs["sample"]
        seen.append(sample.detach().float().clone())

    handle = pipe.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def _mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def _encode(pipe: Any, pixels: np.ndarray) -> torch.Tensor:
    """The VAE mean of ``(H, W, 3)`` pixels in [-1, 1], scaled: what the masked-image channels hold."""
    tensor = torch.from_numpy(pixels.astype(np.float32)).permute(2, 0, 1)[None]
    with torch.inference_mode():
        return pipe.vae.encode(tensor).latent_dist.mean * pipe.vae.config.scaling_factor


def _inpaint(model: Any, samplers: Any, image: Image.Image, mask: Image.Image | None, **changes: Any):
    values: dict[str, Any] = dict(denoising_strength=1.0, mask_blur=0, inpaint_full_res=False,
                                  inpainting_fill=1, steps=3)
    values.update(changes)
    return run_img2img(model, img_params(**values), [image], samplers=samplers, control=JobControl(),
                       on_step=lambda _: None, mask=mask)


def test_the_registry_lists_an_inpainting_checkpoint_and_refuses_a_depth_one(
        model_dir: tuple[CheckpointRegistry, Path], inpaint_model: LoadedModel) -> None:
    registry, _ = model_dir
    inpainting = _listed(registry, "tiny-inpainting.safetensors")
    assert inpainting.family == FAMILY and inpainting.usable
    depth = _listed(registry, "tiny-depth.safetensors")
    assert not depth.usable
    assert "depth-to-image" in (depth.detect_error or "")
    assert inpaint_model.family == FAMILY
    assert inpaint_model.pipe.unet.config.in_channels == 9


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M", "DPM++ 2S a"])
def test_inpainting_at_full_strength_repaints_the_mask_and_keeps_the_rest(
        sampler: str, inpaint_model: LoadedModel, samplers) -> None:
    image = _gradient()
    run = _inpaint(inpaint_model, samplers, image, _mask((64, 64), (16, 16, 48, 48)), sampler_name=sampler)
    out = run.images[0].image
    assert out.size == (64, 64)
    out_px, source = _pixels(out), _pixels(image)
    outside = np.ones((64, 64), bool)
    outside[16:48, 16:48] = False
    assert np.array_equal(out_px[outside], source[outside])
    assert np.abs(out_px[20:44, 20:44] - source[20:44, 20:44]).mean() > 5
    again = _inpaint(inpaint_model, samplers, image, _mask((64, 64), (16, 16, 48, 48)), sampler_name=sampler)
    assert np.array_equal(_pixels(again.images[0].image), out_px)  # same seed, same picture


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2S a"])
def test_the_unet_sees_the_mask_and_the_masked_image_beside_the_latents(
        sampler: str, inpaint_model: LoadedModel, samplers) -> None:
    pipe = inpaint_model.pipe
    image = _gradient()
    with unet_inputs(pipe) as seen:
        _inpaint(inpaint_model, samplers, image, _mask((64, 64), (0, 0, 32, 64)), sampler_name=sampler,
                 batch_size=2)
    assert seen
    # The latent mask: 1 over the left half (the repainted part), 0 over the right.
    expected_mask = torch.zeros(32, 32)  # the tiny VAE shrinks by 2
    expected_mask[:, :16] = 1.0
    # The masked image: the init picture with the masked pixels mid grey (0 in [-1, 1]).
    masked = _pixels(image) / 127.5 - 1.0
    masked[:, :32] = 0.0
    expected_latents = _encode(pipe, masked)[0]
    for sample in seen:
        assert sample.shape == (4, 9, 32, 32)  # 2 images x (uncond, cond)
        for row in sample:
            assert torch.equal(row[4], expected_mask)
            torch.testing.assert_close(row[5:], expected_latents, rtol=1e-4, atol=1e-4)
    # The conditioning is not scaled with the latents: identical at every step, while the latents move.
    assert not torch.equal(seen[0][:, :4], seen[-1][:, :4])


def test_only_masked_with_an_inpainting_model_keeps_the_picture_size(inpaint_model, samplers) -> None:
    image = _gradient(100, 80)
    run = _inpaint(inpaint_model, samplers, image, _mask((100, 80), (60, 10, 80, 30)), inpaint_full_res=True,
                   inpaint_full_res_padding=4, mask_blur=2, inpainting_fill=0)
    out = run.images[0].image
    assert out.size == (100, 80)
    far = np.ones((80, 100), bool)
    far[2:38, 52:88] = False
    assert np.array_equal(_pixels(out)[far], _pixels(image)[far])


def test_txt2img_with_an_inpainting_model_masks_everything(inpaint_model: LoadedModel, samplers) -> None:
    pipe = inpaint_model.pipe
    with unet_inputs(pipe) as seen:
        run = run_txt2img(inpaint_model, tiny_params(batch_size=2, width=96, height=64), samplers=samplers,
                          control=JobControl(), on_step=lambda _: None)
    assert [item.image.size for item in run.images] == [(96, 64), (96, 64)]
    assert run.images[0].extra["Conditional mask weight"] == 1.0  # A1111's infotext for these models
    grey = _encode(pipe, np.zeros((64, 96, 3)))[0]
    for sample in seen:
        assert sample.shape == (4, 9, 32, 48)
        assert torch.equal(sample[:, 4], torch.ones(4, 32, 48))
        torch.testing.assert_close(sample[:, 5:], grey.expand(4, -1, -1, -1), rtol=1e-4, atol=1e-4)


def test_img2img_without_a_mask_follows_the_mask_weight(inpaint_model: LoadedModel, samplers) -> None:
    pipe = inpaint_model.pipe
    image = _gradient()
    with unet_inputs(pipe) as full:
        _inpaint(inpaint_model, samplers, image, None, denoising_strength=0.5, steps=2)
    with unet_inputs(pipe) as half:
        run = run_img2img(inpaint_model, img_params(denoising_strength=0.5, steps=2), [image],
                          samplers=samplers, control=JobControl(), on_step=lambda _: None,
                          inpainting_mask_weight=0.5)
    assert run.images[0].extra["Conditional mask weight"] == 0.5
    # Weight 1 (A1111's default): all masked, a grey picture. 0.5: half the init picture shows through.
    torch.testing.assert_close(full[0][:, 5:], _encode(pipe, np.zeros((64, 64, 3))).expand(2, -1, -1, -1),
                               rtol=1e-4, atol=1e-4)
    half_image = (_pixels(image) / 127.5 - 1.0) * 0.5
    torch.testing.assert_close(half[0][:, 5:], _encode(pipe, half_image).expand(2, -1, -1, -1),
                               rtol=1e-4, atol=1e-4)
    for sample in (*full, *half):
        assert torch.equal(sample[:, 4], torch.ones(2, 32, 32))


@pytest.mark.parametrize("weight", [1.0, 0.5])
@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_hires_fix_with_an_inpainting_model(upscaler: str, weight: float, inpaint_model: LoadedModel,
                                            samplers) -> None:
    params = tiny_params(enable_hr=True, hr_scale=1.5, hr_upscaler=upscaler, steps=2, denoising_strength=0.5)
    with unet_inputs(inpaint_model.pipe) as seen:
        run = run_hires_txt2img(inpaint_model, params, samplers=samplers, control=JobControl(),
                                on_step=lambda _: None, inpainting_mask_weight=weight)
    assert [item.image.size for item in run.images] == [(96, 96)]
    assert {tuple(sample.shape) for sample in seen} == {(2, 9, 32, 32), (2, 9, 48, 48)}
    # The second pass: everything masked; at weight 1 a grey picture, below it the first pass shows through.
    second = seen[-1]
    assert torch.equal(second[:, 4], torch.ones(2, 48, 48))
    grey = _encode(inpaint_model.pipe, np.zeros((96, 96, 3)))[0]
    assert torch.allclose(second[0, 5:], grey, atol=1e-4) is (weight == 1.0)
    assert run.images[0].extra["Conditional mask weight"] == weight


def test_sdxl_inpainting_model_inpaints_and_draws(samplers) -> None:
    pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(in_channels=9))
    model = TinyModel(pipe=pipe, family="sdxl-inpaint")
    image = _gradient()
    out = _pixels(_inpaint(model, samplers, image, _mask((64, 64), (0, 0, 64, 32))).images[0].image)
    assert np.array_equal(out[32:], _pixels(image)[32:])
    drawn = run_txt2img(model, tiny_params(), samplers=samplers, control=JobControl(), on_step=lambda _: None)
    assert drawn.images[0].image.size == (64, 64)


def test_plain_models_still_get_only_the_latents(sd1_model, samplers) -> None:
    with unet_inputs(sd1_model.pipe) as seen:
        inpainted = _inpaint(sd1_model, samplers, _gradient(), _mask((64, 64), (16, 16, 48, 48)),
                             denoising_strength=0.5)
        drawn = run_txt2img(sd1_model, tiny_params(), samplers=samplers, control=JobControl(),
                            on_step=lambda _: None)
    assert seen and all(sample.shape[1] == 4 for sample in seen)
    assert "Conditional mask weight" not in {**inpainted.images[0].extra, **drawn.images[0].extra}

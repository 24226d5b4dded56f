"""Inpainting with a plain checkpoint: only the masked part changes, in both inpaint areas, with every
kind of masked content and sampler; masks that do not fit are refused before any model work."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image

from sdweb.engine.img2img import run_img2img
from sdweb.params import JobControl
from tests.engine.test_img2img import _gradient, _pixels, img_params


def _mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def _inpaint(model, samplers, image: Image.Image, mask: Image.Image, **changes: Any) -> Image.Image:
    values: dict[str, Any] = dict(denoising_strength=0.9, mask_blur=0, inpaint_full_res=False)
    values.update(changes)
    run = run_img2img(model, img_params(**values), [image], samplers=samplers, control=JobControl(),
                      on_step=lambda _: None, mask=mask)
    return run.images[0].image


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M", "DPM++ 2S a"])
def test_whole_picture_keeps_every_unmasked_pixel(sampler: str, sd1_model, samplers) -> None:
    image = _gradient()
    out = _pixels(_inpaint(sd1_model, samplers, image, _mask((64, 64), (16, 16, 48, 48)),
                           sampler_name=sampler, inpainting_fill=1))
    source = _pixels(image)
    outside = np.ones((64, 64), bool)
    outside[16:48, 16:48] = False
    assert np.array_equal(out[outside], source[outside])
    assert np.abs(out[20:44, 20:44] - source[20:44, 20:44]).mean() > 5  # the masked part was repainted


def test_only_masked_repaints_a_box_and_keeps_the_picture_size(sd1_model, samplers) -> None:
    image = _gradient(100, 80)
    mask = _mask((100, 80), (60, 10, 80, 30))
    out = _inpaint(sd1_model, samplers, image, mask, inpaint_full_res=True, inpaint_full_res_padding=4,
                   mask_blur=2)
    assert out.size == (100, 80)  # the original's size, not width x height
    out_px, source = _pixels(out), _pixels(image)
    far = np.ones((80, 100), bool)
    far[2:38, 52:88] = False  # the mask, its blur and the resampling margin
    assert np.array_equal(out_px[far], source[far])
    assert np.abs(out_px[12:28, 62:78] - source[12:28, 62:78]).mean() > 5


def test_invert_keeps_the_white_part(sd1_model, samplers) -> None:
    image = _gradient()
    out = _pixels(_inpaint(sd1_model, samplers, image, _mask((64, 64), (0, 0, 32, 64)),
                           inpainting_mask_invert=True))
    assert np.array_equal(out[:, :32], _pixels(image)[:, :32])
    assert not np.array_equal(out[:, 32:], _pixels(image)[:, 32:])


def test_masked_content_modes_start_from_different_latents(sd1_model, samplers) -> None:
    image, mask = _gradient(), _mask((64, 64), (8, 8, 56, 56))
    outs = [_pixels(_inpaint(sd1_model, samplers, image, mask, inpainting_fill=fill, denoising_strength=0.5))
            for fill in (0, 1, 2, 3)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.array_equal(outs[i], outs[j]), (i, j)
    # Strength 0 keeps the picture whatever the mask.
    kept = _inpaint(sd1_model, samplers, image, mask, denoising_strength=0.0, inpainting_fill=1)
    assert np.array_equal(_pixels(kept)[:8], _pixels(image)[:8])


def test_masks_that_do_not_fit_are_refused_before_any_work(sd1_model, samplers) -> None:
    calls: list[Any] = []

    def run(mask: Image.Image, **changes: Any) -> None:
        run_img2img(sd1_model, img_params(**changes), [_gradient()], samplers=samplers, control=JobControl(),
                    on_step=calls.append, mask=mask)

    with pytest.raises(ValueError, match="mask is 32x32 but its init image is 64x64"):
        run(Image.new("L", (32, 32), 255))
    with pytest.raises(ValueError, match="empty"):
        run(Image.new("L", (64, 64), 0))
    with pytest.raises(ValueError, match="latent upscale"):
        run(Image.new("L", (64, 64), 255), resize_mode=3)
    assert calls == []

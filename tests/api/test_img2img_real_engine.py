"""img2img (tiled, resized, RGBA input) and hires fix over the API, real engine, tiny SD1 file."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
from PIL import Image

from tests.api.test_real_engine import real_api  # noqa: F401 (the fixture)


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _image(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    image.load()
    return image


def test_img2img_with_the_tiny_model(real_api: str) -> None:  # noqa: F811
    init = Image.new("RGBA", (100, 60), (200, 40, 40, 255))
    request = {"prompt": "a lighthouse", "steps": 4, "width": 64, "height": 64, "seed": 11,
               "sampler_name": "Euler a", "init_images": [_b64(init)], "denoising_strength": 0.5,
               "tiling": True, "resize_mode": 1}
    with httpx.Client(timeout=300) as client:
        first = client.post(f"{real_api}/img2img", json=request)
        assert first.status_code == 200, first.text
        again = client.post(f"{real_api}/img2img", json=request).json()
        kept = client.post(f"{real_api}/img2img", json={**request, "denoising_strength": 0}).json()
    body = first.json()
    image = _image(body["images"][0])
    assert image.size == (64, 64)
    text = image.info["parameters"]
    assert "Denoising strength: 0.5" in text and "Tiling: True" in text and "Model hash: " in text
    assert json.loads(body["info"])["denoising_strength"] == 0.5
    same = np.asarray(_image(again["images"][0]), dtype=np.int16)
    assert np.array_equal(np.asarray(image, dtype=np.int16), same)  # same seed, same image
    assert "Denoising strength: 0, " in _image(kept["images"][0]).info["parameters"]


def test_hires_fix_with_the_tiny_model(real_api: str) -> None:  # noqa: F811
    request = {"prompt": "a lighthouse", "steps": 3, "width": 64, "height": 64, "seed": 11, "enable_hr": True,
               "hr_scale": 1.5, "hr_upscaler": "Latent", "hr_second_pass_steps": 4, "denoising_strength": 0.5}
    with httpx.Client(timeout=300) as client:
        response = client.post(f"{real_api}/txt2img", json=request)
        pixel = client.post(f"{real_api}/txt2img", json={**request, "hr_upscaler": "Lanczos"})
    assert response.status_code == 200, response.text
    image = _image(response.json()["images"][0])
    assert image.size == (96, 96)
    text = image.info["parameters"]
    assert "Size: 64x64" in text and "Denoising strength: 0.5" in text
    assert "Hires upscale: 1.5, Hires steps: 4, Hires upscaler: Latent" in text
    assert _image(pixel.json()["images"][0]).size == (96, 96)


def test_inpainting_with_the_tiny_model_keeps_the_unmasked_pixels(real_api: str) -> None:  # noqa: F811
    init = Image.new("RGB", (96, 80), (30, 160, 90))
    mask = Image.new("L", (96, 80), 0)
    mask.paste(255, (60, 10, 80, 30))
    request = {"prompt": "a lighthouse", "steps": 4, "width": 64, "height": 64, "seed": 11,
               "init_images": [_b64(init)], "mask": _b64(mask), "denoising_strength": 0.9, "mask_blur": 2,
               "inpaint_full_res_padding": 4}
    with httpx.Client(timeout=300) as client:
        response = client.post(f"{real_api}/img2img", json=request)
    assert response.status_code == 200, response.text
    out = np.asarray(_image(response.json()["images"][0]).convert("RGB"), dtype=np.int16)
    assert out.shape == (80, 96, 3)  # "only masked" keeps the picture's size
    source = np.asarray(init, dtype=np.int16)
    assert np.array_equal(out[:, :50], source[:, :50]) and np.array_equal(out[40:], source[40:])
    assert np.abs(out[14:26, 64:76] - source[14:26, 64:76]).mean() > 5


def test_progress_reports_a1111s_img2img_and_hires_step_counts(real_api: str) -> None:  # noqa: F811
    """/sdapi/v1/progress counts the steps A1111 runs: t_enc + 1 = int(strength * steps) + 1 by default,
    exactly ``steps`` with img2img_fix_steps, diffusers' int(steps * strength) on the diffusers path; hires
    fix's second pass runs exactly hr_second_pass_steps."""
    init = Image.new("RGB", (64, 64), (30, 90, 200))
    base = {"prompt": "a lighthouse", "steps": 10, "width": 64, "height": 64, "seed": 11,
            "sampler_name": "Euler a", "init_images": [_b64(init)], "denoising_strength": 0.35}
    cases = [
        ("i2i-default", "img2img", base, 4),
        ("i2i-fixed", "img2img", {**base, "override_settings": {"img2img_fix_steps": True}}, 10),
        ("i2i-diffusers", "img2img", {**base, "override_settings": {"sampler_path": "diffusers"}}, 3),
        ("hires", "txt2img", {"prompt": "a lighthouse", "steps": 3, "width": 64, "height": 64, "seed": 11,
                              "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent",
                              "hr_second_pass_steps": 4, "denoising_strength": 0.5}, 3 + 4),
    ]
    with httpx.Client(timeout=300) as client:
        for task, route, request, expected in cases:
            answer = client.post(f"{real_api}/{route}", json={**request, "force_task_id": task})
            assert answer.status_code == 200, answer.text
            state = client.get(f"{real_api}/progress", params={"id_task": task}).json()["state"]
            assert (state["sampling_step"], state["sampling_steps"]) == (expected, expected), task

"""Poor man's outpainting and a hires prompt of its own through the real engine (tiny SD1 file): the
picture grows, its own pixels come back unchanged, the new area is generated; the second pass's prompt is
written in the infotext."""

from __future__ import annotations

import httpx
import numpy as np
from PIL import Image

from tests.api.test_img2img_real_engine import _b64, _image
from tests.api.test_real_engine import real_api  # noqa: F401 (the fixture)


def test_outpainting_keeps_the_picture_and_fills_the_new_area(real_api: str) -> None:  # noqa: F811
    init = Image.new("RGB", (64, 64), (30, 90, 200))
    request = {"prompt": "a lighthouse", "steps": 3, "seed": 5, "sampler_name": "Euler", "width": 64,
               "height": 64, "init_images": [_b64(init)], "denoising_strength": 1.0,
               "script_name": "poor man's outpainting", "script_args": [16, 4, 1, ["left", "down"]]}
    with httpx.Client(timeout=300) as client:
        response = client.post(f"{real_api}/img2img", json=request)
    assert response.status_code == 200, response.text
    image = _image(response.json()["images"][0]).convert("RGB")
    assert image.size == (80, 80)
    pixels = np.asarray(image, np.int16)
    # Beyond the 4-pixel overlap and the blur around it (the picture sits at x 16-80, y 0-64), the
    # picture is the original's, exactly.
    assert (np.abs(pixels[0:36, 40:80] - np.array([30, 90, 200])).max()) == 0
    # The new strip on the left was generated, not left as the stretched edge colour.
    assert np.abs(pixels[:, 0:8] - np.array([30, 90, 200])).mean() > 5
    assert "Mask blur: 4" in image.info["parameters"]


def test_a_hires_prompt_of_its_own_is_used_and_written(real_api: str) -> None:  # noqa: F811
    request = {"prompt": "a lighthouse", "steps": 3, "width": 64, "height": 64, "seed": 11, "enable_hr": True,
               "hr_scale": 1.5, "hr_upscaler": "Lanczos", "denoising_strength": 0.6}
    with httpx.Client(timeout=300) as client:
        same = client.post(f"{real_api}/txt2img", json=request).json()
        own = client.post(f"{real_api}/txt2img", json={**request, "hr_prompt": "a red barn at night",
                                                        "hr_sampler_name": "DDIM"}).json()
    plain, changed = _image(same["images"][0]), _image(own["images"][0])
    text = changed.info["parameters"]
    assert text.startswith("a lighthouse\n")
    assert "Hires sampler: DDIM, Hires prompt: a red barn at night" in text
    assert "Hires prompt" not in plain.info["parameters"]
    assert np.abs(np.asarray(plain, np.int16) - np.asarray(changed, np.int16)).mean() > 0.5

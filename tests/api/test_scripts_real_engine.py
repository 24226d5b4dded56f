"""Scripts with the real engine and the tiny SD1 checkpoint: X/Y/Z plot's cells are real generations of
their own settings, and SD upscale redraws real tiles into a bigger picture."""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.api.conftest import served_api
from tests.fakes import make_settings


@pytest.fixture(scope="module")
def real_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from sdweb.services.factory import build_services
    from tests.fakes import write_fake_checkpoint

    root = tmp_path_factory.mktemp("scripts-real")
    settings = make_settings(root)
    checkpoint = write_fake_checkpoint(root / "source")
    settings.paths.ckpt_dirs[0].mkdir(parents=True)
    shutil.copy(checkpoint, settings.paths.ckpt_dirs[0] / checkpoint.name)
    services = build_services(settings)
    services.models.load_selected(wait=True)
    with served_api(services) as url:
        yield url


BASE = {"steps": 2, "width": 64, "height": 64, "sampler_name": "Euler"}


def decode(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    image.load()
    return image


def test_xyz_cells_are_the_images_of_their_settings(real_api: str) -> None:
    # X: Steps 1, 2; Y: Seed 3, 4; no legend; the cells after the grid.
    args = [4, "1, 2", [], 1, "3, 4", [], 0, "", [], False, True, False, False, False, False, False, 0, False]
    request = {**BASE, "prompt": "a lighthouse", "seed": 3, "script_name": "x/y/z plot", "script_args": args}
    with httpx.Client(timeout=300) as client:
        body = client.post(f"{real_api}/txt2img", json=request).json()
        alone = client.post(f"{real_api}/txt2img", json={**BASE, "prompt": "a lighthouse", "seed": 4}).json()
    grid, *cells = (decode(image).convert("RGB") for image in body["images"])
    assert grid.size == (128, 128) and len(cells) == 4  # no legend: a plain 2x2 grid, then the cells
    pixels = [np.asarray(cell, np.int16) for cell in cells]
    assert all(np.abs(a - b).max() > 0 for i, a in enumerate(pixels) for b in pixels[i + 1:])
    # Cell (steps 2, seed 4) is what that request makes alone, and sits bottom right in the grid.
    assert np.abs(pixels[3] - np.asarray(decode(alone["images"][0]).convert("RGB"), np.int16)).max() <= 2
    assert np.abs(np.asarray(grid.crop((64, 64, 128, 128)), np.int16) - pixels[3]).max() <= 2
    info = json.loads(body["info"])
    assert ["Steps: 1" in text for text in info["infotexts"][1:]] == [True, False, True, False]


def test_sd_upscale_redraws_tiles_of_the_upscaled_picture(real_api: str) -> None:
    source = Image.new("RGB", (64, 64), (200, 60, 40))
    buffer = io.BytesIO()
    source.save(buffer, format="PNG")
    # 3x3 tiles of 64 over 128 (overlap 32), three to a batch.
    request = {**BASE, "prompt": "a red wall", "seed": 9, "denoising_strength": 0.5, "batch_size": 3,
               "init_images": [base64.b64encode(buffer.getvalue()).decode()],
               "script_name": "sd upscale", "script_args": [None, 32, "Lanczos", 2.0]}
    with httpx.Client(timeout=300) as client:
        response = client.post(f"{real_api}/img2img", json=request)
    assert response.status_code == 200, response.text
    picture = decode(response.json()["images"][0]).convert("RGB")
    assert picture.size == (128, 128)
    pixels = np.asarray(picture, np.int16)
    assert np.abs(pixels - np.array([200, 60, 40])).mean() > 3  # redrawn, not just enlarged
    info = json.loads(response.json()["info"])
    assert "SD upscale overlap: 32" in info["infotexts"][0]
    assert info["infotexts"][0].count("Size: 64x64") == 1  # the tiles' size, as A1111 writes it

"""The API with the real engine and the tiny SD1 checkpoint (loaded from its file, as a user's would be):
txt2img answers decodable images with their infotext, the same seed gives the same image, and batch
image i equals seed + i made alone."""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.api.conftest import served_api
from tests.fakes import make_settings


@pytest.fixture()
def real_api(tmp_path: Path, tiny_checkpoint: Path) -> Iterator[str]:
    from sdweb.services.factory import build_services

    settings = make_settings(tmp_path)
    settings.paths.ckpt_dirs[0].mkdir(parents=True)
    shutil.copy(tiny_checkpoint, settings.paths.ckpt_dirs[0] / tiny_checkpoint.name)
    services = build_services(settings)  # the real engine factory
    services.models.load_selected(wait=True)  # as the server does at start-up
    with served_api(services) as url:
        yield url


def pixels(b64: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        assert image.size == (64, 64)
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_txt2img_with_the_tiny_model(real_api: str) -> None:
    request = {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64, "seed": 11,
               "sampler_name": "Euler a", "batch_size": 2}
    with httpx.Client(timeout=300) as client:
        batch = client.post(f"{real_api}/txt2img", json=request)
        assert batch.status_code == 200, batch.text
        second_alone = client.post(f"{real_api}/txt2img", json={**request, "seed": 12, "batch_size": 1})
        assert second_alone.status_code == 200, second_alone.text
    body = batch.json()
    info = json.loads(body["info"])
    assert info["all_seeds"] == [11, 12] and info["sd_model_name"] == "fake-model"
    assert info["sd_model_hash"] and len(info["sd_model_hash"]) == 10
    with Image.open(io.BytesIO(base64.b64decode(body["images"][0]))) as image:
        assert image.info["parameters"] == info["infotexts"][0]
        assert "Sampler: Euler a" in image.info["parameters"] and "Seed: 11" in image.info["parameters"]
    first, second = (pixels(b64) for b64 in body["images"])
    assert np.abs(first - second).max() > 0  # different seeds, different images
    # image i of a batch is what its seed makes alone (A1111's reproducibility promise)
    assert np.abs(second - pixels(second_alone.json()["images"][0])).max() <= 2


def test_an_interrupted_job_answers_the_image_it_had_reached(real_api: str) -> None:
    """As A1111: interrupting mid-sampling returns the batch decoded from the latents it had reached."""
    import threading
    import time

    answer: dict[str, httpx.Response] = {}

    def generate() -> None:
        with httpx.Client(timeout=300) as client:
            answer["response"] = client.post(f"{real_api}/txt2img", json={
                "prompt": "a kite", "steps": 2000, "width": 64, "height": 64, "seed": 5, "batch_size": 2})

    thread = threading.Thread(target=generate)
    thread.start()
    with httpx.Client(timeout=30) as client:
        deadline = time.monotonic() + 120
        while client.get(f"{real_api}/progress").json()["state"]["sampling_step"] < 3:
            assert time.monotonic() < deadline and thread.is_alive(), "the job never started"
            time.sleep(0.05)
        assert client.post(f"{real_api}/interrupt").status_code == 200
    thread.join(120)
    response = answer["response"]
    assert response.status_code == 200, response.text
    body = response.json()
    info = json.loads(body["info"])
    assert info["interrupted"] is True and info["all_seeds"] == [5, 6]
    assert [pixels(b64).shape for b64 in body["images"]] == [(64, 64, 3)] * 2

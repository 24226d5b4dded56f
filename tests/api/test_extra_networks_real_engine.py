"""LoRA and embeddings end to end: the API, the real engine and the tiny SD1 checkpoint loaded from its file.

The LoRA is applied to the pipeline the model manager built (``from_single_file``), its hash and the
embedding's reach the PNG's infotext, the next request without the tag gets the plain image again, and
``/embeddings`` judges the files against the loaded model.
"""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from sdweb.engine.models.hashes import file_sha256, lora_hash
from tests.api.conftest import served_api
from tests.fakes import make_settings
from tests.fixtures.checkpoints import tiny_sd1_components
from tests.fixtures.lora import write_a1111_embedding, write_safetensors_embedding, write_tiny_sd1_lora


@pytest.fixture()
def real_api(tmp_path: Path, tiny_checkpoint: Path) -> Iterator[tuple[str, Path]]:
    from sdweb.services.factory import build_services

    settings = make_settings(tmp_path)
    settings.paths.ckpt_dirs[0].mkdir(parents=True)
    shutil.copy(tiny_checkpoint, settings.paths.ckpt_dirs[0] / tiny_checkpoint.name)
    shapes = StableDiffusionPipeline(**tiny_sd1_components())  # the checkpoint's architecture
    write_tiny_sd1_lora(settings.paths.lora_dir / "detail.safetensors", shapes, seed=4)
    write_a1111_embedding(settings.paths.embeddings_dir / "fluffy.pt",
                          torch.randn(2, 32, generator=torch.Generator().manual_seed(3)))
    write_safetensors_embedding(settings.paths.embeddings_dir / "wide.safetensors",
                                {"emb_params": torch.zeros(1, 768)})
    services = build_services(settings)  # the real engine factory
    services.models.load_selected(wait=True)
    with served_api(services) as url:
        yield url, settings.paths.root


def _image(body: dict) -> tuple[np.ndarray, str]:
    with Image.open(io.BytesIO(base64.b64decode(body["images"][0]))) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16), image.info["parameters"]


def test_lora_and_embedding_through_the_api(real_api: tuple[str, Path]) -> None:
    url, root = real_api
    request = {"steps": 2, "width": 64, "height": 64, "seed": 5, "sampler_name": "Euler"}
    with httpx.Client(timeout=300) as client:
        def txt2img(prompt: str) -> dict:
            response = client.post(f"{url}/txt2img", json={**request, "prompt": prompt})
            assert response.status_code == 200, response.text
            return response.json()

        plain, plain_info = _image(txt2img("a fluffy cat"))
        with_both, info = _image(txt2img("a fluffy cat <lora:detail:1>"))
        again, _ = _image(txt2img("a fluffy cat"))
        embeddings = client.get(f"{url}/embeddings").json()
        loras = client.get(f"{url}/loras").json()

    lora = lora_hash(root / "models" / "Lora" / "detail.safetensors")
    ti = file_sha256(root / "embeddings" / "fluffy.pt")[:12]
    assert f'Lora hashes: "detail: {lora}"' in info
    assert f'TI hashes: "fluffy: {ti}"' in info and f'TI hashes: "fluffy: {ti}"' in plain_info
    assert "Lora hashes" not in plain_info
    assert np.abs(with_both - plain).max() > 0
    assert np.array_equal(again, plain)  # the LoRA is gone after its job
    assert list(embeddings["loaded"]) == ["fluffy"]
    assert embeddings["skipped"]["wide"]["reason"] == "dimension 768 does not match this model's 32"
    assert [item["name"] for item in loras] == ["detail"]

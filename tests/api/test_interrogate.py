"""POST /sdapi/v1/interrogate: a BLIP caption (A1111's "clip" interrogator starts from one), with the
model from models/BLIP, fetched there on first use; offline and without it, a 503 naming what to download."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from sdweb.engine.captioning import BLIP_REPO, blip_folder
from tests.api.conftest import ApiServer
from tests.fixtures.captioning import WORDS, write_tiny_blip


def png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 120, 0)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_offline_without_the_model_is_a_503_naming_what_to_download(api: ApiServer) -> None:
    response = api.post("interrogate", json={"image": png_b64(), "model": "clip"})
    assert response.status_code == 503, response.text
    detail = response.json()["detail"]
    root = api.services.settings.paths.root
    folder = blip_folder(root / "models").relative_to(root).as_posix()  # relative: no server paths leak
    assert BLIP_REPO in detail and folder in detail and "https://huggingface.co/" in detail
    assert str(root) not in detail
    assert api.get("sd-models").status_code == 200  # still serving


def test_a_caption_from_the_model_in_models_blip(api: ApiServer) -> None:
    # webuiapi's interrogate(image) sends {"image": b64_img(image), "model": "clip"}
    write_tiny_blip(blip_folder(api.services.settings.paths.root / "models"))
    response = api.post("interrogate", json={"image": "data:image/png;base64," + png_b64(), "model": "clip"})
    assert response.status_code == 200, response.text
    caption = response.json()["caption"]
    assert caption and set(caption.split()) <= set(WORDS)
    again = api.post("interrogate", json={"image": png_b64()})  # "clip" is the default
    assert again.json()["caption"] == caption


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"image": png_b64(), "model": "deepdanbooru"}, 501, "DeepDanbooru"),
        ({"image": png_b64(), "model": "wobbly"}, 404, "'wobbly' not found"),
        ({"image": "", "model": "clip"}, 404, "Image not found"),
        ({"image": "%%%", "model": "clip"}, 400, "image[0]"),
    ],
)
def test_what_cannot_be_captioned_is_a_4xx_or_501(
    api: ApiServer, body: dict, status: int, words: str
) -> None:
    response = api.post("interrogate", json=body)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]

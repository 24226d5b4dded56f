"""The API on a fresh install: no checkpoint of the user's, so the bundled demo model is listed, selected
and used, and its images show what the prompt asks for: colours and place, read back from the pixels.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from demo_model.checker import read_scene
from sdweb.services.factory import DEMO_CHECKPOINT
from tests.api.conftest import served_api
from tests.fakes import make_settings

pytestmark = pytest.mark.skipif(not DEMO_CHECKPOINT.is_file(), reason="the demo checkpoint is not exported")


@pytest.fixture(scope="module")
def demo_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from sdweb.services.factory import build_services

    settings = make_settings(tmp_path_factory.mktemp("fresh"), skip_demo_model=False)
    services = build_services(settings)  # the real engine, as webui.py builds it
    services.models.load_selected(wait=True)  # as the server does at start-up
    with served_api(services) as url:
        yield url


def test_the_demo_model_is_listed_and_selected(demo_api: str) -> None:
    with httpx.Client(timeout=60) as client:
        models = client.get(f"{demo_api}/sd-models").json()
        options = client.get(f"{demo_api}/options").json()
    assert [m["model_name"] for m in models] == [Path(DEMO_CHECKPOINT).stem]
    assert options["sd_model_checkpoint"] == models[0]["title"]


@pytest.mark.parametrize(("prompt", "colour", "background", "position"), [
    ("a large red circle on the left, blue background", "red", "blue", "left"),
    ("a yellow background with a large purple square at the top", "purple", "yellow", "top"),
])
def test_txt2img_draws_what_the_prompt_names(demo_api: str, prompt: str, colour: str, background: str,
                                             position: str) -> None:
    request = {"prompt": prompt, "steps": 20, "width": 64, "height": 64, "seed": 3, "cfg_scale": 7,
               "sampler_name": "Euler a", "batch_size": 2}
    with httpx.Client(timeout=300) as client:
        answer = client.post(f"{demo_api}/txt2img", json=request)
    assert answer.status_code == 200, answer.text
    images = answer.json()["images"]
    assert len(images) == 2
    for encoded in images:
        with Image.open(io.BytesIO(base64.b64decode(encoded))) as image:
            assert image.size == (64, 64)
            assert "sdweb-demo-shapes" in image.info["parameters"]
            reading = read_scene(image)
        assert (reading.colour, reading.background, reading.position) == (colour, background, position)

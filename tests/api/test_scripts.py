"""A1111 scripts plug into the API as handlers in a registry: an always-on script of the test's own
(``alwayson_scripts``, ControlNet's way in) reaches txt2img and img2img, is listed by ``/scripts`` and
``/script-info``, and refuses bad arguments before anything is queued."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image

from sdweb.api.errors import ApiError, install_error_handlers
from sdweb.api.models import Txt2ImgRequest
from sdweb.api.router import make_router
from sdweb.api.scripts import ImageJob, ScriptHandler, ScriptRegistry
from sdweb.api.scripts.outpaint import OutpaintHandler
from tests.api.conftest import served_api
from tests.fakes import FakeEngine, make_services

SMALL = {"prompt": "a tiled floor", "steps": 2, "width": 64, "height": 64}


class SeamlessScript(ScriptHandler):
    """An always-on script the API knows nothing of: ``{"seamless": {"args": [true]}}`` asks for tiling."""

    name = "seamless"
    alwayson = True

    def args_info(self) -> list[dict[str, Any]]:
        return [{"label": "Tile", "value": False}]

    def parse(self, args: Sequence[Any], request: Txt2ImgRequest) -> bool:
        if len(args) != 1 or not isinstance(args[0], bool):
            raise ApiError(422, f"alwayson_scripts.seamless.args[0] (tile): true or false "
                                f"(got {list(args)!r})")
        return args[0]

    def apply(self, job: ImageJob, parsed: Any) -> ImageJob:
        return ImageJob(job.params.model_copy(update={"tiling": parsed}), job.images, job.mask)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[httpx.Client, FakeEngine]]:
    services, engine = make_services(tmp_path)
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(make_router(services, scripts=ScriptRegistry([OutpaintHandler(), SeamlessScript()])))
    with served_api(services, app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client, engine


def _png_base64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (0, 120, 200)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_an_always_on_script_changes_the_txt2img_and_img2img_jobs(served: tuple[httpx.Client, Any]) -> None:
    client, engine = served
    response = client.post("/txt2img", json={**SMALL, "alwayson_scripts": {"Seamless": {"args": [True]}}})
    assert response.status_code == 200, response.text
    assert engine.calls[-1].tiling is True and engine.calls[-1].prompt == "a tiled floor"
    response = client.post("/txt2img", json=SMALL)
    assert response.status_code == 200 and engine.calls[-1].tiling is False
    response = client.post("/img2img", json={**SMALL, "init_images": [_png_base64()],
                                              "alwayson_scripts": {"seamless": {"args": [True]}}})
    assert response.status_code == 200, response.text
    assert engine.calls[-1].tiling is True and len(engine.init_images[-1]) == 1


def test_bad_script_arguments_are_a_422_naming_them(served: tuple[httpx.Client, Any]) -> None:
    client, engine = served
    response = client.post("/txt2img", json={**SMALL, "alwayson_scripts": {"seamless": {"args": ["yes"]}}})
    assert response.status_code == 422 and "alwayson_scripts.seamless.args[0] (tile)" in response.text
    response = client.post("/txt2img", json={**SMALL, "alwayson_scripts": {"seamless": [True]}})
    assert response.status_code == 422 and "alwayson_scripts.seamless" in response.text
    # A script only one route runs, or one nobody registered, is still refused by name.
    response = client.post("/txt2img", json={**SMALL, "script_name": "poor man's outpainting"})
    assert response.status_code == 422 and "poor man's outpainting" in response.text
    response = client.post("/txt2img", json={**SMALL, "alwayson_scripts": {"controlnet": {"args": []}}})
    assert response.status_code == 422 and "controlnet" in response.text
    assert engine.calls == []  # nothing was queued


def test_scripts_and_script_info_list_the_registered_handlers(served: tuple[httpx.Client, Any]) -> None:
    client, _ = served
    assert client.get("/scripts").json() == {"txt2img": ["seamless"],
                                             "img2img": ["poor man's outpainting", "seamless"]}
    infos = {(item["name"], item["is_img2img"]): item for item in client.get("/script-info").json()}
    assert set(infos) == {("seamless", False), ("seamless", True), ("poor man's outpainting", True)}
    assert infos["seamless", False]["is_alwayson"] is True
    assert infos["seamless", True]["args"] == [{"label": "Tile", "value": False}]
    assert infos["poor man's outpainting", True]["is_alwayson"] is False


def test_a_registry_refuses_two_handlers_with_one_name() -> None:
    with pytest.raises(ValueError, match="seamless"):
        ScriptRegistry([SeamlessScript(), SeamlessScript()])

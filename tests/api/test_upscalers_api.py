"""Model upscalers (models/ESRGAN) over the API: /upscalers lists them with A1111's fields, the Extras
routes and hires fix use them, and without the optional extra they answer 4xx with the install hint."""

from __future__ import annotations

import base64
import io
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from PIL import Image

from tests.api.conftest import ApiServer
from tests.fakes import FakeEngine

MODEL = "4x-Fake"


@dataclass
class UpscalingFakeEngine(FakeEngine):
    """FakeEngine with the engine's ``upscale``: nearest-neighbour to the asked size, calls recorded."""

    upscales: list[tuple[str, tuple[int, int]]] = field(default_factory=list)

    def upscale(self, image: Image.Image, name: str, size: tuple[int, int]) -> Image.Image:
        self.upscales.append((name, size))
        return image.resize(size, Image.Resampling.NEAREST)


def _png(size: tuple[int, int] = (20, 10), colour: str = "red") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _decoded(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


@pytest.fixture()
def model_api(start_api: Callable[..., ApiServer], monkeypatch: pytest.MonkeyPatch) -> ApiServer:
    """A server with one model in models/ESRGAN, and spandrel taken as importable."""
    import sdweb.engine.upscalers

    monkeypatch.setattr(sdweb.engine.upscalers, "spandrel_problem", lambda: None)
    api = start_api(engine=UpscalingFakeEngine())
    (api.services.settings.paths.esrgan_dir / f"{MODEL}.pth").write_bytes(b"")
    return api


@pytest.fixture()
def no_extra_api(start_api: Callable[..., ApiServer], monkeypatch: pytest.MonkeyPatch) -> ApiServer:
    """A server with one model in models/ESRGAN where ``import spandrel`` fails."""
    monkeypatch.setitem(sys.modules, "spandrel", None)
    api = start_api(engine=UpscalingFakeEngine())
    (api.services.settings.paths.esrgan_dir / f"{MODEL}.pth").write_bytes(b"")
    return api


def test_upscalers_lists_the_models_with_a1111s_fields(model_api: ApiServer) -> None:
    listed = model_api.get("upscalers").json()
    assert [item["name"] for item in listed] == ["None", "Lanczos", "Nearest", MODEL]
    path = model_api.services.settings.paths.esrgan_dir / f"{MODEL}.pth"
    assert listed[-1] == {"name": MODEL, "model_name": MODEL, "model_path": str(path), "model_url": None,
                          "scale": 4.0}


def test_extra_single_image_with_a_model_upscaler(model_api: ApiServer) -> None:
    response = model_api.post("extra-single-image", json={"image": _png(), "upscaler_1": "4x-fake",
                                                          "upscaling_resize": 3})
    assert response.status_code == 200, response.text
    assert _decoded(response.json()["image"]).size == (60, 30)
    assert model_api.engine.upscales == [(MODEL, (60, 30))]
    assert "Postprocess upscaler: 4x-Fake" in response.json()["html_info"]  # as listed


def test_extra_batch_images_blends_a_model_upscaler_as_the_second(model_api: ApiServer) -> None:
    response = model_api.post("extra-batch-images", json={
        "imageList": [{"data": _png(), "name": "a.png"}, {"data": _png(colour="blue"), "name": "b.png"}],
        "upscaler_1": "Nearest", "upscaler_2": MODEL, "extras_upscaler_2_visibility": 0.5,
        "upscaling_resize": 2})
    assert response.status_code == 200, response.text
    images = [_decoded(data) for data in response.json()["images"]]
    assert [image.size for image in images] == [(40, 20), (40, 20)]
    assert model_api.engine.upscales == [(MODEL, (40, 20)), (MODEL, (40, 20))]


def test_without_the_extra_a_model_upscaler_is_a_4xx_naming_the_fix(no_extra_api: ApiServer) -> None:
    assert MODEL in [item["name"] for item in no_extra_api.get("upscalers").json()]  # still listed
    response = no_extra_api.post("extra-single-image", json={"image": _png(), "upscaler_1": MODEL})
    assert response.status_code == 422, response.text
    message = response.text
    assert "pip install 'sdweb[upscalers]'" in message and "torch 2.14.1" in message
    assert no_extra_api.engine.upscales == []


def test_hires_fix_takes_a_model_upscaler_by_its_canonical_name(model_api: ApiServer) -> None:
    response = model_api.post("txt2img", json={"steps": 2, "width": 64, "height": 64, "enable_hr": True,
                                                "hr_upscaler": "4X-FAKE"})
    assert response.status_code == 200, response.text
    assert model_api.engine.calls[-1].hr_upscaler == MODEL


def test_hires_fix_with_a_model_upscaler_and_no_extra_is_refused_before_queueing(
        no_extra_api: ApiServer) -> None:
    response = no_extra_api.post("txt2img", json={"steps": 2, "width": 64, "height": 64, "enable_hr": True,
                                                  "hr_upscaler": MODEL})
    assert response.status_code == 400, response.text
    assert "sdweb[upscalers]" in response.text
    assert no_extra_api.engine.calls == []


def test_an_unknown_upscaler_lists_the_models_too(model_api: ApiServer) -> None:
    response = model_api.post("extra-single-image", json={"image": _png(), "upscaler_1": "Wobbly 3x"})
    assert response.status_code == 400
    assert f"Nearest, {MODEL}" in response.text


def test_a1111_upscaler_names_use_their_model_file_when_it_is_there(model_api: ApiServer) -> None:
    # A1111 calls RealESRGAN_x4plus.pth "R-ESRGAN 4x+" (webuiapi's HiResUpscaler.ESRGAN_4x, Discord bots).
    (model_api.services.settings.paths.esrgan_dir / "RealESRGAN_x4plus.pth").write_bytes(b"")
    response = model_api.post("extra-single-image", json={"image": _png(), "upscaler_1": "R-ESRGAN 4x+"})
    assert response.status_code == 200, response.text
    assert model_api.engine.upscales == [("RealESRGAN_x4plus", (40, 20))]
    assert "Postprocess upscaler: RealESRGAN_x4plus" in response.json()["html_info"]
    response = model_api.post("txt2img", json={"steps": 2, "width": 64, "height": 64, "enable_hr": True,
                                                "hr_upscaler": "R-ESRGAN 4x+"})
    assert response.status_code == 200, response.text
    assert model_api.engine.calls[-1].hr_upscaler == "RealESRGAN_x4plus"
    assert not json.loads(response.json()["info"])["warnings"]


def test_a1111_upscaler_names_without_their_file_upscale_with_lanczos_and_say_which_file(
        model_api: ApiServer) -> None:
    response = model_api.post("extra-single-image", json={"image": _png(), "upscaler_1": "SwinIR 4x"})
    assert response.status_code == 200, response.text
    assert _decoded(response.json()["image"]).size == (40, 20) and model_api.engine.upscales == []
    info = response.json()["html_info"]
    assert "Postprocess upscaler: Lanczos" in info and "SwinIR_4x.pth in models/ESRGAN" in info
    response = model_api.post("txt2img", json={"steps": 2, "width": 64, "height": 64, "enable_hr": True,
                                                "hr_upscaler": "4x-UltraSharp"})
    assert response.status_code == 200, response.text
    assert model_api.engine.calls[-1].hr_upscaler == "Lanczos"
    assert "4x-UltraSharp.pth in models/ESRGAN" in response.json()["info"]



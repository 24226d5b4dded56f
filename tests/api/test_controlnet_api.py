"""The sd-webui-controlnet extension's API with the real engine: ``/controlnet/*`` routes and
``alwayson_scripts.controlnet`` units (the payloads the extension's examples and webuiapi send), with a
tiny random ControlNet written beside the tiny SD1 checkpoint."""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.api.conftest import served_api
from tests.fakes import make_settings
from tests.fixtures.annotators import hed_state, lineart_state, write_annotator
from tests.fixtures.checkpoints import tiny_sd1_components, tiny_sdxl_components
from tests.fixtures.controlnet import write_tiny_clip_vision, write_tiny_controlnet, write_tiny_ip_adapter


@pytest.fixture(scope="module")
def controlnet_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cn")
    write_tiny_controlnet(folder / "control_v11p_sd15_canny.safetensors", tiny_sd1_components()["unet"])
    write_tiny_controlnet(folder / "control_sdxl_canny.safetensors", tiny_sdxl_components()["unet"],
                          layout="diffusers")
    write_tiny_ip_adapter(folder / "ip-adapter_tiny_sd15.safetensors", tiny_sd1_components()["unet"])
    write_tiny_clip_vision(folder / "clip_vision" / "clip_vision_tiny.safetensors")
    return folder


@contextmanager
def _served(root: Path, checkpoint: Path, controlnet_files: Path, *,
            annotators: bool = False) -> Iterator[str]:
    from sdweb.services.factory import build_services

    settings = make_settings(root)
    settings.paths.ckpt_dirs[0].mkdir(parents=True)
    shutil.copy(checkpoint, settings.paths.ckpt_dirs[0] / checkpoint.name)
    shutil.copytree(controlnet_files, settings.paths.controlnet_dir,
                    ignore=shutil.ignore_patterns("clip_vision"))
    shutil.copytree(controlnet_files / "clip_vision", settings.paths.clip_vision_dir)
    if annotators:  # random-weight annotator files where people put lllyasviel/Annotators' ones
        folder = settings.paths.controlnet_dir / "annotators"
        write_annotator(folder, "ControlNetHED.pth", hed_state())
        write_annotator(folder, "sk_model.pth", lineart_state())
    services = build_services(settings)
    if annotators:
        services.controlnet.annotators.download = False  # offline: a missing file is a message
    services.models.load_selected(wait=True)
    with served_api(services) as url:
        yield url.removesuffix("/sdapi/v1")


@pytest.fixture()
def cn_api(tmp_path: Path, tiny_checkpoint: Path, controlnet_files: Path) -> Iterator[str]:
    with _served(tmp_path, tiny_checkpoint, controlnet_files) as url:
        yield url


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _picture() -> Image.Image:
    array = np.zeros((64, 64, 3), dtype=np.uint8)
    array[16:48, 16:48] = 255
    return Image.fromarray(array)


SMALL = {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64, "seed": 11, "sampler_name": "Euler"}


def _pixels(b64: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_listing_routes_answer_as_the_extension(cn_api: str) -> None:
    with httpx.Client(base_url=cn_api, timeout=60) as client:
        assert client.get("/controlnet/version").json() == {"version": 3}
        models = client.get("/controlnet/model_list").json()["model_list"]
        assert len(models) == 3 and any(title.startswith("control_v11p_sd15_canny [") for title in models)
        modules = client.get("/controlnet/module_list").json()
        assert {"none", "canny", "invert", "scribble_xdog", "shuffle"} <= set(modules["module_list"])
        assert modules["module_detail"]["canny"]["sliders"][1]["value"] == 100
        types = client.get("/controlnet/control_types").json()["control_types"]
        assert "canny" in types["Canny"]["module_list"] and types["Canny"]["default_option"] == "canny"
        assert any("sd15_canny" in title for title in types["Canny"]["model_list"])
        assert client.get("/controlnet/settings").json() == {"control_net_unit_count": 3}
        detect = client.post("/controlnet/detect", json={"controlnet_module": "canny",
                                                         "controlnet_input_images": [_b64(_picture())]})
        assert detect.status_code == 200, detect.text
        edges = _pixels(detect.json()["images"][0])
        assert set(np.unique(edges)) <= {0, 255} and edges.max() == 255  # the square's outline
        bad = client.post("/controlnet/detect", json={"controlnet_module": "nope",
                                                      "controlnet_input_images": [_b64(_picture())]})
        assert bad.status_code == 422 and "controlnet_module" in bad.text
        model_based = client.post("/controlnet/detect", json={"controlnet_module": "depth_midas",
                                                              "controlnet_input_images": [_b64(_picture())]})
        assert model_based.status_code == 422 and "dpt_hybrid-midas-501f0c75.pt" in model_based.text


def _unit(**changes: Any) -> dict[str, Any]:
    unit: dict[str, Any] = {
        "enabled": True, "input_image": _b64(_picture()), "module": "canny",
        "model": "control_v11p_sd15_canny", "weight": 1.0, "resize_mode": 1, "lowvram": False,
        "processor_res": 64, "threshold_a": 100, "threshold_b": 200, "guidance_start": 0.0,
        "guidance_end": 1.0, "control_mode": 0, "pixel_perfect": False}
    unit.update(changes)
    return unit


def test_txt2img_with_a_unit_is_steered_and_says_so_in_the_infotext(cn_api: str) -> None:
    with httpx.Client(base_url=cn_api + "/sdapi/v1", timeout=300) as client:
        plain = client.post("/txt2img", json=SMALL)
        steered = client.post("/txt2img", json={**SMALL, "alwayson_scripts": {
            "controlnet": {"args": [_unit()]}}})
        weightless = client.post("/txt2img", json={**SMALL, "alwayson_scripts": {
            "controlnet": {"args": [_unit(weight=0, control_mode="My prompt is more important")]}}})
    assert plain.status_code == steered.status_code == weightless.status_code == 200, steered.text
    assert np.abs(_pixels(plain.json()["images"][0]) - _pixels(steered.json()["images"][0])).max() > 0
    assert np.array_equal(_pixels(plain.json()["images"][0]), _pixels(weightless.json()["images"][0]))
    infotext = json.loads(steered.json()["info"])["infotexts"][0]
    assert 'ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny [' in infotext
    assert "Weight: 1.0, Resize Mode: Crop and Resize, Processor Res: 64" in infotext
    assert "Control Mode: Balanced" in infotext


def test_an_ip_adapter_unit_as_the_extension_sends_it(cn_api: str) -> None:
    with httpx.Client(base_url=cn_api + "/sdapi/v1", timeout=300) as client:
        plain = client.post("/txt2img", json=SMALL)
        steered = client.post("/txt2img", json={**SMALL, "alwayson_scripts": {"controlnet": {"args": [
            _unit(module="ip-adapter_clip_h", model="ip-adapter_tiny_sd15")]}}})
    assert steered.status_code == 200, steered.text
    assert np.abs(_pixels(plain.json()["images"][0]) - _pixels(steered.json()["images"][0])).max() > 0
    infotext = json.loads(steered.json()["info"])["infotexts"][0]
    assert 'ControlNet 0: "Module: ip-adapter_clip_h, Model: ip-adapter_tiny_sd15 [' in infotext


def test_img2img_unit_without_an_image_uses_the_init_image(cn_api: str) -> None:
    with httpx.Client(base_url=cn_api + "/sdapi/v1", timeout=300) as client:
        request = {**SMALL, "init_images": [_b64(_picture())], "denoising_strength": 0.6}
        plain = client.post("/img2img", json=request)
        steered = client.post("/img2img", json={**request, "alwayson_scripts": {
            "controlnet": {"args": [_unit(input_image=None, module="none", hr_option="Both")]}}})
    assert plain.status_code == steered.status_code == 200, steered.text
    assert np.abs(_pixels(plain.json()["images"][0]) - _pixels(steered.json()["images"][0])).max() > 0


@pytest.mark.parametrize(("unit", "expected"), [
    ({"weight": 5}, "args[0].weight"),
    ({"control_mode": "Loud"}, "args[0].control_mode"),
    ({"resize_mode": 7}, "args[0].resize_mode"),
    ({"guidance_start": 0.8, "guidance_end": 0.2}, "args[0].guidance_end"),
    ({"input_image": "not base64 at all!"}, "args[0].image"),
    ({"colour": "red"}, "args[0].colour"),
    ({"model": "nope"}, "unit 0 (model)"),
    ({"model": "control_sdxl_canny"}, "unit 0 (model)"),
    ({"module": "depth_magic"}, "unit 0 (module)"),
    ({"input_image": None}, "unit 0 (image)"),
])
def test_bad_units_are_refused_naming_the_unit_and_field(cn_api: str, unit: dict[str, Any],
                                                         expected: str) -> None:
    with httpx.Client(base_url=cn_api + "/sdapi/v1", timeout=60) as client:
        response = client.post("/txt2img", json={**SMALL, "alwayson_scripts": {
            "controlnet": {"args": [_unit(**unit)]}}})
    assert 400 <= response.status_code < 500 and expected in response.text, response.text


def test_units_left_disabled_change_nothing(cn_api: str) -> None:
    with httpx.Client(base_url=cn_api + "/sdapi/v1", timeout=300) as client:
        plain = client.post("/txt2img", json=SMALL)
        # The extension's default: a unit without "enabled" is off (its API v3).
        off = client.post("/txt2img", json={**SMALL, "alwayson_scripts": {"ControlNet": {"args": [
            {key: value for key, value in _unit().items() if key != "enabled"}, _unit(enabled=False)]}}})
    assert off.status_code == 200, off.text
    assert np.array_equal(_pixels(plain.json()["images"][0]), _pixels(off.json()["images"][0]))


def test_model_based_annotators_preview_and_steer_from_their_files(tmp_path: Path, tiny_checkpoint: Path,
                                                                     controlnet_files: Path) -> None:
    with _served(tmp_path, tiny_checkpoint, controlnet_files, annotators=True) as url, \
            httpx.Client(base_url=url, timeout=300) as client:
        modules = client.get("/controlnet/module_list").json()
        assert {"softedge_hed", "softedge_hedsafe", "lineart_realistic", "lineart_anime"} <= set(
            modules["module_list"])
        assert modules["module_detail"]["softedge_hed"]["model_free"] is False
        picture = _b64(_picture())
        detect = client.post("/controlnet/detect", json={
            "controlnet_module": "softedge_hed", "controlnet_input_images": [picture],
            "controlnet_processor_res": 64})
        assert detect.status_code == 200, detect.text
        edges = _pixels(detect.json()["images"][0])
        assert edges.shape == (64, 64, 3)
        again = client.post("/controlnet/detect", json={
            "controlnet_module": "softedge_hed", "controlnet_input_images": [picture],
            "controlnet_processor_res": 64})
        assert np.array_equal(edges, _pixels(again.json()["images"][0]))  # deterministic
        flat = client.post("/controlnet/detect", json={
            "controlnet_module": "softedge_hed", "controlnet_processor_res": 64,
            "controlnet_input_images": [_b64(Image.new("RGB", (64, 64)))]})
        assert not np.array_equal(edges, _pixels(flat.json()["images"][0]))  # the square shows
        missing = client.post("/controlnet/detect", json={
            "controlnet_module": "lineart_anime", "controlnet_input_images": [picture]})
        assert missing.status_code == 422 and "netG.pth" in missing.text, missing.text
        plain = client.post("/sdapi/v1/txt2img", json=SMALL)
        steered = client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {
            "controlnet": {"args": [_unit(module="lineart_realistic")]}}})
        refused = client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {
            "controlnet": {"args": [_unit(module="lineart_anime")]}}})
    assert plain.status_code == steered.status_code == 200, steered.text
    assert np.abs(_pixels(plain.json()["images"][0]) - _pixels(steered.json()["images"][0])).max() > 0
    assert 'ControlNet 0: "Module: lineart_realistic' in json.loads(steered.json()["info"])["infotexts"][0]
    assert 400 <= refused.status_code < 500 and "unit 0 (module)" in refused.text
    assert "netG.pth" in refused.text

"""SD 3.x and Flux through the API with the real engine, from files in a data folder as a user drops them:
a transformer-only Flux file with its text encoders and VAE picked from models/text_encoder and
models/VAE, family defaults for fields left out, Forge's infotext key round-tripped through PNG Info and
the ``infotext`` field, ``/sd-modules``, and a chosen text encoder that does not fit is a clear 4xx."""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.api.conftest import served_api
from tests.fakes import make_settings
from tests.fixtures.flow_checkpoints import write_flow_library


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flow-library")
    write_flow_library(root)
    return root


@pytest.fixture()
def flow_api(tmp_path: Path, library: Path) -> Iterator[str]:
    from sdweb.services.factory import build_services

    shutil.copytree(library / "models", tmp_path / "models")
    for name in (
        "flux-dev-aio.safetensors",
        "sd35-large-aio.safetensors",
        "sd35-medium.safetensors",
        "flux-schnell-fp8.safetensors",
    ):
        (tmp_path / "models" / "Stable-diffusion" / name).unlink()  # one checkpoint per form is enough here
    services = build_services(make_settings(tmp_path))
    with served_api(services) as url:
        yield url


def request(**changes: object) -> dict[str, object]:
    return {"prompt": "a lighthouse", "width": 64, "height": 64, "seed": 3, **changes}


def test_flux_transformer_only_generates_with_modules_found_in_the_folders(flow_api: str) -> None:
    with httpx.Client(timeout=300) as client:
        models = {item["model_name"] for item in client.get(f"{flow_api}/sd-models").json()}
        assert models == {"flux-schnell", "flux-schnell-Q8_0"}
        modules = {item["model_name"]: item for item in client.get(f"{flow_api}/sd-modules").json()}
        assert modules["t5xxl_fp16.safetensors"]["slots"] == ["t5xxl"]
        assert modules["ae.safetensors"]["kind"] == "vae"
        body = client.post(
            f"{flow_api}/txt2img", json=request(override_settings={"sd_model_checkpoint": "flux-schnell"})
        )
        assert body.status_code == 200, body.text
        info = json.loads(body.json()["info"])
        # schnell's defaults for the fields left out: 4 steps, CFG 1, Euler
        assert (info["steps"], info["cfg_scale"], info["sampler_name"]) == (4, 1.0, "Euler")
        assert info["sd_vae_name"] == "ae.safetensors"
        infotext = info["infotexts"][0]
        assert "Distilled CFG Scale" not in infotext
        # Forge's keys for the module files (stems); Forge reads a "VAE" key as the whole choice
        assert "Module 1: ae, Module 2: clip_l, Module 3: t5xxl_fp16" in infotext
        assert "VAE: " not in infotext
        png = body.json()["images"][0]
        parsed = client.post(f"{flow_api}/png-info", json={"image": png}).json()["parameters"]
        assert [parsed[f"Module {i}"] for i in (1, 2, 3)] == ["ae", "clip_l", "t5xxl_fp16"]
        again = client.post(f"{flow_api}/txt2img", json={"infotext": infotext, "width": 64, "height": 64})
        assert again.status_code == 200, again.text
        assert json.loads(again.json()["info"])["infotexts"][0] == infotext
        # An infotext as Forge writes it for this model (its schedule type, its module keys, its version)
        forge = (
            "a lighthouse\nSteps: 2, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Seed: 3, "
            "Size: 64x64, Model: flux-schnell, Module 1: ae, Module 2: clip_l, Module 3: t5xxl_fp16, "
            "Version: f2.0.1v1.10.1-previous-313-g9d1b6ea5"
        )
        pasted = client.post(
            f"{flow_api}/txt2img",
            json={"infotext": forge, "override_settings": {"sd_model_checkpoint": "flux-schnell"}},
        )
        assert pasted.status_code == 200, pasted.text
        remade = json.loads(pasted.json()["info"])["infotexts"][0]
        assert "Steps: 2, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Seed: 3, Size: 64x64" in remade
        assert "Module 1: ae, Module 2: clip_l, Module 3: t5xxl_fp16" in remade
        # A Forge infotext naming a module file that is not in the folders: a clear 4xx naming it
        missing = client.post(
            f"{flow_api}/txt2img",
            json={"infotext": infotext.replace("Module 3: t5xxl_fp16", "Module 3: t5xxl_nope"),
                  "width": 64, "height": 64},
        )
        assert 400 <= missing.status_code < 500 and "t5xxl_nope" in missing.text, missing.text
        gguf = client.post(
            f"{flow_api}/txt2img",
            json=request(steps=2, override_settings={"sd_model_checkpoint": "flux-schnell-Q8_0"}),
        )
        assert gguf.status_code == 200, gguf.text


def test_a_text_encoder_that_does_not_fit_is_a_clear_4xx(flow_api: str) -> None:
    with httpx.Client(timeout=300) as client:
        wrong = client.post(
            f"{flow_api}/txt2img",
            json=request(
                steps=2,
                override_settings={
                    "sd_model_checkpoint": "flux-schnell",
                    "forge_additional_modules": ["t5xxl_sd3_fp8_e4m3fn.safetensors"],
                },
            ),
        )
        assert 400 <= wrong.status_code < 500, wrong.text
        assert "t5xxl_sd3_fp8_e4m3fn.safetensors does not fit" in wrong.text
        missing = client.post(
            f"{flow_api}/txt2img",
            json=request(
                steps=2,
                override_settings={
                    "sd_model_checkpoint": "flux-schnell",
                    "forge_additional_modules": ["nope.safetensors"],
                },
            ),
        )
        assert 400 <= missing.status_code < 500 and "nope.safetensors" in missing.text


def test_flux_dev_infotext_round_trips_distilled_cfg_through_png_info(tmp_path: Path, library: Path) -> None:
    from sdweb.services.factory import build_services

    ckpt = tmp_path / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    shutil.copy(library / "models" / "Stable-diffusion" / "flux-dev-aio.safetensors", ckpt)
    services = build_services(make_settings(tmp_path))
    with served_api(services) as url, httpx.Client(timeout=300) as client:
        made = client.post(f"{url}/txt2img", json=request(steps=2, distilled_cfg_scale=5.5))
        assert made.status_code == 200, made.text
        info = json.loads(made.json()["info"])
        infotext = info["infotexts"][0]
        assert "CFG scale: 1, Distilled CFG Scale: 5.5, Seed: 3" in infotext
        png = made.json()["images"][0]
        with Image.open(io.BytesIO(base64.b64decode(png))) as image:
            assert image.info["parameters"] == infotext
        parsed = client.post(f"{url}/png-info", json={"image": png}).json()
        assert str(parsed["parameters"]["Distilled CFG Scale"]) == "5.5"
        again = client.post(f"{url}/txt2img", json={"infotext": infotext, "width": 64, "height": 64})
        assert again.status_code == 200, again.text
        assert json.loads(again.json()["info"])["infotexts"][0] == infotext


def test_sd35_gguf_transformer_generates_through_the_api(tmp_path: Path, library: Path) -> None:
    from safetensors.torch import load_file

    from sdweb.services.factory import build_services
    from tests.fixtures.flow_checkpoints import write_gguf

    shutil.copytree(library / "models" / "text_encoder", tmp_path / "models" / "text_encoder")
    shutil.copytree(library / "models" / "VAE", tmp_path / "models" / "VAE")
    ckpt = tmp_path / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    # city96's SD 3.5 GGUF files hold the bare MMDiT keys; this one is the tiny Medium, quantized to Q8_0
    mmdit = load_file(str(library / "models" / "Stable-diffusion" / "sd35-medium.safetensors"))
    write_gguf(
        {k.removeprefix("model.diffusion_model."): v for k, v in mmdit.items()},
        ckpt / "sd3.5_medium-Q8_0.gguf",
        arch="sd3",
    )
    services = build_services(make_settings(tmp_path))
    with served_api(services) as url, httpx.Client(timeout=300) as client:
        models = client.get(f"{url}/sd-models").json()
        assert [item["model_name"] for item in models] == ["sd3.5_medium-Q8_0"]
        made = client.post(
            f"{url}/txt2img",
            json=request(steps=2, cfg_scale=4, negative_prompt="blurry", sampler_name="Euler"),
        )
        assert made.status_code == 200, made.text
        info = json.loads(made.json()["info"])
        assert info["sd_model_name"] == "sd3.5_medium-Q8_0"
        assert "Negative prompt: blurry" in info["infotexts"][0]
        with Image.open(io.BytesIO(base64.b64decode(made.json()["images"][0]))) as image:
            assert image.size == (64, 64) and len(set(image.getdata())) > 1  # a picture, not a flat fill

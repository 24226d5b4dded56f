"""Model upscalers through the API with the real engine: a tiny random ESRGAN (RRDBNet) file in
models/ESRGAN upscales an Extras image and the hires fix first pass; without spandrel the same request
is a 422 naming the fix. The spandrel tests run only where the optional ``upscalers`` extra imports."""

from __future__ import annotations

import base64
import contextlib
import io
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from sdweb.engine.upscalers import spandrel_problem
from tests.api.conftest import served_api
from tests.engine.test_upscalers import rrdbnet_state_dict
from tests.fakes import make_settings

SPANDREL_PROBLEM = spandrel_problem()
needs_spandrel = pytest.mark.skipif(
    SPANDREL_PROBLEM is not None,
    reason=f"spandrel (the optional 'upscalers' extra) is not importable: {SPANDREL_PROBLEM}")


@pytest.fixture()
def start_real_api(tmp_path: Path, tiny_checkpoint: Path) -> Iterator[Callable[[], str]]:
    """Starts the API around the real services and engine, with ``4x-Tiny.pth`` in models/ESRGAN."""
    from sdweb.services.factory import build_services

    with contextlib.ExitStack() as servers:

        def start() -> str:
            settings = make_settings(tmp_path)
            settings.paths.ckpt_dirs[0].mkdir(parents=True)
            shutil.copy(tiny_checkpoint, settings.paths.ckpt_dirs[0] / tiny_checkpoint.name)
            settings.paths.esrgan_dir.mkdir(parents=True)
            torch.save(rrdbnet_state_dict(), settings.paths.esrgan_dir / "4x-Tiny.pth")
            services = build_services(settings)  # the real engine factory
            return servers.enter_context(served_api(services))

        yield start


def _png(size: tuple[int, int]) -> str:
    buffer = io.BytesIO()
    Image.radial_gradient("L").resize(size).convert("RGB").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _size(b64: str) -> tuple[int, int]:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        return image.size


@needs_spandrel
def test_extras_upscale_with_an_esrgan_file(start_real_api: Callable[[], str]) -> None:
    base = start_real_api()
    with httpx.Client(timeout=300) as client:
        listed = client.get(f"{base}/upscalers").json()
        assert listed[-1]["name"] == "4x-Tiny"
        response = client.post(f"{base}/extra-single-image", json={
            "image": _png((40, 24)), "upscaler_1": "4x-Tiny", "upscaling_resize": 2})
    assert response.status_code == 200, response.text
    assert _size(response.json()["image"]) == (80, 48)


@needs_spandrel
def test_hires_fix_with_an_esrgan_file(start_real_api: Callable[[], str]) -> None:
    base = start_real_api()
    with httpx.Client(timeout=300) as client:
        response = client.post(f"{base}/txt2img", json={
            "prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64, "seed": 5, "enable_hr": True,
            "hr_upscaler": "4x-Tiny", "hr_scale": 1.5, "denoising_strength": 0.5})
    assert response.status_code == 200, response.text
    assert _size(response.json()["images"][0]) == (96, 96)
    assert "Hires upscaler: 4x-Tiny" in response.text


def test_without_spandrel_the_real_server_answers_422_with_the_fix(
        start_real_api: Callable[[], str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "spandrel", None)
    base = start_real_api()
    with httpx.Client(timeout=300) as client:
        response = client.post(f"{base}/extra-single-image", json={
            "image": _png((40, 24)), "upscaler_1": "4x-Tiny", "upscaling_resize": 2})
    assert response.status_code == 422, response.text
    assert "pip install 'sdweb[upscalers]'" in response.text

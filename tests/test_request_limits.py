"""Request limits on the real app and a real server: bodies over --max-body-mb get 413 before anything is
read or queued (API requests and UI uploads, declared or chunked); too many init images or ControlNet units
get 422 naming the limit, and no job is queued."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from sdweb.cli import UsageError, build_parser, settings_from_args
from tests.fakes import FakeEngine, make_services
from tests.test_host_check import served_app


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, FakeEngine]]:
    engine = FakeEngine()
    with served_app(tmp_path_factory.mktemp("limits"), engine=engine, max_body_mb=1) as url:
        yield url, engine


def _png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _too_large(answer: httpx.Response) -> None:
    assert answer.status_code == 413, answer.text
    detail = answer.json()["detail"]
    assert "limit of 1 MB" in detail and "--max-body-mb" in detail


def test_api_body_over_the_limit_is_413_and_nothing_is_queued(server: tuple[str, FakeEngine]) -> None:
    url, engine = server
    request = {"prompt": "x", "steps": 1, "width": 64, "height": 64,
               "init_images": ["A" * (1024 * 1024 + 10)]}
    _too_large(httpx.post(f"{url}/sdapi/v1/img2img", json=request, timeout=30))
    assert engine.calls == []
    assert httpx.get(f"{url}/sdapi/v1/progress", timeout=30).json()["state"]["job_count"] == 0


def test_a_chunked_body_is_cut_off_at_the_limit(server: tuple[str, FakeEngine]) -> None:
    url, engine = server

    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "x", "init_images": ["'
        for _ in range(40):
            yield b"A" * 65536
        yield b'"]}'

    answer = httpx.post(f"{url}/sdapi/v1/img2img", content=chunks(),
                        headers={"Content-Type": "application/json"}, timeout=30)
    _too_large(answer)
    assert engine.calls == []


def test_ui_upload_over_the_limit_is_413(server: tuple[str, FakeEngine]) -> None:
    url, _engine = server
    files = {"files": ("big.png", b"\x89PNG" + b"\0" * (1024 * 1024 + 10), "image/png")}
    _too_large(httpx.post(f"{url}/gradio_api/upload", files=files, timeout=30))


def test_a_body_under_the_limit_is_served(server: tuple[str, FakeEngine]) -> None:
    url, engine = server
    request = {"prompt": "x", "steps": 1, "width": 64, "height": 64, "init_images": [_png()]}
    answer = httpx.post(f"{url}/sdapi/v1/img2img", json=request, timeout=60)
    assert answer.status_code == 200, answer.text
    assert len(engine.calls) == 1


def test_too_many_init_images_or_units_name_the_limit_before_queueing(server: tuple[str, FakeEngine]) -> None:
    url, engine = server
    before = len(engine.calls)
    image = _png()
    many = httpx.post(f"{url}/sdapi/v1/img2img", json={"prompt": "x", "init_images": [image] * 17},
                      timeout=30)
    assert many.status_code == 422 and "init_images" in many.text and "16" in many.text, many.text
    unit = {"enabled": True, "module": "none", "model": "None", "image": image}
    units = httpx.post(f"{url}/sdapi/v1/txt2img", timeout=30, json={
        "prompt": "x", "alwayson_scripts": {"controlnet": {"args": [unit] * 17}}})
    assert units.status_code == 422 and "at most 16 units" in units.text, units.text
    assert len(engine.calls) == before


def test_max_body_flag() -> None:
    assert settings_from_args(build_parser().parse_args([])).max_body_mb == 64
    assert settings_from_args(build_parser().parse_args(["--max-body-mb", "200"])).max_body_mb == 200
    with pytest.raises(UsageError, match="--max-body-mb"):
        settings_from_args(build_parser().parse_args(["--max-body-mb", "0"]))


def test_default_limit_lets_a_big_request_through(tmp_path: Path) -> None:
    services, _engine = make_services(tmp_path, engine=FakeEngine())
    assert services.settings.max_body_mb == 64
    services.worker.close()

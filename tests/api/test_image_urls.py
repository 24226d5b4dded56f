"""Images given by http(s) URL (A1111 accepts them in init_images): fetched from a real HTTP server on
127.0.0.1, which is allowed only with --api-allow-local-requests; without it (the default, A1111's
api_forbid_local_requests) the API refuses to reach this machine or the LAN. Size, time and redirects
are limited."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from sdweb.api.image_urls import ImageUrlError, check_address, fetch_image_bytes, is_image_url
from tests.api.conftest import ApiServer


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 32), colour).save(buffer, format="PNG")
    return buffer.getvalue()


class _Handler(BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/slow.png":
            time.sleep(3)
        status, headers, body = self.routes.get(self.path, (404, {}, b"not here"))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def image_server() -> Iterator[str]:
    """An HTTP server on 127.0.0.1 with a few images, redirects and a big file."""
    _Handler.routes = {
        "/green.png": (200, {"Content-Type": "image/png"}, _png((0, 200, 0))),
        "/moved.png": (302, {"Location": "/green.png"}, b""),
        "/big.png": (200, {}, b"\0" * 5000),
        "/slow.png": (200, {}, _png((1, 2, 3))),
        "/loop.png": (302, {"Location": "/loop.png"}, b""),
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_init_images_by_url_are_fetched_when_local_requests_are_allowed(
    start_api: Callable[..., ApiServer], image_server: str
) -> None:
    api = start_api(api_allow_local_requests=True)
    response = api.post(
        "img2img",
        json={
            "init_images": [f"{image_server}/moved.png"],
            "steps": 2,
            "width": 48,
            "height": 32,
            "denoising_strength": 0,
        },
    )
    assert response.status_code == 200, response.text
    (init,) = api.engine.init_images[-1]
    assert init.size == (48, 32) and init.getpixel((0, 0)) == (0, 200, 0)


def test_local_urls_are_refused_by_default(api: ApiServer, image_server: str) -> None:
    for url in (f"{image_server}/green.png", "http://localhost:9/x.png", "http://[::1]:9/x.png"):
        response = api.post("img2img", json={"init_images": [url], "steps": 2, "width": 64, "height": 64})
        assert response.status_code == 400, response.text
        detail = response.json()["detail"]
        assert detail.startswith("init_images[0]: the URL") and "local address" in detail
        assert "--api-allow-local-requests" in detail
    assert api.engine.init_images == []


def test_urls_can_be_switched_off_with_a1111s_setting(
    start_api: Callable[..., ApiServer], image_server: str
) -> None:
    api = start_api(api_allow_local_requests=True, config={"api_enable_requests": False})
    response = api.post("img2img", json={"init_images": [f"{image_server}/green.png"], "steps": 2})
    assert response.status_code == 400 and "api_enable_requests" in response.json()["detail"]


def test_a_bad_url_is_a_400_saying_why(start_api: Callable[..., ApiServer], image_server: str) -> None:
    api = start_api(api_allow_local_requests=True)
    for path, words in [
        ("/nothing.png", "HTTP 404"),
        ("/big.png", "not an image"),
        ("/loop.png", "redirects"),
    ]:
        response = api.post("img2img", json={"init_images": [image_server + path], "steps": 2})
        assert response.status_code == 400, response.text
        assert words in response.json()["detail"]


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.10",
        "172.16.5.5",
        "169.254.169.254",
        "::1",
        "fe80::1",
        "fc00::5",
        "::ffff:127.0.0.1",
        "0.0.0.0",
        "100.64.0.1",
    ],
)
def test_non_global_addresses_are_refused(address: str) -> None:
    with pytest.raises(ImageUrlError, match="local address"):
        check_address(address, "example")


def test_public_addresses_pass() -> None:
    check_address("93.184.215.14", "example.com")
    check_address("2606:4700:4700::1111", "one.one.one.one")


def test_fetch_limits(image_server: str) -> None:
    assert fetch_image_bytes(f"{image_server}/green.png", allow_local=True).startswith(b"\x89PNG")
    with pytest.raises(ImageUrlError, match="more than the limit of 1,000"):
        fetch_image_bytes(f"{image_server}/big.png", allow_local=True, max_bytes=1000)
    started = time.monotonic()
    with pytest.raises(ImageUrlError, match="no answer within 0.5 s"):
        fetch_image_bytes(f"{image_server}/slow.png", allow_local=True, timeout=0.5)
    assert time.monotonic() - started < 2.5
    with pytest.raises(ImageUrlError, match="only http and https"):
        fetch_image_bytes("ftp://example.com/x.png")
    with pytest.raises(ImageUrlError, match="local address"):  # the check comes before any connection
        fetch_image_bytes(f"{image_server}/green.png")


def test_only_http_urls_are_taken_for_urls() -> None:
    assert is_image_url("https://example.com/a.png") and is_image_url("  HTTP://x/y")
    assert not is_image_url("data:image/png;base64,iVBOR") and not is_image_url("iVBORw0KGgo=")

"""The server serves generated outputs (and gradio's own files), never an arbitrary path.

Every route that reads a file is asked for the config, the history database, a checkpoint, a file of
the checkout and /etc/passwd: by absolute path, through ``..`` from outputs/, percent-encoded and
double-encoded. Requests are sent raw (``http.client``) so no client normalises the ``..`` away.
"""

from __future__ import annotations

import http.client
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from PIL import Image

from tests.ui.conftest import RunningServer, serve

REFUSED = {400, 401, 403, 404, 405, 422}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serve(tmp_path_factory.mktemp("files")) as running:
        running.services.options.update({"jpeg_quality": 81})  # config.json exists
        yield running


def get(server: RunningServer, raw_path: str) -> tuple[int, bytes]:
    netloc = urlsplit(server.url).netloc
    connection = http.client.HTTPConnection(netloc, timeout=10)
    try:
        connection.request("GET", raw_path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def secrets(server: RunningServer) -> dict[str, Path]:
    paths = server.services.settings.paths
    return {
        "config": paths.config_file,
        "history": paths.history_db,
        "checkpoint": next(paths.ckpt_dirs[0].glob("*.safetensors")),
        "checkout": Path(__file__).resolve().parents[2] / "pyproject.toml",
        "passwd": Path("/etc/passwd"),
    }


def variants(target: Path, outputs: Path) -> list[str]:
    """Ways to name ``target`` in a URL path: absolute, through ``..``, encoded, double-encoded."""
    absolute = str(target)
    relative = os.path.relpath(target, outputs)
    via_outputs = f"{outputs}/{relative}"
    names = [
        absolute,
        relative,
        via_outputs,
        quote(absolute, safe=""),
        quote(relative, safe=""),
        quote(quote(relative, safe=""), safe=""),
        relative.replace("/", "%2f").replace("..", "%2e%2e"),
        absolute.replace("/", "//"),
        "file://" + absolute,
    ]
    return names


ROUTES = [
    "/gradio_api/file={}",
    "/gradio_api/file/{}",
    "/file={}",
    "/static/{}",
    "/assets/{}",
    "/svelte/{}",
    "/gradio_api/proxy={}",
    "/gradio_api/custom_component/x/client/js/{}",
]


def test_files_outside_outputs_are_never_served(server: RunningServer) -> None:
    outputs = server.services.settings.paths.outputs_dir
    served: list[str] = []
    for name, target in secrets(server).items():
        content = target.read_bytes()[:64]
        assert content, name
        for route in ROUTES:
            for variant in variants(target, outputs):
                path = route.format(variant)
                if not path.startswith("/"):
                    path = "/" + path
                status, body = get(server, path)
                if status not in REFUSED or content in body:
                    served.append(f"{path} -> {status}")
    assert served == []


def test_a_generated_image_is_served(server: RunningServer) -> None:
    saved = server.services.images.save(Image.new("RGB", (8, 8), (1, 2, 3)), infotext="x", seed=1)
    status, body = get(server, "/gradio_api/file=" + quote(str(saved)))
    assert status == 200 and body == saved.read_bytes()

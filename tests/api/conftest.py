"""A real uvicorn server on 127.0.0.1 serving the API around the real services and a FakeEngine.

``start_api(**settings)`` starts one (settings such as ``api_auth`` go to LaunchSettings); ``api`` is the
default one. Each server has its own temporary data folder and is stopped after the test.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from tests.fakes import FakeEngine, make_services, write_fake_checkpoint


@dataclass
class ApiServer:
    base_url: str
    services: Any
    engine: FakeEngine
    client: httpx.Client

    def url(self, path: str) -> str:
        return f"{self.base_url}/sdapi/v1/{path.lstrip('/')}"

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(self.url(path), **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.post(self.url(path), **kwargs)


def build_app(services: Any) -> FastAPI:
    """The app the server runs with ``--nowebui``: the real assembly, without the Gradio UI."""
    from sdweb.cli import create_app

    return create_app(services, api=True, webui=False)


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the server runs in a thread of the test process
        pass


@contextlib.contextmanager
def served_api(services: Any, app: FastAPI | None = None) -> Iterator[str]:
    """Serve ``services`` (``--nowebui``; or ``app`` built around them) with uvicorn on a free loopback
    port; yields the /sdapi/v1 URL. The worker is closed when the block ends."""
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    app = build_app(services) if app is None else app
    server = _Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "the API server did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/sdapi/v1"
    finally:
        server.should_exit = True
        thread.join(10)
        services.worker.close()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny SD1 checkpoint for the session: writing it (torch) costs more than a whole API test."""
    return write_fake_checkpoint(tmp_path_factory.mktemp("checkpoint"))


@pytest.fixture()
def start_api(tmp_path: Path, tiny_checkpoint: Path) -> Iterator[Callable[..., ApiServer]]:
    started: list[tuple[_Server, threading.Thread, ApiServer]] = []

    def start(*, engine: FakeEngine | None = None, **settings: Any) -> ApiServer:
        root = tmp_path / f"data{len(started)}"
        models = root / "models" / "Stable-diffusion"
        models.mkdir(parents=True)
        shutil.copy(tiny_checkpoint, models / tiny_checkpoint.name)
        services, fake = make_services(root, engine=engine or FakeEngine(), with_checkpoint=False, **settings)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit this; without it every request waits ~40 ms (Nagle vs delayed ACK).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(build_app(services), log_level="warning", lifespan="off")
        server = _Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the test API server did not start")
            time.sleep(0.01)
        base_url = f"http://127.0.0.1:{port}"
        api = ApiServer(base_url, services, fake, httpx.Client(timeout=60))
        started.append((server, thread, api))
        return api

    yield start
    for server, thread, api in started:
        api.client.close()
        server.should_exit = True
        thread.join(10)
        api.services.worker.close()


@pytest.fixture()
def api(start_api: Callable[..., ApiServer]) -> ApiServer:
    return start_api()

"""The Host check (DNS rebinding guard): the real app (UI + API) on a real uvicorn server answers 403 to
requests for a name that is not this server's, on every kind of route, and serves its own names."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sdweb.api.hosts import HostPolicy, host_name
from sdweb.cli import build_parser, create_app, settings_from_args
from tests.fakes import FakeEngine, make_services


@contextlib.contextmanager
def served_app(root: Path, *, engine: FakeEngine | None = None, **settings: Any) -> Iterator[str]:
    """The app as ``webui.py --api`` builds it (UI + API, FakeEngine) on a real uvicorn server."""
    import uvicorn

    services, _engine = make_services(root, engine=engine or FakeEngine(), api=True, **settings)
    app = create_app(services, api=True, webui=True)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        services.worker.close(timeout=2)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served_app(tmp_path_factory.mktemp("hosts"), allowed_hosts=("studio.lan", ".example.org")) as url:
        yield url


ROUTES = [
    ("GET", "/", None),  # the UI page
    ("GET", "/config", None),  # gradio's config
    ("POST", "/gradio_api/queue/join", {"data": [], "fn_index": 0, "session_hash": "x"}),  # the queue
    ("GET", "/gradio_api/queue/data?session_hash=x", None),  # its event stream
    ("GET", "/sdapi/v1/options", None),  # the API
    ("POST", "/sdapi/v1/txt2img", {"prompt": "a red circle", "steps": 1, "width": 64, "height": 64}),
    ("GET", "/docs", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[path for _m, path, _b in ROUTES])
def test_a_foreign_host_gets_403_on_every_route(server: str, method: str, path: str, body: Any) -> None:
    with httpx.Client(timeout=30) as client:
        answer = client.request(method, server + path, json=body, headers={"Host": "evil.example:7860"})
    assert answer.status_code == 403
    detail = answer.json()["detail"]
    assert "'evil.example' is not allowed" in detail and "--allowed-hosts evil.example" in detail


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LocalHost:7860", "app.localhost", "[::1]:7860",
                                  "127.0.0.3", "studio.lan", "STUDIO.lan.", "cams.example.org", "example.org",
                                  socket.gethostname()])
def test_own_names_loopback_and_allowed_hosts_are_served(server: str, host: str) -> None:
    with httpx.Client(timeout=30) as client:
        assert client.get(f"{server}/sdapi/v1/options", headers={"Host": host}).status_code == 200
        assert client.get(f"{server}/", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "notexample.org", "studio.lan.evil.example", "10.1.2.3",
                                  "192.168.1.77:7860", "localhost.evil.example"])
def test_lookalike_names_and_other_addresses_are_refused(server: str, host: str) -> None:
    assert httpx.get(f"{server}/sdapi/v1/options", headers={"Host": host}, timeout=30).status_code == 403


def test_a_websocket_for_a_foreign_host_is_refused(server: str) -> None:
    port = int(server.rsplit(":", 1)[1])

    def handshake(host: str) -> str:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall((f"GET /gradio_api/queue/join HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                          "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                          "Sec-WebSocket-Version: 13\r\n\r\n").encode())
            return sock.recv(4096).decode("latin-1").split("\r\n", 1)[0]

    assert " 403 " in handshake("evil.example")
    assert " 403 " not in handshake("127.0.0.1")  # ours goes past the check (to whatever the route says)


def test_star_turns_the_check_off(tmp_path: Path) -> None:
    with served_app(tmp_path, allowed_hosts=("*",)) as url:
        answer = httpx.get(f"{url}/sdapi/v1/options", headers={"Host": "proxy.example"}, timeout=30)
        assert answer.status_code == 200


def test_in_process_test_client_is_let_through_but_not_its_name_from_a_socket() -> None:
    policy = HostPolicy((), machine=(set(), set()))
    assert policy.allows("testserver", client="testclient")
    assert not policy.allows("testserver", client="192.168.1.20")
    assert policy.allows("192.168.1.5:7860", server="192.168.1.5", client="192.168.1.20")  # came in on it
    assert not policy.allows("192.168.1.6", server="192.168.1.5")
    assert policy.allows("::ffff:127.0.0.1") and host_name("[FE80::1]:7860") == "fe80::1"


def test_allowed_hosts_flag() -> None:
    settings = settings_from_args(build_parser().parse_args(["--allowed-hosts", "Studio.LAN, .example.org,"]))
    assert settings.allowed_hosts == ("studio.lan", ".example.org")
    assert settings_from_args(build_parser().parse_args([])).allowed_hosts == ()

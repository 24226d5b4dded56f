"""UI test fixtures: the real service container with a fake engine, served by a real uvicorn server.

:func:`serve` starts the app the way the command line does (``sdweb.cli.create_app``, gradio mounted
at "/") on a free loopback port in a background thread, and stops it afterwards.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fakes import FakeEngine, make_services

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_app(services: Any) -> Any:
    """The app as ``webui.py`` builds it; a bare mount while the CLI's pieces are not all there."""
    try:
        from sdweb.cli import create_app

        return create_app(services, api=False)
    except ImportError:
        import gradio as gr
        from fastapi import FastAPI

        from sdweb.ui.app import build_ui, mount_kwargs

        auth = list(services.settings.gradio_auth) or None
        return gr.mount_gradio_app(
            FastAPI(), build_ui(services), path="/", auth=auth, **mount_kwargs(services)
        )


@dataclass
class RunningServer:
    url: str
    services: Any
    engine: FakeEngine
    root: Path


def real_engine_services(root: Path, *, demo_only: bool = False, **settings: Any) -> Any:
    """The real services and the real engine (torch), with the tiny SD1 checkpoint loaded; with
    ``demo_only``, a fresh install instead: no checkpoint of the user's, the bundled demo model loaded."""
    from sdweb.services.factory import build_services
    from tests.fakes import make_settings, write_fake_checkpoint

    if demo_only:
        settings["skip_demo_model"] = False
    launch = make_settings(root, **settings)
    if not demo_only:
        write_fake_checkpoint(launch.paths.ckpt_dirs[0])
    services = build_services(launch)
    services.models.load_selected(wait=True)  # as the server does once the page is up
    return services


@contextlib.contextmanager
def serve(
    root: Path, *, step_delay: float = 0.0, real_engine: bool = False, **settings: Any
) -> Iterator[RunningServer]:
    """Build services in ``root`` (FakeEngine, or the real one) and serve the app until the block ends."""
    import uvicorn

    if real_engine:
        services, engine = real_engine_services(root, **settings), FakeEngine()  # engine unused
    else:
        services, engine = make_services(root, engine=FakeEngine(step_delay=step_delay), **settings)
    app = make_app(services)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1)
    )
    thread = threading.Thread(target=server.run, name="ui-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield RunningServer(url=f"http://127.0.0.1:{port}", services=services, engine=engine, root=root)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        services.worker.close(timeout=2)


@contextlib.contextmanager
def opened_page(browser: Any, url: str, *, timeout_ms: int) -> Iterator[Any]:
    """A fresh browser context on ``url``, once the txt2img form is on the page."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        page.set_default_timeout(timeout_ms)
        page.goto(url)
        page.wait_for_selector("#txt2img-prompt textarea")
        yield page
    finally:
        context.close()

"""``webui.py`` in a process of its own, for the benchmarks and the tests that need a real server.

One harness for every caller that starts the real server (``benchmarks/load.py``, ``benchmarks/startup.py``,
``tests/test_load.py``, ``tests/api/test_crash_safety.py``, ``tests/test_startup.py``), so how the server
is started, waited for and stopped is written once: a free loopback port, deliberate threading
(one torch thread, passive OpenMP waits), readiness polled on a URL, and a stop that either lets the
server shut down (``terminate``) or kills it the way a crash would (``kill``: SIGKILL).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import httpx

ROOT = Path(__file__).resolve().parent.parent

#: What every server started here runs with: one torch thread, passive OpenMP waits (two spinning
#: threads ran 2x slower than one on a busy 2-core machine), no Gradio analytics call.
SERVER_ENV = {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
              "GRADIO_ANALYTICS_ENABLED": "False"}


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(log: Path | None) -> str:
    if log is None or not log.is_file():
        return ""
    return ": " + log.read_text(errors="replace")[-3000:]


def wait_until_ready(process: subprocess.Popen[bytes], url: str, *, timeout: float,
                     log: Path | None = None) -> None:
    """Poll ``url`` until it answers 200; RuntimeError (with the log's tail) if the server exits first or
    ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}{_log_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not answer within {timeout:.0f} s{_log_tail(log)}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)


def stop_server(process: subprocess.Popen[bytes], how: Literal["terminate", "kill"]) -> None:
    """``terminate``: SIGTERM, then SIGKILL after 20 s; ``kill``: SIGKILL at once (a crash)."""
    if process.poll() is None:
        if how == "kill":
            process.kill()
        else:
            process.terminate()
            try:
                process.wait(20)
                return
            except subprocess.TimeoutExpired:
                process.kill()
    process.wait(30)


@contextlib.contextmanager
def running_server(data: Path, *, args: Sequence[str] = ("--nowebui",), log: Path | None = None,
                   stop: Literal["terminate", "kill"] = "terminate", timeout: float = 180,
                   ready_path: str = "/sdapi/v1/sd-models") -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``webui.py --data-dir data --port <free> *args`` until the block ends; yields (process, API URL).

    ``log``: where the server's output goes (appended), else nowhere. The block starts once
    ``ready_path`` answers 200; the yielded URL is the ``/sdapi/v1`` base.
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(log, "ab") if log is not None else contextlib.nullcontext(subprocess.DEVNULL) as out:
        process = subprocess.Popen([sys.executable, str(ROOT / "webui.py"), "--data-dir", str(data),
                                    "--port", str(port), *args],
                                   stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                   env={**os.environ, **SERVER_ENV})
    try:
        wait_until_ready(process, base + ready_path, timeout=timeout, log=log)
        yield process, f"{base}/sdapi/v1"
    finally:
        stop_server(process, stop)

"""Suite-wide test set-up: no network, deliberate CPU threading, shared fixtures.

* Outbound sockets to anything but loopback are refused: a test that reaches a hub fails loudly.
* torch gets one thread with a passive OpenMP wait policy: on a 2-core CI box, two spinning
  threads ran 2x slower than one whenever anything else used the CPU (see README, Performance).
"""

from __future__ import annotations

import ipaddress
import os
import socket

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

import pytest  # noqa: E402

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_create_connection = socket.create_connection


class NetworkBlockedError(RuntimeError):
    """Raised when a test tries to reach a non-loopback address."""


def _is_loopback(address: object) -> bool:
    if isinstance(address, tuple) and address:
        host = str(address[0])
    elif isinstance(address, (str, bytes)):
        return True  # AF_UNIX paths
    else:
        return False
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _guarded_connect(self: socket.socket, address: object) -> None:
    if not _is_loopback(address):
        raise NetworkBlockedError(f"tests must not reach the network (tried {address!r})")
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: object) -> int:
    if not _is_loopback(address):
        raise NetworkBlockedError(f"tests must not reach the network (tried {address!r})")
    return _real_connect_ex(self, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]


@pytest.fixture(autouse=True, scope="session")
def _torch_threads() -> None:
    """One torch thread per test process, chosen on purpose (see module docstring)."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


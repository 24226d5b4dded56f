"""Starting or joining the Ray cluster safely: token auth, loopback by default, no dashboard.

Ray runs whatever code a client that reaches its ports sends, so:

* every sdweb cluster uses Ray's token authentication (``RAY_AUTH_MODE=token``) with one token, made
  once under the data folder (``cluster/ray_token``, owner-only permissions) and never printed;
* ``--workers local`` starts a Ray instance whose node address is 127.0.0.1, where Ray binds its ports to
  loopback only (Ray picks the LAN address unless told otherwise; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
  is the switch that makes it pick loopback); the dashboard is never started;
* reaching other PCs (``webui.py worker --lan``) is always an explicit choice (``node``).

Nothing here imports Ray at module level: :func:`connect` does, after the environment is set.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: The token file, relative to the data folder.
TOKEN_FILE = Path("cluster") / "ray_token"
#: Ray reads this at import: "0" makes it use 127.0.0.1 as the node address (and bind loopback only).
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class ClusterSetupError(Exception):
    """The cluster cannot be started or joined; the message says what to do."""


@dataclass(frozen=True)
class ClusterRequest:
    """What the command line asked for: local workers (with a count, or one per GPU) or an address."""

    local_workers: int | None = None  # 0 = one per GPU (at least one)
    address: str | None = None

    @property
    def local(self) -> bool:
        return self.local_workers is not None


def parse_workers(text: str) -> int:
    """``--workers local`` (one per GPU, else one) or ``local:N``: the worker count (0 = per GPU)."""
    kind, _sep, count = text.partition(":")
    if kind != "local":
        raise ValueError(
            f"--workers must be 'local' or 'local:N', got {text!r}; to use other PCs give "
            "--ray-address HOST:PORT (see docs/multi-gpu.md)"
        )
    if not count:
        return 0
    if not count.isdigit() or not 1 <= int(count) <= 64:
        raise ValueError(f"--workers local:N needs N between 1 and 64, got {count!r}")
    return int(count)


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> ``(host, port)``; ValueError with the expected form otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"--ray-address must look like HOST:PORT (e.g. 192.168.1.10:6379), got {text!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ensure_token(data_dir: Path, *, create: bool) -> Path:
    """The cluster token file under ``data_dir``, made once (owner-only) when ``create``."""
    path = data_dir / TOKEN_FILE
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if os.name == "posix" and mode & 0o077:
            path.chmod(0o600)  # a copied token must not stay readable by other users
            logger.warning("%s was readable by other users; it is now owner-only (600)", path)
        return path
    if not create:
        raise ClusterSetupError(
            f"no cluster token at {path}: copy cluster/ray_token from the data folder of "
            "the PC that runs the head (see docs/multi-gpu.md)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secrets.token_hex(32))
    logger.info("made the cluster token %s (owner-only)", path)
    return path


def auth_environment(token: Path) -> dict[str, str]:
    """Environment for every Ray process of an sdweb cluster: token auth, no usage reporting."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0"}


def connect(request: ClusterRequest, data_dir: Path) -> Any:
    """Start a local Ray instance or join ``request.address``; return the imported ``ray`` module."""
    token = ensure_token(data_dir, create=request.local)
    os.environ.update(auth_environment(token))
    init: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False, "namespace": "sdweb"}
    if request.local:
        os.environ[LOOPBACK_SWITCH] = "0"
        # "local": always a new instance, never the cluster a 'ray start' on this PC left recorded.
        init.update(address="local", include_dashboard=False)
    else:
        assert request.address is not None
        host, port = parse_address(request.address)
        if host in ("127.0.0.1", "localhost"):
            os.environ[LOOPBACK_SWITCH] = "0"
        elif is_loopback(host):
            init["_node_ip_address"] = host  # a loopback alias (127.0.0.2 ...): this PC's node is there
        init["address"] = f"{host}:{port}"
    try:
        import ray
    except ImportError as exc:
        raise ClusterSetupError("Ray is not installed: pip install 'sdweb[cluster]'") from exc
    try:
        ray.init(**init)
    except Exception as exc:
        where = request.address or "a local Ray instance"
        raise ClusterSetupError(f"could not start or join {where}: {exc}") from exc
    logger.info("joined Ray cluster (%s)", "local" if request.local else request.address)
    return ray

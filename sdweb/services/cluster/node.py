"""``webui.py worker``: offer this PC's GPUs to an sdweb cluster, by running ``ray start`` for you.

``--head`` starts the cluster's head node (on the PC that runs the web UI); ``--join HOST:PORT`` adds
this PC to it. Both run ``ray start --block`` with: token authentication (the data folder's token), no
dashboard, the ``sdweb_worker`` resource that tells the server to start workers here, this PC's data
folder for the workers (``SDWEB_DATA_DIR``) and fixed ports from ``--port-base`` so a firewall rule can
name them (docs/multi-gpu.md). Without ``--lan`` the head binds to loopback only; reaching other PCs
needs ``--lan ADDRESS`` (this PC's address on the LAN), always given on purpose.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sdweb.services.cluster.actor import DATA_DIR_ENV
from sdweb.services.cluster.connect import (
    LOOPBACK_SWITCH,
    ClusterSetupError,
    auth_environment,
    ensure_token,
    is_loopback,
    parse_address,
)
from sdweb.services.cluster.pool import WORKER_RESOURCE

logger = logging.getLogger(__name__)

DEFAULT_HEAD_PORT = 6379


@dataclass(frozen=True)
class NodeRequest:
    data_dir: Path
    head: bool = False
    join: str | None = None
    lan: str | None = None
    port: int = DEFAULT_HEAD_PORT
    port_base: int = 6380
    workers: int = 1  # worker slots on a PC without GPUs (with GPUs: one per GPU)
    num_cpus: int | None = None


def node_command(request: NodeRequest) -> tuple[list[str], dict[str, str]]:
    """The ``ray start`` command line and the environment for it; ClusterSetupError for a bad request."""
    if request.head == bool(request.join):
        raise ClusterSetupError("give either --head (this PC runs the web UI) or --join HOST:PORT")
    env = dict(os.environ)
    token = ensure_token(request.data_dir, create=request.head)
    env.update(auth_environment(token))
    env[DATA_DIR_ENV] = str(request.data_dir)
    argv = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--disable-usage-stats"]
    if request.head:
        argv += ["--head", f"--port={request.port}", "--include-dashboard=false"]
        if request.lan is None:
            env[LOOPBACK_SWITCH] = "0"  # node address 127.0.0.1: Ray binds loopback only
        else:
            argv.append(f"--node-ip-address={request.lan}")
    else:
        assert request.join is not None
        host, port = parse_address(request.join)
        if request.lan is None:
            raise ClusterSetupError(
                "joining a head needs --lan ADDRESS (this PC's address on the network the "
                "head can reach); see docs/multi-gpu.md"
            )
        if is_loopback(host) != is_loopback(request.lan):
            raise ClusterSetupError(
                "--join and --lan must both be LAN addresses (or both loopback for a test)"
            )
        argv += [f"--address={host}:{port}", f"--node-ip-address={request.lan}"]
    base = request.port_base
    argv += [
        f"--node-manager-port={base + 1}",
        f"--object-manager-port={base + 2}",
        f"--runtime-env-agent-port={base + 3}",
        f"--dashboard-agent-grpc-port={base + 4}",
        f"--dashboard-agent-listen-port={base + 5}",
        f"--metrics-export-port={base + 6}",
        f"--min-worker-port={base + 100}",
        f"--max-worker-port={base + 199}",
        "--resources=" + json.dumps({WORKER_RESOURCE: request.workers}),
    ]
    if request.num_cpus is not None:
        argv.append(f"--num-cpus={request.num_cpus}")
    return argv, env


def run_node(request: NodeRequest) -> int:
    """Run the node in the foreground until Ctrl+C; returns ``ray start``'s exit status."""
    argv, env = node_command(request)
    try:
        import ray  # noqa: F401 - only to say clearly when the extra is missing
    except ImportError as exc:
        raise ClusterSetupError("Ray is not installed: pip install 'sdweb[cluster]'") from exc
    role = "head" if request.head else f"worker joining {request.join}"
    print(f"Starting the sdweb cluster {role} (models from {request.data_dir}); Ctrl+C stops it.", flush=True)
    if request.head:
        where = request.lan or "127.0.0.1"
        print(f"Web UI on this PC: python webui.py --ray-address {where}:{request.port}", flush=True)
        if request.lan:
            print(
                f"Other PCs: python webui.py worker --join {request.lan}:{request.port} --lan THEIR_ADDRESS "
                f"(after copying {request.data_dir / 'cluster' / 'ray_token'} to their data folder)",
                flush=True,
            )
    try:
        return subprocess.call(argv, env=env)
    except KeyboardInterrupt:
        return 130

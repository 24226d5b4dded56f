"""sdweb on a real Ray cluster: a head and two worker nodes, each a separate ``webui.py worker`` process.

Everything runs on loopback addresses (127.0.0.2 for the head, .3 and .4 for the worker nodes: Ray
turns 127.0.0.1 into the LAN address for a multi-node cluster, other loopback addresses it keeps), CPU
only; the ``sdweb_worker`` resource stands in for GPUs. Node A has the tiny SD1 checkpoint in its own
models folder, node B has not; both have the bundled demo model. One cluster is shared by the module's
tests (they run in file order: the last one kills a node).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sdweb.config import DataPaths, LaunchSettings
from sdweb.params import GenerationParams
from sdweb.services.cluster.connect import ensure_token

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
HEAD_IP, NODE_A_IP, NODE_B_IP, STRANGER_IP = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"
#: Fast node-failure detection for the test (Ray's default takes tens of seconds).
HEALTH_CHECKS = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def _ports_free(ports: list[int]) -> bool:
    for port in ports:
        with socket.socket() as probe:
            try:
                probe.bind(("0.0.0.0", port))  # noqa: S104 - probing only
            except OSError:
                return False
    return True


def _free_base(taken: set[int]) -> int:
    for base in range(21000 + (os.getpid() % 200) * 100, 60000, 250):
        ports = [base, *range(base + 1, base + 7), *range(base + 100, base + 200)]
        if not taken & set(ports) and _ports_free(ports):
            taken.update(ports)
            return base
    raise RuntimeError("no free port range")


@dataclass
class Node:
    argv: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, *, wait: bool = False) -> Node:
        """Start the node; with ``wait``, until ``ray start`` says it runs (nodes started at the same
        moment on one machine race for the session's socket names)."""
        handle = self.log.open("ab")
        seen = self.log.read_text(errors="replace").count("Ray runtime started")
        self.process = subprocess.Popen(
            self.argv, env=self.env, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 120
        while wait and time.monotonic() < deadline:
            if self.log.read_text(errors="replace").count("Ray runtime started") > seen:
                break
            if self.process.poll() is not None:
                raise AssertionError(f"{self.argv} exited:\n{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        return self

    def kill(self) -> None:
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # the node's raylet and its workers with it
            except ProcessLookupError:
                pass
            self.process.wait(30)


@dataclass
class Cluster:
    services: Any
    root: Path
    head_port: int
    nodes: dict[str, Node] = field(default_factory=dict)
    taken: set[int] = field(default_factory=set)

    def workers(self) -> dict[str, Any]:
        """Live workers by node address."""
        return {
            status.host.rsplit("(", 1)[-1].rstrip(")"): status
            for status in self.services.generation.workers()
            if status.state != "lost"
        }

    def wait_workers(self, addresses: set[str], timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = self.workers()
            if all(address in live and live[address].state == "idle" for address in addresses):
                return
            time.sleep(0.3)
        logs = "\n".join(node.log.read_text(errors="replace")[-2000:] for node in self.nodes.values())
        raise AssertionError(
            f"workers {addresses} not idle in time: {self.services.generation.workers()}\n{logs}"
        )


def _node(root: Path, data_dir: Path, *args: str, port_base: int, log: str) -> Node:
    argv = [
        sys.executable,
        "webui.py",
        "--data-dir",
        str(data_dir),
        "worker",
        *args,
        f"--port-base={port_base}",
        "--num-cpus=1",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **HEALTH_CHECKS}
    return Node(argv, env, root / log)


def _data_dir(path: Path, *, tiny: Path | None, token: Path) -> Path:
    (path / "models" / "Stable-diffusion").mkdir(parents=True)
    if tiny is not None:
        shutil.copy(tiny, path / "models" / "Stable-diffusion" / tiny.name)
    (path / "cluster").mkdir()
    shutil.copy(token, path / "cluster" / "ray_token")
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from sdweb.services.factory import build_services
    from tests.fixtures.checkpoints import write_tiny_sd1

    root = tmp_path_factory.mktemp("cluster")
    server = root / "server"
    tiny = write_tiny_sd1(server / "models" / "Stable-diffusion" / "tiny-sd1.safetensors")
    token = ensure_token(server, create=True)
    node_a = _data_dir(root / "node-a", tiny=tiny, token=token)
    node_b = _data_dir(root / "node-b", tiny=None, token=token)
    taken: set[int] = set()
    head_port = _free_base(taken)
    nodes = {
        "head": _node(
            root,
            server,
            "--head",
            f"--lan={HEAD_IP}",
            f"--head-port={head_port}",
            "--node-workers=0",
            port_base=_free_base(taken),
            log="head.log",
        ),
        NODE_A_IP: _node(
            root,
            node_a,
            f"--join={HEAD_IP}:{head_port}",
            f"--lan={NODE_A_IP}",
            port_base=_free_base(taken),
            log="node-a.log",
        ),
        NODE_B_IP: _node(
            root,
            node_b,
            f"--join={HEAD_IP}:{head_port}",
            f"--lan={NODE_B_IP}",
            port_base=_free_base(taken),
            log="node-b.log",
        ),
    }
    services = None
    try:
        nodes["head"].start(wait=True)
        nodes[NODE_A_IP].start(wait=True)
        nodes[NODE_B_IP].start(wait=True)
        settings = LaunchSettings(
            paths=DataPaths.from_root(server), ray_address=f"{HEAD_IP}:{head_port}", threads=1
        )
        services = build_services(settings, load_extensions=False)
        found = Cluster(services=services, root=root, head_port=head_port, nodes=nodes, taken=taken)
        found.wait_workers({NODE_A_IP, NODE_B_IP})
        yield found
    finally:
        if services is not None:
            services.generation._workers.close(timeout=2)
        try:
            import ray

            ray.shutdown()
        except Exception:
            pass
        for node in nodes.values():
            node.kill()


def _params(**changes: Any) -> GenerationParams:
    base = {
        "prompt": "a red circle",
        "steps": 6,
        "width": 64,
        "height": 64,
        "seed": 1234,
        "sampler_name": "Euler",
        "checkpoint": "sdweb-demo-shapes.safetensors",
    }
    return GenerationParams(**{**base, **changes})


def test_local_workers_bind_loopback_with_a_token_and_run_jobs(tmp_path: Path) -> None:
    # --workers local in a fresh interpreter (this process joins the test cluster below).
    script = textwrap.dedent(f"""
        import stat, sys, time
        from pathlib import Path
        from sdweb.cli import build_parser, settings_from_args
        from sdweb.services.factory import build_services
        from sdweb.params import GenerationParams
        args = ["--data-dir", {str(tmp_path)!r}, "--workers", "local:1", "--threads", "1"]
        services = build_services(settings_from_args(build_parser().parse_args(args)), load_extensions=False)
        import ray
        assert {{n["NodeManagerAddress"] for n in ray.nodes()}} == {{"127.0.0.1"}}, ray.nodes()
        assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
        token = Path({str(tmp_path)!r}) / "cluster" / "ray_token"
        assert stat.S_IMODE(token.stat().st_mode) == 0o600
        result = services.generation.generate(GenerationParams(prompt="x", steps=2, width=64, height=64,
                                              seed=5, n_iter=2, checkpoint="sdweb-demo-shapes.safetensors"))
        assert result.seeds == [5, 6], result.seeds
        [worker] = services.generation.workers()
        assert worker.jobs_done == 1 and worker.host.endswith("(127.0.0.1)"), worker
        print("OK")
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0 and "OK" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]


def test_jobs_go_to_a_worker_that_has_or_holds_the_model(cluster: Cluster) -> None:
    generation = cluster.services.generation
    # Only node A has the tiny checkpoint in its models folder: the job ends up there.
    tiny = generation.generate(_params(checkpoint="tiny-sd1.safetensors", prompt="tiny"), save=False)
    assert len(tiny.images) == 1
    workers = cluster.workers()
    assert workers[NODE_A_IP].model.startswith("tiny-sd1.safetensors")
    done_a = workers[NODE_A_IP].jobs_done
    # The demo model: A is busy holding the tiny one, so the least recently used (B) loads it ...
    generation.generate(_params(), save=False)
    assert cluster.workers()[NODE_B_IP].model.startswith("sdweb-demo-shapes")
    # ... and afterwards each model's jobs go where it is already held.
    generation.generate(_params(checkpoint="tiny-sd1.safetensors", prompt="tiny again"), save=False)
    generation.generate(_params(prompt="demo again"), save=False)
    workers = cluster.workers()
    assert workers[NODE_A_IP].jobs_done == done_a + 1
    assert workers[NODE_A_IP].model.startswith("tiny-sd1.safetensors")
    assert workers[NODE_B_IP].model.startswith("sdweb-demo-shapes")
    # A worker that lacks the file says so (B, if it was asked) and is not asked again.
    lacking = [w for w in generation.workers() if w.last_error and "no checkpoint" in w.last_error]
    assert all(NODE_B_IP in w.host for w in lacking)


def test_batches_split_across_workers_equal_a_single_workers(cluster: Cluster, tmp_path: Path) -> None:
    from sdweb.services.factory import build_services

    generation = cluster.services.generation
    before = {address: status.jobs_done for address, status in cluster.workers().items()}
    params = _params(n_iter=4, seed=777, prompt="a blue square")
    split = generation.generate(params, save=False)
    after = cluster.workers()
    assert all(after[address].jobs_done == before[address] + 1 for address in (NODE_A_IP, NODE_B_IP))

    # The same request on the in-process worker of a plain sdweb.
    single = build_services(
        LaunchSettings(paths=DataPaths.from_root(tmp_path), threads=1), load_extensions=False
    )
    try:
        alone = single.generation.generate(params, save=False)
    finally:
        single.worker.close(timeout=1)
    assert split.seeds == alone.seeds == [777, 778, 779, 780]
    assert split.infotexts == alone.infotexts
    for ours, theirs in zip(split.images, alone.images, strict=True):
        assert np.array_equal(np.asarray(ours), np.asarray(theirs))


def test_split_jobs_save_each_range_once_in_batch_order(cluster: Cluster) -> None:
    # Each worker's range is handed to the service as soon as it (and the ranges before it) came back:
    # saved once, in batch order, with the same infotexts and one history row, as an in-process job.
    from PIL import Image

    result = cluster.services.generation.generate(_params(n_iter=4, seed=900, prompt="a green star"))
    assert result.seeds == [900, 901, 902, 903]
    assert [Path(path).name.split("-", 1)[1] for path in result.paths] == [f"{s}.png" for s in result.seeds]
    assert len(set(result.paths)) == 4
    for path, infotext in zip(result.paths, result.infotexts, strict=True):
        with Image.open(path) as image:
            assert image.info["parameters"] == infotext
    entry = cluster.services.history.get(result.history_id)
    assert entry is not None and list(entry.output_paths) == result.paths
    assert list(entry.seeds) == result.seeds


def test_progress_and_interrupt_reach_remote_jobs(cluster: Cluster) -> None:
    generation = cluster.services.generation
    job = generation.submit(_params(steps=150, width=128, height=128, n_iter=6, prompt="long"), save=False)
    deadline = time.monotonic() + 60
    while generation.progress(job).preview is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert generation.progress(job).sampling_step >= 5  # steps of a remote job are seen here
    assert generation.progress(job).preview is not None  # and its live preview
    generation.interrupt(job.id)
    result = job.wait(60)
    assert result.interrupted
    assert len(result.images) < 6


def test_skip_reaches_remote_jobs(cluster: Cluster) -> None:
    generation = cluster.services.generation
    job = generation.submit(_params(steps=150, width=128, height=128, prompt="skipped"), save=False)
    deadline = time.monotonic() + 60
    while generation.progress(job).sampling_step < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert generation.skip(job.id)
    result = job.wait(60)
    # The one batch was dropped on its worker long before its 150 steps; the job itself was not stopped.
    assert not result.interrupted and result.images == []
    assert generation.progress(job).sampling_step < 150


def test_a_node_without_the_token_is_refused(cluster: Cluster) -> None:
    stranger = cluster.root / "stranger"
    (stranger / "cluster").mkdir(parents=True)
    ensure_token(stranger, create=True)  # a token of its own, not the cluster's
    node = _node(
        cluster.root,
        stranger,
        f"--join={HEAD_IP}:{cluster.head_port}",
        f"--lan={STRANGER_IP}",
        port_base=_free_base(cluster.taken),
        log="stranger.log",
    ).start()
    try:
        import ray

        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and "InvalidAuthToken" not in node.log.read_text(errors="replace"):
            assert (
                node.process is not None
                and node.process.poll() is None
                or "InvalidAuthToken" in node.log.read_text(errors="replace")
            ), node.log.read_text(errors="replace")[-3000:]
            time.sleep(0.3)
        assert "InvalidAuthToken" in node.log.read_text(errors="replace")  # the head said no
        addresses = {n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}
        assert STRANGER_IP not in addresses
        assert not any(STRANGER_IP in status.host for status in cluster.services.generation.workers())
    finally:
        node.kill()


def test_a_worker_killed_mid_job_is_retried_elsewhere_and_used_again_when_back(cluster: Cluster) -> None:
    generation = cluster.services.generation
    history_before = cluster.services.history.count()
    # Long enough that the kill lands mid-job on a quiet machine too (40 steps finished before it).
    params = _params(steps=150, width=128, height=128, prompt="a green triangle", seed=4242)
    job = generation.submit(params)
    deadline = time.monotonic() + 60
    while generation.progress(job).sampling_step < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    busy = [address for address, status in cluster.workers().items() if status.busy]
    assert len(busy) == 1
    victim = busy[0]
    cluster.nodes[victim].kill()

    result = job.wait(180)  # detected, then run again on the other worker with the same seed
    assert result.seeds == [4242]
    assert len(result.paths) == 1 and Path(result.paths[0]).exists()
    assert cluster.services.history.count() == history_before + 1  # recorded once
    # Shown as lost with a reason: the actor's error, or "node ... left the cluster" when Ray's node scan
    # noticed first (which one wins is a race).
    lost = [status for status in generation.workers() if status.state == "lost" and victim in status.host]
    assert lost and lost[-1].last_error, generation.workers()
    again = generation.generate(params, save=False)  # the same request gives the same image
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(result.images[0]))

    # The node comes back: a new worker starts there and takes jobs again.
    cluster.nodes[victim].start(wait=True)
    cluster.wait_workers({NODE_A_IP, NODE_B_IP})
    before = cluster.workers()[victim].jobs_done
    generation.generate(_params(n_iter=2, seed=99, prompt="back"), save=False)
    assert cluster.workers()[victim].jobs_done == before + 1

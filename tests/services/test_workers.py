"""The job-worker interface in its in-process form, and the Ray-free parts of the cluster support.

Without ``--workers`` / ``--ray-address`` sdweb must never import Ray (checked in a fresh interpreter);
the affinity rules, the seed-range split, the token file and the ``ray start`` command line are checked
here without a cluster (tests/services/cluster/ runs the real one).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sdweb.params import GenerationParams
from sdweb.services.cluster.affinity import SlotView, Wanted, part_params, rank_workers, split_iterations
from sdweb.services.cluster.connect import (
    ClusterSetupError,
    ensure_token,
    parse_address,
    parse_workers,
)
from sdweb.services.cluster.node import NodeRequest, node_command
from sdweb.services.workers import JobNeeds
from tests.fakes import FakeEngine, make_services

REPO = Path(__file__).resolve().parents[2]


def test_in_process_worker_reports_its_jobs_and_last_error(tmp_path: Path) -> None:
    services, engine = make_services(tmp_path)
    generation = services.generation
    [before] = generation.workers()
    assert (before.id, before.state, before.jobs_done) == ("local", "idle", 0)

    generation.generate(GenerationParams(prompt="one", steps=2, width=64, height=64, seed=3))
    engine.fail_with = RuntimeError("the card fell out")
    with pytest.raises(Exception, match="the card fell out"):
        generation.generate(GenerationParams(prompt="two", steps=2, width=64, height=64, seed=4))

    [after] = generation.workers()
    assert after.jobs_done == 1
    assert after.last_error == "the card fell out"
    assert after.as_dict()["busy"] is False


def test_busy_while_a_job_runs(tmp_path: Path) -> None:
    services, _engine = make_services(tmp_path, engine=FakeEngine(step_delay=0.05))
    job = services.generation.submit(GenerationParams(prompt="slow", steps=20, width=64, height=64, seed=1))
    deadline = 0
    while job.progress.state != "running" and deadline < 200:
        import time

        time.sleep(0.01)
        deadline += 1
    assert services.generation.workers()[0].busy
    job.wait(30)
    assert not services.generation.workers()[0].busy


def test_without_cluster_flags_ray_is_never_imported(tmp_path: Path) -> None:
    # A fresh interpreter: the test process itself may have imported Ray for other tests.
    script = textwrap.dedent(f"""
        import sys
        from sdweb.cli import build_parser, settings_from_args
        from sdweb.services.factory import build_services
        from sdweb.params import GenerationParams
        from tests.fakes import FakeEngine
        settings = settings_from_args(build_parser().parse_args(["--data-dir", {str(tmp_path)!r}]))
        services = build_services(settings, engine_factory=lambda s: FakeEngine(), load_extensions=False)
        services.generation.generate(GenerationParams(prompt="x", steps=2, width=64, height=64, seed=1,
                                                      checkpoint=services.models.selected_title()))
        assert services.generation.workers()[0].jobs_done == 1
        prefixes = ("ray.", "sdweb.services.cluster")
        leaked = sorted(name for name in sys.modules if name == "ray" or name.startswith(prefixes))
        print("LEAKED", leaked)
        sys.exit(1 if leaked else 0)
    """)
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_affinity_prefers_the_holder_then_the_least_recently_used() -> None:
    idle = [
        SlotView("a", "sha-x", None, frozenset(), last_used=5.0),
        SlotView("b", None, None, frozenset(), last_used=1.0),
        SlotView("c", "sha-y", None, frozenset({"detail"}), last_used=3.0),
    ]
    assert [s.id for s in rank_workers(idle, Wanted("sha-x"))] == ["a", "b", "c"]
    # Nobody holds it: the least recently used idle worker loads it.
    assert rank_workers(idle, Wanted("sha-z"))[0].id == "b"
    # Same checkpoint nowhere, but one holds the job's LoRA.
    assert rank_workers(idle, Wanted("sha-z", loras=frozenset({"detail"})))[0].id == "c"
    # A worker that said it lacks the file is never chosen for it.
    lacking = [SlotView("a", None, None, frozenset(), 0.0, lacks=frozenset({"sha-x"}))]
    assert rank_workers(lacking, Wanted("sha-x")) == []


def test_batches_split_by_seed_range_in_order() -> None:
    assert split_iterations(5, 2) == [(0, 3), (3, 2)]
    assert split_iterations(2, 4) == [(0, 1), (1, 1)]
    assert split_iterations(1, 3) == [(0, 1)]
    params = GenerationParams(prompt="p", seed=100, subseed=7, batch_size=2, n_iter=5)
    second = part_params(params, 3, 2)
    # Batch 3 of a single run starts at seed 100 + 3 * 2: the same images, made elsewhere.
    assert (second.seed, second.subseed, second.n_iter) == (106, 13, 2)
    with pytest.raises(ValueError, match="resolve the seeds"):
        part_params(GenerationParams(prompt="p", n_iter=2), 1, 1)


def test_job_needs_name_checkpoint_loras_and_batches() -> None:
    needs = JobNeeds.of(
        GenerationParams(prompt="cat <lora:detail:0.5> <lora:ink:1>", n_iter=3), "m.safetensors"
    )
    assert needs == JobNeeds(checkpoint="m.safetensors", vae=None, loras=("detail", "ink"), parallel=3)


def test_cluster_token_is_made_once_owner_only(tmp_path: Path) -> None:
    token = ensure_token(tmp_path, create=True)
    text = token.read_text()
    assert len(text) == 64
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert ensure_token(tmp_path, create=True).read_text() == text  # never regenerated
    token.chmod(0o644)
    ensure_token(tmp_path, create=False)
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    with pytest.raises(ClusterSetupError, match="copy cluster/ray_token"):
        ensure_token(tmp_path / "other", create=False)


def test_flags_are_checked_without_ray() -> None:
    assert parse_workers("local") == 0
    assert parse_workers("local:2") == 2
    for bad in ("remote", "local:0", "local:x"):
        with pytest.raises(ValueError, match="--workers"):
            parse_workers(bad)
    assert parse_address("192.168.1.10:6379") == ("192.168.1.10", 6379)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address("192.168.1.10")


def test_cli_refuses_bad_cluster_flags(tmp_path: Path) -> None:
    from sdweb.cli import main

    assert main(["--data-dir", str(tmp_path), "--workers", "gpu", "models"]) == 2
    assert main(["--data-dir", str(tmp_path), "--workers", "local", "--ray-address", "h:1", "models"]) == 2


def test_head_is_loopback_only_with_token_and_no_dashboard(tmp_path: Path) -> None:
    argv, env = node_command(NodeRequest(data_dir=tmp_path, head=True))
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN_PATH"] == str(tmp_path / "cluster" / "ray_token")
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"  # node address 127.0.0.1: loopback binding
    assert "--include-dashboard=false" in argv
    assert not any(arg.startswith("--node-ip-address") for arg in argv)
    argv, env = node_command(NodeRequest(data_dir=tmp_path, head=True, lan="192.168.1.10"))
    assert "--node-ip-address=192.168.1.10" in argv  # the LAN only when asked for, by address


def test_joining_needs_the_lan_flag_and_the_token(tmp_path: Path) -> None:
    with pytest.raises(ClusterSetupError, match="copy cluster/ray_token"):
        node_command(NodeRequest(data_dir=tmp_path, join="192.168.1.10:6379", lan="192.168.1.11"))
    ensure_token(tmp_path, create=True)
    with pytest.raises(ClusterSetupError, match="--lan"):
        node_command(NodeRequest(data_dir=tmp_path, join="192.168.1.10:6379"))
    argv, _env = node_command(NodeRequest(data_dir=tmp_path, join="192.168.1.10:6379", lan="192.168.1.11"))
    assert "--address=192.168.1.10:6379" in argv and "--node-ip-address=192.168.1.11" in argv

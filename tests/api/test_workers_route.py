"""``GET /sdapi/v1/workers``: the workers jobs run on, as the Workers view shows them."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from sdweb.params import GenerationParams
from tests.api.conftest import build_app
from tests.fakes import make_services


def test_workers_route_lists_the_in_process_worker_and_its_jobs(tmp_path: Path) -> None:
    services, engine = make_services(tmp_path)
    client = TestClient(build_app(services))  # the app the server builds, with --api

    [before] = client.get("/sdapi/v1/workers").json()
    assert before["id"] == "local" and before["state"] == "idle" and before["jobs_done"] == 0
    services.generation.generate(GenerationParams(prompt="x", steps=2, width=64, height=64, seed=1))
    engine.fail_with = RuntimeError("CUDA error: device lost")
    try:
        services.generation.generate(GenerationParams(prompt="y", steps=2, width=64, height=64, seed=2))
    except Exception:
        pass
    [after] = client.get("/sdapi/v1/workers").json()
    assert after["jobs_done"] == 1
    assert after["busy"] is False
    assert after["last_error"] == "CUDA error: device lost"

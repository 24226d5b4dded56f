"""``GET /sdapi/v1/workers``: the workers jobs run on, as the Workers view shows them."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from sdweb.api.workers import add_worker_routes
from sdweb.params import GenerationParams
from tests.fakes import make_services


def test_workers_route_lists_the_in_process_worker_and_its_jobs(tmp_path: Path) -> None:
    services, engine = make_services(tmp_path)
    router = APIRouter()
    add_worker_routes(router, services)
    app = FastAPI()
    app.include_router(router, prefix="/sdapi/v1")
    client = TestClient(app)

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

"""The Workers view's table: one row per worker with host, device, model, state, jobs and last error."""

from __future__ import annotations

from pathlib import Path

from sdweb.params import GenerationParams
from sdweb.ui.tabs.workers import HEADERS, worker_rows
from tests.fakes import make_services


def test_rows_show_each_worker_and_what_it_did(tmp_path: Path) -> None:
    services, _engine = make_services(tmp_path)
    services.generation.generate(GenerationParams(prompt="x", steps=2, width=64, height=64, seed=1))
    [row] = worker_rows(services)
    shown = dict(zip(HEADERS, row, strict=True))
    assert shown["Worker"] == "local"
    assert shown["State"] == "idle"
    assert shown["Jobs done"] == 1
    assert shown["Last error"] == ""

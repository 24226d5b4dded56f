"""Progress, interrupt and skip from a second connection while a slow job runs."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from PIL import Image

from tests.api.conftest import ApiServer
from tests.fakes import FakeEngine


def run_in_background(api: ApiServer, body: dict[str, Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """POST txt2img on its own connection; the answer lands in the returned dict."""
    answer: dict[str, Any] = {}

    def post() -> None:
        with httpx.Client(timeout=60) as client:
            response = client.post(api.url("txt2img"), json=body)
            answer["status"] = response.status_code
            answer["body"] = response.json()

    thread = threading.Thread(target=post)
    thread.start()
    return thread, answer


def poll(api: ApiServer, until: Callable[[dict[str, Any]], bool], timeout: float = 20,
         **params: Any) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = api.get("progress", params=params).json()
        if "state" in progress and until(progress):  # a forced task id is unknown until it is queued
            return progress
        time.sleep(0.01)
    raise AssertionError(f"progress never reached the expected state; last: {progress}")


def test_idle_progress_is_zero(api: ApiServer) -> None:
    progress = api.get("progress").json()
    assert progress["progress"] == 0 and progress["eta_relative"] == 0
    assert progress["state"]["job_count"] == 0 and progress["current_image"] is None


def test_progress_from_a_second_connection_while_a_job_runs(start_api) -> None:
    api = start_api(engine=FakeEngine(step_delay=0.02))
    # long enough (150 steps, 3 s) for a slow machine to see it run; interrupted once checked
    thread, answer = run_in_background(api, {"steps": 150, "width": 64, "height": 64, "seed": 9})
    running = poll(api, lambda p: p["state"]["sampling_step"] >= 2)
    assert 0 < running["progress"] < 1
    assert running["state"]["sampling_steps"] == 150 and running["state"]["job_count"] == 1
    assert running["state"]["job"] == "txt2img" and running["eta_relative"] > 0
    assert "step" in running["textinfo"]
    # a live preview arrives every show_progress_every_n_steps (5) steps
    with_preview = poll(api, lambda p: p["current_image"] is not None)
    Image.open(io.BytesIO(base64.b64decode(with_preview["current_image"]))).load()
    without = api.get("progress", params={"skip_current_image": "true"}).json()
    assert without["current_image"] is None and without["state"]["sampling_steps"] == 150
    api.post("interrupt")
    thread.join(30)
    assert answer["status"] == 200
    assert api.get("progress").json()["progress"] == 0  # idle again


def test_progress_of_a_task_by_its_forced_id(start_api) -> None:
    api = start_api(engine=FakeEngine(step_delay=0.03))
    body = {"steps": 10, "width": 64, "height": 64, "force_task_id": "task-42"}
    thread, answer = run_in_background(api, body)
    running = poll(api, lambda p: p["state"]["sampling_step"] >= 1, id_task="task-42")
    assert running["state"]["job_id"] == "task-42"
    thread.join(30)
    assert answer["status"] == 200
    done = api.get("progress", params={"id_task": "task-42"}).json()
    assert done["progress"] == 1.0 and done["state"]["job"] == "done"
    assert api.get("progress", params={"id_task": "unknown"}).status_code == 404


def test_interrupt_keeps_the_finished_images(start_api) -> None:
    api = start_api(engine=FakeEngine(step_delay=0.02))
    thread, answer = run_in_background(api, {"steps": 10, "n_iter": 10, "width": 64, "height": 64,
                                              "seed": 50})
    poll(api, lambda p: p["state"]["job_no"] >= 1)  # the first batch is finished
    assert api.post("interrupt").status_code == 200
    thread.join(30)
    assert answer["status"] == 200
    info = json.loads(answer["body"]["info"])
    assert 1 <= len(answer["body"]["images"]) < 10
    assert info["all_seeds"] == list(range(50, 50 + len(answer["body"]["images"])))
    assert info["interrupted"] is True


def test_skip_drops_the_current_batch_and_goes_on(start_api) -> None:
    api = start_api(engine=FakeEngine(step_delay=0.03))
    thread, answer = run_in_background(api, {"steps": 20, "n_iter": 3, "width": 64, "height": 64,
                                              "seed": 10})
    poll(api, lambda p: p["state"]["job_no"] == 1 and p["state"]["sampling_step"] >= 1)
    assert api.post("skip").status_code == 200
    thread.join(30)
    assert answer["status"] == 200
    assert json.loads(answer["body"]["info"])["all_seeds"] == [10, 12]


def test_interrupt_and_skip_with_nothing_running_are_harmless(api: ApiServer) -> None:
    assert api.post("interrupt").json() == {}
    assert api.post("skip").json() == {}
    assert api.post("txt2img", json={"steps": 1, "width": 64, "height": 64}).status_code == 200


def test_the_live_preview_follows_samples_format_as_a1111s(start_api) -> None:
    api = start_api(engine=FakeEngine(step_delay=0.02))
    assert api.post("options", json={"samples_format": "jpg"}).status_code == 200
    thread, answer = run_in_background(api, {"steps": 150, "width": 64, "height": 64, "seed": 9})
    with_preview = poll(api, lambda p: p["current_image"] is not None)
    assert Image.open(io.BytesIO(base64.b64decode(with_preview["current_image"]))).format == "JPEG"
    api.post("interrupt")
    thread.join(30)
    assert answer["status"] == 200

"""A1111's /internal routes that clients use: /internal/ping (SillyTavern's connection check),
/internal/progress (a task followed by its id, with a data: URI preview) and /internal/pending-tasks."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from tests.api.conftest import ApiServer
from tests.api.test_progress import run_in_background
from tests.fakes import FakeEngine


def internal(api: ApiServer, path: str, body: dict[str, Any] | None = None) -> Any:
    url = f"{api.base_url}/internal/{path}"
    response = api.client.get(url) if body is None else api.client.post(url, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for(check: Callable[[], Any], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.01)
    raise AssertionError("the expected state never came")


def test_ping_answers_an_empty_object(api: ApiServer) -> None:
    assert internal(api, "ping") == {}


def test_progress_and_pending_tasks_follow_tasks_by_id(start_api: Callable[..., ApiServer]) -> None:
    # The first job is held after its first step until the second was seen queued behind it (a 2 s job
    # raced the polls below: on a busy machine it could end first, and the second would never queue).
    held = threading.Event()
    api = start_api(engine=FakeEngine(step_delay=0.02, gate=held))
    assert api.post("options", json={"show_progress_every_n_steps": 1}).status_code == 200
    assert internal(api, "pending-tasks") == {"size": 0, "tasks": []}
    first, first_answer = run_in_background(api, {"steps": 100, "width": 64, "height": 64,
                                                  "force_task_id": "task(first)"})
    try:
        running = wait_for(lambda: (found := internal(api, "progress", {"id_task": "task(first)"}))["active"]
                           and found["progress"] and found["live_preview"] and found)
        assert not running["queued"] and not running["completed"] and 0 < running["progress"] < 1
        assert running["eta"] > 0 and "step" in running["textinfo"]
        assert running["live_preview"].startswith("data:image/png;base64,")
        assert running["id_live_preview"] >= 0
        second, second_answer = run_in_background(api, {"steps": 2, "width": 64, "height": 64,
                                                        "force_task_id": "task(second)"})
        pending = wait_for(lambda: (found := internal(api, "pending-tasks"))["size"] and found)
        assert pending == {"size": 1, "tasks": ["task(second)"]}
        queued = internal(api, "progress", {"id_task": "task(second)"})
        assert queued["queued"] and not queued["active"] and queued["textinfo"] == "In queue: 1/1"
        assert api.post("interrupt").status_code == 200
    finally:
        held.set()
    first.join(30)
    second.join(30)
    assert first_answer["status"] == second_answer["status"] == 200
    done = internal(api, "progress", {"id_task": "task(second)"})
    assert done["completed"] and not done["active"] and not done["queued"]
    unknown = internal(api, "progress", {"id_task": "task(never)"})
    assert unknown == {"active": False, "queued": False, "completed": False, "progress": None, "eta": None,
                       "live_preview": None, "id_live_preview": -1, "textinfo": "Waiting..."}
    assert internal(api, "pending-tasks") == {"size": 0, "tasks": []}


def test_internal_routes_sit_behind_the_api_login(start_api: Callable[..., ApiServer]) -> None:
    api = start_api(api_auth=(("bot", "secret"),))
    assert api.client.get(f"{api.base_url}/internal/ping").status_code == 401
    assert api.client.get(f"{api.base_url}/internal/ping", auth=("bot", "secret")).json() == {}

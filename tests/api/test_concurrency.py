"""Many clients at once: every request completes with its own images and seeds, none is lost, and
requests are served in arrival order on the one GPU queue."""

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

from sdweb.params import EngineRun, GenerationParams
from tests.fakes import FakeEngine, colour_for

CLIENTS = 10
REQUESTS_PER_CLIENT = 3


def test_ten_clients_times_three_requests_all_get_their_own_images(start_api) -> None:
    api = start_api(engine=FakeEngine())
    answers: dict[tuple[int, int], httpx.Response] = {}
    start = threading.Barrier(CLIENTS)

    def client(number: int) -> None:
        with httpx.Client(timeout=120) as http:
            start.wait()
            for index in range(REQUESTS_PER_CLIENT):
                body = {"prompt": f"client {number} request {index}", "seed": 1000 * number + 10 * index,
                        "batch_size": 2, "steps": 2, "width": 64, "height": 64}
                answers[(number, index)] = http.post(api.url("txt2img"), json=body)

    threads = [threading.Thread(target=client, args=(number,)) for number in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert len(answers) == CLIENTS * REQUESTS_PER_CLIENT
    for (number, index), response in answers.items():
        assert response.status_code == 200, response.text
        body = response.json()
        prompt, seed = f"client {number} request {index}", 1000 * number + 10 * index
        info = json.loads(body["info"])
        assert info["all_seeds"] == [seed, seed + 1] and info["all_prompts"] == [prompt, prompt]
        for b64, image_seed in zip(body["images"], info["all_seeds"], strict=True):
            with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
                assert image.getpixel((0, 0)) == colour_for(image_seed, prompt)
                assert f"Seed: {image_seed}," in image.info["parameters"]
    prompts = [call.prompt for call in api.engine.calls]
    assert sorted(prompts) == sorted(f"client {n} request {i}" for n in range(CLIENTS)
                                     for i in range(REQUESTS_PER_CLIENT))
    for number in range(CLIENTS):  # each client's requests ran in the order it sent them
        own = [prompt for prompt in prompts if prompt.startswith(f"client {number} ")]
        assert own == [f"client {number} request {i}" for i in range(REQUESTS_PER_CLIENT)]


class GatedEngine(FakeEngine):
    """Holds the job with prompt "first" until ``gate`` opens, so the others queue up behind it."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.first_started = threading.Event()

    def txt2img(self, params: GenerationParams, **kwargs: Any) -> EngineRun:
        if params.prompt == "first":
            self.first_started.set()
            self.gate.wait(30)
        return super().txt2img(params, **kwargs)


def test_requests_are_served_in_arrival_order(start_api) -> None:
    engine = GatedEngine()
    api = start_api(engine=engine)
    worker = api.services.worker
    threads: list[threading.Thread] = []

    def send(prompt: str) -> None:
        with httpx.Client(timeout=60) as http:
            response = http.post(api.url("txt2img"), json={"prompt": prompt, "steps": 3, "width": 64,
                                                           "height": 64})
            assert response.status_code == 200

    def send_then_wait(prompt: str, arrived: Callable[[], bool]) -> None:
        thread = threading.Thread(target=send, args=(prompt,))
        thread.start()
        threads.append(thread)
        deadline = time.monotonic() + 10
        while not arrived():
            assert time.monotonic() < deadline, f"request {prompt!r} never reached the GPU queue"
            time.sleep(0.002)

    # The first job runs; each next one is sent once the previous one is queued behind it.
    send_then_wait("first", engine.first_started.is_set)
    for position, prompt in enumerate(["second", "third", "fourth", "fifth"], start=1):
        send_then_wait(prompt, lambda position=position: worker.queue_length >= position)
    engine.gate.set()
    for thread in threads:
        thread.join(60)
    assert [call.prompt for call in api.engine.calls] == ["first", "second", "third", "fourth", "fifth"]

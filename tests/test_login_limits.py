"""Login brute force: failed logins on the UI's login form and the API's basic auth are paused per client
address (10 a minute, then 1, 2, 4 ... 15 minutes) with a clear 429; other addresses and correct logins
that are not paused go through at once. Real server; two client addresses (127.0.0.1 and 127.0.0.2)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from sdweb.ratelimit import LoginLimiter
from tests.test_host_check import served_app


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limiter_pauses_after_ten_failures_a_minute_then_backs_off() -> None:
    clock = Clock()
    limiter = LoginLimiter(clock=clock)
    for _ in range(10):
        assert limiter.failed("a") == 0 and limiter.wait("a") == 0
    assert limiter.failed("a") == 60 and limiter.wait("a") == 60
    assert limiter.wait("b") == 0  # per address
    clock.now += 60
    assert limiter.wait("a") == 0
    for _ in range(10):
        limiter.failed("a")
    assert limiter.failed("a") == 120  # the next pause is longer
    clock.now += 120
    for _ in range(11):
        pause = limiter.failed("a")
    assert pause == 240
    limiter.succeeded("a")  # a correct login clears the record
    assert limiter.wait("a") == 0 and limiter.failed("a") == 0


def test_failures_spread_over_more_than_a_minute_are_not_paused() -> None:
    clock = Clock()
    limiter = LoginLimiter(clock=clock)
    for _ in range(30):
        assert limiter.failed("a") == 0
        clock.now += 7  # about 8.5 a minute


def test_backoff_stops_at_fifteen_minutes() -> None:
    clock = Clock()
    limiter = LoginLimiter(clock=clock)
    pauses = []
    for _ in range(7):
        for _ in range(11):
            pause = limiter.failed("a")
        pauses.append(pause)
        clock.now += pause
    assert pauses == [60, 120, 240, 480, 900, 900, 900]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served_app(tmp_path_factory.mktemp("logins"), gradio_auth=(("ann", "right-pass"),),
                    api_auth=(("bot", "api-pass"),)) as url:
        yield url


def client_from(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30)


def test_api_basic_auth_is_paused_per_address(server: str) -> None:
    with client_from("127.0.0.1") as attacker, client_from("127.0.0.2") as user:
        for _ in range(10):
            assert attacker.get(f"{server}/sdapi/v1/options", auth=("bot", "guess")).status_code == 401
        paused = attacker.get(f"{server}/sdapi/v1/options", auth=("bot", "guess"))
        assert paused.status_code == 401  # the 11th failure starts the pause...
        refused = attacker.get(f"{server}/sdapi/v1/options", auth=("bot", "api-pass"))
        assert refused.status_code == 429  # ...and then even the right password waits
        assert "too many failed logins" in refused.json()["detail"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        started = time.monotonic()
        assert user.get(f"{server}/sdapi/v1/options", auth=("bot", "api-pass")).status_code == 200
        assert time.monotonic() - started < 5  # another address, not slowed


def test_ui_login_is_paused_per_address(server: str) -> None:
    with client_from("127.0.0.3") as attacker, client_from("127.0.0.4") as user:
        for _ in range(11):
            answer = attacker.post(f"{server}/login", data={"username": "ann", "password": "guess"})
            assert answer.status_code == 400, answer.text
        refused = attacker.post(f"{server}/login", data={"username": "ann", "password": "right-pass"})
        assert refused.status_code == 429
        assert "logins are paused for" in refused.json()["detail"] and "Retry-After" in refused.headers
        good = user.post(f"{server}/login", data={"username": "ann", "password": "right-pass"})
        assert good.status_code == 200 and good.json() == {"success": True}


def test_correct_logins_are_never_counted(server: str) -> None:
    with client_from("127.0.0.5") as user:
        for _ in range(25):
            assert user.get(f"{server}/sdapi/v1/options", auth=("bot", "api-pass")).status_code == 200
        for _ in range(3):  # a few typos between good logins never add up to a pause
            assert user.get(f"{server}/sdapi/v1/options", auth=("bot", "typo")).status_code == 401
            assert user.get(f"{server}/sdapi/v1/options", auth=("bot", "api-pass")).status_code == 200


def test_the_login_page_states_the_rule(server: str) -> None:
    with client_from("127.0.0.6") as visitor:
        answer = visitor.get(f"{server}/config")  # what the login page reads before anyone logs in
    assert answer.status_code == 401
    assert "After 10 failed logins within 60 s" in answer.json()["detail"]["auth_message"], answer.text

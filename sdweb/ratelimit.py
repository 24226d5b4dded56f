"""Failed-login limiting per client address (the UI's ``--gradio-auth`` login and the API's basic auth).

An address may fail :attr:`LoginLimiter.max_failures` logins (10) within :attr:`LoginLimiter.window` (a
minute); the next failure pauses it: every login from it, right or wrong, is refused for a minute, then
two, four ... up to fifteen minutes while the failures go on. A successful login clears the address's
record, and a login that is not paused is never slowed down. Pure standard library, one instance per app
(in the service container), shared by the UI and the API.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _Record:
    failures: deque[float] = field(default_factory=deque)
    strikes: int = 0
    paused_until: float = 0.0
    last: float = 0.0


class LoginLimiter:
    """Counts failed logins per client address and says how long an address must wait.

    Args:
        max_failures: failures allowed within ``window`` seconds before a pause.
        window: the counting window, seconds.
        first_pause: the first pause, seconds; each further one doubles, up to ``max_pause``.
        clock: monotonic seconds (tests pass a fake one).
        max_tracked: addresses remembered at most (the oldest are forgotten first).
    """

    def __init__(self, *, max_failures: int = 10, window: float = 60.0, first_pause: float = 60.0,
                 max_pause: float = 900.0, clock: Callable[[], float] = time.monotonic,
                 max_tracked: int = 10_000) -> None:
        if max_failures < 1 or window <= 0 or first_pause <= 0 or max_pause < first_pause:
            raise ValueError("login limits must be positive (max_pause >= first_pause)")
        self.max_failures = max_failures
        self.window = window
        self.first_pause = first_pause
        self.max_pause = max_pause
        self._clock = clock
        self._max_tracked = max_tracked
        self._lock = threading.Lock()
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def wait(self, address: str) -> float:
        """Seconds ``address`` must still wait before its next login is looked at (0: go ahead)."""
        with self._lock:
            record = self._records.get(address)
            if record is None:
                return 0.0
            return max(0.0, record.paused_until - self._clock())

    def failed(self, address: str) -> float:
        """Record a failed login; returns the pause it starts (0 while under the limit)."""
        now = self._clock()
        with self._lock:
            record = self._records.pop(address, None) or _Record()
            self._records[address] = record  # most recent last
            while len(self._records) > self._max_tracked:
                self._records.popitem(last=False)
            if record.last and now - record.last > self.max_pause + self.window:
                record.strikes = 0  # quiet for long enough: start over
            record.last = now
            while record.failures and now - record.failures[0] > self.window:
                record.failures.popleft()
            record.failures.append(now)
            if len(record.failures) <= self.max_failures:
                return 0.0
            pause = min(self.first_pause * (2 ** record.strikes), self.max_pause)
            record.strikes += 1
            record.failures.clear()
            record.paused_until = now + pause
            return pause

    def succeeded(self, address: str) -> None:
        """A login from ``address`` worked: forget its failures."""
        with self._lock:
            self._records.pop(address, None)


def paused_message(seconds: float) -> str:
    """What a paused address is told."""
    wait = max(1, int(seconds + 0.999))
    return (f"too many failed logins from this address: logins are paused for {wait} s; "
            "check the user name and password, then try again")


def login_rule(limiter: LoginLimiter) -> str:
    """The rule in one sentence, for the login page."""
    return (f"After {limiter.max_failures} failed logins within {int(limiter.window)} s, logins from that "
            f"address are paused for {int(limiter.first_pause)} s (longer if the failures go on).")

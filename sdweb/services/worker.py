"""The single GPU worker: one thread, one FIFO queue, shared by the UI, the API and model switches.

Everything that touches the model (generation, loading, unloading) runs here, one task at a time, in
arrival order. Callers get a :class:`Task` they can wait on; queue positions are derived from the queue,
so every user sees where their own job stands.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Task(Generic[T]):
    """A unit of GPU work and its outcome."""

    def __init__(self, fn: Callable[[], T], *, label: str) -> None:
        self.fn = fn
        self.label = label
        self.seq = 0
        self._done = threading.Event()
        self._result: T | None = None
        self._error: BaseException | None = None
        self.cancelled = False

    def run(self) -> None:
        try:
            self._result = self.fn()
        except BaseException as exc:  # handed to the waiter, who decides what the user sees
            self._error = exc
        finally:
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> T:
        """Block until the task ran; re-raise its exception in the caller's thread."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"{self.label} did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]


class GpuWorker:
    """A daemon thread running queued tasks in FIFO order."""

    def __init__(self, name: str = "sdweb-gpu") -> None:
        self._queue: deque[Task[Any]] = deque()
        self._cond = threading.Condition()
        self._seq = itertools.count(1)
        self._closed = False
        self._current: Task[Any] | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], T], *, label: str = "task") -> Task[T]:
        task: Task[T] = Task(fn, label=label)
        with self._cond:
            if self._closed:
                raise RuntimeError("the server is shutting down; no new work is accepted")
            task.seq = next(self._seq)
            self._queue.append(task)
            self._cond.notify()
        return task

    def position(self, task: Task[Any]) -> int:
        """0 while running (or done), else 1 + the number of tasks ahead of it."""
        with self._cond:
            for index, queued in enumerate(self._queue):
                if queued is task:
                    return index + 1
            return 0

    def cancel(self, task: Task[Any]) -> bool:
        """Remove a task that has not started. Returns False when it already runs or ran."""
        with self._cond:
            try:
                self._queue.remove(task)
            except ValueError:
                return False
        task.cancelled = True
        task._error = RuntimeError("cancelled before it started")
        task._done.set()
        return True

    def on_worker_thread(self) -> bool:
        """Whether the caller is the worker itself (a running task): it must not wait for queued work."""
        return threading.current_thread() is self._thread

    @property
    def queue_length(self) -> int:
        with self._cond:
            return len(self._queue)

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed and not self._queue:
                    return
                task = self._queue.popleft()
                self._current = task
            try:
                task.run()
            finally:
                with self._cond:
                    self._current = None

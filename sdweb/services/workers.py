"""The job-worker interface: what runs generation jobs, whether in this process or on a Ray cluster.

DESIGN.md: "the in-process GPU worker and the Ray workers implement one small interface (submit,
progress, interrupt, health); the rest of the app cannot tell which one ran a job". This module owns
that interface and its in-process implementation:

* :class:`JobWorkers` is what :class:`~sdweb.services.generation.GenerationService` talks to. ``submit``
  queues a job in the one FIFO queue; when a worker is free the job's ``run(engine)`` is called with the
  engine of the worker chosen for it. That engine honours the job's ``JobControl`` (interrupt, skip) and
  reports each step through ``on_step`` (progress, previews), whichever process it lives in.
  ``position`` / ``cancel`` are the queue side of progress and interrupt; ``health`` lists the workers.
* :class:`LocalWorkers` is the default: the single :class:`~sdweb.services.worker.GpuWorker` thread and
  the lazily built in-process engine (``sdweb.services.cluster`` holds the Ray one, imported only when
  ``--workers`` or ``--ray-address`` asks for it).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from sdweb.params import GenerationParams
from sdweb.prompts.parser import strip_extra_networks
from sdweb.services.worker import GpuWorker, Task

logger = logging.getLogger(__name__)

T = TypeVar("T")

WorkerState = Literal["starting", "idle", "busy", "lost"]


@dataclass(frozen=True)
class JobNeeds:
    """What a job would like its worker to hold already (model affinity), and how many it could use."""

    checkpoint: str | None = None
    vae: str | None = None
    loras: tuple[str, ...] = ()
    #: Workers the job can use at once: its ``n_iter`` (batches are split across idle workers by seed).
    parallel: int = 1

    @classmethod
    def of(cls, params: GenerationParams, default_checkpoint: str | None = None) -> JobNeeds:
        _text, calls = strip_extra_networks(params.prompt)
        loras = tuple(sorted({call.name for call in calls if call.kind.lower() in ("lora", "lyco")}))
        return cls(
            checkpoint=params.checkpoint or default_checkpoint,
            vae=params.vae,
            loras=loras,
            parallel=params.n_iter,
        )


@dataclass(frozen=True)
class WorkerStatus:
    """One worker as the Workers view and ``/sdapi/v1/workers`` show it."""

    id: str
    host: str
    device: str
    state: WorkerState
    #: Title (or file name) of the checkpoint the worker holds, None before its first job.
    model: str | None = None
    jobs_done: int = 0
    last_error: str | None = None

    @property
    def busy(self) -> bool:
        return self.state == "busy"

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "host": self.host,
            "device": self.device,
            "state": self.state,
            "busy": self.busy,
            "model": self.model,
            "jobs_done": self.jobs_done,
            "last_error": self.last_error,
        }


class JobWorkers(Protocol):
    """Runs generation jobs from one FIFO queue on one or more workers."""

    def submit(self, run: Callable[[Any], T], *, label: str, needs: JobNeeds | None = None) -> Task[T]:
        """Queue ``run``; it is called with the chosen worker's engine (``EngineLike``) when one is free."""
        ...

    def position(self, task: Task[Any]) -> int:
        """0 while running (or done), else 1 + the number of jobs ahead of it."""
        ...

    def cancel(self, task: Task[Any]) -> bool:
        """Remove a job that has not started (interrupt while queued); False when it runs or ran."""
        ...

    def health(self) -> list[WorkerStatus]:
        """Every worker: host, device, model held, busy/idle, jobs done, last error."""
        ...

    def close(self, timeout: float = 5.0) -> None: ...


class LocalWorkers:
    """The in-process worker: the one GPU thread and the engine of this process."""

    def __init__(self, worker: GpuWorker, engine: Callable[[], Any]) -> None:
        self._worker = worker
        self._engine = engine
        self._lock = threading.Lock()
        self._running = 0
        self._jobs_done = 0
        self._last_error: str | None = None

    def submit(self, run: Callable[[Any], T], *, label: str, needs: JobNeeds | None = None) -> Task[T]:
        def job() -> T:
            with self._lock:
                self._running += 1
            try:
                result = run(self._engine())
            except Exception as exc:
                with self._lock:
                    self._last_error = str(exc) or type(exc).__name__
                raise
            finally:
                with self._lock:
                    self._running -= 1
            with self._lock:
                self._jobs_done += 1
            return result

        return self._worker.submit(job, label=label)

    def position(self, task: Task[Any]) -> int:
        return self._worker.position(task)

    def cancel(self, task: Task[Any]) -> bool:
        return self._worker.cancel(task)

    def health(self) -> list[WorkerStatus]:
        device, model = "not started", None
        started = getattr(self._engine, "started", True)
        if started:
            engine = self._engine()
            described = getattr(engine, "describe", None)
            device = str((described() if described is not None else {}).get("device", "local"))
            current = getattr(engine, "current_info", None)
            info = current() if current is not None else None
            model = getattr(info, "title", None)
        with self._lock:
            state: WorkerState = "busy" if self._running else "idle"
            return [
                WorkerStatus(
                    id="local",
                    host=socket.gethostname(),
                    device=device,
                    state=state,
                    model=model,
                    jobs_done=self._jobs_done,
                    last_error=self._last_error,
                )
            ]

    def close(self, timeout: float = 5.0) -> None:
        self._worker.close(timeout)

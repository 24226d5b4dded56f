"""RayWorkerPool: the one FIFO queue of the server, dispatched to worker actors on a Ray cluster.

Implements :class:`~sdweb.services.workers.JobWorkers`, so the generation service cannot tell it from
the in-process worker. Jobs wait in arrival order; a dispatcher thread gives the head of the queue to
the best idle worker (``affinity``: the one holding its checkpoint, else the least recently used) plus,
for a job with several batches, as many other idle workers as it has batches. The job then runs in a
thread of its own against a :class:`~sdweb.services.cluster.remote_engine.RemoteEngine` over those
workers, so several jobs run at once, one per worker.

Workers are found, not configured: every few seconds the pool reads the cluster's nodes and starts one
actor per GPU of each node offering the ``sdweb_worker`` resource (one per unit of that resource on a
node without GPUs; on the ``--workers local`` node, the count asked for). A node that died loses its
workers (shown as lost with the reason); a node that comes back gets new ones, which take jobs again.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sdweb.services.cluster.actor import CheckpointRef, GenerationWorker, MissingModelError, WorkRequest
from sdweb.services.cluster.affinity import SlotView, Wanted, rank_workers
from sdweb.services.worker import Task
from sdweb.services.workers import JobNeeds, WorkerState, WorkerStatus

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The custom resource a node offers to say "run sdweb workers here" (set by ``webui.py worker``).
WORKER_RESOURCE = "sdweb_worker"
#: Lost workers kept in the health list (the newest ones), so the UI can say what happened.
LOST_SHOWN = 10


@dataclass
class Slot:
    """One worker actor and what the pool knows about it."""

    id: str
    node_id: str
    host: str
    actor: Any
    ready_ref: Any = None
    device: str = "starting"
    state: WorkerState = "starting"
    checkpoint: str | None = None  # sha256 (or title) of the checkpoint it holds
    model: str | None = None
    vae: str | None = None
    loras: frozenset[str] = frozenset()
    lacks: set[str] = field(default_factory=set)
    jobs_done: int = 0
    last_error: str | None = None
    last_used: float = 0.0

    def view(self) -> SlotView:
        return SlotView(self.id, self.checkpoint, self.vae, self.loras, self.last_used, frozenset(self.lacks))

    def status(self) -> WorkerStatus:
        return WorkerStatus(
            id=self.id,
            host=self.host,
            device=self.device,
            state=self.state,
            model=self.model,
            jobs_done=self.jobs_done,
            last_error=self.last_error,
        )


@dataclass
class _Entry:
    task: Task[Any]
    needs: JobNeeds
    engine: list[Any] = field(default_factory=list)


class RayWorkerPool:
    """Worker actors on a Ray cluster behind one FIFO queue (see the module docstring)."""

    def __init__(
        self,
        ray: Any,
        *,
        resolve: Callable[[str | None], CheckpointRef],
        options: Callable[[], dict[str, Any]],
        data_dir: str | None = None,
        flags: dict[str, Any] | None = None,
        local_workers: int | None = None,
        rescan_every: float = 2.0,
        retry_wait: float = 60.0,
    ) -> None:
        """Args:
        ray: the imported ``ray`` module, already connected (``sdweb.services.cluster.connect``).
        resolve: checkpoint title (None = the selected one) -> its :class:`CheckpointRef` (sha256, size).
        options: the engine-relevant options to send with each request.
        data_dir: the data folder for workers on this machine's node (``--workers local``); None: each
            node's ``SDWEB_DATA_DIR``.
        flags: engine launch flags for the workers (precision, attention, threads ...).
        local_workers: workers to start on the node of this process (``--workers local``); None: only
            nodes offering the ``sdweb_worker`` resource get workers.
        rescan_every: seconds between looks at the cluster's nodes.
        retry_wait: how long a job whose worker died waits for another worker before it fails.
        """
        self.ray = ray
        self.resolve = resolve
        self.options = options
        self.retry_wait = retry_wait
        self._data_dir = data_dir
        self._flags = dict(flags or {})
        self._local_workers = local_workers
        self._local_node = ray.get_runtime_context().get_node_id() if local_workers else None
        self._rescan_every = rescan_every
        self._actor_cls = ray.remote(GenerationWorker)
        self._cond = threading.Condition()
        self._queue: deque[_Entry] = deque()
        self._slots: dict[str, Slot] = {}
        self._ids = itertools.count(1)
        self._waiting = 0  # retries waiting for a worker: they go before the queue
        self._closed = False
        self._last_scan = 0.0
        self._thread = threading.Thread(target=self._loop, name="sdweb-dispatch", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ JobWorkers
    def submit(self, run: Callable[[Any], T], *, label: str, needs: JobNeeds | None = None) -> Task[T]:
        entry: _Entry | None = None

        def call() -> T:
            assert entry is not None
            return run(entry.engine[0])

        task: Task[T] = Task(call, label=label)
        entry = _Entry(task=task, needs=needs or JobNeeds())
        with self._cond:
            if self._closed:
                raise RuntimeError("the server is shutting down; no new work is accepted")
            self._queue.append(entry)
            self._cond.notify_all()
        return task

    def position(self, task: Task[Any]) -> int:
        with self._cond:
            for index, entry in enumerate(self._queue):
                if entry.task is task:
                    return index + 1
            return 0

    def cancel(self, task: Task[Any]) -> bool:
        with self._cond:
            for entry in self._queue:
                if entry.task is task:
                    self._queue.remove(entry)
                    break
            else:
                return False
        task.cancelled = True
        task._error = RuntimeError("cancelled before it started")
        task._done.set()
        return True

    def health(self) -> list[WorkerStatus]:
        with self._cond:
            slots = list(self._slots.values())
        live = [slot.status() for slot in slots if slot.state != "lost"]
        lost = [slot.status() for slot in slots if slot.state == "lost"][-LOST_SHOWN:]
        return live + lost

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ used by RemoteEngine
    def acquire(
        self, ref: CheckpointRef, *, exclude: Iterable[str] = (), timeout: float = 0.0
    ) -> Slot | None:
        """An idle worker for a retried range (before queued jobs), or None when none comes in time or
        no live worker could run it (all of them said they lack the checkpoint).
        """
        key = _key(ref)
        excluded = set(exclude)
        deadline = time.monotonic() + timeout
        with self._cond:
            self._waiting += 1
            try:
                while True:
                    candidates = [
                        slot
                        for slot in self._slots.values()
                        if slot.state != "lost" and slot.id not in excluded and key not in slot.lacks
                    ]
                    if not candidates and not self._starting():
                        return None
                    idle = [slot.view() for slot in candidates if slot.state == "idle"]
                    ranked = rank_workers(idle, Wanted(key))
                    if ranked:
                        slot = self._slots[ranked[0].id]
                        slot.state = "busy"
                        return slot
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    self._cond.wait(min(left, 0.5))
            finally:
                self._waiting -= 1

    def release(
        self,
        slot: Slot,
        *,
        ran: WorkRequest | None = None,
        ref: CheckpointRef | None = None,
        error: str | None = None,
    ) -> None:
        with self._cond:
            if ran is not None and ref is not None:
                slot.checkpoint, slot.model = _key(ref), ref.title
                slot.vae = ran.params.vae if ran.params.vae is not None else ran.options.get("sd_vae")
                slot.loras = frozenset(JobNeeds.of(ran.params).loras)
                slot.jobs_done += 1
            if error is not None:
                slot.last_error = error
            if slot.state == "busy":
                slot.state = "idle"
                slot.last_used = time.monotonic()
            self._cond.notify_all()

    def mark_lacks(self, slot: Slot, ref: CheckpointRef, message: str) -> None:
        logger.warning("%s", message)
        with self._cond:
            slot.lacks.add(_key(ref))
            slot.last_error = message
        self.release(slot)

    def mark_lost(self, slot: Slot, message: str) -> None:
        logger.error("%s", message)
        with self._cond:
            slot.state = "lost"
            slot.last_error = message
            self._cond.notify_all()
        try:
            self.ray.kill(slot.actor, no_restart=True)
        except Exception:  # already gone with its node
            pass

    def preload(self, info: Any) -> Any:
        """Load a checkpoint on a worker ahead of jobs (the model list's selection). Returns ``info``."""
        ref = self.resolve(getattr(info, "title", None))
        tried: set[str] = set()
        while True:
            slot = self.acquire(ref, exclude=tried, timeout=self.retry_wait)
            if slot is None:
                raise LookupError(f"no worker could load {ref.title}: none is free, or none has the file")
            tried.add(slot.id)
            if slot.checkpoint == _key(ref):
                self.release(slot)
                return info
            try:
                self.ray.get(slot.actor.load.remote(ref))
            except MissingModelError as exc:
                self.mark_lacks(slot, ref, str(exc))
                continue
            except Exception as exc:
                self.release(slot, error=str(exc))
                raise
            with self._cond:
                slot.checkpoint, slot.model = _key(ref), ref.title
            self.release(slot)
            return info

    # ------------------------------------------------------------------ dispatching
    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                due = time.monotonic() - self._last_scan >= self._rescan_every
            if due or self._starting():
                try:
                    self._scan(full=due)
                except Exception:  # the cluster may be restarting; try again at the next scan
                    logger.exception("could not read the Ray cluster's state")
            with self._cond:
                self._dispatch()
                self._cond.wait(0.25 if self._starting() else 0.5)

    def _dispatch(self) -> None:
        """Give queued jobs to idle workers, in order (called with the lock held)."""
        while self._queue and not self._waiting:
            entry = self._queue[0]
            idle = [slot.view() for slot in self._slots.values() if slot.state == "idle"]
            if not idle:
                return
            ranked = rank_workers(
                idle, Wanted(self._wanted_key(entry.needs), entry.needs.vae, frozenset(entry.needs.loras))
            )
            if not ranked:  # every idle worker lacks the checkpoint: try them anyway, they say why
                ranked = idle
            chosen = [self._slots[view.id] for view in ranked[: max(1, entry.needs.parallel)]]
            for slot in chosen:
                slot.state = "busy"
            self._queue.popleft()
            from sdweb.services.cluster.remote_engine import RemoteEngine

            entry.engine.append(RemoteEngine(self, chosen))
            threading.Thread(
                target=self._run_entry, args=(entry, chosen), name=f"sdweb-{entry.task.label}", daemon=True
            ).start()

    def _run_entry(self, entry: _Entry, slots: list[Slot]) -> None:
        try:
            entry.task.run()
        finally:
            entry.engine[0].finish()  # workers a failed job still held go back to the pool

    def _wanted_key(self, needs: JobNeeds) -> str | None:
        try:
            return _key(self.resolve(needs.checkpoint)) if needs.checkpoint else None
        except LookupError:
            return None

    def _starting(self) -> bool:
        return any(slot.state == "starting" for slot in self._slots.values())

    # ------------------------------------------------------------------ finding workers
    def _scan(self, *, full: bool) -> None:
        ray = self.ray
        if full:
            self._last_scan = time.monotonic()
            nodes = ray.nodes()
            alive = {node["NodeID"]: node for node in nodes if node.get("Alive")}
            with self._cond:
                for slot in self._slots.values():
                    if slot.state != "lost" and slot.node_id not in alive:
                        slot.state = "lost"
                        slot.last_error = f"node {slot.host} left the cluster"
                        logger.error("worker %s: node %s left the cluster", slot.id, slot.host)
                        self._cond.notify_all()
                counts: dict[str, int] = {}
                for slot in self._slots.values():
                    if slot.state != "lost":
                        counts[slot.node_id] = counts.get(slot.node_id, 0) + 1
            for node_id, node in alive.items():
                wanted, gpu = self._wanted_on(node_id, node)
                for _ in range(wanted - counts.get(node_id, 0)):
                    self._start_actor(node_id, node, gpu)
        # Workers whose actor finished starting become idle (or lost, with the reason).
        with self._cond:
            starting = [slot for slot in self._slots.values() if slot.state == "starting"]
        if not starting:
            return
        ready, _ = ray.wait([slot.ready_ref for slot in starting], num_returns=len(starting), timeout=0)
        for slot in starting:
            if not any(slot.ready_ref == ref for ref in ready):
                continue
            try:
                described = ray.get(slot.ready_ref)
            except Exception as exc:
                message = str(getattr(exc, "cause", None) or exc).strip().splitlines()[-1:] or ["failed"]
                with self._cond:
                    slot.state, slot.last_error = "lost", f"could not start: {message[0]}"
                logger.error("worker %s on %s could not start: %s", slot.id, slot.host, exc)
                continue
            with self._cond:
                slot.device = str(described.get("device", "?"))
                slot.host = f"{described.get('host', '?')} ({slot.host})"  # name and node address
                slot.state = "idle"
                self._cond.notify_all()
            logger.info("worker %s ready on %s (%s)", slot.id, slot.host, slot.device)

    def _wanted_on(self, node_id: str, node: dict[str, Any]) -> tuple[int, bool]:
        """How many workers a node should run, and whether each takes a GPU."""
        resources = node.get("Resources") or {}
        gpus = int(resources.get("GPU", 0))
        if node_id == self._local_node and self._local_workers:
            return (self._local_workers, gpus >= self._local_workers)
        offered = int(resources.get(WORKER_RESOURCE, 0))
        if not offered:
            return (0, False)
        return (gpus, True) if gpus else (offered, False)

    def _start_actor(self, node_id: str, node: dict[str, Any], gpu: bool) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        slot_id = f"w{next(self._ids)}"
        actor = self._actor_cls.options(
            name=None,
            num_cpus=0,
            num_gpus=1 if gpu else 0,
            max_restarts=0,
            max_concurrency=4,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        ).remote(self._data_dir if node_id == self._local_node else None, self._flags)
        slot = Slot(
            id=slot_id,
            node_id=node_id,
            host=str(node.get("NodeManagerAddress") or "?"),
            actor=actor,
            ready_ref=actor.describe.remote(),
        )
        with self._cond:
            self._slots[slot_id] = slot
        logger.info("starting worker %s on %s", slot_id, slot.host)


def _key(ref: CheckpointRef) -> str:
    return ref.sha256 or ref.title


__all__ = ["RayWorkerPool", "Slot", "WORKER_RESOURCE"]

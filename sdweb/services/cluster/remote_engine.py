"""The engine a job sees when it runs on Ray workers: same calls, same results as the in-process one.

:class:`RemoteEngine` implements the service layer's ``EngineLike`` (``txt2img`` / ``img2img`` with a
``JobControl`` and an ``on_step`` callback) over the workers the pool reserved for the job:

1. The job's ``n_iter`` batches are split by seed range across those workers (``affinity``); each range is
   a request of its own, run on its worker's node, and the images come back merged in batch order,
   so they (and their infotexts) equal a single worker's.
2. While the requests run, each worker's progress (and preview) is polled and reported as the job's;
   interrupt and skip are forwarded to every worker of the job.
3. A worker that dies mid-request (process killed, PC switched off) is detected through Ray; its range
   is run again once, on another worker, with the same seeds; a second loss fails the job with a clear
   message. A worker without the checkpoint file says so, and the range goes to one that has it.

Nothing is saved or recorded here: each range's images are handed to the service (``JobControl.images_done``)
as soon as that range and every range before it came back, and the service saves them then; the rest, after
the merged run returned.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sdweb.params import EngineRun, GenerationParams, Img2ImgParams, JobControl, StepProgress
from sdweb.services.cluster.actor import CheckpointRef, MissingModelError, WorkRequest
from sdweb.services.cluster.affinity import part_params, split_iterations

if TYPE_CHECKING:
    from sdweb.services.cluster.pool import RayWorkerPool, Slot

logger = logging.getLogger(__name__)

#: Seconds between progress polls of a running request (the result itself is awaited, not polled).
POLL_SECONDS = 0.25


class WorkerLostError(RuntimeError):
    """The worker's process or node went away while it ran a request."""


@dataclass
class _Part:
    index: int
    start: int
    count: int
    slot: Slot
    steps: int  # sampling steps per batch
    done_steps: int = 0  # steps of this range done, over all its batches
    skips_sent: int = 0
    run: EngineRun | None = None


class RemoteEngine:
    """``EngineLike`` over the workers reserved for one job (see the module docstring)."""

    def __init__(self, pool: RayWorkerPool, slots: Sequence[Slot]) -> None:
        self._pool = pool
        self._slots = list(slots)
        self._held: dict[str, Slot] = {slot.id: slot for slot in slots}  # not yet given back
        self._lock = threading.Lock()
        self._skips = 0
        self._preview: Any = None

    # -- EngineLike ----------------------------------------------------------------------------
    def txt2img(
        self,
        params: GenerationParams,
        *,
        control: JobControl,
        on_step: Callable[[StepProgress], None],
        preview_every: int = 0,
    ) -> EngineRun:
        return self._run("txt2img", params, (), None, control, on_step, preview_every)

    def img2img(
        self,
        params: Img2ImgParams,
        init_images: Sequence[Any],
        *,
        control: JobControl,
        on_step: Callable[[StepProgress], None],
        preview_every: int = 0,
        mask: Any = None,
    ) -> EngineRun:
        return self._run("img2img", params, tuple(init_images), mask, control, on_step, preview_every)

    # -- one job ---------------------------------------------------------------------------------
    def _run(
        self,
        kind: str,
        params: GenerationParams,
        init_images: tuple[Any, ...],
        mask: Any,
        control: JobControl,
        on_step: Callable[[StepProgress], None],
        preview_every: int,
    ) -> EngineRun:
        # 1. What the workers need: the checkpoint by sha256, the server's engine options.
        ref = self._pool.resolve(params.checkpoint)
        options = self._pool.options()
        job_id = uuid.uuid4().hex
        ranges = split_iterations(params.n_iter, len(self._slots))
        for spare in self._slots[len(ranges) :]:
            self._give_back(spare)
        steps = params.denoising_steps if isinstance(params, Img2ImgParams) else params.steps
        parts = [
            _Part(index, start, count, slot, steps)
            for index, ((start, count), slot) in enumerate(zip(ranges, self._slots, strict=False))
        ]

        def report(step: StepProgress | None = None) -> None:
            with self._lock:
                if step is not None and step.preview is not None:
                    self._preview = step.preview
                total = max(1, steps)
                done = sum(part.done_steps for part in parts)
            on_step(
                StepProgress(
                    step=done % total,
                    total_steps=total,
                    batch_index=min(done // total, params.n_iter - 1),
                    batch_count=params.n_iter,
                    preview=step.preview if step is not None else None,
                )
            )

        # 2. Run every range at once (the first in this thread), each with its retry.
        errors: list[BaseException] = []

        def run_part(part: _Part) -> None:
            request = WorkRequest(
                job_id=f"{job_id}-{part.index}",
                kind=kind,  # type: ignore[arg-type]
                params=part_params(params, part.start, part.count),
                checkpoint=ref,
                preview_every=preview_every,
                init_images=init_images,
                mask=mask,
                options=options,
            )
            try:
                part.run = self._run_part(part, request, ref, control, report)
                hand_on()
            except BaseException as exc:
                errors.append(exc)
                control.interrupt()  # the job failed: stop its other ranges, their images are not used

        handed = 0  # ranges handed on to the service (it saves them), always in batch order
        hand_lock = threading.Lock()

        def hand_on() -> None:
            nonlocal handed
            with hand_lock:
                while handed < len(parts) and parts[handed].run is not None and not errors:
                    run = parts[handed].run
                    assert run is not None
                    control.images_done(EngineRun(images=list(run.images), model_name=ref.name,
                                                  model_hash=run.model_hash, vae_name=run.vae_name,
                                                  vae_hash=run.vae_hash, clip_skip=run.clip_skip,
                                                  interrupted=run.interrupted))
                    handed += 1

        threads = [
            threading.Thread(target=run_part, args=(part,), name=f"sdweb-part-{part.index}", daemon=True)
            for part in parts[1:]
        ]
        for thread in threads:
            thread.start()
        run_part(parts[0])
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]

        # 3. Merge in batch order.
        runs = [part.run for part in parts if part.run is not None]
        first = runs[0]
        return EngineRun(
            images=[image for run in runs for image in run.images],
            model_name=ref.name,
            model_hash=first.model_hash,
            vae_name=first.vae_name,
            vae_hash=first.vae_hash,
            clip_skip=first.clip_skip,
            interrupted=any(run.interrupted for run in runs),
        )

    def _run_part(
        self,
        part: _Part,
        request: WorkRequest,
        ref: CheckpointRef,
        control: JobControl,
        report: Callable[[StepProgress | None], None],
    ) -> EngineRun:
        pool = self._pool
        tried: set[str] = set()
        lost_once = False
        slot = part.slot
        while True:
            tried.add(slot.id)
            try:
                run = self._call(slot, part, request, control, report)
            except MissingModelError as exc:
                self._give_back(slot, lacks=(ref, str(exc)))
                replacement = self._take(ref, tried)
                if replacement is None:
                    raise MissingModelError(
                        f"no worker has checkpoint {ref.title} (sha256 {ref.sha256}); copy "
                        f"the file into models/Stable-diffusion on a worker PC"
                    ) from exc
                slot = replacement
                continue
            except WorkerLostError as exc:
                self._give_back(slot, lost=str(exc))
                if lost_once or control.interrupted:
                    raise WorkerLostError(f"{exc}; the job was already retried once, so it fails") from exc
                lost_once = True
                part.done_steps = 0
                replacement = self._take(ref, tried)
                if replacement is None:
                    raise WorkerLostError(
                        f"{exc}; no other worker was free within {pool.retry_wait:.0f} s to run it again"
                    ) from exc
                logger.warning(
                    "%s; running batches %d-%d again on %s",
                    exc,
                    part.start + 1,
                    part.start + part.count,
                    replacement.host,
                )
                slot = replacement
                continue
            except BaseException as exc:
                self._give_back(slot, error=str(exc) or type(exc).__name__)
                raise
            self._give_back(slot, ran=request, ref=ref)
            return run

    # -- the workers this job holds -------------------------------------------------------------
    def _take(self, ref: CheckpointRef, tried: set[str]) -> Slot | None:
        slot = self._pool.acquire(ref, exclude=tried, timeout=self._pool.retry_wait)
        if slot is not None:
            with self._lock:
                self._held[slot.id] = slot
        return slot

    def _give_back(
        self,
        slot: Slot,
        *,
        lost: str | None = None,
        lacks: tuple[CheckpointRef, str] | None = None,
        **outcome: Any,
    ) -> None:
        with self._lock:
            if self._held.pop(slot.id, None) is None:
                return
        if lost is not None:
            self._pool.mark_lost(slot, lost)
        elif lacks is not None:
            self._pool.mark_lacks(slot, *lacks)
        else:
            self._pool.release(slot, **outcome)

    def finish(self) -> None:
        """Give back every worker still held (a job that failed before or while it ran)."""
        with self._lock:
            left = list(self._held.values())
        for slot in left:
            self._give_back(slot)

    def _call(
        self,
        slot: Slot,
        part: _Part,
        request: WorkRequest,
        control: JobControl,
        report: Callable[[StepProgress | None], None],
    ) -> EngineRun:
        ray = self._pool.ray
        lost = (
            ray.exceptions.RayActorError,
            ray.exceptions.ActorUnavailableError,
            ray.exceptions.WorkerCrashedError,
            ray.exceptions.NodeDiedError,
            ray.exceptions.ObjectLostError,
        )
        interrupted = False
        try:
            ref = slot.actor.run.remote(request)
            while True:
                ready, _ = ray.wait([ref], timeout=POLL_SECONDS)
                if ready:
                    try:
                        run: EngineRun = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:
                        cause = exc.cause
                        if isinstance(cause, lost):
                            raise
                        raise cause if isinstance(cause, Exception) else exc from None
                    part.done_steps = part.count * part.steps
                    report(None)
                    return run
                # Control: an interrupt stops every range; a skip drops the batch each range is making.
                if control.interrupted and not interrupted:
                    slot.actor.interrupt.remote(request.job_id)
                    interrupted = True
                with self._lock:
                    if control.skipped:
                        self._skips += 1
                        control.clear_skip()
                    skips = self._skips
                if skips > part.skips_sent:
                    slot.actor.skip.remote(request.job_id)
                    part.skips_sent = skips
                step = ray.get(slot.actor.progress.remote(request.job_id), timeout=30)
                if step is not None:
                    part.done_steps = step.batch_index * part.steps + min(step.step, part.steps)
                    report(step)
        except lost as exc:
            raise WorkerLostError(
                f"worker {slot.id} on {slot.host} was lost mid-job ({type(exc).__name__})"
            ) from exc
        except ray.exceptions.GetTimeoutError as exc:
            raise WorkerLostError(f"worker {slot.id} on {slot.host} stopped answering") from exc

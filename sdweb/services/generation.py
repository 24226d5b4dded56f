"""GenerationService: turns a validated request into saved images, on the one GPU worker.

Owns the job lifecycle (queued -> running -> done / interrupted / failed), per-job progress that the UI
and ``/sdapi/v1/progress`` read, interrupt and skip, and the steps around the engine: plugin hooks,
styles, seed resolution; infotexts, saving, grids and history are :mod:`sdweb.services.recording`'s
(:class:`~sdweb.services.recording.Recorder`, fed each batch as it is decoded). The engine itself is
reached through the :class:`EngineLike` protocol so tests can pass a fake one, and so torch is imported
only when the first job (or the background warm-up) needs it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from sdweb import __version__
from sdweb.config import OptionsStore
from sdweb.params import (
    A1111_COMPAT_INFOTEXT,
    CFG_SKIP_INFOTEXT,
    MAX_SEED,
    SCHEDULE_SETTINGS,
    SIGMA_DEFAULTS,
    UNIPC_SETTINGS,
    EngineRun,
    GenerationParams,
    GenerationResult,
    Img2ImgParams,
    JobControl,
    JobProgress,
    StepProgress,
)
from sdweb.services.recording import Recorder, history_entry
from sdweb.services.worker import GpuWorker, Task
from sdweb.services.workers import JobNeeds, JobWorkers, LocalWorkers, WorkerStatus

logger = logging.getLogger(__name__)


def _as_is(value: Any) -> Any:
    return value


def _number(value: Any) -> float:
    return float(value or 0.0)


#: Request fields that share their option's name, with how the option's value becomes the field's: None
#: in a request means the setting. A1111's sampler path, UniPC, img2img, compatibility, schedule, sampler
#: parameter, CFG skipping, emphasis and noise schedule settings.
FIELDS_FROM_OPTIONS: Mapping[str, Callable[[Any], Any]] = MappingProxyType({
    "sampler_path": _as_is,
    **dict.fromkeys(UNIPC_SETTINGS, _as_is),
    "img2img_fix_steps": bool,
    **dict.fromkeys(A1111_COMPAT_INFOTEXT, bool),
    **dict.fromkeys(SCHEDULE_SETTINGS, float),
    **dict.fromkeys((*SIGMA_DEFAULTS, *CFG_SKIP_INFOTEXT), _number),
    "s_min_uncond_all": bool,
    "emphasis": _as_is,
    "sd_noise_schedule": _as_is,
})

#: Finished jobs kept for progress/result look-ups (the API's force_task_id, late progress polls).
FINISHED_JOBS_KEPT = 200


class GenerationError(Exception):
    """A job could not run; ``message`` is for the person who asked, ``status`` the HTTP status."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


#: A script's body: runs on the worker with a :class:`JobRunner` and returns the combined result.
ScriptBody = Callable[["JobRunner"], GenerationResult]


class EngineLike(Protocol):
    """What the service needs from the engine (``sdweb.engine.runtime.Engine`` or a test fake)."""

    def txt2img(
        self,
        params: GenerationParams,
        *,
        control: JobControl,
        on_step: Callable[[StepProgress], None],
        preview_every: int,
    ) -> EngineRun: ...

    def img2img(
        self,
        params: Img2ImgParams,
        init_images: Sequence[Any],
        *,
        control: JobControl,
        on_step: Callable[[StepProgress], None],
        preview_every: int,
        mask: Any = None,
    ) -> EngineRun: ...


class Job:
    """One queued or running generation request (txt2img, or img2img with its init images)."""

    def __init__(self, params: GenerationParams, *, source: str, job_id: str | None = None,
                 init_images: Sequence[Any] = (), mask: Any = None) -> None:
        self.id = job_id or uuid.uuid4().hex
        self.params = params
        self.source = source
        #: PIL images for an img2img job (``params`` is then an ``Img2ImgParams``); empty for txt2img.
        self.init_images = list(init_images)
        #: Inpainting mask (PIL image, white = repaint) of an img2img job; None for plain img2img.
        self.mask = mask
        self.kind = "img2img" if isinstance(params, Img2ImgParams) else "txt2img"
        self.control = JobControl()
        self.progress = JobProgress(job_id=self.id, job_count=params.n_iter,
                                    sampling_steps=params.steps)
        self.result: GenerationResult | None = None
        self.error: GenerationError | None = None
        self.created = time.time()
        self.task: Task[GenerationResult] | None = None
        #: A script's body (``body(runner) -> result``) run instead of one engine call; None for plain jobs.
        self.script: ScriptBody | None = None

    @property
    def finished(self) -> bool:
        return self.progress.state in ("done", "interrupted", "failed")

    def wait(self, timeout: float | None = None) -> GenerationResult:
        """Block until the job ends; raise :class:`GenerationError` when it failed."""
        assert self.task is not None
        try:
            return self.task.wait(timeout)
        except RuntimeError:
            if self.task.cancelled and self.result is not None:
                return self.result  # interrupted while still queued: an empty, interrupted result
            raise GenerationError("the job could not run", status=500) from None
        except GenerationError:
            raise
        except TimeoutError:
            raise
        except Exception as exc:  # the worker already logged it
            raise GenerationError(str(exc) or type(exc).__name__, status=500) from exc


class GenerationService:
    """Queue, run and record txt2img jobs. One instance per app (built in ``webui.py``)."""

    def __init__(
        self,
        *,
        worker: GpuWorker,
        engine: Callable[[], EngineLike],
        options: OptionsStore,
        images: Any,
        history: Any | None = None,
        styles: Any | None = None,
        plugins: Any | None = None,
        validate: Callable[[GenerationParams], None] | None = None,
        default_checkpoint: Callable[[], str | None] | None = None,
        rng: random.Random | None = None,
        face_restorer: Any = None,
        workers: JobWorkers | None = None,
    ) -> None:
        self._worker = worker
        #: Where jobs run (DESIGN.md "Workers"): the in-process GPU worker unless a cluster pool is given.
        self._workers: JobWorkers = workers or LocalWorkers(worker, engine)
        self._engine = engine
        self._options = options
        self._images = images
        self._history = history
        self._styles = styles
        self._plugins = plugins
        self._validate = validate
        self._default_checkpoint = default_checkpoint
        self._rng = rng or random.SystemRandom()
        #: ``sdweb.services.face_restore.FaceRestoreService`` (None: restore_faces answers with a warning).
        self._face_restorer = face_restorer
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._current: Job | None = None
        self._last_seed: int | None = None

    # ------------------------------------------------------------------ submitting
    def submit(
        self,
        params: GenerationParams,
        *,
        save: bool = True,
        save_grid: bool | None = None,
        source: str = "ui",
        job_id: str | None = None,
        init_images: Sequence[Any] = (),
        mask: Any = None,
    ) -> Job:
        """Check the request now (bad sampler, model or style -> GenerationError), then queue it.

        ``init_images`` belong to img2img requests (``Img2ImgParams``): use :meth:`submit_img2img`.
        """
        if isinstance(params, Img2ImgParams) != bool(init_images):
            raise GenerationError("img2img requests need init images, and only they take them")
        self.check(params)
        return self._queue(Job(params, source=source, job_id=job_id, init_images=init_images, mask=mask),
                           save=save, save_grid=save_grid)

    def check(self, params: GenerationParams) -> None:
        """Raise :class:`GenerationError` when ``params`` names an unknown sampler, model, style, LoRA..."""
        if self._validate is not None:
            try:
                self._validate(params)
            except (LookupError, ValueError) as exc:
                raise GenerationError(str(exc).strip("'\"")) from exc
            second_pass = _hires_second_pass(params)
            try:
                if second_pass is not None:
                    self._validate(second_pass)
            except (LookupError, ValueError) as exc:
                raise GenerationError(f"hires fix second pass: {str(exc).strip(chr(39) + chr(34))}") from exc
        if self._styles is not None and params.styles:
            try:
                self._styles.apply(params.prompt, params.negative_prompt, list(params.styles))
            except ValueError as exc:
                raise GenerationError(str(exc)) from exc

    def submit_script(
        self,
        params: GenerationParams,
        body: ScriptBody,
        *,
        job_count: int = 1,
        save: bool = True,
        source: str = "ui",
        job_id: str | None = None,
        label: str = "script",
    ) -> Job:
        """Queue a script as one job: ``body(runner)`` runs on the worker and returns the combined result.

        ``params`` is the script's base request (already checked, with its sub-requests, by the caller);
        ``runner.generate(...)`` runs each sub-request inside this job, so progress, interrupt and skip
        cover the whole script and no other job runs between its parts.
        """
        job = Job(params, source=source, job_id=job_id)
        job.script = body
        job.progress.job_count = max(1, job_count)
        return self._queue(job, save=save, save_grid=None, label=label)

    def _queue(self, job: Job, *, save: bool, save_grid: bool | None, label: str = "") -> Job:
        if job.id in self._jobs:
            raise GenerationError(f"task id {job.id!r} is already in use")
        with self._lock:
            self._jobs[job.id] = job
            while len(self._jobs) > FINISHED_JOBS_KEPT:
                oldest_id, oldest = next(iter(self._jobs.items()))
                if not oldest.finished:
                    break
                del self._jobs[oldest_id]
        default = self._default_checkpoint() if self._default_checkpoint is not None else None
        needs = JobNeeds.of(job.params, default)
        if job.script is not None:  # a script's parts run one after the other on the worker it gets
            needs = replace(needs, parallel=1)
        job.task = self._workers.submit(lambda engine: self._run(job, engine, save=save, save_grid=save_grid),
                                        label=f"{label or job.kind} {job.id[:8]}", needs=needs)
        return job

    def submit_img2img(
        self,
        params: Img2ImgParams,
        init_images: Sequence[Any],
        *,
        save: bool = True,
        save_grid: bool | None = None,
        source: str = "ui",
        job_id: str | None = None,
        mask: Any = None,
    ) -> Job:
        """Queue an img2img job on the same GPU queue as txt2img; with ``mask``, an inpainting job.

        ``init_images`` are PIL images (decoded with ``sdweb.images.metadata``'s size limit). As A1111:
        one image is used for every image of a batch; several set the batch size to their number, and
        more images than ``batch_size`` is an error.
        """
        images = list(init_images)
        if not images:
            raise GenerationError("img2img needs an init image")
        if len(images) > params.batch_size:
            raise GenerationError(f"{len(images)} init images for a batch size of {params.batch_size}: "
                                  "give at most batch_size images (each makes one image of the batch)")
        if len(images) > 1:
            params = params.model_copy(update={"batch_size": len(images)})
        if mask is not None:
            wrong = [f"{image.width}x{image.height}" for image in images if image.size != mask.size]
            if wrong:
                raise GenerationError(f"the mask is {mask.width}x{mask.height} but the init image is "
                                      f"{wrong[0]}; they must have the same size")
        return self.submit(params, save=save, save_grid=save_grid, source=source, job_id=job_id,
                           init_images=images, mask=mask)

    def generate(self, params: GenerationParams, **kwargs: Any) -> GenerationResult:
        """Submit and wait: the blocking form the CLI and the API use."""
        return self.submit(params, **kwargs).wait()

    # ------------------------------------------------------------------ looking at jobs
    def job(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    @property
    def current(self) -> Job | None:
        return self._current

    def queued(self) -> list[Job]:
        """The jobs waiting for their turn, oldest first."""
        with self._lock:
            return [job for job in self._jobs.values() if job.progress.state == "queued"]

    def queue_position(self, job: Job) -> int:
        return self._workers.position(job.task) if job.task is not None else 0

    def progress(self, job: Job) -> JobProgress:
        job.progress.queue_position = self.queue_position(job)
        return job.progress

    @property
    def last_seed(self) -> int | None:
        return self._last_seed

    def workers(self) -> list[WorkerStatus]:
        """The workers jobs run on (one in-process worker, or the cluster's): for the UI and the API."""
        return self._workers.health()

    # ------------------------------------------------------------------ control
    def interrupt(self, job_id: str | None = None) -> bool:
        """Stop the given (or the running) job; images finished so far are kept and saved."""
        job = self._target(job_id)
        if job is None:
            return False
        if job.task is not None and self._workers.cancel(job.task):
            job.progress.state = "interrupted"
            job.progress.interrupted = True
            job.result = GenerationResult(params=job.params, interrupted=True)
            return True
        job.control.interrupt()
        job.progress.interrupted = True
        return True

    def skip(self, job_id: str | None = None) -> bool:
        """Drop the image batch being made and go on with the rest of the job."""
        job = self._target(job_id)
        if job is None or job.finished:
            return False
        job.control.skip()
        job.progress.skipped = True
        return True

    def _target(self, job_id: str | None) -> Job | None:
        if job_id is None:
            return self._current
        return self.job(job_id)

    # ------------------------------------------------------------------ running (worker thread)
    def _run(self, job: Job, engine: EngineLike, *, save: bool,
             save_grid: bool | None) -> GenerationResult:
        self._current = job
        progress = job.progress
        progress.state = "running"
        progress.started_at = time.monotonic()
        try:
            result = self._run_steps(job, engine, save=save, save_grid=save_grid)
        except GenerationError as exc:
            progress.state = "failed"
            progress.error = exc.message
            job.error = exc
            raise
        except Exception as exc:
            logger.exception("job %s failed", job.id)
            message = _describe_failure(exc)
            progress.state = "failed"
            progress.error = message
            job.error = GenerationError(message, status=_status_for(exc))
            raise job.error from exc
        finally:
            if self._current is job:  # with several workers another job may have started meanwhile
                self._current = None
        progress.state = "interrupted" if result.interrupted else "done"
        progress.preview = None
        job.result = result
        return result

    def _run_steps(self, job: Job, engine: EngineLike, *, save: bool,
                   save_grid: bool | None) -> GenerationResult:
        if job.script is not None:
            return job.script(JobRunner(self, job, engine, save=save))
        # 1. Let extensions adjust the request, then apply styles (A1111 writes the styled prompt).
        params = self._prepare(job.params)
        job.params = params
        job.progress.job_count = params.n_iter

        # 2. Run the engine, reporting each step to the job and to extensions; each batch is saved (with
        #    its infotext and history row) as soon as it is decoded, so a crash loses at most one batch.
        recorder = Recorder(self, params, save=save, masked=job.mask is not None)
        run = self._run_engine(job, engine, params, job.init_images, job.mask, recorder=recorder)

        # 3. Whatever the engine did not hand on by itself, then the grid and the final history row.
        return recorder.finish(run, save_grid=save_grid)

    def _run_engine(self, job: Job, engine: EngineLike, params: GenerationParams, init_images: Sequence[Any],
                    mask: Any, *, batch_offset: int = 0, recorder: Recorder | None = None) -> EngineRun:
        """One engine call inside ``job``; ``batch_offset``: batches a script ran before this one.

        ``recorder`` gets each batch the engine hands on as soon as it is decoded.
        """
        job.control.on_images(recorder.add if recorder is not None else None)
        try:
            return self._call_engine(job, engine, params, init_images, mask, batch_offset=batch_offset)
        finally:
            job.control.on_images(None)

    def _call_engine(self, job: Job, engine: EngineLike, params: GenerationParams, init_images: Sequence[Any],
                     mask: Any, *, batch_offset: int) -> EngineRun:
        job.progress.sampling_steps = (params.denoising_steps if isinstance(params, Img2ImgParams)
                                       else params.steps)

        def on_step(step: StepProgress) -> None:
            progress = job.progress
            progress.job_no = batch_offset + step.batch_index
            if job.script is None:
                progress.job_count = step.batch_count
            progress.sampling_step = step.step
            progress.sampling_steps = step.total_steps
            if step.preview is not None:
                progress.preview = step.preview
            if self._plugins is not None:
                self._plugins.notify("on_step", progress=step)

        preview_every = 0
        if self._options.get("live_previews_enable"):
            # A1111's -1 (and 0): no previews while sampling, only the finished images.
            preview_every = max(0, int(self._options.get("show_progress_every_n_steps")))
        if init_images and not isinstance(params, Img2ImgParams):
            raise GenerationError("an extension's before_generate hook returned a txt2img request for an "
                                  "img2img job; it must return params.model_copy(update=...)")
        if isinstance(params, Img2ImgParams):
            masked = {"mask": mask} if mask is not None else {}
            run: EngineRun = engine.img2img(params, init_images, control=job.control, on_step=on_step,
                                            preview_every=preview_every, **masked)
            return run
        return engine.txt2img(params, control=job.control, on_step=on_step, preview_every=preview_every)

    def _prepare(self, params: GenerationParams) -> GenerationParams:
        if self._plugins is not None:
            params = self._plugins.chain("before_generate", params)
        updates: dict[str, Any] = {}
        if self._styles is not None and params.styles:
            prompt, negative = self._styles.apply(params.prompt, params.negative_prompt, list(params.styles))
            updates.update(prompt=prompt, negative_prompt=negative)
            if params.enable_hr and (params.hr_prompt or params.hr_negative_prompt):
                # As A1111: the styles apply to the second pass's own prompts too.
                hr_prompt, hr_negative = self._styles.apply(
                    params.hr_prompt or params.prompt, params.hr_negative_prompt or params.negative_prompt,
                    list(params.styles))
                updates.update(hr_prompt=hr_prompt if params.hr_prompt else "",
                               hr_negative_prompt=hr_negative if params.hr_negative_prompt else "")
        seed = params.seed if params.seed != -1 else self._rng.randint(0, MAX_SEED)
        subseed = params.subseed if params.subseed != -1 else self._rng.randint(0, MAX_SEED)
        updates.update(seed=seed, subseed=subseed)
        if params.clip_skip is None:
            updates["clip_skip"] = int(self._options.get("CLIP_stop_at_last_layers"))
        if params.rng is None:
            updates["rng"] = self._options.get("randn_source")
        if params.eta_noise_seed_delta is None:
            updates["eta_noise_seed_delta"] = int(self._options.get("eta_noise_seed_delta") or 0)
        for key, convert in FIELDS_FROM_OPTIONS.items():  # request fields named as their option
            if getattr(params, key) is None:
                updates[key] = convert(self._options.get(key))
        if params.checkpoint is None and self._default_checkpoint is not None:
            # The selected model (A1111's sd_model_checkpoint, else the first one found).
            updates["checkpoint"] = self._default_checkpoint()
        self._last_seed = seed
        return params.model_copy(update=updates)

    def _record(self, params: GenerationParams, run: EngineRun, *, save: bool, save_grid: bool | None,
                masked: bool = False, history: bool = True,
                script_extra: dict[str, Any] | None = None) -> GenerationResult:
        """Infotexts, saved files, grid and history row for a whole finished ``run``."""
        recorder = Recorder(self, params, save=save, masked=masked, history=history,
                            script_extra=script_extra)
        return recorder.finish(run, save_grid=save_grid)

    def output_folder(self, kind: str, *, grids: bool) -> Path | None:
        """Where ``kind``'s images (or grids) go: A1111's ``outdir_samples`` / ``outdir_grids`` when set,
        else ``outdir_<kind>_samples`` / ``outdir_<kind>_grids``; None = the outputs folder's default.

        A folder that now leads outside the data folder (a symlink made since it was set) is not used:
        the default is, with a warning in the log.
        """
        from sdweb.safepath import UnsafePathError

        which = "grids" if grids else "samples"
        for key in (f"outdir_{which}", f"outdir_{kind}_{which}"):
            try:
                folder = self._options.folder(key)
            except KeyError:
                continue
            except UnsafePathError as exc:
                logger.warning("not saving into %s: %s; using the default folder", key, exc)
                return None
            if folder is not None:
                return folder
        return None

    def _file_infotext(self, infotext: str) -> str:
        """The infotext written into image files: none when A1111's ``enable_pnginfo`` is off."""
        return infotext if self._options.get("enable_pnginfo") is not False else ""

    def _restore_faces(self, run: EngineRun, extra: dict[str, Any], warnings: list[str]) -> EngineRun:
        """``run`` with its faces restored (and "Face restoration" in ``extra``), or as it was plus a
        warning saying why not: a missing restorer never costs the user the images.
        """
        if self._face_restorer is None:
            warnings.append("face restoration was skipped: this server has no face restorer")
            return run
        images, used, note = self._face_restorer.restore([generated.image for generated in run.images])
        if note:
            warnings.append(note)
        if used:
            extra["Face restoration"] = used
        for generated, image in zip(run.images, images, strict=True):
            generated.image = image
        return run

    def _add_history(self, result: GenerationResult) -> int | None:
        """Record ``result`` in the history (a new row, or its row updated when it has one); its id."""
        try:
            entry = history_entry(result)
            if result.history_id is not None and hasattr(self._history, "update"):
                self._history.update(result.history_id, entry)
                return result.history_id
            return int(self._history.add(entry))
        except Exception:  # history must never cost the user their images
            logger.exception("could not record the generation in history")
            return result.history_id


class JobRunner:
    """A script body's handle: its sub-requests run inside its job (:meth:`GenerationService.submit_script`).

    Each :meth:`generate` call is one engine run on the worker thread that runs the script, with the
    job's interrupt and skip flags and its progress (batches counted across the whole script). Images
    are saved with their infotexts as any job's; no history entry and no grid per sub-request (the
    script's combined result gets those).
    """

    def __init__(self, service: GenerationService, job: Job, engine: EngineLike, *, save: bool) -> None:
        self._service = service
        self._job = job
        self._engine = engine
        self._save = save
        self._batches_done = 0

    def generate(self, params: GenerationParams, *, init_images: Sequence[Any] = (), mask: Any = None,
                 save: bool = True, extra: dict[str, Any] | None = None) -> GenerationResult:
        """Run ``params`` now; ``extra``: infotext pairs the script adds (``"SD upscale overlap": 64``)."""
        service, job = self._service, self._job
        if job.control.interrupted:
            return GenerationResult(params=params, interrupted=True)
        prepared = service._prepare(params)
        recorder = Recorder(service, prepared, save=save and self._save, masked=mask is not None,
                            history=False, script_extra=extra)
        run = service._run_engine(job, self._engine, prepared, list(init_images), mask,
                                  batch_offset=self._batches_done, recorder=recorder)
        self._batches_done += prepared.n_iter
        job.progress.job_count = max(job.progress.job_count, self._batches_done)
        return recorder.finish(run, save_grid=False)

    def infotext(self, result: GenerationResult, *, index: int = 0,
                 extra: dict[str, Any] | None = None) -> str:
        """Image ``index`` of ``result``'s infotext with ``extra`` pairs added (a grid's infotext)."""
        from sdweb.images.infotext import build_infotext

        params = result.params
        return build_infotext(
            params, seed=result.seeds[index], subseed=result.subseeds[index], prompt=result.prompts[index],
            negative_prompt=result.negative_prompts[index], model_name=result.model_name,
            model_hash=result.model_hash, vae_name=result.vae_name, vae_hash=result.vae_hash,
            clip_skip=result.clip_skip, rng=params.rng or "CPU",
            extra={**result.extra_generation_params, **(extra or {})}, version=__version__)

    def save_grid(self, image: Any, *, infotext: str, basename: str = "grid") -> str | None:
        options = self._service._options
        if not (self._save and options.get("grid_save")):
            return None
        path = self._service._images.save_composed(image, infotext=self._service._file_infotext(infotext),
                                                   kind=self.kind, grid=True, basename=basename,
                                                   fmt=str(options.get("samples_format")),
                                                   folder=self._service.output_folder(self.kind, grids=True))
        return str(path)

    def save_image(self, image: Any, *, infotext: str, seed: int) -> str | None:
        options = self._service._options
        if not (self._save and options.get("samples_save")):
            return None
        folder = self._service.output_folder(self.kind, grids=False)
        path = self._service._images.save(image, infotext=self._service._file_infotext(infotext), seed=seed,
                                          kind=self.kind, folder=folder,
                                          fmt=str(options.get("samples_format")),
                                          jpeg_quality=int(options.get("jpeg_quality")))
        return str(path)

    def record_history(self, result: GenerationResult) -> None:
        """Add the script's combined result to the history (once, at its end)."""
        if self._service._history is not None and result.images:
            result.history_id = self._service._add_history(result)

    def set_job_count(self, count: int) -> None:
        self._job.progress.job_count = max(1, count)

    @property
    def kind(self) -> str:
        return self._job.kind

    @property
    def interrupted(self) -> bool:
        return self._job.control.interrupted

    @property
    def skipped(self) -> bool:
        return self._job.control.skipped

    def clear_skip(self) -> None:
        self._job.control.clear_skip()

    def option(self, key: str) -> Any:
        return self._service._options.get(key)


def _hires_second_pass(params: GenerationParams) -> GenerationParams | None:
    """The hires fix second pass as a request of its own, to check its sampler and prompt.

    None when it has no settings of its own.
    """
    if not params.enable_hr or not (params.hr_prompt or params.hr_negative_prompt or params.hr_sampler_name
                                    or params.hr_scheduler):
        return None
    return params.model_copy(update=params.hires_second_pass_fields())


def _status_for(exc: Exception) -> int:
    if isinstance(exc, (LookupError, ValueError)):
        return 400
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return 507
    return 500


def _describe_failure(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        return f"out of memory while generating ({text}); try a smaller size or batch, or --medvram"
    return text

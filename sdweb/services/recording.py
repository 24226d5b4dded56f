"""Recording a finished run: infotexts, saved files, grid, face restoration and the history row.

:class:`Recorder` is the part of a job after the engine: :class:`~sdweb.services.generation.GenerationService`
queues and runs jobs, and hands each decoded batch here as it comes, so images reach the disk (and the
history) while later batches still run.
"""

from __future__ import annotations

import io
import logging
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdweb import __version__
from sdweb.params import EngineRun, GenerationParams, GenerationResult, Img2ImgParams

if TYPE_CHECKING:
    from sdweb.services.generation import GenerationService

logger = logging.getLogger(__name__)


class Recorder:
    """Turns the images of one engine run into a :class:`GenerationResult`, saving them as they come.

    The engine hands each decoded batch to :meth:`add` (through ``JobControl.images_done``); the batch
    gets its infotexts, face restoration, files and hook calls at once, and the job's history row is
    written (then updated with every later batch). :meth:`finish` takes the run the engine returned:
    images it did not hand on (an engine without per-batch reports, a cluster worker) are recorded
    then, followed by the grid and the last history update.

    A file that cannot be written (a read-only or full disk) costs neither the image nor the job: the
    image stays in the result, nothing half-written is left (``ImageStore`` writes a temporary file
    and renames it), and the result's warnings say what failed.
    """

    def __init__(self, service: GenerationService, params: GenerationParams, *, save: bool,
                 masked: bool = False, history: bool = True,
                 script_extra: dict[str, Any] | None = None) -> None:
        from sdweb.images.infotext import hires_infotext

        self._service = service
        self._params = params
        self._save = save
        self._history = history and service._history is not None
        options = service._options
        self._samples_save = bool(options.get("samples_save"))
        self._fmt = str(options.get("samples_format"))
        self._quality = int(options.get("jpeg_quality"))
        extra: dict[str, Any] = {}
        self._kind = "txt2img"
        if isinstance(params, Img2ImgParams):
            self._kind = "img2img"
            extra["Denoising strength"] = params.denoising_strength  # A1111 writes it at its place
            if masked:
                extra.update(_inpaint_infotext(params))
        elif params.enable_hr:
            extra.update(hires_infotext(params))
        if service._plugins is not None:
            for _name, pairs in service._plugins.collect("extra_infotext", params=params):
                if isinstance(pairs, dict):
                    extra.update(pairs)
        extra.update(script_extra or {})
        self._extra = extra
        self.result = GenerationResult(params=params, job_timestamp=datetime.now().strftime("%Y%m%d%H%M%S"),
                                       extra_generation_params=dict(extra))
        #: How many of the run's images were recorded (they come in output order).
        self.taken = 0
        self._save_failed = False

    def add(self, run: EngineRun) -> None:
        """Record (and save) a batch of finished images."""
        self._take_facts(run)
        if self._params.restore_faces:
            notes: list[str] = []
            run = self._service._restore_faces(run, self._extra, notes)
            for note in notes:
                self._warn(note)
            if "Face restoration" in self._extra:
                self.result.extra_generation_params["Face restoration"] = self._extra["Face restoration"]
        for generated in run.images:
            self._add_image(run, generated)
        self.taken += len(run.images)
        if self._history and self.result.images:
            self.result.history_id = self._service._add_history(self.result)

    def finish(self, run: EngineRun, *, save_grid: bool | None) -> GenerationResult:
        """The result of ``run`` (which holds every image, those already recorded first)."""
        rest = run.images[self.taken:]
        if rest:
            history, self._history = self._history, False  # one history write below is enough
            self.add(replace(run, images=rest))
            self._history = history
        self._take_facts(run)
        result = self.result
        result.interrupted = run.interrupted
        service = self._service
        want_grid = service._options.get("grid_save") if save_grid is None else save_grid
        if self._save and want_grid and len(result.images) > 1:
            try:
                grid = service._images.save_grid(result.images,
                                                 infotext=service._file_infotext(result.infotexts[0]),
                                                 seed=result.seeds[0], kind=self._kind, fmt=self._fmt,
                                                 folder=service.output_folder(self._kind, grids=True))
                result.grid_path = str(grid)
            except OSError as exc:
                self._not_saved(exc, "the grid")
        if self._history and result.images:
            result.history_id = service._add_history(result)
        return result

    def _take_facts(self, run: EngineRun) -> None:
        result = self.result
        result.model_name, result.model_hash = run.model_name, run.model_hash
        result.vae_name, result.vae_hash = run.vae_name, run.vae_hash
        result.clip_skip = run.clip_skip

    def _add_image(self, run: EngineRun, generated: Any) -> None:
        from sdweb.images.infotext import build_infotext

        params, result, service = self._params, self.result, self._service
        infotext = build_infotext(
            params, seed=generated.seed, subseed=generated.subseed, prompt=generated.prompt,
            negative_prompt=generated.negative_prompt, model_name=run.model_name,
            model_hash=run.model_hash, vae_name=run.vae_name, vae_hash=run.vae_hash,
            clip_skip=run.clip_skip, rng=params.rng or "CPU", extra={**self._extra, **generated.extra},
            version=__version__,
        )
        result.images.append(generated.image)
        result.seeds.append(generated.seed)
        result.subseeds.append(generated.subseed)
        result.prompts.append(generated.prompt)
        result.negative_prompts.append(generated.negative_prompt)
        result.infotexts.append(infotext)
        result.extra_generation_params.update(generated.extra)
        if not (self._save and self._samples_save):
            return
        try:
            path = service._images.save(generated.image, infotext=service._file_infotext(infotext),
                                        seed=generated.seed, kind=self._kind, fmt=self._fmt,
                                        jpeg_quality=self._quality,
                                        folder=service.output_folder(self._kind, grids=False))
        except OSError as exc:
            self._not_saved(exc, f"image {len(result.images)} (seed {generated.seed})")
            return
        result.paths.append(str(path))
        if service._plugins is not None:
            service._plugins.notify("after_image_saved", path=str(path), params=params, infotext=infotext)

    def _not_saved(self, exc: OSError, what: str) -> None:
        logger.error("could not save %s: %s", what, exc)
        if not self._save_failed:  # one warning a job says it; the log has each file
            self._save_failed = True
            self._warn(f"{_write_failure(exc, self._service._images)}: the images are returned but not "
                       "kept on the server")

    def _warn(self, message: str) -> None:
        if message not in self.result.warnings:
            self.result.warnings.append(message)


def _write_failure(exc: OSError, images: Any) -> str:
    """``could not save to outputs/txt2img-images/...: Permission denied`` (no absolute server path)."""
    reason = exc.strerror or type(exc).__name__
    where = "the outputs folder"
    filename = getattr(exc, "filename", None)
    root = getattr(images, "root", None)
    if filename and root is not None:
        path = Path(str(filename))
        for base in (Path(root).parent, Path(root)):
            try:
                relative = path.parent.relative_to(base)
            except ValueError:
                continue
            where = relative.as_posix() if str(relative) != "." else base.name
            break
    return f"could not save to {where}: {reason}"


def history_entry(result: GenerationResult) -> Any:
    from sdweb.history.store import HistoryEntry

    thumbnail = _thumbnail_png(result.images[0])
    params = result.params
    extra: dict[str, Any] = {"interrupted": result.interrupted, "grid_path": result.grid_path}
    if isinstance(params, Img2ImgParams):
        # History restores txt2img requests; the img2img fields (not the init image) go beside.
        extra.update(kind="img2img", denoising_strength=params.denoising_strength,
                     resize_mode=params.resize_mode)
        params = GenerationParams.model_validate(
            params.model_dump(include=set(GenerationParams.model_fields)))
    return HistoryEntry(
        params=params,
        seeds=list(result.seeds),
        subseeds=list(result.subseeds),
        model_title=result.model_name,
        model_hash=result.model_hash,
        output_paths=list(result.paths),
        infotexts=list(result.infotexts),
        thumbnail=thumbnail,
        extra=extra,
    )


def _inpaint_infotext(params: Img2ImgParams) -> dict[str, Any]:
    """The inpainting keys A1111 writes, in its order."""
    # A1111 writes "Mask blur" only when it is the same both ways.
    same = params.mask_blur_y is None or params.mask_blur_y == params.mask_blur
    pairs: dict[str, Any] = {"Mask blur": params.mask_blur} if same else {}
    if params.inpainting_mask_invert:
        pairs["Mask mode"] = "Inpaint not masked"
    if params.inpaint_full_res:
        pairs["Inpaint area"] = "Only masked"
        pairs["Masked area padding"] = params.inpaint_full_res_padding
    return pairs


def _thumbnail_png(image: Any, size: int = 128) -> bytes:
    thumb = image.copy()
    thumb.thumbnail((size, size))
    buffer = io.BytesIO()
    thumb.save(buffer, format="PNG")
    return buffer.getvalue()

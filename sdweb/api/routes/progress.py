"""``GET /progress``, ``POST /interrupt`` and ``/skip``: the running (or a named) job, and stopping it."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import Query

from sdweb.api.encoding import encode_image_base64
from sdweb.api.errors import ApiError
from sdweb.api.models import ProgressResponse, ProgressState
from sdweb.api.routes import ApiRoutes
from sdweb.services.container import AppServices

logger = logging.getLogger(__name__)


def add_routes(routes: ApiRoutes) -> None:
    handlers = ProgressRoutes(routes.services)
    routes.add("/progress", handlers.progress, "GET", ProgressResponse)
    routes.add("/interrupt", handlers.interrupt, "POST", dict[str, Any])
    routes.add("/skip", handlers.skip, "POST", dict[str, Any])


class ProgressRoutes:
    """The progress and control handlers, bound to one services container."""

    def __init__(self, services: AppServices) -> None:
        self.services = services

    def progress(
        self,
        skip_current_image: bool = Query(False, description="Leave out the live preview image"),
        id_task: str | None = Query(None, max_length=200,
                                    description="A job id (force_task_id); default: the running job"),
    ) -> ProgressResponse:
        generation = self.services.generation
        job = generation.job(id_task) if id_task else generation.current
        if job is None:
            if id_task:
                raise ApiError(404, f"no job with id {id_task!r} (finished jobs are kept for a while)")
            return ProgressResponse(progress=0.0, eta_relative=0.0, state=ProgressState(), textinfo=None)
        progress = generation.progress(job)
        state = ProgressState(
            skipped=progress.skipped, interrupted=progress.interrupted,
            stopping_generation=progress.interrupted,
            job=job.kind if progress.state == "running" else progress.state,
            job_count=progress.job_count, job_timestamp=time.strftime("%Y%m%d%H%M%S",
                                                                      time.localtime(job.created)),
            job_no=progress.job_no, sampling_step=progress.sampling_step,
            sampling_steps=progress.sampling_steps, job_id=job.id, queue_position=progress.queue_position,
        )
        preview = progress.preview
        current_image = None
        if preview is not None and not skip_current_image:
            # As A1111's: the preview in the samples_format (png, jpg, webp).
            options = self.services.options
            current_image = encode_image_base64(preview, None, str(options.get("samples_format") or "png"),
                                                int(options.get("jpeg_quality") or 80))
        textinfo = progress.textinfo or self._textinfo(progress)
        return ProgressResponse(progress=progress.fraction, eta_relative=progress.eta_seconds or 0.0,
                                state=state, current_image=current_image, textinfo=textinfo)

    @staticmethod
    def _textinfo(progress: Any) -> str:
        if progress.state == "queued":
            return f"In queue, position {progress.queue_position}"
        if progress.state == "running":
            return (f"Batch {progress.job_no + 1}/{progress.job_count}, "
                    f"step {progress.sampling_step}/{progress.sampling_steps}")
        if progress.state == "failed":
            return f"Failed: {progress.error}"
        return progress.state.capitalize()

    def interrupt(self) -> dict[str, Any]:
        self.services.generation.interrupt()
        return {}

    def skip(self) -> dict[str, Any]:
        self.services.generation.skip()
        return {}

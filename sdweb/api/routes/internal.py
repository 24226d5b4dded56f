"""A1111's ``/internal`` routes that API clients use: ``GET /internal/ping``, ``POST /internal/progress``
(a task's state by its id, with a live preview as a data URI) and ``GET /internal/pending-tasks``.

A1111's web page polls these; clients such as SillyTavern ping the server with the first and follow a
``force_task_id`` job with the second. They answer as A1111's do, from the same jobs ``/sdapi/v1/progress``
reads, behind the same login as the rest of the API.
"""

from __future__ import annotations

import base64
import io
import logging
from typing import Any

from pydantic import BaseModel, Field

from sdweb.api.routes import ApiRoutes
from sdweb.services.container import AppServices

logger = logging.getLogger(__name__)

PREFIX = "/internal"
#: A1111's live preview formats (setting ``live_previews_image_format``).
PREVIEW_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


class InternalProgressRequest(BaseModel):
    id_task: str | None = Field(None, max_length=200, description="The task's id (force_task_id)")
    id_live_preview: int = Field(-1, description="The id of the last preview received (not sent again)")
    live_preview: bool = Field(True, description="Include the live preview")


class InternalProgressResponse(BaseModel):
    active: bool = Field(description="The task is being worked on right now")
    queued: bool = Field(description="The task waits in the queue")
    completed: bool = Field(description="The task has finished")
    progress: float | None = Field(None, description="0..1")
    eta: float | None = Field(None, description="Seconds left (estimate)")
    live_preview: str | None = Field(None, description="The current preview, a data: URI")
    id_live_preview: int | None = Field(None, description="Send it back to get only newer previews")
    textinfo: str | None = None


class PendingTasksResponse(BaseModel):
    size: int
    tasks: list[str]


def add_routes(routes: ApiRoutes) -> None:
    handlers = InternalRoutes(routes.services)
    routes.add("/ping", handlers.ping, "GET", dict[str, Any], prefix=PREFIX)
    routes.add("/progress", handlers.progress, "POST", InternalProgressResponse, prefix=PREFIX)
    routes.add("/pending-tasks", handlers.pending_tasks, "GET", PendingTasksResponse, prefix=PREFIX)


class InternalRoutes:
    """The ``/internal`` handlers, bound to one services container."""

    def __init__(self, services: AppServices) -> None:
        self.services = services

    def ping(self) -> dict[str, Any]:
        return {}

    def pending_tasks(self) -> PendingTasksResponse:
        ids = [job.id for job in self.services.generation.queued()]
        return PendingTasksResponse(size=len(ids), tasks=ids)

    def progress(self, request: InternalProgressRequest) -> InternalProgressResponse:
        generation = self.services.generation
        job = generation.job(request.id_task) if request.id_task else None
        if job is None or job.progress.state != "running":
            queued = job is not None and job.progress.state == "queued"
            completed = job is not None and job.finished
            textinfo = "Waiting..."
            if queued and job is not None:
                waiting = [item.id for item in generation.queued()]
                place = waiting.index(job.id) + 1 if job.id in waiting else 1
                textinfo = f"In queue: {place}/{len(waiting)}"
            return InternalProgressResponse(active=False, queued=queued, completed=completed,
                                            id_live_preview=-1, textinfo=textinfo)
        progress = generation.progress(job)
        preview, preview_id = None, request.id_live_preview
        options = self.services.options.as_dict()
        current_id = progress.job_no * 100_000 + progress.sampling_step
        wanted = request.live_preview and options.get("live_previews_enable", True)
        if progress.preview is not None and wanted and current_id != request.id_live_preview:
            preview = self._data_uri(progress.preview, str(options.get("live_previews_image_format", "png")))
            preview_id = current_id
        textinfo = (progress.textinfo or f"Batch {progress.job_no + 1}/{progress.job_count}, "
                    f"step {progress.sampling_step}/{progress.sampling_steps}")
        return InternalProgressResponse(active=True, queued=False, completed=False,
                                        progress=progress.fraction, eta=progress.eta_seconds,
                                        live_preview=preview, id_live_preview=preview_id, textinfo=textinfo)

    @staticmethod
    def _data_uri(image: Any, fmt: str) -> str:
        key = fmt.lower() if fmt.lower() in PREVIEW_FORMATS else "png"
        buffer = io.BytesIO()
        picture = image if key == "png" or image.mode == "RGB" else image.convert("RGB")
        picture.save(buffer, format=PREVIEW_FORMATS[key])
        return f"data:image/{key};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"

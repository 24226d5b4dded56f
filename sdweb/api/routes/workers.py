"""``GET /sdapi/v1/workers``: the workers jobs run on (sdweb's own route; A1111 has none).

One entry per worker: the in-process one, or each Ray worker with ``--workers`` / ``--ray-address``
(docs/multi-gpu.md), with its host, device, the model it holds, busy/idle, jobs done and last error.
Lost workers stay listed (state ``lost``) with the reason, so a PC that went away is visible.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import BaseModel

from sdweb.api.routes import ApiRoutes

logger = logging.getLogger(__name__)


class WorkerItem(BaseModel):
    id: str
    host: str
    device: str
    state: Literal["starting", "idle", "busy", "lost"]
    busy: bool
    model: str | None = None
    jobs_done: int = 0
    last_error: str | None = None


def add_routes(routes: ApiRoutes) -> None:
    services = routes.services

    def workers() -> list[WorkerItem]:
        return [WorkerItem(**status.as_dict()) for status in services.generation.workers()]

    routes.add("/workers", workers, "GET", list[WorkerItem])

"""Finding the checkpoint a request names, and the HTTP status for a model that would not load.

Shared by the routes that switch models (``POST /options``, ``/reload-checkpoint``) and by request
building (``override_settings.sd_model_checkpoint``).
"""

from __future__ import annotations

import logging
from typing import Any

from sdweb.api.errors import ApiError

logger = logging.getLogger(__name__)


def find_checkpoint(services: Any, query: str, where: str) -> Any:
    """The checkpoint ``query`` names (title, name or hash); 404 naming ``where`` when there is none,
    422 when its file is cut or damaged.
    """
    try:
        info = services.models.find(query)
    except LookupError as exc:
        raise ApiError(404, f"{where}: Model not found: {str(exc).strip(chr(34) + chr(39))}") from exc
    check = getattr(services.models, "check_file", None)
    if check is not None:
        try:
            check(info)  # a cut or damaged file is said now, before anything is loaded or queued
        except LookupError as exc:
            raise ApiError(404, f"{where}: {exc}") from exc
        except ValueError as exc:
            raise ApiError(422, f"{where}: {exc}") from exc
    return info


def load_failure_status(exc: BaseException) -> int:
    """422 for a file the model manager refuses, 507 when memory ran out, else 500."""
    if isinstance(exc, (LookupError, ValueError)):
        return 422
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return 507
    return 500

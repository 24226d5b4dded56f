"""CaptionService: what ``/sdapi/v1/interrogate`` asks for, run on the GPU worker queue.

Owns which captioning model answers which A1111 interrogator name ("clip", A1111's default, and
"blip" -> the BLIP captioner of :mod:`sdweb.engine.captioning`), loading it once (on first use, in the
worker, so torch and the download happen there), and turning the engine's "model not available"
into a :class:`CaptionError` with HTTP 503 and the advice to download it. "deepdanbooru" (A1111's tag
model) is not offered: 501.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from sdweb.config import LaunchSettings
from sdweb.services.worker import GpuWorker

logger = logging.getLogger(__name__)

#: A1111's interrogator names -> ours ("clip" is A1111's BLIP + CLIP; the BLIP caption answers it here).
CAPTION_MODELS = {"clip": "blip", "blip": "blip"}
NOT_OFFERED = {"deepdanbooru": "DeepDanbooru tagging is not available here; use model 'clip' "
                               "(a BLIP caption)"}


class CaptionError(Exception):
    """Captioning could not run: ``message`` for the person asking, ``status`` the HTTP status."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class CaptionService:
    """Caption images with the model named in the request, one at a time on the GPU worker."""

    def __init__(self, models_dir: Path, *, worker: GpuWorker | None = None,
                 settings: LaunchSettings | None = None) -> None:
        """Args:
        models_dir: the ``models`` folder (the captioner lives in ``models/BLIP``).
        worker: the GPU worker the captioning runs on (None: the caller's thread).
        settings: the launch settings whose device the model runs on (None: the CPU).
        """
        self._models_dir = models_dir
        self._worker = worker
        self._settings = settings
        self._lock = threading.Lock()
        self._captioner: Any = None

    def caption(self, image: Any, model: str = "clip") -> str:
        """A caption of ``image``; :class:`CaptionError` for an unknown model (404, as A1111), one not
        offered (501) or one that is not there and cannot be downloaded (503).
        """
        key = (model or "clip").strip().lower()
        if key in NOT_OFFERED:
            raise CaptionError(NOT_OFFERED[key], status=501)
        if key not in CAPTION_MODELS:
            raise CaptionError(f"model {model!r} not found; use one of: {', '.join(CAPTION_MODELS)}",
                               status=404)

        def run() -> str:
            return str(self._loaded().caption(image))

        if self._worker is None:
            return run()
        return self._worker.submit(run, label="interrogate").wait()

    def _loaded(self) -> Any:
        from sdweb.engine.captioning import CaptionerUnavailable, load_captioner

        with self._lock:
            if self._captioner is None:
                device: Any = "cpu"
                if self._settings is not None:
                    from sdweb.engine.devices import resolve_runtime

                    device = resolve_runtime(self._settings).device
                try:
                    self._captioner = load_captioner(self._models_dir, device)
                except CaptionerUnavailable as exc:
                    raise CaptionError(str(exc), status=503) from exc
                except (OSError, ValueError, RuntimeError) as exc:  # a broken or partial model folder
                    logger.exception("the captioning model could not be loaded")
                    raise CaptionError(f"the captioning model in {self._models_dir / 'BLIP'} could not be "
                                       f"loaded: {exc}", status=503) from exc
            return self._captioner

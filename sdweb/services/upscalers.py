"""UpscalerService: every upscaler there is (Pillow's and the model files'), by name, and running them.

The UI and the API ask this service, never the engine, for the upscaler list (``/sdapi/v1/upscalers``,
the Extras dropdown, hires fix's) and for Extras upscales. It owns the merge of:

* the built-in upscalers of :mod:`sdweb.images.upscale` ("None", "Lanczos", "Nearest"), which run
  right in the caller's thread (Pillow, no GPU);
* the model upscalers of ``models/ESRGAN`` (:class:`sdweb.engine.upscalers.UpscalerModelLibrary`,
  listed without torch), which run on the GPU worker through the engine, one job at a time with the
  generations.

A model upscaler needs the optional ``upscalers`` extra (spandrel). Without it the models are still
listed, and using one raises :class:`sdweb.images.upscale.ModelUpscalerError` with the install hint
before anything is queued (the API answers 422, the UI shows the message).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from PIL import Image

from sdweb.images.upscale import (
    LATENT_UPSCALE_MODES,
    ModelUpscalerError,
    UnknownUpscalerError,
    UpscalerInfo,
    find_hires_upscaler,
    find_upscaler,
    is_builtin_upscaler,
    list_upscalers,
    upscale_image,
)
from sdweb.services.worker import GpuWorker

logger = logging.getLogger(__name__)

_NOT_CHECKED = "not checked"


class UpscalerService:
    """The merged upscaler list and Extras upscaling."""

    def __init__(self, library: Any, *, worker: GpuWorker | None = None, engine: Any = None,
                 spandrel_check: Any = None) -> None:
        """Args:
        library: ``sdweb.engine.upscalers.UpscalerModelLibrary`` (the ESRGAN folder's models).
        worker: the GPU worker model upscales queue on (None: run in the caller's thread).
        engine: a callable returning the engine, whose ``upscale(image, name, size)`` runs a model.
        spandrel_check: ``() -> str | None``, why model upscalers cannot run (None: they can);
            default :func:`sdweb.engine.upscalers.spandrel_problem`, asked once.
        """
        self.library = library
        self._worker = worker
        self._engine = engine
        self._spandrel_check = spandrel_check
        self._problem: str | None = _NOT_CHECKED
        self._lock = threading.Lock()

    # -- listing -----------------------------------------------------------------------------
    def model_names(self) -> list[str]:
        """The model upscalers' names (file stems), sorted."""
        return [item.name for item in self.library.files()]

    def items(self) -> list[UpscalerInfo]:
        """``/sdapi/v1/upscalers``: the built-ins, then the models (path, and the scale the name says).

        The folder is rescanned first (cheap: names only), so a dropped-in model shows up at once.
        """
        self.library.refresh()
        models = [UpscalerInfo(name=item.name, scale=float(item.scale), model_name=item.name,
                               model_path=str(item.path)) for item in self.library.files()]
        return [*list_upscalers(), *models]

    def names(self) -> list[str]:
        """Every upscaler's name, as the Extras dropdown lists them."""
        return [item.name for item in self.items()]

    def hires_names(self) -> list[str]:
        """Hires fix's upscalers: the latent modes, then every pixel upscaler (A1111's order)."""
        return [*LATENT_UPSCALE_MODES, *self.names()]

    def refresh(self) -> None:
        """Rescan ``models/ESRGAN``."""
        self.library.refresh()

    # -- lookup ------------------------------------------------------------------------------
    def find(self, name: str) -> str:
        """The canonical name of an Extras upscaler; :class:`UnknownUpscalerError` lists the known ones."""
        try:
            return find_upscaler(name, self.model_names())
        except UnknownUpscalerError:
            self.library.refresh()  # a model copied in since the last scan
            return find_upscaler(name, self.model_names())

    def find_hires(self, name: str) -> str:
        """The canonical name of a hires fix upscaler (latent mode, built-in or model)."""
        try:
            return find_hires_upscaler(name, self.model_names())
        except UnknownUpscalerError:
            self.library.refresh()
            return find_hires_upscaler(name, self.model_names())

    def check_usable(self, name: str) -> None:
        """Raise :class:`ModelUpscalerError` (with the install hint) when ``name`` is a model upscaler
        and spandrel is not importable; built-in names always pass.
        """
        if is_builtin_upscaler(name):
            return
        problem = self.spandrel_problem()
        if problem is not None:
            raise ModelUpscalerError(f"upscaler {name!r} is a model upscaler (models/ESRGAN); {problem}")

    def spandrel_problem(self) -> str | None:
        """Why model upscalers cannot run here (None: they can). Asked once: the answer needs an import."""
        with self._lock:
            if self._problem == _NOT_CHECKED:
                check = self._spandrel_check
                if check is None:
                    from sdweb.engine.upscalers import spandrel_problem as check
                self._problem = check()
                if self._problem:
                    logger.info("model upscalers are listed but cannot run: %s", self._problem)
            return self._problem

    # -- running -----------------------------------------------------------------------------
    def upscale(self, image: Image.Image, *, upscaler: str, mode: int = 0, factor: float = 2.0,
                to_width: int = 512, to_height: int = 512, crop: bool = True) -> Image.Image:
        """``image`` upscaled as the Extras tab / API ask (:func:`sdweb.images.upscale.upscale_image`).

        Raises:
            UnknownUpscalerError: no upscaler by that name.
            UpscaleError: size or factor out of range; ModelUpscalerError (a subclass) when a model
                upscaler cannot run (extra missing, unusable file).
        """
        name = self.find(upscaler)
        if is_builtin_upscaler(name):
            return upscale_image(image, upscaler=name, mode=mode, factor=factor, to_width=to_width,
                                 to_height=to_height, crop=crop)
        self.check_usable(name)
        return upscale_image(image, upscaler=name, mode=mode, factor=factor, to_width=to_width,
                             to_height=to_height, crop=crop,
                             model_resize=lambda source, size: self._run_model(source, name, size))

    def _run_model(self, image: Image.Image, name: str, size: tuple[int, int]) -> Image.Image:
        if self._engine is None:
            raise ModelUpscalerError("model upscalers need the engine, which this server was built without")

        def run() -> Image.Image:
            result: Image.Image = self._engine().upscale(image, name, size)
            return result

        if self._worker is None or self._worker.on_worker_thread():  # a script's job already holds the worker
            return run()
        return self._worker.submit(run, label=f"upscale with {name}").wait()

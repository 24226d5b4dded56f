"""ControlNet for the UI and the API: the models and preprocessors on offer, request checks, previews.

The service owns what the sd-webui-controlnet extension's routes and UI need, torch-free:

* the model list (``name [hash]`` titles, filtered by the checkpoint's family where asked), from the
  :class:`~sdweb.engine.control.library.ControlNetLibrary` the engine also loads from;
* the preprocessors (:mod:`sdweb.images.control_maps`, plus those extensions register through the
  ``register_controlnet_preprocessors`` hook), their sliders and the control types;
* :meth:`ControlNetService.check`, run before a request is queued: each enabled unit's model exists,
  fits the checkpoint's family, its preprocessor exists, it has a picture where it needs one; the
  message names the unit and the field;
* :meth:`ControlNetService.detect`: a preprocessor's map of a picture (the "preview" button and
  ``POST /controlnet/detect``), computed outside the GPU queue (model-based annotators on the engine's
  device, through :class:`~sdweb.engine.control.annotators.AnnotatorRunner`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from PIL import Image

from sdweb.engine.control.detect import FAMILY_LABELS
from sdweb.engine.control.library import ControlNetLibrary
from sdweb.images.control_maps import (
    INPAINT_PREPROCESSORS,
    AnnotatorRunner,
    Preprocessor,
    PreprocessorRegistry,
    PreprocessorUnavailableError,
    from_spec,
)
from sdweb.params import ControlNetUnit, GenerationParams

logger = logging.getLogger(__name__)

#: ``GET /controlnet/version`` (the extension's API version the routes follow).
API_VERSION = 3
#: The setting holding the number of unit tabs (the extension's "Multi-ControlNet: Max models amount").
UNIT_COUNT_OPTION = "control_net_unit_count"
DEFAULT_UNIT_COUNT = 3


class ControlNetRequestError(ValueError):
    """A unit that cannot run; the message names the unit and the field."""


def family_of(checkpoint_family: str | None) -> str | None:
    """``sd1`` / ``sd2`` / ``sdxl`` of a checkpoint family string; None for others or unknown."""
    text = str(checkpoint_family or "")
    for name in ("sdxl", "sd2", "sd1"):
        if text.startswith(name):
            return name
    return None


class ControlNetService:
    """See the module docstring."""

    def __init__(self, library: ControlNetLibrary, *, options: Any = None, plugins: Any = None,
                 preprocessors: PreprocessorRegistry | None = None,
                 annotators: AnnotatorRunner | None = None) -> None:
        """``annotators`` runs the model-based preprocessors (default: an
        :class:`~sdweb.engine.control.annotators.AnnotatorRunner` on the CPU reading
        ``<first ControlNet folder>/annotators``).
        """
        self.library = library
        self.options = options
        if preprocessors is None:
            folder = library.folders[0] / "annotators" if library.folders else None
            if annotators is None:
                from sdweb.engine.control.annotators import AnnotatorRunner as EngineAnnotators

                annotators = EngineAnnotators(folder)
            preprocessors = PreprocessorRegistry.with_builtins(folder, annotators)
        self.annotators = annotators
        self.preprocessors = preprocessors
        if plugins is not None:  # extensions' preprocessors, after the built-in ones
            for name, specs in plugins.collect("register_controlnet_preprocessors"):
                for spec in specs or ():
                    try:
                        self.preprocessors.add(from_spec(spec))
                    except (TypeError, ValueError) as exc:
                        logger.error("extension %s: ControlNet preprocessor refused: %s", name, exc)

    # -- listing ------------------------------------------------------------------------------------
    def model_titles(self, family: str | None = None, *, refresh: bool = False) -> list[str]:
        """Model titles (``name [hash]``); with ``family`` (a checkpoint family) those that fit it."""
        if refresh:
            self.library.refresh()
        return self.library.titles(family_of(family) if family else None)

    def module_names(self) -> list[str]:
        return self.preprocessors.names()

    def module_detail(self) -> dict[str, Any]:
        return {item.name: item.detail() for item in self.preprocessors.items()}

    def preprocessor(self, name: str) -> Preprocessor:
        return self.preprocessors.find(name)

    def unit_count(self) -> int:
        if self.options is None:
            return DEFAULT_UNIT_COUNT
        try:
            return max(1, int(self.options.get(UNIT_COUNT_OPTION)))
        except (KeyError, TypeError, ValueError):
            return DEFAULT_UNIT_COUNT

    def control_types(self) -> dict[str, dict[str, Any]]:
        """The extension's ``/controlnet/control_types``: per type, its preprocessors and models."""
        titles = self.model_titles()
        types: dict[str, dict[str, Any]] = {}
        for tag in self.preprocessors.tags():
            modules = [item.name for item in self.preprocessors.for_tag(tag)]
            needle = tag.lower().split("/")[0].replace("-", "").replace(" ", "")
            models = titles if tag == "All" else [
                title for title in titles if needle in title.lower().replace("_", "").replace("-", "")]
            default_module = "none"
            if tag != "All":
                preferred = [name for name in modules if name.lower().startswith(needle)]
                others = [name for name in modules if name not in ("none", "invert")]
                default_module = (preferred or others or ["none"])[0]
            types[tag] = {"module_list": modules, "model_list": ["None", *models],
                          "default_option": default_module, "default_model": models[0] if models else "None"}
        return types

    # -- checks ---------------------------------------------------------------------------------------
    def check(self, params: GenerationParams, checkpoint_family: str | None, *,
              img2img: bool = False) -> None:
        """Raise :class:`ControlNetRequestError` naming the unit and field that cannot run."""
        family = family_of(checkpoint_family)
        for index, unit in enumerate(params.controlnet_units):
            if unit.enabled:
                self._check_unit(index, unit, family, checkpoint_family, img2img=img2img)

    def _check_unit(self, index: int, unit: ControlNetUnit, family: str | None, checkpoint_family: str | None,
                    *, img2img: bool) -> None:
        where = f"ControlNet unit {index}"
        if checkpoint_family and family is None:
            raise ControlNetRequestError(f"{where} (model): ControlNet runs with SD 1.x, SD 2.x and SDXL "
                                         f"checkpoints, not {checkpoint_family}")
        if not unit.model or unit.model.strip().lower() == "none":
            raise ControlNetRequestError(f"{where} (model): no ControlNet model chosen")
        try:
            file = self.library.find(unit.model)
        except LookupError as exc:
            raise ControlNetRequestError(f"{where} (model): {exc}") from exc
        if family is not None and file.family is not None and file.family != family:
            raise ControlNetRequestError(
                f"{where} (model): {file.title} is a {file.family_label} ControlNet but the checkpoint is "
                f"{FAMILY_LABELS[family]}; choose a {FAMILY_LABELS[family]} ControlNet model")
        try:
            preprocessor = self.preprocessors.find(unit.module)
        except LookupError as exc:
            raise ControlNetRequestError(f"{where} (module): {exc}") from exc
        problem = preprocessor.problem()  # a model-based one: its files (offline) and packages
        if problem is not None:
            raise ControlNetRequestError(f"{where} (module): {problem}")
        if preprocessor.name in INPAINT_PREPROCESSORS and unit.mask is None and not img2img:
            raise ControlNetRequestError(f"{where} (mask): the {preprocessor.name} preprocessor needs a mask")
        if unit.image is None and not img2img:
            raise ControlNetRequestError(f"{where} (image): no control image (txt2img units need one)")

    # -- previews -------------------------------------------------------------------------------------
    def detect(self, module: str, images: Sequence[Image.Image], *, processor_res: float = -1,
               threshold_a: float = -1, threshold_b: float = -1) -> list[Image.Image]:
        """The preprocessor's map of each picture (LookupError for an unknown module;
        PreprocessorUnavailableError, a ValueError, for a model-based one that cannot run: its message
        names the weight file or package it needs).
        """
        preprocessor = self.preprocessors.find(module)
        problem = preprocessor.problem()
        if problem is not None:
            raise PreprocessorUnavailableError(problem)
        return [preprocessor.run(image, processor_res, threshold_a, threshold_b) for image in images]

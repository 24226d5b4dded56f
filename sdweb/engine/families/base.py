"""The model-family seam: what a family of checkpoints tells the engine, and what a job hands to it.

A :class:`ModelFamily` says, for the checkpoints it handles (``handles(family_name)``, the detection's
family such as ``sd1``, ``sdxl-inpaint``, ``sd3.5-large``, ``flux-dev``): the request defaults that suit
it (:class:`FamilyDefaults`, pure data the UI and API use when such a model is selected), how to count a
prompt's tokens, and how to run txt2img (with hires fix) and img2img/inpainting on a loaded model. The
engine asks the registry (:mod:`sdweb.engine.families`) for the family and calls it; it holds no
``if family == ...`` chain. The UNet families reach the existing loops (:mod:`sdweb.engine.generate`,
:mod:`sdweb.engine.img2img`, :mod:`sdweb.engine.hires`); SD 3.x and Flux the flow-matching loop
(:mod:`sdweb.engine.families.flow_loop`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sdweb.params import EngineRun, GenerationParams, Img2ImgParams, JobControl, StepProgress


@dataclass(frozen=True)
class FamilyDefaults:
    """Request values that suit a family; the UI switches to them when such a model is selected and the
    API fills them into requests that leave the field out. ``None``: keep the general default.
    """

    steps: int = 20
    cfg_scale: float = 7.0
    #: Flux dev's guidance embedding ("Distilled CFG Scale"); None where the model has none.
    distilled_cfg_scale: float | None = None
    sampler_name: str = "Euler a"
    scheduler: str = "Automatic"
    width: int = 512
    height: int = 512
    #: Whether the negative prompt does anything at the default CFG scale (Flux: not at CFG 1).
    uses_negative_prompt: bool = True
    #: The prompt token counter's unit: 75-token CLIP chunks, or T5 chunks of this many text tokens.
    t5_tokens: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class FamilyJob:
    """What one generation job brings besides the request: the sampler registry, progress, control..."""

    samplers: Any
    control: JobControl
    on_step: Callable[[StepProgress], None]
    preview_every: int = 0
    extra_networks: Any = None
    model_upscalers: Any = None
    inpainting_mask_weight: float = 1.0
    #: The job's ControlNet units (``sdweb.engine.control.controlnet.ControlNetJob``), or None.
    controlnets: Any = None


class ModelFamily(Protocol):
    """One family of checkpoints; see the module docstring."""

    name: str
    #: Whether its checkpoints may take text encoders / VAE from module files (SD 3.x, Flux).
    uses_modules: bool

    def handles(self, family: str) -> bool:
        """Whether a detection's ``family`` string belongs to this family."""
        ...

    def defaults(self, family: str) -> FamilyDefaults: ...

    def txt2img(self, model: Any, params: GenerationParams, job: FamilyJob) -> EngineRun: ...

    def img2img(
        self, model: Any, params: Img2ImgParams, init_images: Sequence[Any], job: FamilyJob, mask: Any = None
    ) -> EngineRun: ...

    def count_tokens(self, pipe: Any, text: str, *, tokenizer: Any = None) -> tuple[int, int]: ...

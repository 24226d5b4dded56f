"""SD 1.x, SD 2.x and SDXL: the UNet families, run by the existing loops.

txt2img is :func:`sdweb.engine.generate.run_txt2img` (hires fix:
:func:`sdweb.engine.hires.run_hires_txt2img`),
img2img and inpainting :func:`sdweb.engine.img2img.run_img2img`; this module only says which checkpoints
are theirs and the defaults that suit them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sdweb.engine.families.base import FamilyDefaults, FamilyJob
from sdweb.engine.families.defaults import family_defaults
from sdweb.params import EngineRun, GenerationParams, Img2ImgParams

_PREFIXES = ("sd1", "sd2", "sdxl")


class UNetFamily:
    """Every UNet checkpoint sdweb runs (plain, v-prediction, inpainting, SDXL)."""

    name = "unet"
    uses_modules = False

    def handles(self, family: str) -> bool:
        return family.startswith(_PREFIXES)

    def defaults(self, family: str) -> FamilyDefaults:
        return family_defaults(family)

    def txt2img(self, model: Any, params: GenerationParams, job: FamilyJob) -> EngineRun:
        if params.enable_hr:
            from sdweb.engine.hires import run_hires_txt2img

            return run_hires_txt2img(
                model,
                params,
                samplers=job.samplers,
                control=job.control,
                on_step=job.on_step,
                preview_every=job.preview_every,
                extra_networks=job.extra_networks,
                model_upscalers=job.model_upscalers,
                inpainting_mask_weight=job.inpainting_mask_weight,
                controlnets=job.controlnets,
            )
        from sdweb.engine.generate import run_txt2img

        return run_txt2img(
            model,
            params,
            samplers=job.samplers,
            control=job.control,
            on_step=job.on_step,
            preview_every=job.preview_every,
            extra_networks=job.extra_networks,
            controlnets=job.controlnets,
        )

    def img2img(
        self, model: Any, params: Img2ImgParams, init_images: Sequence[Any], job: FamilyJob, mask: Any = None
    ) -> EngineRun:
        from sdweb.engine.img2img import run_img2img

        return run_img2img(
            model,
            params,
            init_images,
            samplers=job.samplers,
            control=job.control,
            on_step=job.on_step,
            preview_every=job.preview_every,
            extra_networks=job.extra_networks,
            mask=mask,
            inpainting_mask_weight=job.inpainting_mask_weight,
            controlnets=job.controlnets,
        )

    def count_tokens(self, pipe: Any, text: str, *, tokenizer: Any = None) -> tuple[int, int]:
        from sdweb.engine.encode import count_tokens

        return count_tokens(tokenizer if tokenizer is not None else pipe.tokenizer, text)

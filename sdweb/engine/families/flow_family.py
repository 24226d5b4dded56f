"""What SD 3.x and Flux share as families: defaults, token counting, and the flow loop for every mode.

:class:`FlowModelFamily` is the :class:`~sdweb.engine.families.base.ModelFamily` the engine sees; its
subclasses (:mod:`sdweb.engine.families.sd3`, :mod:`sdweb.engine.families.flux`) say how the transformer
is called. txt2img, hires fix (:func:`sdweb.engine.hires.run_hires_txt2img` with the flow passes plugged
in), img2img and inpainting all run :mod:`sdweb.engine.families.flow_loop`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from sdweb.engine.families.base import FamilyDefaults, FamilyJob
from sdweb.engine.families.flow_loop import FlowFamily, run_flow_img2img, run_flow_txt2img
from sdweb.params import EngineRun, GenerationParams, Img2ImgParams


class FlowModelFamily(FlowFamily):
    """Base of the SD 3.x and Flux families."""

    prefixes: tuple[str, ...] = ()
    #: Text encoders and VAE may come from module files (models/text_encoder, models/VAE).
    uses_modules = True

    def handles(self, family: str) -> bool:
        return family.startswith(self.prefixes)

    def defaults(self, family: str) -> FamilyDefaults:
        raise NotImplementedError

    def txt2img(self, model: Any, params: GenerationParams, job: FamilyJob) -> EngineRun:
        if params.enable_hr:
            from sdweb.engine.hires import run_hires_txt2img

            family = self

            def first_pass(
                model: Any, params: GenerationParams, *, output_type: Literal["pil", "latent"], **kwargs: Any
            ) -> EngineRun:
                return run_flow_txt2img(
                    model, params, _job_with(job, kwargs), family, output_type=output_type
                )

            def second_pass(
                model: Any,
                params: Img2ImgParams,
                init_images: Sequence[Any],
                *,
                init_latents: Any = None,
                **kwargs: Any,
            ) -> EngineRun:
                return run_flow_img2img(
                    model, params, init_images, _job_with(job, kwargs), family, init_latents=init_latents
                )

            return run_hires_txt2img(
                model,
                params,
                samplers=job.samplers,
                control=job.control,
                on_step=job.on_step,
                preview_every=job.preview_every,
                extra_networks=job.extra_networks,
                model_upscalers=job.model_upscalers,
                passes=(first_pass, second_pass),
            )
        return run_flow_txt2img(model, params, job, self)

    def img2img(
        self, model: Any, params: Img2ImgParams, init_images: Sequence[Any], job: FamilyJob, mask: Any = None
    ) -> EngineRun:
        return run_flow_img2img(model, params, init_images, job, self, mask=mask)

    def count_tokens(self, pipe: Any, text: str, *, tokenizer: Any = None) -> tuple[int, int]:
        from sdweb.engine.families.flow_encode import count_flow_tokens
        from sdweb.engine.models.flow_loader import t5_tokenizer

        t5 = getattr(pipe, "tokenizer_2" if self.config_family == "flux" else "tokenizer_3", None)
        if t5 is None:
            if self.config_family == "sd3":  # SD 3.x without T5: CLIP chunks are all it reads
                from sdweb.engine.encode import count_tokens

                return count_tokens(pipe.tokenizer, text)
            t5 = t5_tokenizer()
        return count_flow_tokens(t5, text, self.max_sequence_length(pipe))


def _job_with(job: FamilyJob, changes: dict[str, Any]) -> FamilyJob:
    """``job`` with the hires pass's own progress callback (and whatever else the pass changes)."""
    from dataclasses import replace

    known = {"on_step", "preview_every", "control", "extra_networks"}
    return replace(job, **{key: value for key, value in changes.items() if key in known})

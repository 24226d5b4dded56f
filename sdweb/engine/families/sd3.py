"""Stable Diffusion 3.x (3.0 Medium, 3.5 Medium, 3.5 Large, 3.5 Large Turbo): the MMDiT call and defaults.

The transformer takes the 16-channel latents as they are (it patches them itself), the timestep on the
scheduler's 0..1000 scale, the joint text sequence and the pooled CLIP vectors. Classifier-free guidance
with a negative prompt is the usual one. The fixed shift (3.0) comes from the scheduler config.
T5 reads at most 256 tokens per chunk (diffusers' and Stability's default).
"""

from __future__ import annotations

from typing import Any

import torch

from sdweb.engine.families.base import FamilyDefaults
from sdweb.engine.families.defaults import SD3_T5_TOKENS, family_defaults
from sdweb.engine.families.flow_family import FlowModelFamily
from sdweb.engine.families.flow_loop import FlowGuidance
from sdweb.params import GenerationParams

#: ComfyUI's SD3 latent -> RGB preview factors (rows: the 16 latent channels).
SD3_PREVIEW_FACTORS = (
    (-0.0645, 0.0177, 0.1052),
    (0.0028, 0.0312, 0.0650),
    (0.1848, 0.0762, 0.0360),
    (0.0944, 0.0360, 0.0889),
    (0.0897, 0.0506, -0.0364),
    (-0.0020, 0.1203, 0.0284),
    (0.0855, 0.0118, 0.0283),
    (-0.0539, 0.0658, 0.1047),
    (-0.0057, 0.0116, 0.0700),
    (-0.0412, 0.0281, -0.0039),
    (0.1106, 0.1171, 0.1220),
    (-0.0248, 0.0682, -0.0481),
    (0.0815, 0.0846, 0.1207),
    (-0.0120, -0.0055, -0.0867),
    (-0.0749, -0.0634, -0.0456),
    (-0.1418, -0.1457, -0.1259),
)


class SD3Family(FlowModelFamily):
    name = "sd3"
    config_family = "sd3"
    prefixes = ("sd3",)
    preview_factors = SD3_PREVIEW_FACTORS

    def defaults(self, family: str) -> FamilyDefaults:
        return family_defaults(family)

    def max_sequence_length(self, pipe: Any) -> int:
        return SD3_T5_TOKENS

    def size_multiple(self, pipe: Any) -> int:
        return int(getattr(pipe, "vae_scale_factor", 8)) * int(pipe.transformer.config.patch_size)

    def velocity(
        self,
        pipe: Any,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        guidance: FlowGuidance,
        params: GenerationParams,
    ) -> torch.Tensor:
        transformer = pipe.transformer
        return transformer(
            hidden_states=latents,
            timestep=timestep.expand(latents.shape[0]).to(latents.device),
            encoder_hidden_states=guidance.hidden.to(latents.dtype),
            pooled_projections=guidance.pooled.to(latents.dtype),
            return_dict=False,
        )[0]

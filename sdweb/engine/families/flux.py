"""FLUX.1 (dev, schnell and distilled/pruned derivatives): the transformer call and defaults.

Flux sees the 16-channel latents packed into 2x2 patches (64 values per token) with their (0, row,
column) position ids, the T5 sequence with zero ids, the pooled CLIP-L vector, the timestep on a 0..1
scale, and, for dev (a guidance embedder in the weights), the distilled guidance ("Distilled CFG Scale",
default 3.5). It is guidance-distilled: CFG scale 1 (one pass, no negative prompt) is its normal use;
CFG > 1 adds a true classifier-free pass with the negative prompt, as Forge allows. schnell is
timestep-distilled: 4 steps. The shift grows with the number of image tokens (diffusers' ``mu``).
"""

from __future__ import annotations

from typing import Any

import torch

from sdweb.engine.families.base import FamilyDefaults
from sdweb.engine.families.defaults import FLUX_DEV_T5_TOKENS, FLUX_SCHNELL_T5_TOKENS, family_defaults
from sdweb.engine.families.flow_family import FlowModelFamily
from sdweb.engine.families.flow_loop import FlowGuidance
from sdweb.params import GenerationParams

#: ComfyUI's Flux latent -> RGB preview factors and bias (rows: the 16 latent channels).
FLUX_PREVIEW_FACTORS = (
    (-0.0346, 0.0244, 0.0681),
    (0.0034, 0.0210, 0.0687),
    (0.0275, -0.0668, -0.0433),
    (-0.0174, 0.0160, 0.0617),
    (0.0859, 0.0721, 0.0329),
    (0.0004, 0.0383, 0.0115),
    (0.0405, 0.0861, 0.0915),
    (-0.0236, -0.0185, -0.0259),
    (-0.0245, 0.0250, 0.1180),
    (0.1008, 0.0755, -0.0421),
    (-0.0515, 0.0201, 0.0011),
    (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749),
    (-0.1264, -0.0522, -0.1103),
    (-0.0280, -0.0881, -0.0499),
    (-0.1262, -0.0982, -0.0778),
)
FLUX_PREVIEW_BIAS = (-0.0329, -0.0718, -0.0851)


class FluxFamily(FlowModelFamily):
    name = "flux"
    config_family = "flux"
    prefixes = ("flux",)
    preview_factors = FLUX_PREVIEW_FACTORS
    preview_bias = FLUX_PREVIEW_BIAS

    def defaults(self, family: str) -> FamilyDefaults:
        return family_defaults(family)

    def uses_distilled_guidance(self, pipe: Any) -> bool:
        return bool(pipe.transformer.config.guidance_embeds)

    def max_sequence_length(self, pipe: Any) -> int:
        return FLUX_DEV_T5_TOKENS if self.uses_distilled_guidance(pipe) else FLUX_SCHNELL_T5_TOKENS

    def image_tokens(self, pipe: Any, latent_height: int, latent_width: int) -> int:
        return (latent_height // 2) * (latent_width // 2)

    def velocity(
        self,
        pipe: Any,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        guidance: FlowGuidance,
        params: GenerationParams,
    ) -> torch.Tensor:
        batch, channels, height, width = latents.shape
        packed = (
            latents.view(batch, channels, height // 2, 2, width // 2, 2)
            .permute(0, 2, 4, 1, 3, 5)
            .reshape(batch, (height // 2) * (width // 2), channels * 4)
        )
        image_ids = torch.zeros(height // 2, width // 2, 3, device=latents.device)
        image_ids[..., 1] += torch.arange(height // 2, device=latents.device)[:, None]
        image_ids[..., 2] += torch.arange(width // 2, device=latents.device)[None, :]
        text_ids = torch.zeros(guidance.hidden.shape[1], 3, device=latents.device)
        distilled = None
        if self.uses_distilled_guidance(pipe):
            distilled = torch.full(
                (batch,), float(params.distilled_cfg_scale), device=latents.device, dtype=torch.float32
            )
        out = pipe.transformer(
            hidden_states=packed,
            timestep=(timestep.expand(batch).to(latents.device, latents.dtype) / 1000),
            guidance=distilled,
            pooled_projections=guidance.pooled.to(latents.dtype),
            encoder_hidden_states=guidance.hidden.to(latents.dtype),
            txt_ids=text_ids.to(latents.dtype),
            img_ids=image_ids.reshape(-1, 3).to(latents.dtype),
            return_dict=False,
        )[0]
        return (
            out.view(batch, height // 2, width // 2, channels, 2, 2)
            .permute(0, 3, 1, 4, 2, 5)
            .reshape(batch, channels, height, width)
        )

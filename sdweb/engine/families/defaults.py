"""Request defaults per model family, as pure data (no torch): the UI switches to them when a checkpoint of
that family is selected, and the API fills them into requests that leave the field out.

Values follow the model makers' recommendations: Flux dev 20 steps with "Distilled CFG Scale" 3.5 and CFG 1
(one pass, the negative prompt unused), schnell 4 steps; SD 3.5 Large 28 steps at CFG 3.5, Medium 40 at
4.5, Large Turbo 4 at CFG 1; SD 3.0 Medium 28 at 7; SDXL at 1024 px.
"""

from __future__ import annotations

from sdweb.engine.families.base import FamilyDefaults

#: T5 text tokens per chunk (the chunk length minus its EOS): SD 3.x 256, Flux dev 512, schnell 256.
SD3_T5_TOKENS = 256
FLUX_DEV_T5_TOKENS = 512
FLUX_SCHNELL_T5_TOKENS = 256


def family_defaults(family: str | None) -> FamilyDefaults:
    """The defaults for a detection family string (``sd1``, ``sdxl``, ``flux-dev``, ``sd3.5-large``...)."""
    name = family or "sd1"
    if name.startswith("flux"):
        flux = {
            "sampler_name": "Euler",
            "cfg_scale": 1.0,
            "width": 1024,
            "height": 1024,
            "uses_negative_prompt": False,
        }
        if name.startswith("flux-schnell"):
            return FamilyDefaults(steps=4, t5_tokens=FLUX_SCHNELL_T5_TOKENS - 1, **flux)
        return FamilyDefaults(steps=20, distilled_cfg_scale=3.5, t5_tokens=FLUX_DEV_T5_TOKENS - 1, **flux)
    if name.startswith("sd3"):
        sd3 = {"sampler_name": "Euler", "width": 1024, "height": 1024, "t5_tokens": SD3_T5_TOKENS - 1}
        if name.endswith("turbo"):
            return FamilyDefaults(steps=4, cfg_scale=1.0, uses_negative_prompt=False, **sd3)
        if name == "sd3.5-medium":
            return FamilyDefaults(steps=40, cfg_scale=4.5, **sd3)
        if name == "sd3.5-large":
            return FamilyDefaults(steps=28, cfg_scale=3.5, **sd3)
        return FamilyDefaults(steps=28, cfg_scale=7.0, **sd3)
    if name.startswith("sdxl"):
        return FamilyDefaults(width=1024, height=1024)
    if name.startswith("sd2-v"):
        return FamilyDefaults(width=768, height=768)
    return FamilyDefaults()


def is_flow_family(family: str | None) -> bool:
    """SD 3.x and Flux: flow-matching transformers (T5 prompts, module files, flow samplers)."""
    return bool(family) and str(family).startswith(("flux", "sd3"))

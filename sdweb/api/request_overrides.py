"""Request values that come from elsewhere than the request's own fields: ``override_settings`` and
an ``infotext`` to start from.

* ``override_settings``: the keys that are request fields here (:data:`OVERRIDE_TO_FIELD`) become
  them; settings that do not change the image are ignored (one warning line); A1111 settings we do not
  have are refused unless at their neutral value; other settings of ours cannot change per request.
* ``infotext``: an A1111 infotext fills the fields the request left unset, and picks its checkpoint by
  hash or name; features it names that we do not have are refused (never a different image).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sdweb.api.errors import ApiError
from sdweb.api.model_lookup import find_checkpoint

logger = logging.getLogger(__name__)

#: override_settings keys that are request fields here.
OVERRIDE_TO_FIELD: Mapping[str, str] = {
    "sd_model_checkpoint": "checkpoint",
    "CLIP_stop_at_last_layers": "clip_skip",
    "randn_source": "rng",
    "eta_noise_seed_delta": "eta_noise_seed_delta",
    "sampler_path": "sampler_path",
    "img2img_fix_steps": "img2img_fix_steps",
    "sd_vae": "vae",
    # Forge's: the text encoders / VAE files an SD 3.x or Flux checkpoint is loaded with.
    "forge_additional_modules": "additional_modules",
    # A1111's UniPC settings.
    "uni_pc_variant": "uni_pc_variant",
    "uni_pc_skip_type": "uni_pc_skip_type",
    "uni_pc_order": "uni_pc_order",
    "uni_pc_lower_order_final": "uni_pc_lower_order_final",
    # A1111's compatibility settings.
    "use_old_scheduling": "use_old_scheduling",
    "use_downcasted_alpha_bar": "use_downcasted_alpha_bar",
    "pad_cond_uncond": "pad_cond_uncond",
    "pad_cond_uncond_v0": "pad_cond_uncond_v0",
    # A1111's sampler / schedule settings.
    "always_discard_next_to_last_sigma": "always_discard_next_to_last_sigma",
    "sgm_noise_multiplier": "sgm_noise_multiplier",
    "sigma_min": "sigma_min",
    "sigma_max": "sigma_max",
    "rho": "rho",
    "beta_dist_alpha": "beta_dist_alpha",
    "beta_dist_beta": "beta_dist_beta",
    "img2img_extra_noise": "img2img_extra_noise",
    # A1111's sampler parameters and CFG skipping.
    "s_churn": "s_churn",
    "s_tmin": "s_tmin",
    "s_tmax": "s_tmax",
    "s_noise": "s_noise",
    "s_min_uncond": "s_min_uncond",
    "s_min_uncond_all": "s_min_uncond_all",
    "skip_early_cond": "skip_early_cond",
    "emphasis": "emphasis",
    "sd_noise_schedule": "sd_noise_schedule",
}
#: Settings that are request fields of the same name too (A1111's): an error names the request field.
REQUEST_FIELD_SETTINGS = frozenset({"s_churn", "s_tmin", "s_tmax", "s_noise", "s_min_uncond"})
#: Our settings that do not change the image: overriding them per request is ignored (logged).
NON_IMAGE_OPTIONS = frozenset({
    "samples_format", "samples_save", "grid_save", "jpeg_quality", "outdir_txt2img_samples",
    "outdir_txt2img_grids", "live_previews_enable", "show_progress_every_n_steps", "torch_threads",
    "disabled_extensions", "outdir_samples", "outdir_img2img_samples", "outdir_grids", "outdir_img2img_grids",
    "return_grid", "enable_pnginfo", "send_seed", "send_size", "live_previews_image_format",
    # Not implemented here; A1111 applies it to img2img results (ignored, as before it was a setting).
    "img2img_color_correction",
})
#: A1111 settings we do not have that change the image unless left at these values.
A1111_IMAGE_SETTINGS: Mapping[str, Any] = {
    "token_merging_ratio": 0,
    "always_discard_next_to_last_sigma": False,
    "sd_unet": "Automatic",
    "use_old_emphasis_implementation": False,
    "face_restoration": False,
}
#: Infotext keys that mean a feature we do not have yet; applying the rest would make another image.
INFOTEXT_UNSUPPORTED: Mapping[str, str] = {
    "Hires checkpoint": "a hires fix checkpoint", "Hires CFG Scale": "a hires fix CFG scale",
    "Face restoration": "face restoration",
}


def override_values(overrides: Mapping[str, Any], services: Any) -> dict[str, Any]:
    """The request fields ``override_settings`` sets; 422/404 for ones that cannot be honoured."""
    values: dict[str, Any] = {}
    ignored: list[str] = []
    problems: list[str] = []
    options = services.options
    known_options = {spec.key for spec in options.specs}
    for key, value in overrides.items():
        if key in OVERRIDE_TO_FIELD:
            if key == "sd_vae" and value == "Automatic":
                value = None  # the setting's default behaviour, as without an override
            values[OVERRIDE_TO_FIELD[key]] = value
        elif key in NON_IMAGE_OPTIONS or key not in known_options and key not in A1111_IMAGE_SETTINGS:
            ignored.append(key)
        elif key in A1111_IMAGE_SETTINGS:
            if value != A1111_IMAGE_SETTINGS[key]:
                problems.append(f"override_settings.{key}: not supported yet (only "
                                f"{A1111_IMAGE_SETTINGS[key]!r})")
        elif value != options.get(key):
            problems.append(f"override_settings.{key}: cannot be changed for one request; set it with "
                            "POST /sdapi/v1/options")
    if problems:
        raise ApiError(422, "; ".join(problems))
    if ignored:
        logger.warning("txt2img: override_settings not applied (they do not change the image): %s",
                       ", ".join(ignored[:20]))
    vae = values.get("vae")
    if isinstance(vae, str) and vae not in ("Automatic", "None"):
        try:
            values["vae"] = services.models.vae_registry.find(vae).name
        except LookupError as exc:
            raise ApiError(404, f"override_settings.sd_vae: {str(exc).strip(chr(34) + chr(39))}") from exc
    if "checkpoint" in values and isinstance(values["checkpoint"], str):
        values["checkpoint"] = find_checkpoint(services, values["checkpoint"],
                                               "override_settings.sd_model_checkpoint").title
    return values


def kept_overrides(overrides: Mapping[str, Any], restore_afterwards: bool | None) -> dict[str, Any]:
    """The overrides that become the settings after the job; empty when they are restored afterwards.

    A1111 keeps them when ``override_settings_restore_afterwards`` is false.
    """
    if overrides and restore_afterwards is False:
        return {key: value for key, value in overrides.items() if key in OVERRIDE_TO_FIELD}
    return {}


def override_location(loc: Any) -> tuple[Any, ...]:
    """A validation error's location, naming the ``override_settings`` key a field came from."""
    names = {field: f"override_settings.{key}" for key, field in OVERRIDE_TO_FIELD.items()
             if field not in REQUEST_FIELD_SETTINGS}
    parts = tuple(loc)
    if parts and parts[0] in names:
        return (names[parts[0]], *parts[1:])
    return parts


def _pasted_gpu_rng(services: Any) -> str:
    """What reproduces A1111's default GPU noise here (``AppServices.pasted_gpu_rng``)."""
    probe = getattr(services, "pasted_gpu_rng", None)
    return str(probe()) if callable(probe) else "NV"


def auto_backcompat(services: Any) -> bool:
    """A1111's "Automatic backward compatibility" setting (``auto_backcompat``; on where it is unknown)."""
    options = getattr(services, "options", None)
    if options is None:
        return True
    try:
        value = options.get("auto_backcompat")
    except KeyError:
        return True
    return value is not False


def infotext_values(infotext: str, given: set[str], services: Any) -> dict[str, Any]:
    """The fields an infotext fills (only those the request left unset)."""
    from sdweb.images.infotext import (
        INFOTEXT_NOT_HONOURED,
        InfotextError,
        infotext_to_params,
        parse_infotext,
    )
    from sdweb.images.infotext_versions import version_backcompat

    parsed = parse_infotext(infotext)
    if auto_backcompat(services):  # an old A1111 Version turns on the settings that version had
        parsed = version_backcompat(parsed)
    try:
        from_text, extras = infotext_to_params(parsed, gpu_rng=_pasted_gpu_rng(services))
    except InfotextError as exc:  # its message already names the infotext key
        raise ApiError(422, str(exc) if str(exc).startswith("infotext") else f"infotext: {exc}") from exc
    unsupported = sorted({feature for key, feature in INFOTEXT_UNSUPPORTED.items() if key in extras})
    if unsupported:
        raise ApiError(422, f"infotext: it uses {', '.join(unsupported)}, which is not supported yet")
    not_honoured = [key for key in INFOTEXT_NOT_HONOURED if key in extras]
    if not_honoured:
        raise ApiError(422, f"infotext: {', '.join(not_honoured)} would change the image and cannot be "
                            "applied here yet")
    values: dict[str, Any] = {}
    # A hires fix image's infotext turns hires fix on, with the values it wrote (infotext_to_params).
    for name in from_text.model_fields_set:
        if name == "styles" or name in given:
            continue
        if name in ("sampler_name", "scheduler") and ({"sampler_name", "sampler_index"} & given):
            continue
        values[name] = getattr(from_text, name)
    # A1111 writes both; the hash is found only once the file was hashed, the name always.
    wanted = [str(extras[key]) for key in ("Model hash", "Model") if extras.get(key)]
    if wanted:
        values["checkpoint"] = _infotext_checkpoint(wanted, services)
    applied = {"Model hash", "Model", "Version", "VAE", "VAE hash"}
    left = [key for key in extras if key not in applied]
    if left:
        logger.warning("txt2img: infotext keys not applied: %s", ", ".join(left[:20]))
    return values


def _infotext_checkpoint(wanted: list[str], services: Any) -> str:
    problem = ""
    for query in wanted:
        try:
            return str(services.models.find(query).title)
        except LookupError as exc:
            problem = str(exc).strip("'\"")
    raise ApiError(404, f"infotext: Model {' / '.join(wanted)} is not available here ({problem}); "
                        "choose one with override_settings.sd_model_checkpoint")

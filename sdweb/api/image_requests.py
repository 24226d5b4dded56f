"""The API requests that carry images: img2img and the Extras (upscaling) routes.

This module owns turning their A1111 fields into our typed calls, and every refusal they need, so that
the routes (:mod:`sdweb.api.routes.generation`, :mod:`sdweb.api.routes.extras`) only queue and answer:

* img2img: ``init_images`` (base64, decoded with the decompression-bomb limit of
  :mod:`sdweb.images.metadata`, or http(s) URLs fetched by :mod:`sdweb.api.image_urls`),
  ``denoising_strength`` and ``resize_mode`` on top of the txt2img fields
  (:class:`sdweb.params.Img2ImgParams`); ``mask`` (same size as the init images) with ``mask_blur`` (or
  ``mask_blur_x``/``mask_blur_y``, which may differ), ``inpainting_fill``, ``inpaint_full_res``,
  ``inpaint_full_res_padding``, ``inpainting_mask_invert`` makes it inpainting. ``latent_mask`` and
  ``initial_noise_multiplier`` other than 1 are refused with 422, never silently dropped.
* img2img scripts (``script_name: "poor man's outpainting"``) are :mod:`sdweb.api.scripts`'.
* Extras: ``upscaler_1`` (and ``upscaler_2`` blended in at ``extras_upscaler_2_visibility``), "scale
  by" (``upscaling_resize``) or "scale to" (``upscaling_resize_w/h``, ``upscaling_crop``), with the
  upscalers of the ``UpscalerService``: the built-in Pillow ones (:mod:`sdweb.images.upscale`) run in
  the request's thread; model upscalers (models/ESRGAN) wait for their turn on the GPU queue. Face
  restoration is refused with 422.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image
from pydantic import ValidationError

from sdweb.api.errors import ApiError, describe_validation_errors
from sdweb.api.image_urls import ImageUrlError, fetch_image_bytes, is_image_url
from sdweb.api.models import ExtrasBaseRequest, Img2ImgRequest
from sdweb.api.upscaler_names import resolve_upscaler
from sdweb.images.metadata import (
    ImageDecodeError,
    decode_base64_image,
    decode_image_bytes,
    read_image_metadata,
)
from sdweb.images.upscale import UnknownUpscalerError, UpscaleError, find_upscaler, upscale_image
from sdweb.params import GenerationParams, Img2ImgParams

logger = logging.getLogger(__name__)

#: Most init images one img2img request may carry (each makes one image of the batch; batch_size <= 16).
MAX_INIT_IMAGES = 16
#: Most images one extra-batch-images request may carry.
MAX_EXTRAS_BATCH = 64


# ---------------------------------------------------------------------------------------------
# img2img
# ---------------------------------------------------------------------------------------------


def refuse_unsupported_img2img(request: Img2ImgRequest) -> None:
    """422 for img2img fields that would change the image and that we cannot honour yet."""
    problems: list[str] = []
    if request.latent_mask:
        problems.append("latent_mask: a separate latent mask is not supported yet; send only mask")
    if request.initial_noise_multiplier not in (None, 1.0):
        problems.append(f"initial_noise_multiplier: only 1 is supported yet (got "
                        f"{request.initial_noise_multiplier})")
    if problems:
        raise ApiError(422, "; ".join(problems))


@dataclass(frozen=True)
class UrlPolicy:
    """Whether images may be given by URL, and from where (:mod:`sdweb.api.image_urls`)."""

    #: A1111's setting ``api_enable_requests`` (on unless switched off).
    enabled: bool = True
    #: ``--api-allow-local-requests``: URLs on this machine or the LAN too.
    allow_local: bool = False

    @classmethod
    def of(cls, services: Any) -> UrlPolicy:
        enabled = services.options.as_dict().get("api_enable_requests", True) is not False
        return cls(enabled=enabled, allow_local=bool(getattr(services.settings, "api_allow_local_requests",
                                                             False)))


def decode_images(encoded: Sequence[str], field: str, urls: UrlPolicy | None = None) -> list[Image.Image]:
    """Base64 images (or, with ``urls``, http(s) URLs) as loaded PIL images; a bad one -> 400 naming
    ``field[index]`` and the problem.
    """
    images = []
    for index, text in enumerate(encoded):
        try:
            if is_image_url(text):
                if urls is None or not urls.enabled:
                    raise ImageUrlError("image URLs are not fetched here (A1111's setting "
                                        "api_enable_requests is off); send the image as base64")
                images.append(decode_image_bytes(fetch_image_bytes(text, allow_local=urls.allow_local)))
            else:
                images.append(decode_base64_image(text))
        except ImageUrlError as exc:
            raise ApiError(400, f"{field}[{index}]: the URL {text.strip()[:200]!r}: {exc}") from exc
        except ImageDecodeError as exc:
            raise ApiError(400, f"{field}[{index}]: {exc}") from exc
    return images


def init_images_of(request: Img2ImgRequest, urls: UrlPolicy | None = None) -> list[Image.Image]:
    """The request's init images, decoded or fetched (at least one, at most :data:`MAX_INIT_IMAGES`)."""
    encoded = [text for text in (request.init_images or []) if text]
    if not encoded:
        raise ApiError(422, "init_images: img2img needs at least one init image (base64 PNG, JPEG or WEBP, "
                            "or an http(s) URL)")
    if len(encoded) > MAX_INIT_IMAGES:
        raise ApiError(422, f"init_images: at most {MAX_INIT_IMAGES} images (got {len(encoded)})")
    return decode_images(encoded, "init_images", urls)


def mask_of(request: Img2ImgRequest, urls: UrlPolicy | None = None) -> Image.Image | None:
    """The request's inpainting mask, decoded or fetched; None without one."""
    if not request.mask:
        return None
    return decode_images([request.mask], "mask", urls)[0]


def img2img_params(base: GenerationParams, request: Img2ImgRequest) -> Img2ImgParams:
    """``base`` (the txt2img fields, as the txt2img route builds them) plus the img2img fields.

    ``mask_blur`` sets both blurs; without it ``mask_blur_x`` and ``mask_blur_y`` may differ (A1111's).
    """
    values = base.model_dump()
    given = request.given()
    for name in ("denoising_strength", "resize_mode", "inpainting_fill", "inpaint_full_res",
                 "inpaint_full_res_padding", "inpainting_mask_invert"):
        if name in given:
            values[name] = getattr(request, name)
    if request.mask_blur is not None:
        values["mask_blur"] = request.mask_blur
    elif request.mask_blur_x is not None:
        values["mask_blur"] = request.mask_blur_x
        across_and_down = request.mask_blur_y is not None and request.mask_blur_y != request.mask_blur_x
        values["mask_blur_y"] = request.mask_blur_y if across_and_down else None
    try:
        return Img2ImgParams(**values)
    except ValidationError as exc:
        detail, errors = describe_validation_errors(list(exc.errors()))
        raise ApiError(422, detail, errors=errors) from exc


def img2img_echo(request: Img2ImgRequest) -> dict[str, Any]:
    """``parameters`` of the response: as A1111, the init images and mask only with include_init_images."""
    echo = request.echo()
    if not request.include_init_images:
        echo["init_images"] = None
        echo["mask"] = None
    return echo


# ---------------------------------------------------------------------------------------------
# Extras
# ---------------------------------------------------------------------------------------------


def refuse_unsupported_extras(request: ExtrasBaseRequest) -> None:
    problems = []
    for name in ("gfpgan_visibility", "codeformer_visibility", "codeformer_weight"):
        value = getattr(request, name)
        if not 0 <= value <= 1:
            problems.append(f"{name}: must be between 0 and 1 (got {value})")
    if not 0 <= request.extras_upscaler_2_visibility <= 1:
        problems.append(f"extras_upscaler_2_visibility: must be between 0 and 1 "
                        f"(got {request.extras_upscaler_2_visibility})")
    if problems:
        raise ApiError(422, "; ".join(problems))


def upscale_for_extras(image: Image.Image, request: ExtrasBaseRequest,
                       upscalers: Any = None) -> tuple[Image.Image, str]:
    """``(upscaled image, info text)`` for one Extras image; bad values -> 400/422 naming the field.

    ``upscalers``: the ``UpscalerService`` (built-in and models/ESRGAN upscalers); None: built-ins only.
    A model upscaler that cannot run (the optional extra missing) is a 422 saying how to install it.
    """
    options: dict[str, Any] = dict(mode=request.resize_mode, factor=request.upscaling_resize,
                                   to_width=request.upscaling_resize_w, to_height=request.upscaling_resize_h,
                                   crop=request.upscaling_crop)
    upscale = upscalers.upscale if upscalers is not None else upscale_image
    find = upscalers.find if upscalers is not None else find_upscaler
    model_names = upscalers.model_names if upscalers is not None else tuple
    notes: list[str] = []
    try:
        # The infotext names upscalers as they are listed ("4x-UltraSharp", whatever the case asked);
        # A1111's names whose model file is missing become Lanczos, said in html_info and the log.
        request = request.model_copy(update={
            name: resolve_upscaler(getattr(request, name) or "None", find, model_names, notes, field=name)
            for name in ("upscaler_1", "upscaler_2")})
        result = upscale(image, upscaler=request.upscaler_1, **options)
        second = request.upscaler_2 or "None"
        visibility = float(request.extras_upscaler_2_visibility)
        if second != "None" and visibility > 0:
            other = upscale(image, upscaler=second, **options)
            if other.size == result.size:  # "None" as the first upscaler leaves the size as it was
                result = Image.blend(result.convert(other.mode), other, visibility)
    except UnknownUpscalerError as exc:
        raise ApiError(400, f"upscaler_1/upscaler_2: {exc}") from exc
    except UpscaleError as exc:
        raise ApiError(422, str(exc)) from exc
    if notes:
        logger.warning("extras: %s", "; ".join(notes))
    return result, "\n".join(part for part in (_extras_info(request, result), *notes) if part)


def _extras_info(request: ExtrasBaseRequest, result: Image.Image) -> str:
    # A1111's postprocessing infotext keys.
    if (request.upscaler_1 or "None") == "None":
        return ""
    if request.resize_mode == 1:
        pairs = [f"Postprocess upscale to: {request.upscaling_resize_w}x{request.upscaling_resize_h}"]
        if request.upscaling_crop:
            pairs.append(f"Postprocess crop to: {result.width}x{result.height}")
    else:
        pairs = [f"Postprocess upscale by: {request.upscaling_resize:g}"]
    pairs.append(f"Postprocess upscaler: {request.upscaler_1}")
    if (request.upscaler_2 or "None") != "None" and request.extras_upscaler_2_visibility > 0:
        pairs.append(f"Postprocess upscaler 2: {request.upscaler_2}")
    return ", ".join(pairs)


def source_infotext(image: Image.Image) -> str | None:
    """The generation parameters the source image carried (kept on the upscaled PNG, as A1111)."""
    return read_image_metadata(image).parameters

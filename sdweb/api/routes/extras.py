"""``POST /extra-single-image`` and ``/extra-batch-images`` (upscaling), ``/png-info`` (an image's
generation parameters) and ``/interrogate`` (a BLIP caption: :mod:`sdweb.services.captioning`).

The Extras run in the request's thread (:mod:`sdweb.api.image_requests`): Pillow upscalers right
there, model upscalers via the GPU queue.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sdweb.api.encoding import encode_png_base64
from sdweb.api.errors import ApiError
from sdweb.api.image_requests import (
    MAX_EXTRAS_BATCH,
    UrlPolicy,
    decode_images,
    refuse_unsupported_extras,
    source_infotext,
    upscale_for_extras,
)
from sdweb.api.models import (
    ErrorResponse,
    ExtrasBatchImagesRequest,
    ExtrasBatchImagesResponse,
    ExtrasSingleImageRequest,
    ExtrasSingleImageResponse,
    InterrogateRequest,
    InterrogateResponse,
    PNGInfoRequest,
    PNGInfoResponse,
)
from sdweb.api.routes import ApiRoutes
from sdweb.services.container import AppServices

logger = logging.getLogger(__name__)

NOT_IMPLEMENTED_RESPONSE: dict[int | str, dict[str, Any]] = {
    501: {"model": ErrorResponse, "description": "The feature does not exist yet"},
}
UNAVAILABLE_RESPONSE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorResponse, "description": "The captioning model is not there and cannot be fetched"},
}


def add_routes(routes: ApiRoutes) -> None:
    handlers = ExtrasRoutes(routes.services)
    routes.add("/extra-single-image", handlers.extra_single_image, "POST", ExtrasSingleImageResponse)
    routes.add("/extra-batch-images", handlers.extra_batch_images, "POST", ExtrasBatchImagesResponse)
    routes.add("/interrogate", handlers.interrogate, "POST", InterrogateResponse,
               responses={**NOT_IMPLEMENTED_RESPONSE, **UNAVAILABLE_RESPONSE})
    routes.add("/png-info", handlers.png_info, "POST", PNGInfoResponse)


class ExtrasRoutes:
    """The image tool handlers, bound to one services container."""

    def __init__(self, services: AppServices) -> None:
        self.services = services
        self._caption_lock = threading.Lock()
        self._caption_service: Any = None

    def extra_single_image(self, request: ExtrasSingleImageRequest) -> ExtrasSingleImageResponse:
        refuse_unsupported_extras(request)
        (image,) = decode_images([request.image], "image", UrlPolicy.of(self.services))
        upscaled, info = self._process(image, request)
        return ExtrasSingleImageResponse(html_info=info,
                                         image=encode_png_base64(upscaled, source_infotext(image)))

    def _process(self, image: Any, request: Any) -> tuple[Any, str]:
        """Face restoration (when asked), then the upscale (A1111's default order); the info text."""
        lines: list[str] = []
        restorers = getattr(self.services, "face_restorers", None)
        source = image
        if restorers is not None and (request.gfpgan_visibility > 0 or request.codeformer_visibility > 0):
            source, lines, warnings = restorers.restore_for_extras(
                image, gfpgan_visibility=request.gfpgan_visibility,
                codeformer_visibility=request.codeformer_visibility,
                codeformer_weight=request.codeformer_weight)
            lines += warnings
        upscaled, info = upscale_for_extras(source, request, self.services.upscalers)
        return upscaled, "\n".join([*lines, info]) if lines else info

    def extra_batch_images(self, request: ExtrasBatchImagesRequest) -> ExtrasBatchImagesResponse:
        refuse_unsupported_extras(request)
        count = len(request.imageList)
        if count > MAX_EXTRAS_BATCH:
            raise ApiError(422, f"imageList: at most {MAX_EXTRAS_BATCH} images (got {count})")
        encoded: list[str] = []
        info = ""
        for index, item in enumerate(request.imageList):
            # One at a time: one decoded source and its result in memory, whatever the batch size.
            image = decode_images([item.data], "imageList", UrlPolicy.of(self.services))[0]
            try:
                upscaled, info = self._process(image, request)
            except ApiError as exc:
                raise ApiError(exc.status, f"imageList[{index}] ({item.name}): {exc.detail}") from exc
            encoded.append(encode_png_base64(upscaled, source_infotext(image)))
        return ExtrasBatchImagesResponse(html_info=info, images=encoded)

    def interrogate(self, request: InterrogateRequest) -> InterrogateResponse:
        """A caption of the image (BLIP, fetched into models/BLIP on first use; 503 when it cannot be)."""
        from sdweb.services.captioning import CaptionError

        if not request.image:
            raise ApiError(404, "Image not found: send the image to caption as base64 (or an http(s) URL)")
        (image,) = decode_images([request.image], "image", UrlPolicy.of(self.services))
        try:
            caption = self._captions().caption(image, request.model)
        except CaptionError as exc:
            raise ApiError(exc.status, f"interrogate: {exc.message}") from exc
        return InterrogateResponse(caption=caption)

    def _captions(self) -> Any:
        from sdweb.services.captioning import CaptionService

        with self._caption_lock:
            if self._caption_service is None:
                settings = self.services.settings
                self._caption_service = CaptionService(settings.paths.root / "models",
                                                       worker=self.services.worker, settings=settings)
            return self._caption_service

    def png_info(self, request: PNGInfoRequest) -> PNGInfoResponse:
        from sdweb.api.request_overrides import auto_backcompat
        from sdweb.images.controlnet_infotext import controlnet_units_from_infotext, extension_paste_keys
        from sdweb.images.infotext import parse_infotext
        from sdweb.images.infotext_versions import version_backcompat
        from sdweb.images.metadata import ImageDecodeError, decode_base64_image, read_image_metadata

        try:
            image = decode_base64_image(request.image)
        except ImageDecodeError as exc:
            raise ApiError(400, f"image: {exc}") from exc
        metadata = read_image_metadata(image)
        info = metadata.parameters or ""
        items = {key: value for key, value in metadata.raw.items() if key != "parameters"}
        parameters = parse_infotext(info) if info else {}
        if parameters and auto_backcompat(self.services):  # A1111's parse_generation_parameters does it
            parameters = version_backcompat(parameters)
        # A1111 runs the infotext-pasted callbacks here: the ControlNet extension's adds a key per field.
        parameters.update(extension_paste_keys(controlnet_units_from_infotext(parameters)))
        return PNGInfoResponse(info=info, items=items, parameters=parameters)

"""Request and response models of the A1111-compatible ``/sdapi/v1`` API.

Field names, defaults and response shapes are AUTOMATIC1111's (v1.10, see
``shared/reference/a1111-api.md``), so existing clients work unchanged. Differences, on purpose:

* Every request field is optional and ``null`` means "not given" (the A1111 default applies).
* Values A1111 coerces are coerced the same way, and said (:mod:`sdweb.api.leniency`): fractional
  numbers in integer fields are truncated before validation (the request models' ``model_validator``);
  sizes, seeds and names are the request builder's (:mod:`sdweb.api.request_params`). Numeric fields
  carry the bounds of :class:`sdweb.params.GenerationParams` (which only refuse values that cannot
  run) in the schema: out of range is a 422 naming the field.
* Request fields A1111 knows but we cannot honour yet are accepted when they would not change the
  image (listed in a warning log line), and refused with a 4xx when they would
  (``hr_checkpoint_name``, scripts no handler runs...). The router decides which is
  which (:data:`IMAGE_CHANGING_FIELDS`).
* Fields no A1111 version knows are ignored, as A1111 does; they are named in a warning log line
  (``extra="allow"`` keeps them visible to the router, they are never echoed back).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, create_model, model_validator
from pydantic_core.core_schema import ValidatorFunctionWrapHandler

from sdweb.config import OptionSpec
from sdweb.params import MAX_PROMPT_CHARS, GenerationParams

logger = logging.getLogger(__name__)


def _bounds_of(name: str) -> list[Any]:
    """The constraints (ge/le/max_length) GenerationParams puts on ``name``, for the API schema."""
    return list(GenerationParams.model_fields[name].metadata)


# Bounded types shared by the request models; `None` stays allowed (it means "use the default").
Steps = Annotated[(int, *_bounds_of("steps"))]
CfgScale = Annotated[(float, *_bounds_of("cfg_scale"))]
#: Any integer: one outside 0..2**64-1 is reduced as torch reduces it (sdweb.api.leniency.reduce_seed).
Seed = int
SubseedStrength = Annotated[(float, *_bounds_of("subseed_strength"))]
SeedResize = Annotated[(int, *_bounds_of("seed_resize_from_w"))]
#: Rounded down to a multiple of 8 by the request builder, as A1111 (sdweb.api.leniency.round_size).
Size = Annotated[(int, *_bounds_of("width"))]
BatchSize = Annotated[(int, *_bounds_of("batch_size"))]
BatchCount = Annotated[(int, *_bounds_of("n_iter"))]
Eta = Annotated[(float, *_bounds_of("eta"))]
Prompt = Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]
Name = Annotated[str, Field(max_length=1000)]
TaskId = Annotated[str, Field(max_length=200)]

#: Fields where A1111 treats an empty string as "not given" (``sampler_name or sampler_index``).
EMPTY_MEANS_UNSET = frozenset({"sampler_name", "sampler_index", "scheduler", "force_task_id", "infotext"})


class Txt2ImgRequest(BaseModel):
    """``POST /sdapi/v1/txt2img``: every A1111 field, every one optional, A1111's defaults."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, title="StableDiffusionProcessingTxt2Img")

    prompt: Prompt | None = ""
    negative_prompt: Prompt | None = ""
    styles: list[Name] | None = None
    seed: Seed | None = -1
    subseed: Seed | None = -1
    subseed_strength: SubseedStrength | None = 0.0
    seed_resize_from_h: SeedResize | None = -1
    seed_resize_from_w: SeedResize | None = -1
    sampler_name: Name | None = Field(None, description="Sampler; when null, sampler_index is used.")
    sampler_index: Name | None = Field("Euler", description="Sampler used when sampler_name is null.")
    scheduler: Name | None = Field(None, description="Schedule type; null means Automatic.")
    batch_size: BatchSize | None = 1
    n_iter: BatchCount | None = 1
    steps: Steps | None = 50
    cfg_scale: CfgScale | None = 7.0
    distilled_cfg_scale: float | None = Field(3.5, ge=0.0, le=30.0, description="Flux dev's guidance input "
                                             "(Forge's \"Distilled CFG Scale\"); other models ignore it.")
    width: Size | None = 512
    height: Size | None = 512
    restore_faces: bool | None = Field(None, description="Restore faces with the face_restoration_model "
                                       "setting; when it cannot run, info.warnings says why.")
    tiling: bool | None = None
    do_not_save_samples: bool | None = False
    do_not_save_grid: bool | None = False
    eta: Eta | None = None
    denoising_strength: float | None = Field(0.75, description="How much hires fix's second pass changes "
                                             "the upscaled image (with enable_hr).")
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = Field(
        default_factory=dict, description='Per-request settings, e.g. {"CLIP_stop_at_last_layers": 2}.')
    override_settings_restore_afterwards: bool | None = True
    refiner_checkpoint: Name | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool | None = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    enable_hr: bool | None = False
    firstphase_width: int | None = 0
    firstphase_height: int | None = 0
    hr_scale: float | None = 2.0
    hr_upscaler: Name | None = None
    hr_second_pass_steps: int | None = 0
    hr_resize_x: int | None = 0
    hr_resize_y: int | None = 0
    hr_checkpoint_name: Name | None = None
    hr_sampler_name: Name | None = Field(None, description="The second pass's sampler; empty or "
                                         "'Use same sampler': the first pass's.")
    hr_scheduler: Name | None = Field(None, description="The second pass's schedule type; empty or "
                                      "'Use same scheduler': the first pass's.")
    hr_prompt: Prompt | None = Field("", description="The second pass's prompt; empty: the prompt.")
    hr_negative_prompt: Prompt | None = Field("", description="The second pass's negative prompt; empty: "
                                              "the negative prompt.")
    force_task_id: TaskId | None = Field(None, description="Job id to follow with /progress?id_task=.")
    script_name: Name | None = Field(None, description="A script's title, any case (GET /scripts lists them: "
                                     "\"x/y/z plot\", \"prompt matrix\", \"sd upscale\"...).")
    script_args: list[Any] | None = Field(default_factory=list, description="The script's arguments in "
                                          "A1111's order; see GET /script-info.")
    send_images: bool | None = True
    save_images: bool | None = False
    alwayson_scripts: dict[str, Any] | None = Field(default_factory=dict)
    infotext: Prompt | None = Field(None, description="An infotext whose values fill the unset fields.")

    #: What A1111's leniency changed while reading the body (``steps: 2.5 ... used 2``).
    _coercions: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _truncate_integers(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """Fractional numbers in integer fields are truncated, as A1111's pydantic v1 models do."""
        from sdweb.api.leniency import truncate_integers

        notes: list[str] = []
        if isinstance(data, dict):
            data = truncate_integers(cls, data, notes)
        model = handler(data)
        if notes and isinstance(model, Txt2ImgRequest):
            model._coercions = notes
        return model

    def coercions(self) -> list[str]:
        """What reading the body changed (one sentence each), for ``info.warnings`` and the log."""
        return list(self._coercions)

    def given(self) -> set[str]:
        """The declared fields the client actually sent with a value (not null, not an empty name)."""
        given = set()
        for name in self.model_fields_set & set(type(self).model_fields):
            value = getattr(self, name)
            if value is None or (value == "" and name in EMPTY_MEANS_UNSET):
                continue
            given.add(name)
        return given

    def unknown_fields(self) -> list[str]:
        """Fields no A1111 version defines (ignored, as A1111 does)."""
        return sorted(self.model_extra or {})

    def echo(self) -> dict[str, Any]:
        """The request as A1111 echoes it in ``parameters``: declared fields with defaults filled in."""
        return self.model_dump(include=set(type(self).model_fields))


class Img2ImgRequest(Txt2ImgRequest):
    """``POST /sdapi/v1/img2img``: the txt2img fields plus A1111's img2img and inpainting ones."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, title="StableDiffusionProcessingImg2Img")

    init_images: list[str] | None = Field(None, max_length=16, description="Base64 images (PNG, JPEG, "
                                          "WEBP); one for the whole batch or one per image of the batch.")
    denoising_strength: float | None = Field(0.75, ge=0.0, le=1.0,
                                             description="0 keeps the init image, 1 ignores it.")
    resize_mode: int | None = Field(0, ge=0, le=3, description="0 just resize, 1 crop and resize, "
                                    "2 resize and fill, 3 just resize (latent upscale).")
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int | None = 4
    mask_blur_y: int | None = 4
    mask_blur: int | None = None
    mask_round: bool | None = True
    inpainting_fill: int | None = 0
    inpaint_full_res: bool | None = True
    inpaint_full_res_padding: int | None = 0
    inpainting_mask_invert: int | None = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool | None = False


class TextToImageResponse(BaseModel):
    images: list[str] | None = Field(None, description="Generated images, base64 PNG with infotext.")
    parameters: dict[str, Any]
    info: str = Field(description="A JSON string: seeds, infotexts, model hash...")


class ImageToImageResponse(TextToImageResponse):
    pass


class ExtrasBaseRequest(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    resize_mode: int = 0
    show_extras_results: bool = True
    gfpgan_visibility: float = 0
    codeformer_visibility: float = 0
    codeformer_weight: float = 0
    upscaling_resize: float = 2
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0
    upscale_first: bool = False


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    image: str = ""


class FileData(BaseModel):
    data: str
    name: str


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    imageList: list[FileData] = Field(default_factory=list)  # noqa: N815 (A1111's name)


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: str | None = None


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]


class InterrogateRequest(BaseModel):
    image: str = Field("", description="Base64 image to caption.")
    model: str = Field("clip", description="clip or deepdanbooru.")


class InterrogateResponse(BaseModel):
    caption: str | None = None


class NamedPathItem(BaseModel):
    """``/hypernetworks`` and ``/realesrgan-models`` items (always empty lists here)."""

    name: str
    path: str | None = None


class FaceRestorerItem(BaseModel):
    name: str
    cmd_dir: str | None = None


class PNGInfoRequest(BaseModel):
    image: str = Field(max_length=64 * 1024 * 1024,
                       description="Base64 image (PNG, JPEG or WEBP); a data: URL is accepted too.")


class PNGInfoResponse(BaseModel):
    info: str = Field(description="The raw infotext ('' when the image has none).")
    items: dict[str, Any] = Field(description="The image's other metadata chunks.")
    parameters: dict[str, Any] = Field(description="The infotext parsed into A1111 keys.")


class ProgressState(BaseModel):
    """A1111's ``shared.state.dict()``, plus the job id (``job_id``) of the job it describes."""

    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    job_id: str | None = None
    queue_position: int = 0


class ProgressResponse(BaseModel):
    progress: float = Field(description="0..1 over the whole job.")
    eta_relative: float = Field(description="Seconds left (estimate); 0 when unknown.")
    state: ProgressState
    current_image: str | None = Field(None, description="Live preview, base64 PNG, when there is one.")
    textinfo: str | None = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float | None = None
    need_inner_model: bool | None = None


class UpscalerItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class LatentUpscalerModeItem(BaseModel):
    name: str


class SDModelItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class SDVaeItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    filename: str


class SDModuleItem(BaseModel):
    """Forge's ``/sd-modules`` item (``model_name``, ``filename``) plus what the file holds."""

    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    filename: str
    kind: str = Field(description="clip, t5 or vae")
    slots: list[str] = Field(description="The SD 3.x / Flux slots it fits: clip_l, clip_g, t5xxl, vae.")
    width: int = Field(description="Hidden width (text encoders) or latent channels (VAE).")
    storage: str = Field("", description="The dtype most of its weights are stored in (F16, F8_E4M3...).")


class PromptStyleItem(BaseModel):
    name: str
    prompt: str | None = None
    negative_prompt: str | None = None


class EmbeddingItem(BaseModel):
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    shape: int
    vectors: int
    #: Only for skipped embeddings: why it is not used with the current model (not in A1111's API).
    reason: str | None = None


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, EmbeddingItem] = Field(default_factory=dict)
    skipped: dict[str, EmbeddingItem] = Field(default_factory=dict)


class LoraItem(BaseModel):
    name: str
    alias: str | None = None
    path: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class MemoryResponse(BaseModel):
    ram: dict[str, Any] = Field(description="free / used (this process) / total, bytes; or an error.")
    cuda: dict[str, Any] = Field(description="GPU memory as torch reports it, or {error: ...}.")


class ScriptsList(BaseModel):
    txt2img: list[str] = Field(default_factory=list)
    img2img: list[str] = Field(default_factory=list)


class ScriptInfo(BaseModel):
    name: str | None = None
    is_alwayson: bool | None = None
    is_img2img: bool | None = None
    args: list[dict[str, Any]] = Field(default_factory=list)


class ExtensionItem(BaseModel):
    name: str
    remote: str
    branch: str
    commit_hash: str
    version: str
    commit_date: str
    enabled: bool


class ErrorResponse(BaseModel):
    """A1111's error shape: what went wrong (``detail``), and per-field problems (``errors``)."""

    error: str
    detail: str
    body: str = ""
    errors: str | list[dict[str, Any]] = ""


#: Responses every route documents (the OpenAPI schema lists them; schemathesis checks against it).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Bad request (unknown sampler, style, option...)"},
    401: {"model": ErrorResponse, "description": "Missing or wrong credentials"},
    404: {"model": ErrorResponse, "description": "Unknown model or task"},
    422: {"model": ErrorResponse, "description": "Invalid field values (each problem named)"},
}


def options_model(specs: list[OptionSpec]) -> type[BaseModel]:
    """A model documenting ``/options`` (one field per setting, its label as description), as A1111's.

    Used for the OpenAPI schema only: the settings file may hold keys from an A1111 install
    (``extra="allow"``), and answers are never re-validated against it.
    """
    fields: dict[str, Any] = {}
    for spec in specs:
        kind: Any = type(spec.default) if spec.default is not None else Any
        if kind in (list, tuple):
            kind = list[Any]
        fields[spec.key] = (kind | None, Field(default=spec.default, description=spec.label))
    model: type[BaseModel] = create_model(  # type: ignore[call-overload]
        "Options", __config__=ConfigDict(extra="allow", protected_namespaces=()), **fields)
    return model

"""ControlNet units in the denoising loop: prepared once per job, residuals added per step.

:func:`prepare_controlnets` runs before any model work (a bad unit costs nothing): each enabled unit's
model is found and its family checked against the checkpoint's, its picture decoded (or the img2img
init image taken), its preprocessor found; then its ``ControlNetModel`` is loaded through the
library's cache. The result, :class:`ControlNetJob`, is handed to the loops.

Per pass (txt2img, img2img, and each pass of hires fix as the unit's ``hr_option`` says), the loop asks
:meth:`ControlNetJob.for_pass` for a :class:`ControlNetStack` at that pass's size: each unit's picture is
preprocessed (processor resolution, or "pixel perfect": the resolution the target size implies) and
fitted to the size by its resize mode. At every UNet call the stack runs each unit whose guidance
window holds the step (``guidance_start <= step / steps <= guidance_end``, the extension's test) on the
same latents, timestep and text conditioning, scales its residuals by its weight, and sums them:

* **Balanced**: ``weight`` on every residual, for the conditional and unconditional rows alike.
* **My prompt is more important**: "soft injection": residual *i* of *n* (down blocks, then the middle
  block) gets ``weight * 0.825 ** (12 - i)``, so the deep ones weigh most.
* **ControlNet is more important**: soft injection, and the unconditional rows get no control at all
  ("CFG injection"): classifier-free guidance then pushes towards the control.

Outside every unit's window the UNet runs exactly as without ControlNet (no residuals are passed).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from sdweb.engine.control.detect import FAMILY_LABELS
from sdweb.images.control_maps import (
    INPAINT_PREPROCESSORS,
    Preprocessor,
    PreprocessorRegistry,
    PreprocessorUnavailableError,
)
from sdweb.images.resize import flatten_alpha, resize_image
from sdweb.params import CONTROL_RESIZE_MODES, ControlNetUnit

logger = logging.getLogger(__name__)

#: The extension's soft-injection base (per residual, deepest first).
SOFT_INJECTION_BASE = 0.825


class ControlNetUnitError(ValueError):
    """A unit that cannot run; the message names the unit and the field."""


def base_family(family: str | None) -> str:
    """``sd1`` / ``sd2`` / ``sdxl`` of a checkpoint family string (``sd1-inpaint``, ``sd2-v``...)."""
    text = str(family or "")
    for name in ("sdxl", "sd2", "sd1"):
        if text.startswith(name):
            return name
    return text


@dataclass
class PreparedUnit:
    """One enabled unit, checked and loaded, before its picture is fitted to a pass."""

    index: int
    unit: ControlNetUnit
    title: str
    model: Any  # diffusers ControlNetModel
    picture: Image.Image  # RGB, as given (before preprocessing)
    preprocessor: Preprocessor
    #: ``controlnet`` or ``t2i-adapter`` (whose features are computed once per pass).
    kind: str = "controlnet"
    #: Inpaint units: the mask (L, 255 = repaint) of their own picture, or None (the pass's mask).
    mask: Image.Image | None = None


def prepare_controlnets(
    units: Sequence[ControlNetUnit],
    *,
    model: Any,
    library: Any,
    preprocessors: PreprocessorRegistry,
    init_image: Image.Image | None = None,
    init_mask: Image.Image | None = None,
) -> ControlNetJob | None:
    """The job's ControlNet units, checked then loaded; None when none is enabled.

    Raises:
        ControlNetUnitError: a unit names no model, an unknown one, one of another family, no picture...
    """
    enabled = [(index, unit) for index, unit in enumerate(units) if unit.enabled]
    if not enabled:
        return None
    if library is None:
        raise ControlNetUnitError("ControlNet units need the ControlNet model folder (this engine has none)")
    family = base_family(getattr(model, "family", None))
    if family not in FAMILY_LABELS or getattr(model.pipe, "unet", None) is None:
        raise ControlNetUnitError(
            f"ControlNet unit {enabled[0][0]} (model): ControlNet runs with SD 1.x, "
            f"SD 2.x and SDXL checkpoints, not {getattr(model, 'family', '?')}"
        )
    unet = model.pipe.unet
    checked = []
    # 1. Check every unit before loading any model.
    for index, unit in enabled:
        where = f"ControlNet unit {index}"
        if not unit.model or unit.model.strip().lower() == "none":
            raise ControlNetUnitError(f"{where} (model): no ControlNet model chosen")
        try:
            file = library.find(unit.model)
        except LookupError as exc:
            raise ControlNetUnitError(f"{where} (model): {exc}") from exc
        if file.family is not None and file.family != family:
            raise ControlNetUnitError(
                f"{where} (model): {file.title} is a "
                f"{FAMILY_LABELS.get(file.family, file.family)} ControlNet "
                f"but the checkpoint is {FAMILY_LABELS.get(family, family)}; choose a "
                f"{FAMILY_LABELS.get(family, family)} ControlNet model"
            )
        try:
            preprocessor = preprocessors.find(unit.module)
        except LookupError as exc:
            raise ControlNetUnitError(f"{where} (module): {exc}") from exc
        problem = preprocessor.problem()  # a model-based annotator: its weight file (offline), package
        if problem is not None:
            raise ControlNetUnitError(f"{where} (module): {problem}")
        picture = _unit_picture(unit, where, init_image)
        if preprocessor.name in INPAINT_PREPROCESSORS and unit.mask is None and init_mask is None:
            raise ControlNetUnitError(
                f"{where} (mask): the {preprocessor.name} preprocessor needs a mask (the "
                "unit's, or img2img's inpainting mask)"
            )
        checked.append((index, unit, file, preprocessor, picture))
    # 2. Load (cached) and check that each model fits the UNet.
    prepared = []
    ip_units = []
    for index, unit, file, preprocessor, picture in checked:
        where = f"ControlNet unit {index}"
        if file.kind == "ip-adapter":
            ip_units.append(_prepare_ip_unit(index, unit, file, library, unet, picture, where))
            continue
        if file.kind == "t2i-adapter":
            prepared.append(_prepare_t2i_unit(index, unit, file, library, unet, picture, preprocessor, where))
            continue
        control_model, detection = library.load(
            file, dtype=unet.dtype, device=unet.device, unet_config=dict(unet.config)
        )
        if detection.family != family:
            raise ControlNetUnitError(
                f"{where} (model): {file.title} is a {detection.family_label} ControlNet but the checkpoint "
                f"is {FAMILY_LABELS.get(family, family)}"
            )
        config = control_model.config
        if (
            list(config.block_out_channels) != list(unet.config.block_out_channels)
            or config.cross_attention_dim != unet.config.cross_attention_dim
        ):
            raise ControlNetUnitError(
                f"{where} (model): {file.title} does not fit this checkpoint's UNet (widths "
                f"{list(config.block_out_channels)} vs {list(unet.config.block_out_channels)}, text width "
                f"{config.cross_attention_dim} vs {unet.config.cross_attention_dim})"
            )
        if _channels_last(unet) and not _channels_last(control_model):
            # The runtime's memory format (CPU bf16: channels_last measured faster), as the UNet's.
            control_model.to(memory_format=torch.channels_last)
        hint_scale = 2 ** (len(config.conditioning_embedding_out_channels) - 1)
        vae_scale = int(getattr(model.pipe, "vae_scale_factor", 8))
        if hint_scale != vae_scale:
            raise ControlNetUnitError(
                f"{where} (model): {file.title} works at 1/{hint_scale} of the "
                "image size "
                f"but this checkpoint's latents are 1/{vae_scale}"
            )
        prepared.append(
            PreparedUnit(
                index=index,
                unit=unit,
                title=file.title,
                model=control_model,
                picture=picture,
                preprocessor=preprocessor,
                mask=_unit_mask(unit, where),
            )
        )
    return ControlNetJob(prepared, ip_units)


def _prepare_t2i_unit(
    index: int,
    unit: ControlNetUnit,
    file: Any,
    library: Any,
    unet: Any,
    picture: Image.Image,
    preprocessor: Preprocessor,
    where: str,
) -> PreparedUnit:
    """A T2I-Adapter unit: its features' widths must be the UNet's down-block widths."""
    from sdweb.engine.models.errors import UnsupportedCheckpointError

    try:
        adapter = library.load_t2i_adapter(file, dtype=unet.dtype, device=unet.device)
    except UnsupportedCheckpointError as exc:
        raise ControlNetUnitError(f"{where} (model): {exc}") from exc
    channels = list(adapter.config.channels)
    widths = list(unet.config.block_out_channels)
    if channels[: len(widths)] != widths[: len(channels)] or len(channels) != len(widths):
        raise ControlNetUnitError(
            f"{where} (model): {file.title} makes features {channels} wide but this "
            f"checkpoint's UNet levels are {widths} (another family)"
        )
    return PreparedUnit(
        index=index,
        unit=unit,
        title=file.title,
        model=adapter,
        picture=picture,
        preprocessor=preprocessor,
        kind="t2i-adapter",
    )


def _prepare_ip_unit(
    index: int, unit: ControlNetUnit, file: Any, library: Any, unet: Any, picture: Image.Image, where: str
) -> Any:
    """An IP-Adapter unit: adapter and CLIP vision loaded, the picture's image tokens computed once."""
    from sdweb.engine.control.ip_adapter import PreparedIpUnit, image_tokens
    from sdweb.engine.models.errors import UnsupportedCheckpointError

    try:
        adapter, vision = library.load_ip_adapter(file, unet=unet)
    except UnsupportedCheckpointError as exc:
        raise ControlNetUnitError(f"{where} (model): {exc}") from exc
    width = next(
        (v.shape[1] for k, v in adapter.attention_state.items() if k.endswith("to_k_ip.weight")), None
    )
    if width != unet.config.cross_attention_dim:
        raise ControlNetUnitError(
            f"{where} (model): {file.title} takes {width}-wide text features but this "
            f"checkpoint's are {unet.config.cross_attention_dim} wide (another family)"
        )
    positive, negative = image_tokens(adapter, vision, picture)
    return PreparedIpUnit(
        index=index, unit=unit, title=file.title, adapter=adapter, positive=positive, negative=negative
    )


def _channels_last(module: Any) -> bool:
    weight = getattr(getattr(module, "conv_in", None), "weight", None)
    if weight is None or weight.ndim != 4:
        return False
    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def _unit_mask(unit: ControlNetUnit, where: str) -> Image.Image | None:
    from sdweb.images.metadata import decode_image_bytes

    if unit.mask is None:
        return None
    try:
        return decode_image_bytes(unit.mask).convert("L")
    except (ValueError, OSError) as exc:
        raise ControlNetUnitError(f"{where} (mask): not a picture ({exc})") from exc


def _unit_picture(unit: ControlNetUnit, where: str, init_image: Image.Image | None) -> Image.Image:
    from sdweb.images.metadata import decode_image_bytes

    if unit.image is not None:
        try:
            return flatten_alpha(decode_image_bytes(unit.image))
        except (ValueError, OSError) as exc:
            raise ControlNetUnitError(f"{where} (image): not a picture ({exc})") from exc
    if init_image is not None:
        return flatten_alpha(init_image)
    raise ControlNetUnitError(
        f"{where} (image): no control image (txt2img units need one; img2img units "
        "without one use the init image)"
    )


def pixel_perfect_resolution(picture: Image.Image, width: int, height: int, resize_mode: str) -> int:
    """The processor resolution that maps the picture 1:1 onto the target (the extension's rule)."""
    k_h, k_w = height / picture.height, width / picture.width
    scale = min(k_h, k_w) if resize_mode == "Resize and Fill" else max(k_h, k_w)
    return max(64, int(round(scale * min(picture.width, picture.height))))


class ControlNetJob:
    """A job's prepared units; :meth:`for_pass` fits them to one pass of the loop."""

    def __init__(self, units: list[PreparedUnit], ip_units: list[Any] | None = None) -> None:
        self.units = units
        #: IP-Adapter units (:mod:`sdweb.engine.control.ip_adapter`): image tokens computed once per job.
        self.ip_units = list(ip_units or [])

    def ip_stack(self, *, hires: bool | None = None) -> Any:
        """The IP-Adapter units of a pass (``hr_option`` as :meth:`for_pass`), or None."""
        from sdweb.engine.control.ip_adapter import IpAdapterStack

        units = [unit for unit in self.ip_units if _takes_part(unit.unit.hr_option, hires)]
        return IpAdapterStack(units) if units else None

    def for_pass(
        self,
        width: int,
        height: int,
        *,
        device: Any,
        dtype: Any,
        hires: bool | None = None,
        init_picture: Image.Image | None = None,
        init_mask: Image.Image | None = None,
    ) -> ControlNetStack | None:
        """The units of a pass at ``width x height``; ``hires``: True/False in hires fix's second/first
        pass (``hr_option``), None outside hires fix. None when no unit takes part.

        ``init_picture``: what this pass's latents show (inpainting's "only masked" crop), used by the
        units that have no picture of their own instead of the whole init image.
        """
        active = []
        for prepared in self.units:
            if not _takes_part(prepared.unit.hr_option, hires):
                continue
            picture = init_picture if init_picture is not None and prepared.unit.image is None else None
            control_map = self.control_map(prepared, width, height, picture=picture)
            array = np.asarray(control_map, dtype=np.float32) / 255.0
            if prepared.preprocessor.name in INPAINT_PREPROCESSORS:
                mask = prepared.mask if prepared.mask is not None else init_mask
                if mask is not None:  # the extension's inpaint hint: masked pixels at -1
                    mode = CONTROL_RESIZE_MODES.index(prepared.unit.resize_mode)
                    fitted = np.asarray(resize_image(mask.convert("L"), mode, width, height))
                    array = array.copy()
                    array[fitted > 127] = -1.0
            hint = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).to(device=device, dtype=dtype)
            if prepared.kind == "t2i-adapter":
                # The adapter sees only the picture: its features are the same at every step.
                hint = list(prepared.model(hint.to(prepared.model.dtype)))
            active.append((prepared, hint))
        return ControlNetStack(active) if active else None

    @staticmethod
    def control_map(
        prepared: PreparedUnit, width: int, height: int, *, picture: Image.Image | None = None
    ) -> Image.Image:
        """The unit's preprocessed picture (or ``picture``) fitted to ``width x height`` (resize mode)."""
        unit = prepared.unit
        source = flatten_alpha(picture) if picture is not None else prepared.picture
        resolution = unit.processor_res
        if unit.pixel_perfect:
            resolution = pixel_perfect_resolution(source, width, height, unit.resize_mode)
        try:
            detected = prepared.preprocessor.run(source, resolution, unit.threshold_a, unit.threshold_b)
        except PreprocessorUnavailableError as exc:  # an annotator's file could not be fetched or read
            raise ControlNetUnitError(f"ControlNet unit {prepared.index} (module): {exc}") from exc
        return resize_image(detected, CONTROL_RESIZE_MODES.index(unit.resize_mode), width, height)

    def infotext(self) -> dict[str, str]:
        """The extension's infotext lines: ``ControlNet 0: "Module: canny, Model: ..., Weight: 1.0, ..."``."""
        lines = {}
        for prepared in sorted([*self.units, *self.ip_units], key=lambda item: item.index):
            unit = prepared.unit
            resolution, a, b = unit.processor_res, unit.threshold_a, unit.threshold_b
            if isinstance(prepared, PreparedUnit):
                resolution, a, b = prepared.preprocessor.settings(resolution, a, b)
            values = {
                "Module": unit.module,
                "Model": prepared.title,
                "Weight": unit.weight,
                "Resize Mode": unit.resize_mode,
                "Processor Res": resolution,
                "Threshold A": a,
                "Threshold B": b,
                "Guidance Start": unit.guidance_start,
                "Guidance End": unit.guidance_end,
                "Pixel Perfect": unit.pixel_perfect,
                "Control Mode": unit.control_mode,
            }
            text = ", ".join(f"{key}: {value}" for key, value in values.items())
            lines[f"ControlNet {prepared.index}"] = text
        return lines


def _takes_part(option: str, hires: bool | None) -> bool:
    return not (
        (hires is True and option == "Low res only") or (hires is False and option == "High res only")
    )


class ControlNetStack:
    """The units of one pass; :meth:`residuals` is called at every UNet evaluation."""

    def __init__(self, active: list[tuple[PreparedUnit, Any]]) -> None:
        self.active = active

    def residuals(
        self,
        sample: torch.Tensor,
        timestep: Any,
        *,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor] | None,
        do_cfg: bool,
        rows: int,
        fraction: float,
        key_lengths: tuple[int, ...] | None = None,
    ) -> dict[str, Any]:
        """``down_block_additional_residuals`` / ``mid_block_additional_residual`` for the UNet, or {}.

        ``sample``: the stacked UNet input (``rows`` conditionings x batch, latent channels only);
        ``fraction``: the step being computed over the pass's steps; ``key_lengths``: the keys each of the
        ``rows`` conditionings really has when they differ (the rest is padding): each ControlNet then runs
        on the rows of one length at a time with only those keys, as A1111 runs prompt and negative prompt
        of different lengths apart.
        """
        total_down: list[torch.Tensor] | None = None
        total_mid: torch.Tensor | None = None
        adapter_total: list[torch.Tensor] | None = None
        batch = sample.shape[0] // max(1, rows)
        for prepared, hint in self.active:
            unit = prepared.unit
            if fraction < unit.guidance_start or fraction > unit.guidance_end or unit.weight == 0:
                continue
            if prepared.kind == "t2i-adapter":
                features = self._adapter_features(unit, hint, sample.shape[0], batch, do_cfg)
                adapter_total = (
                    features
                    if adapter_total is None
                    else [a + b for a, b in zip(adapter_total, features, strict=True)]
                )
                continue
            control_model = prepared.model
            cond = hint.to(dtype=control_model.dtype).expand(sample.shape[0], -1, -1, -1)
            residuals = []
            for rows_slice, keys in _row_groups(key_lengths, batch, sample.shape[0], encoder_hidden_states):
                added = ({name: value[rows_slice] for name, value in added_cond_kwargs.items()}
                         if added_cond_kwargs is not None else None)
                step_t = (timestep[rows_slice] if isinstance(timestep, torch.Tensor) and timestep.ndim
                          and timestep.shape[0] == sample.shape[0] else timestep)
                down, mid = control_model(
                    sample[rows_slice].to(control_model.dtype),
                    step_t,
                    encoder_hidden_states=encoder_hidden_states[rows_slice, :keys],
                    controlnet_cond=cond[rows_slice],
                    conditioning_scale=1.0,
                    added_cond_kwargs=added,
                    return_dict=False,
                )
                residuals.append([*down, mid])
            residuals = [torch.cat(parts) for parts in zip(*residuals, strict=True)]
            scales = self.scales(unit, len(residuals))
            scaled = [residual * scale for residual, scale in zip(residuals, scales, strict=True)]
            if unit.control_mode == "ControlNet is more important" and do_cfg and batch:
                keep = torch.ones(sample.shape[0], 1, 1, 1, dtype=scaled[0].dtype, device=scaled[0].device)
                keep[:batch] = 0  # the unconditional rows come first
                scaled = [residual * keep for residual in scaled]
            if total_down is None:
                total_down, total_mid = scaled[:-1], scaled[-1]
            else:
                total_down = [a + b for a, b in zip(total_down, scaled[:-1], strict=True)]
                total_mid = total_mid + scaled[-1] if total_mid is not None else scaled[-1]
        extra: dict[str, Any] = {}
        if adapter_total is not None:
            extra["down_intrablock_additional_residuals"] = [item.to(sample.dtype) for item in adapter_total]
        if total_down is None:
            return extra
        return {
            **extra,
            "down_block_additional_residuals": tuple(total_down),
            "mid_block_additional_residual": total_mid,
        }

    @staticmethod
    def _adapter_features(
        unit: ControlNetUnit, features: list[torch.Tensor], rows: int, batch: int, do_cfg: bool
    ) -> list[torch.Tensor]:
        """A T2I-Adapter's features for this UNet batch, scaled as the extension scales them."""
        if unit.control_mode == "Balanced":
            scales = [unit.weight] * len(features)
        else:  # the extension's soft weights for adapters, deepest last
            base = (0.25, 0.62, 0.825, 1.0)[-len(features) :]
            scales = [unit.weight * value for value in base]
        out = []
        for feature, scale in zip(features, scales, strict=True):
            item = feature.expand(rows, -1, -1, -1) * scale
            if unit.control_mode == "ControlNet is more important" and do_cfg and batch:
                keep = torch.ones(rows, 1, 1, 1, dtype=item.dtype, device=item.device)
                keep[:batch] = 0
                item = item * keep
            out.append(item)
        return out

    @staticmethod
    def scales(unit: ControlNetUnit, count: int) -> list[float]:
        if unit.control_mode == "Balanced":
            return [unit.weight] * count
        return [unit.weight * SOFT_INJECTION_BASE ** float(12 - i) for i in range(count)]


def _row_groups(key_lengths: tuple[int, ...] | None, batch: int, total: int,
                encoder_hidden_states: torch.Tensor) -> list[tuple[slice, int]]:
    """The stacked rows as ``(rows, keys)`` runs of one key length (all rows at once without lengths)."""
    if not key_lengths or batch <= 0:
        return [(slice(0, total), int(encoder_hidden_states.shape[1]))]
    groups: list[tuple[slice, int]] = []
    for index, keys in enumerate(key_lengths):
        start, stop = index * batch, (index + 1) * batch
        if groups and groups[-1][1] == keys:
            groups[-1] = (slice(groups[-1][0].start, stop), keys)
        else:
            groups.append((slice(start, stop), keys))
    return groups

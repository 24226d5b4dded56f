"""IP-Adapter units: a reference picture steers the image through extra cross-attention keys/values.

Files (in ``models/ControlNet``, as the extension keeps them): ``ip-adapter_sd15.safetensors`` and
friends, flat keys ``image_proj.*`` (the image projection: a linear layer + norm for the plain adapters,
a resampler with ``latents`` for the "plus" ones) and ``ip_adapter.N.to_k_ip / to_v_ip`` (one pair per
cross-attention layer, odd ``N`` in the UNet's attention order). The picture is encoded once per job
by a CLIP vision encoder from ``models/clip_vision`` (Hugging Face ``CLIPVisionModelWithProjection``
layout, config read from shapes), chosen by what the adapter needs: image embeddings as wide as the
projection's input (plain) or hidden states as wide as the resampler's (plus, the penultimate layer).
The negative side is what diffusers uses: zero embeddings (plain) or a black picture's hidden states.

During a pass, :class:`IpAdapterStack` gives the UNet's cross-attention layers diffusers' IP-Adapter
attention processors (one key/value pair per unit) and puts the previous processors back afterwards;
each step the UNet gets ``(text, [image tokens per unit])`` with each unit's scale its weight inside its
guidance window and 0 outside it (adding exactly nothing).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sdweb.engine.models.errors import UnsupportedCheckpointError
from sdweb.engine.models.safetensors_io import iter_safetensors_tensors, read_safetensors_header

logger = logging.getLogger(__name__)

#: CLIP's pixel normalisation (the image processor of every CLIP vision model).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VISION_PREFIX = "vision_model."


def is_ip_adapter(shapes: Mapping[str, Any]) -> bool:
    return any(key.startswith("image_proj.") for key in shapes) and any(
        key.startswith("ip_adapter.") for key in shapes
    )


def ip_adapter_family(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """``sd1`` / ``sd2`` / ``sdxl`` from the text width the adapter's keys take; None when unusual."""
    key = next((k for k in shapes if k.startswith("ip_adapter.") and k.endswith("to_k_ip.weight")), None)
    width = shapes[key][1] if key else 0
    return {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(width)


def ip_adapter_needs(shapes: Mapping[str, tuple[int, ...]]) -> tuple[str, int]:
    """``("embeds", width)`` for plain adapters, ``("hidden", width)`` for plus (resampler) ones."""
    if "image_proj.proj.weight" in shapes:
        return "embeds", shapes["image_proj.proj.weight"][1]
    if "image_proj.proj_in.weight" in shapes:
        return "hidden", shapes["image_proj.proj_in.weight"][1]
    raise UnsupportedCheckpointError("an IP-Adapter kind sdweb does not run yet (full-face / FaceID)")


@dataclass
class IpAdapterModel:
    """A loaded adapter: its image projection (a module) and its attention weights (a state dict)."""

    image_proj: torch.nn.Module
    image_proj_state: dict[str, torch.Tensor]
    attention_state: dict[str, torch.Tensor]
    needs: tuple[str, int]

    def nbytes(self) -> int:
        tensors = [*self.image_proj_state.values(), *self.attention_state.values()]
        return sum(t.numel() * t.element_size() for t in tensors)


def load_ip_adapter(path: Path, *, name: str, unet: Any, dtype: torch.dtype, device: Any) -> IpAdapterModel:
    """Read an IP-Adapter ``.safetensors`` and build its image projection (diffusers' conversion)."""
    if path.suffix.lower() != ".safetensors":
        raise UnsupportedCheckpointError(f"{name}: IP-Adapters are read from .safetensors files only")
    state = dict(iter_safetensors_tensors(path, dtype_for=lambda _key: dtype))
    proj = {
        key.removeprefix("image_proj."): value
        for key, value in state.items()
        if key.startswith("image_proj.")
    }
    attention = {
        key.removeprefix("ip_adapter."): value
        for key, value in state.items()
        if key.startswith("ip_adapter.")
    }
    needs = ip_adapter_needs({f"image_proj.{k}": tuple(v.shape) for k, v in proj.items()})
    image_proj = unet._convert_ip_adapter_image_proj_to_diffusers(proj, low_cpu_mem_usage=False)
    image_proj.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return IpAdapterModel(
        image_proj=image_proj, image_proj_state=proj, attention_state=attention, needs=needs
    )


# ---------------------------------------------------------------------------------------------------
# CLIP vision
# ---------------------------------------------------------------------------------------------------


def clip_vision_facts(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int] | None:
    """Widths of a Hugging Face-layout CLIP vision file (None when it is not one)."""
    patch = shapes.get(VISION_PREFIX + "embeddings.patch_embedding.weight")
    position = shapes.get(VISION_PREFIX + "embeddings.position_embedding.weight")
    projection = shapes.get("visual_projection.weight")
    if patch is None or position is None or projection is None:
        return None
    layers = 0
    while f"{VISION_PREFIX}encoder.layers.{layers}.mlp.fc1.weight" in shapes:
        layers += 1
    hidden = patch[0]
    grid = round((position[0] - 1) ** 0.5)
    return {
        "hidden_size": hidden,
        "patch_size": patch[2],
        "image_size": grid * patch[2],
        "num_hidden_layers": layers,
        "projection_dim": projection[0],
        "intermediate_size": shapes[f"{VISION_PREFIX}encoder.layers.0.mlp.fc1.weight"][0],
        # Heads cannot be read from shapes: ViT-L/H/bigG all use 16; small test models 64-wide heads.
        "num_attention_heads": 16 if hidden >= 1024 else max(1, hidden // 64),
    }


def find_clip_vision(folders: Sequence[Path], needs: tuple[str, int], adapter: str) -> Path:
    """The CLIP vision file in ``folders`` whose output fits the adapter's ``needs``."""
    kind, width = needs
    seen = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*.safetensors")):
            facts = clip_vision_facts(read_safetensors_header(path).shapes())
            if facts is None:
                continue
            seen.append(path.name)
            if facts["projection_dim" if kind == "embeds" else "hidden_size"] == width:
                return path
    what = "image embeddings" if kind == "embeds" else "hidden states"
    found = f" (found {', '.join(seen)}, none fits)" if seen else ""
    place = folders[0] if folders else "models/clip_vision"
    raise UnsupportedCheckpointError(
        f"IP-Adapter {adapter} needs a CLIP vision encoder with {width}-wide {what} in {place} "
        f"(e.g. the ViT-H one as clip_vision_h.safetensors, Hugging Face layout){found}"
    )


def load_clip_vision(path: Path, *, dtype: torch.dtype, device: Any) -> Any:
    from accelerate import init_empty_weights
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from sdweb.engine.models.components import assign_weights

    state = dict(iter_safetensors_tensors(path, dtype_for=lambda _key: dtype))
    facts = clip_vision_facts({key: tuple(value.shape) for key, value in state.items()})
    if facts is None:
        raise UnsupportedCheckpointError(f"{path.name}: not a CLIP vision encoder in Hugging Face layout")
    config = CLIPVisionConfig(**facts, hidden_act="gelu", layer_norm_eps=1e-5)
    with init_empty_weights():
        model = CLIPVisionModelWithProjection(config)
    state.pop(VISION_PREFIX + "embeddings.position_ids", None)
    assign_weights(model, state, what="CLIP vision", name=path.name)
    return model.to(device)


def clip_pixels(picture: Image.Image, size: int) -> torch.Tensor:
    """``(1, 3, size, size)`` CLIP input: short side to ``size`` (bicubic), centre crop, normalised."""
    scale = size / min(picture.size)
    resized = picture.convert("RGB").resize(
        (max(size, round(picture.width * scale)), max(size, round(picture.height * scale))),
        Image.Resampling.BICUBIC,
    )
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    array = np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    array = (array - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


@torch.inference_mode()
def image_tokens(
    adapter: IpAdapterModel, vision: Any, picture: Image.Image
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(positive, negative)`` image tokens ``(1, T, text width)`` for ``picture``."""
    size = int(vision.config.image_size)
    device, dtype = vision.device, vision.dtype
    pixels = clip_pixels(picture, size).to(device=device, dtype=dtype)
    if adapter.needs[0] == "embeds":
        embeds = vision(pixels).image_embeds
        negative = torch.zeros_like(embeds)
    else:
        embeds = vision(pixels, output_hidden_states=True).hidden_states[-2]
        black = torch.zeros_like(pixels)
        negative = vision(black, output_hidden_states=True).hidden_states[-2]
    proj_dtype = next(adapter.image_proj.parameters()).dtype
    positive = adapter.image_proj(embeds.to(proj_dtype))
    return positive, adapter.image_proj(negative.to(proj_dtype))


# ---------------------------------------------------------------------------------------------------
# In the loop
# ---------------------------------------------------------------------------------------------------


@dataclass
class PreparedIpUnit:
    index: int
    unit: Any  # sdweb.params.ControlNetUnit
    title: str
    adapter: IpAdapterModel
    positive: torch.Tensor
    negative: torch.Tensor


class IpAdapterStack:
    """The IP-Adapter units of one pass: processors installed for the pass, tokens per step."""

    def __init__(self, units: list[PreparedIpUnit]) -> None:
        self.units = units
        self.processors: list[Any] = []

    @contextmanager
    def installed(self, unet: Any) -> Iterator[IpAdapterStack]:
        """Give ``unet`` IP-Adapter attention for the block; its own processors come back after."""
        saved = dict(unet.attn_processors)
        state_dicts = [
            {"image_proj": unit.adapter.image_proj_state, "ip_adapter": unit.adapter.attention_state}
            for unit in self.units
        ]
        processors = unet._convert_ip_adapter_attn_to_diffusers(state_dicts, low_cpu_mem_usage=False)
        for processor in processors.values():
            if isinstance(processor, torch.nn.Module):
                processor.to(device=unet.device, dtype=unet.dtype)
        self.processors = [p for p in processors.values() if hasattr(p, "to_k_ip")]
        unet.set_attn_processor(processors)
        try:
            yield self
        finally:
            unet.set_attn_processor(saved)
            self.processors = []

    def encoder_states(
        self, text: torch.Tensor, *, rows: int, do_cfg: bool, fraction: float
    ) -> tuple[Any, ...]:
        """``(text, [tokens per unit])`` for this step, the scales set by each unit's window and weight."""
        batch = text.shape[0] // max(1, rows)
        scales = [
            float(unit.unit.weight) if unit.unit.guidance_start <= fraction <= unit.unit.guidance_end else 0.0
            for unit in self.units
        ]
        for processor in self.processors:
            processor.scale = scales
        tokens = []
        for unit in self.units:
            positive = unit.positive.to(device=text.device, dtype=text.dtype)
            negative = unit.negative.to(device=text.device, dtype=text.dtype)
            parts = ([negative.expand(batch, -1, -1)] if do_cfg else []) + [
                positive.expand(batch, -1, -1)
            ] * (rows - (1 if do_cfg else 0))
            tokens.append(torch.cat(parts))
        return (text, tokens)

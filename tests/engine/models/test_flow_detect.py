"""SD 3.x / Flux detection from keys and shapes: variants, every dimension, modules, and the key mappings."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

from sdweb.engine.models.detect import detect_checkpoint
from sdweb.engine.models.detect_flow import detect_module, module_problem
from sdweb.engine.models.errors import UnsupportedCheckpointError
from sdweb.engine.models.flux_layout import flux_to_bfl, flux_to_diffusers
from tests.fixtures.flow_checkpoints import (
    all_in_one_state,
    module_state,
    sd3_to_mmdit,
    tiny_flux_components,
    tiny_sd3_components,
    transformer_original,
)


def shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(tensor.shape) for key, tensor in state.items()}


@pytest.fixture(scope="module")
def flux_dev() -> dict[str, Any]:
    return tiny_flux_components(dev=True)


@pytest.fixture(scope="module")
def flux_schnell() -> dict[str, Any]:
    return tiny_flux_components(dev=False)


def test_flux_dev_and_schnell_are_told_apart_by_the_guidance_embedder(flux_dev, flux_schnell) -> None:
    dev = detect_checkpoint(shapes(all_in_one_state(flux_dev)), name="flux1-dev.safetensors")
    schnell = detect_checkpoint(shapes(transformer_original(flux_schnell)), name="flux1-schnell.safetensors")
    assert (dev.family, schnell.family) == ("flux-dev", "flux-schnell")
    assert dev.transformer_config["guidance_embeds"] and not schnell.transformer_config["guidance_embeds"]


def test_every_flux_dimension_is_read_from_the_tensors(flux_dev) -> None:
    detection = detect_checkpoint(shapes(transformer_original(flux_dev)), name="tiny.safetensors")
    built = flux_dev["transformer"].config
    for key in (
        "num_layers",
        "num_single_layers",
        "attention_head_dim",
        "num_attention_heads",
        "joint_attention_dim",
        "pooled_projection_dim",
        "in_channels",
        "guidance_embeds",
    ):
        assert detection.transformer_config[key] == built[key], key
    assert tuple(detection.transformer_config["axes_dims_rope"]) == tuple(built["axes_dims_rope"])


def test_full_size_and_pruned_flux_shapes_are_detected_without_memory() -> None:
    # The released FLUX.1-dev shape (built on the meta device: no memory) and a pruned 8-block one.
    for double, single in ((19, 38), (8, 0)):
        with torch.device("meta"):
            model = FluxTransformer2DModel(num_layers=double, num_single_layers=single, guidance_embeds=True)
        state = flux_to_bfl(model.state_dict(), dict(model.config))
        detection = detect_checkpoint(shapes(state), name="flux.safetensors")
        config = detection.transformer_config
        assert (config["num_layers"], config["num_single_layers"]) == (double, single)
        assert config["num_attention_heads"] * config["attention_head_dim"] == 3072
        assert tuple(config["axes_dims_rope"]) == (16, 56, 56)
        assert detection.missing_modules == ("clip_l", "t5xxl", "vae")


@pytest.mark.parametrize(
    ("variant", "expected"),
    [("sd3", "sd3"), ("sd3.5-large", "sd3.5-large"), ("sd3.5-medium", "sd3.5-medium")],
)
def test_sd3_variants_are_told_apart_by_qk_norm_and_dual_attention(variant: str, expected: str) -> None:
    components = tiny_sd3_components(variant)
    detection = detect_checkpoint(shapes(all_in_one_state(components)), name=f"{variant}.safetensors")
    assert detection.family == expected
    built = components["transformer"].config
    for key in (
        "num_layers",
        "attention_head_dim",
        "num_attention_heads",
        "joint_attention_dim",
        "caption_projection_dim",
        "pooled_projection_dim",
        "pos_embed_max_size",
        "patch_size",
        "qk_norm",
    ):
        assert detection.transformer_config[key] == built[key], key
    assert list(detection.transformer_config["dual_attention_layers"]) == list(built["dual_attention_layers"])
    assert set(detection.modules) == {"clip_l", "clip_g", "t5xxl", "vae"}


def test_sd35_large_turbo_comes_from_the_file_name_and_sd3_without_t5_is_complete() -> None:
    components = tiny_sd3_components("sd3.5-large")
    state = shapes(all_in_one_state(components, with_t5=False))
    turbo = detect_checkpoint(state, name="sd3.5_large_turbo.safetensors")
    assert turbo.family == "sd3.5-large-turbo"
    assert turbo.missing_modules == ()  # T5 is optional for SD 3.x
    assert "t5xxl" in turbo.optional


def test_full_size_sd35_large_and_medium_shapes() -> None:
    large_kwargs = dict(
        num_layers=38,
        attention_head_dim=64,
        num_attention_heads=38,
        caption_projection_dim=2432,
        pos_embed_max_size=192,
        qk_norm="rms_norm",
    )
    medium_kwargs = dict(
        num_layers=24,
        attention_head_dim=64,
        num_attention_heads=24,
        caption_projection_dim=1536,
        pos_embed_max_size=384,
        qk_norm="rms_norm",
        dual_attention_layers=tuple(range(13)),
    )
    for kwargs, family in ((large_kwargs, "sd3.5-large"), (medium_kwargs, "sd3.5-medium")):
        with torch.device("meta"):
            model = SD3Transformer2DModel(**kwargs)
        state = sd3_to_mmdit(model.state_dict(), dict(model.config), "model.diffusion_model.")
        detection = detect_checkpoint(shapes(state), name="sd3.5.safetensors")
        assert detection.family == family
        assert detection.transformer_config["num_attention_heads"] == kwargs["num_attention_heads"]
        assert detection.missing_modules == ("clip_l", "clip_g", "vae")


def test_flux_key_mapping_round_trips(flux_dev) -> None:
    reference = {k: v.clone() for k, v in flux_dev["transformer"].state_dict().items()}
    original = flux_to_bfl(reference, dict(flux_dev["transformer"].config))
    assert "double_blocks.0.img_attn.qkv.weight" in original and "single_blocks.0.linear1.weight" in original
    back = flux_to_diffusers(dict(original), dict(flux_dev["transformer"].config))
    assert set(back) == set(reference)
    assert all(torch.equal(back[key], reference[key]) for key in reference)


def test_sd3_inverse_mapping_round_trips_through_diffusers_converter() -> None:
    transformer = tiny_sd3_components("sd3.5-medium")["transformer"]
    reference = transformer.state_dict()
    original = sd3_to_mmdit(dict(reference), dict(transformer.config))
    back = convert_sd3_transformer_checkpoint_to_diffusers(dict(original))
    assert set(back) == set(reference)
    assert all(torch.equal(back[key], reference[key]) for key in reference)


def test_standalone_modules_are_recognised_with_their_widths(flux_dev) -> None:
    clip = detect_module(shapes(module_state(flux_dev["text_encoder"])), name="clip_l.safetensors")
    t5 = detect_module(shapes(module_state(flux_dev["text_encoder_2"])), name="t5xxl_fp16.safetensors")
    assert (clip.kind, clip.slots, clip.width) == ("clip", ("clip_l",), 32)
    assert (t5.kind, t5.slots, t5.width) == ("t5", ("t5xxl",), 32)
    assert t5.config["num_heads"] == 2 and t5.config["num_layers"] == 2


def test_a_module_that_does_not_fit_says_why(flux_dev) -> None:
    transformer = detect_checkpoint(
        shapes(transformer_original(flux_dev)), name="f.safetensors"
    ).transformer_config
    wide_t5 = detect_module(
        shapes(module_state(tiny_sd3_components()["text_encoder_3"])), name="t5.safetensors"
    )
    assert "80 wide" in module_problem("flux", transformer, "t5xxl", wide_t5)
    clip = detect_module(shapes(module_state(flux_dev["text_encoder"])), name="clip_l.safetensors")
    assert "not a T5-XXL" in module_problem("flux", transformer, "t5xxl", clip)


def test_flux_fill_and_scaled_fp8_files_are_refused_with_the_reason(flux_dev) -> None:
    state = shapes(transformer_original(flux_dev))
    fill = dict(state, **{"img_in.weight": (64, 384)})
    assert "Fill" in detect_checkpoint(fill, name="flux1-fill.safetensors").unsupported_reason
    scaled = dict(state, scaled_fp8=(0,))
    with pytest.raises(UnsupportedCheckpointError, match="scaled fp8"):
        detect_checkpoint(scaled, name="flux1-dev-fp8-scaled.safetensors")

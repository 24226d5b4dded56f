"""Family detection and config inference from keys and shapes alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdweb.engine.models.detect import detect_checkpoint
from sdweb.engine.models.errors import UnsupportedCheckpointError
from sdweb.engine.models.safetensors_io import read_safetensors_header
from tests.fixtures.checkpoints import (
    full_size_sd15_shapes,
    sd1_ldm_state_dict,
    tiny_sd1_components,
    tiny_sd2v_components,
    tiny_sdxl_components,
)

Shapes = dict[str, tuple[int, ...]]

UNET_FACTS = (
    "in_channels",
    "out_channels",
    "block_out_channels",
    "layers_per_block",
    "down_block_types",
    "up_block_types",
    "cross_attention_dim",
    "use_linear_projection",
)


def shapes_of(path: Path) -> Shapes:
    return read_safetensors_header(path).shapes()


def assert_unet_matches(config: dict, built: dict, extra: tuple[str, ...] = ()) -> None:
    for key in UNET_FACTS + extra:
        assert _norm(config[key]) == _norm(built[key]), key


def _norm(value: object) -> object:
    return list(value) if isinstance(value, (list, tuple)) else value


def test_sd1_is_detected_with_configs_read_from_its_shapes(tiny_sd1_path: Path) -> None:
    built = tiny_sd1_components()

    detection = detect_checkpoint(shapes_of(tiny_sd1_path), name="tiny-sd1.safetensors")

    assert detection.family == "sd1"
    assert detection.prediction_type == "epsilon"
    assert detection.supported
    assert_unet_matches(detection.unet_config, dict(built["unet"].config), ("attention_head_dim",))
    te = built["text_encoder"].config
    assert detection.text_encoder_config["hidden_size"] == te.hidden_size
    assert detection.text_encoder_config["num_hidden_layers"] == te.num_hidden_layers
    assert detection.text_encoder_config["intermediate_size"] == te.intermediate_size
    assert detection.text_encoder_config["hidden_act"] == "quick_gelu"
    vae = built["vae"].config
    assert detection.vae_config["block_out_channels"] == list(vae.block_out_channels)
    assert detection.vae_config["layers_per_block"] == vae.layers_per_block
    assert detection.vae_config["scaling_factor"] == 0.18215
    assert detection.scheduler_config["_class_name"] == "PNDMScheduler"


def test_sd2_without_yaml_is_the_768_v_model(tiny_sd2v_path: Path) -> None:
    built = tiny_sd2v_components()

    detection = detect_checkpoint(shapes_of(tiny_sd2v_path), name="tiny-sd2v.safetensors")

    assert detection.family == "sd2-v"
    assert detection.prediction_type == "v_prediction"
    assert detection.scheduler_config["prediction_type"] == "v_prediction"
    assert_unet_matches(detection.unet_config, dict(built["unet"].config), ("attention_head_dim",))
    # The file holds one more OpenCLIP layer than the model runs (SD 2.x uses the penultimate layer).
    assert (
        detection.text_encoder_config["num_hidden_layers"] == built["text_encoder"].config.num_hidden_layers
    )
    assert detection.text_encoder_config["hidden_act"] == "gelu"


@pytest.mark.parametrize(
    ("yaml_text", "family", "prediction"),
    [
        ('model:\n  params:\n    parameterization: "v"\n', "sd2-v", "v_prediction"),
        ("model:\n  params:\n    parameterization: v  # 768-v\n", "sd2-v", "v_prediction"),
        ("model:\n  params:\n    linear_start: 0.00085\n", "sd2", "epsilon"),
        ('model:\n  params:\n    parameterization: "eps"\n', "sd2", "epsilon"),
    ],
)
def test_a_yaml_beside_an_sd2_file_decides_v_or_epsilon(
    tiny_sd2v_path: Path, yaml_text: str, family: str, prediction: str
) -> None:
    detection = detect_checkpoint(shapes_of(tiny_sd2v_path), name="x.safetensors", yaml_text=yaml_text)

    assert detection.family == family
    assert detection.prediction_type == prediction
    if family == "sd2":
        assert detection.unet_config["sample_size"] == 64  # the 512-px base model


def test_sdxl_is_detected_with_added_embedding_sizes_inferred(tiny_sdxl_path: Path) -> None:
    built = dict(tiny_sdxl_components()["unet"].config)

    detection = detect_checkpoint(shapes_of(tiny_sdxl_path), name="tiny-sdxl.safetensors")

    assert detection.family == "sdxl"
    assert detection.is_sdxl
    assert_unet_matches(
        detection.unet_config,
        built,
        ("transformer_layers_per_block", "addition_time_embed_dim", "projection_class_embeddings_input_dim"),
    )
    assert detection.unet_config["addition_embed_type"] == "text_time"
    assert [te["hidden_act"] for te in detection.text_encoder_configs] == ["quick_gelu", "gelu"]
    assert detection.text_encoder_configs[1]["projection_dim"] == 32
    assert detection.vae_config["scaling_factor"] == 0.13025
    assert [p.name for p in detection.tokenizer_dirs] == ["sd1", "sd2"]


def test_full_size_sd15_gets_the_public_sd15_configs() -> None:
    detection = detect_checkpoint(full_size_sd15_shapes(), name="v1-5-pruned-emaonly.safetensors")

    assert detection.family == "sd1"
    unet = detection.unet_config
    assert unet["block_out_channels"] == [320, 640, 1280, 1280]
    assert unet["attention_head_dim"] == 8
    assert unet["cross_attention_dim"] == 768
    assert unet["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert unet["mid_block_type"] == "UNetMidBlock2DCrossAttn"
    te = detection.text_encoder_config
    assert (
        te["hidden_size"],
        te["num_hidden_layers"],
        te["intermediate_size"],
        te["num_attention_heads"],
    ) == (
        768,
        12,
        3072,
        12,
    )
    assert detection.vae_config["block_out_channels"] == [128, 256, 512, 512]


def test_full_size_sd15_inpainting_gets_sd15_configs_with_a_9_channel_unet() -> None:
    # sd-v1-5-inpainting.safetensors: SD 1.5 with conv_in taking latents + mask + masked-image latents.
    shapes = full_size_sd15_shapes()
    shapes["model.diffusion_model.input_blocks.0.0.weight"] = (320, 9, 3, 3)

    detection = detect_checkpoint(shapes, name="sd-v1-5-inpainting.safetensors")

    assert detection.family == "sd1-inpaint"
    assert detection.prediction_type == "epsilon" and detection.supported
    unet = detection.unet_config
    assert (unet["in_channels"], unet["out_channels"], unet["sample_size"]) == (9, 4, 64)
    assert unet["block_out_channels"] == [320, 640, 1280, 1280]
    assert detection.vae_config["latent_channels"] == 4


def test_a_reduced_model_without_middle_block_is_detected() -> None:
    # BK-SDM-style distillation drops the UNet's middle block; the shapes say so.
    components = tiny_sd1_components(mid_block_type=None)
    shapes = {k: tuple(v.shape) for k, v in sd1_ldm_state_dict(components).items()}

    detection = detect_checkpoint(shapes, name="bk-sdm-tiny.safetensors")

    assert detection.family == "sd1"
    assert detection.unet_config["mid_block_type"] is None


def test_inpainting_checkpoint_is_recognised_and_supported(tiny_sd1_path: Path) -> None:
    shapes = shapes_of(tiny_sd1_path)
    conv_in = shapes["model.diffusion_model.input_blocks.0.0.weight"]
    shapes["model.diffusion_model.input_blocks.0.0.weight"] = (conv_in[0], 9, *conv_in[2:])

    detection = detect_checkpoint(shapes, name="sd-inpainting.safetensors")

    assert detection.family == "sd1-inpaint"
    assert detection.config_family == "sd1"
    assert detection.supported
    assert detection.unet_config["in_channels"] == 9
    assert detection.unet_config["out_channels"] == 4


@pytest.mark.parametrize(("channels", "family", "words"), [
    (5, "sd1-depth", "depth-to-image checkpoints (5 UNet input channels"),
    (8, "sd1-pix2pix", "instruct-pix2pix checkpoints (8 UNet input channels"),
])
def test_depth_and_pix2pix_checkpoints_are_marked_unsupported_with_a_reason(
    tiny_sd1_path: Path, channels: int, family: str, words: str
) -> None:
    shapes = shapes_of(tiny_sd1_path)
    conv_in = shapes["model.diffusion_model.input_blocks.0.0.weight"]
    shapes["model.diffusion_model.input_blocks.0.0.weight"] = (conv_in[0], channels, *conv_in[2:])

    detection = detect_checkpoint(shapes, name="other.safetensors")

    assert detection.family == family
    assert not detection.supported
    assert words in detection.unsupported_reason
    assert "inpainting (9-channel)" in detection.unsupported_reason


def test_sdxl_refiner_is_recognised_but_marked_unsupported(tiny_sdxl_path: Path) -> None:
    shapes = {
        k.replace("conditioner.embedders.1.model.", "conditioner.embedders.0.model."): v
        for k, v in shapes_of(tiny_sdxl_path).items()
        if not k.startswith("conditioner.embedders.0.transformer.")
    }
    label = shapes["model.diffusion_model.label_emb.0.0.weight"]
    shapes["model.diffusion_model.label_emb.0.0.weight"] = (label[0], 32 + 5 * 8)  # pooled + 5 time ids
    shapes = {
        k: ((v[0], 32, *v[2:]) if k.endswith("attn2.to_k.weight") or k.endswith("attn2.to_v.weight") else v)
        for k, v in shapes.items()
    }

    detection = detect_checkpoint(shapes, name="sd_xl_refiner_1.0.safetensors")

    assert detection.family == "sdxl-refiner"
    assert not detection.supported
    assert "refiner" in detection.unsupported_reason


@pytest.mark.parametrize(
    ("shapes", "expected"),
    [
        (
            {
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320),
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": (320, 4),
                "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": (),
            },
            "LoRA",
        ),
        (
            {
                "unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": (4, 320),
                "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": (320, 4),
            },
            "LoRA",
        ),
        ({"encoder.conv_in.weight": (128, 3, 3, 3), "decoder.conv_in.weight": (512, 4, 3, 3)}, "VAE"),
        ({"emb_params": (4, 768)}, "textual-inversion embedding"),
        ({"clip_l": (2, 768), "clip_g": (2, 1280)}, "textual-inversion embedding"),
        ({}, "no tensors"),
        ({"double_blocks.0.img_attn.qkv.weight": (9216, 3072)}, "Flux-like transformer without img_in"),
        ({"foo.bar": (3, 3), "baz": (1,), "qux": (2, 2, 2), "x": (1,), "y": (1,)}, "not a Stable Diffusion"),
    ],
    ids=["lora-kohya", "lora-peft", "vae", "embedding", "sdxl-embedding", "empty", "flux-like", "garbage"],
)
def test_non_checkpoints_get_an_error_naming_the_file_and_what_it_is(shapes: Shapes, expected: str) -> None:
    with pytest.raises(UnsupportedCheckpointError) as excinfo:
        detect_checkpoint(shapes, name="thing.safetensors")

    assert str(excinfo.value).startswith("thing.safetensors: ")
    assert expected in str(excinfo.value)


def test_unet_without_text_encoder_is_refused(tiny_sd1_path: Path) -> None:
    shapes = {k: v for k, v in shapes_of(tiny_sd1_path).items() if not k.startswith("cond_stage_model.")}

    with pytest.raises(UnsupportedCheckpointError, match="no text encoder"):
        detect_checkpoint(shapes, name="unet-only.safetensors")


def test_text_encoder_with_another_vocabulary_is_refused(tiny_sd1_path: Path) -> None:
    shapes = shapes_of(tiny_sd1_path)
    key = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
    shapes[key] = (32000, shapes[key][1])

    with pytest.raises(UnsupportedCheckpointError, match="32000-token vocabulary"):
        detect_checkpoint(shapes, name="odd.safetensors")


def test_checkpoint_without_vae_has_no_vae_config(tiny_sd1_path: Path) -> None:
    shapes = {k: v for k, v in shapes_of(tiny_sd1_path).items() if not k.startswith("first_stage_model.")}

    detection = detect_checkpoint(shapes, name="no-vae.safetensors")

    assert detection.family == "sd1"
    assert detection.vae_config is None


def test_v_pred_marker_key_makes_an_sd1_or_sdxl_model_v_prediction(tiny_sd1_path: Path) -> None:
    shapes = {**shapes_of(tiny_sd1_path), "v_pred": (0,)}

    detection = detect_checkpoint(shapes, name="vpred.safetensors")

    assert detection.prediction_type == "v_prediction"
    assert detection.scheduler_config["prediction_type"] == "v_prediction"


@pytest.mark.parametrize(("channels", "family", "supported"), [(9, "sd2-inpaint", True),
                                                              (5, "sd2-depth", False)])
def test_sd2_inpainting_and_depth_models_are_epsilon_512_models(
    tiny_sd2v_path: Path, channels: int, family: str, supported: bool
) -> None:
    shapes = shapes_of(tiny_sd2v_path)
    key = "model.diffusion_model.input_blocks.0.0.weight"
    shapes[key] = (shapes[key][0], channels, *shapes[key][2:])

    detection = detect_checkpoint(shapes, name="512-inpainting-ema.safetensors")

    assert detection.family == family
    assert detection.prediction_type == "epsilon"
    assert detection.supported is supported
    assert detection.unet_config["sample_size"] == 64  # the 512 model's conventions, not 768-v's

"""Checkpoints that carry their component configs in the safetensors metadata (the bundled demo model does).

A tiny SD1 checkpoint whose architecture shapes cannot describe (GroupNorm with 16 groups, 4 text heads, its
own latent scale) loads exactly when the configs travel in its metadata, and is explained when they are
broken.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from sdweb.engine.devices import RuntimeConfig
from sdweb.engine.models.errors import UnsupportedCheckpointError
from sdweb.engine.models.ldm_layout import clip_to_ldm, unet_to_ldm, vae_to_ldm
from sdweb.engine.models.loader import load_checkpoint
from sdweb.engine.models.registry import CheckpointInfo

UNET = {"sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
        "block_out_channels": [16, 32], "cross_attention_dim": 32, "attention_head_dim": 2,
        "norm_num_groups": 16,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]}
VAE = {"block_out_channels": [16, 32], "norm_num_groups": 16, "latent_channels": 4, "layers_per_block": 1,
       "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
       "scaling_factor": 0.7}
TEXT = {"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "max_position_embeddings": 77, "projection_dim": 32}
SCHEDULER = {"_class_name": "PNDMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
             "beta_end": 0.012, "prediction_type": "epsilon", "skip_prk_steps": True, "steps_offset": 1}


def _runtime() -> RuntimeConfig:
    return RuntimeConfig(device=torch.device("cpu"), dtype=torch.float32, vae_dtype=torch.float32,
                         attention="sdpa", offload="none", vae_tiling=False, threads=1)


def _write(path: Path, metadata: dict[str, str]) -> tuple[Path, dict[str, torch.nn.Module]]:
    torch.manual_seed(0)
    unet, vae = UNet2DConditionModel(**UNET), AutoencoderKL(**VAE)
    text = CLIPTextModel(CLIPTextConfig(**TEXT))
    state = {**unet_to_ldm(unet.state_dict(), dict(unet.config)), **vae_to_ldm(vae.state_dict()),
             **clip_to_ldm(text.state_dict(), "cond_stage_model.transformer.")}
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt", **metadata})
    return path, {"unet": unet, "vae": vae, "text": text}


def _info(path: Path) -> CheckpointInfo:
    return CheckpointInfo(path=path, name=path.name, model_name=path.stem, kind="safetensors",
                          size=path.stat().st_size, mtime=path.stat().st_mtime)


def _configs() -> dict[str, str]:
    return {"sdweb_unet_config": json.dumps(UNET), "sdweb_vae_config": json.dumps(VAE),
            "sdweb_text_encoder_config": json.dumps(TEXT), "sdweb_scheduler_config": json.dumps(SCHEDULER)}


def test_configs_in_the_metadata_build_the_model_the_file_was_written_from(tmp_path: Path) -> None:
    path, built = _write(tmp_path / "odd.safetensors", _configs())

    model = load_checkpoint(_info(path), _runtime())

    assert model.family == "sd1"
    assert model.pipe.unet.config.norm_num_groups == 16
    assert model.pipe.vae.config.scaling_factor == 0.7
    assert model.pipe.text_encoder.config.num_attention_heads == 4
    assert isinstance(model.pipe.scheduler, PNDMScheduler)
    sample, t, context = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 77, 32)
    tokens = torch.randint(0, 49000, (1, 77))
    with torch.no_grad():
        assert torch.equal(model.pipe.unet(sample, t, encoder_hidden_states=context).sample,
                           built["unet"](sample, t, encoder_hidden_states=context).sample)
        # The loaded VAE runs channels_last on the CPU (sdweb.engine.devices.vae_channels_last): the same
        # weights, summed in another order.
        torch.testing.assert_close(model.pipe.vae.decode(sample).sample, built["vae"].decode(sample).sample,
                                   atol=1e-5, rtol=1e-5)
        assert torch.equal(model.pipe.text_encoder(tokens).last_hidden_state,
                           built["text"](tokens).last_hidden_state)


def test_without_the_configs_such_a_file_cannot_be_built_from_shapes(tmp_path: Path) -> None:
    # Why the metadata is needed: shapes say nothing of the 16 norm groups.
    path, _ = _write(tmp_path / "odd.safetensors", {})
    with pytest.raises((UnsupportedCheckpointError, ValueError)):
        load_checkpoint(_info(path), _runtime())


def test_broken_or_partial_configs_in_the_metadata_are_named(tmp_path: Path) -> None:
    partial = {k: v for k, v in _configs().items() if k != "sdweb_vae_config"}
    path, _ = _write(tmp_path / "partial.safetensors", partial)
    with pytest.raises(UnsupportedCheckpointError, match="partial.safetensors: .* not sdweb_vae_config"):
        load_checkpoint(_info(path), _runtime())

    path, _ = _write(tmp_path / "broken.safetensors", {**_configs(), "sdweb_unet_config": "{not json"})
    with pytest.raises(UnsupportedCheckpointError, match="broken.safetensors: .* not JSON"):
        load_checkpoint(_info(path), _runtime())

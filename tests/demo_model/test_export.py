"""The demo model's pipeline from training script to shipped file, on a two-step run: train.py writes a
diffusers folder, export.py turns it into one fp16 LDM-layout file with its configs in the metadata, and
sdweb's own loader builds exactly that model from the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors import safe_open

from demo_model import export, train
from sdweb.engine.devices import RuntimeConfig
from sdweb.engine.models.loader import load_checkpoint
from sdweb.engine.models.registry import CheckpointInfo


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train.main(["--vae-steps", "1", "--unet-steps", "1", "--pool", "16", "--vae-batch-size", "2",
                "--batch-size", "2", "--threads", "1", "--out", str(out)])
    return out / "diffusers"


def test_the_export_is_one_small_fp16_file_in_the_original_layout(trained: Path, tmp_path: Path) -> None:
    path = export.export_checkpoint(trained, tmp_path / "demo.safetensors")

    assert path.stat().st_size <= export.MAX_BYTES
    with safe_open(str(path), "pt") as handle:
        keys = list(handle.keys())
        metadata = handle.metadata()
        dtypes = {handle.get_slice(k).get_dtype() for k in keys if "position_ids" not in k}
    assert dtypes == {"F16"}
    prefixes = {k.split(".")[0] + "." + k.split(".")[1] for k in keys}
    assert prefixes == {"model.diffusion_model", "first_stage_model.encoder", "first_stage_model.decoder",
                        "first_stage_model.quant_conv", "first_stage_model.post_quant_conv",
                        "cond_stage_model.transformer"}
    assert metadata["sdweb_demo"] == "1" and metadata["sdweb_family"] == "sd1"
    unet_config = json.loads(metadata["sdweb_unet_config"])
    assert unet_config["block_out_channels"] == train.UNET_CONFIG["block_out_channels"]
    assert json.loads(metadata["sdweb_scheduler_config"])["_class_name"] == "PNDMScheduler"


def test_sdwebs_loader_builds_the_trained_model_from_the_exported_file(trained: Path, tmp_path: Path) -> None:
    path = export.export_checkpoint(trained, tmp_path / "demo.safetensors")
    info = CheckpointInfo(path=path, name=path.name, model_name=path.stem, kind="safetensors",
                          size=path.stat().st_size, mtime=path.stat().st_mtime, demo=True)
    runtime = RuntimeConfig(device=torch.device("cpu"), dtype=torch.float32, vae_dtype=torch.float32,
                            attention="sdpa", offload="none", vae_tiling=False, threads=1)

    model = load_checkpoint(info, runtime)

    trained_unet = UNet2DConditionModel.from_pretrained(trained / "unet").half().float()
    sample, t, context = torch.randn(1, 4, 16, 16), torch.tensor([400]), torch.randn(1, 77, 64)
    with torch.no_grad():
        assert torch.equal(model.pipe.unet(sample, t, encoder_hidden_states=context).sample,
                           trained_unet(sample, t, encoder_hidden_states=context).sample)
    scaling = json.loads((trained / "vae" / "config.json").read_text())["scaling_factor"]
    assert model.pipe.vae.config.scaling_factor == pytest.approx(scaling)

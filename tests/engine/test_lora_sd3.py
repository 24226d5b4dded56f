"""kohya / MMDiT-path SD 3.x LoRA keys mapped onto diffusers' SD3 layers (the parts the image test does not
reach: the last context block, MMDiT-X's second attention, ComfyUI-style paths, what is refused)."""

from __future__ import annotations

import pytest
import torch

from sdweb.engine.extra_networks.lora_sd3 import Sd3LoraKeyError, is_kohya_sd3, kohya_sd3_to_peft


def pair(name: str, rows: int, *, alpha: float | None = None) -> dict[str, torch.Tensor]:
    up = torch.arange(rows * 2, dtype=torch.float32).reshape(rows, 2)
    out = {f"{name}.lora_down.weight": torch.ones(2, 8), f"{name}.lora_up.weight": up}
    if alpha is not None:
        out[f"{name}.alpha"] = torch.tensor(alpha)
    return out


def test_the_last_context_block_only_modulates_and_its_halves_are_swapped() -> None:
    state = pair("lora_unet_joint_blocks_1_context_block_adaLN_modulation_1", 4)
    converted = kohya_sd3_to_peft(state, num_layers=2)
    up = converted["transformer.transformer_blocks.1.norm1_context.linear.lora_B.weight"]
    assert up.tolist() == [[4, 5], [6, 7], [0, 1], [2, 3]]
    middle = kohya_sd3_to_peft(pair("lora_unet_joint_blocks_0_context_block_adaLN_modulation_1", 4), 2)
    assert middle["transformer.transformer_blocks.0.norm1_context.linear.lora_B.weight"].tolist()[0] == [0, 1]
    with pytest.raises(Sd3LoraKeyError, match="joint_blocks_1_context_block_attn_proj"):
        kohya_sd3_to_peft(pair("lora_unet_joint_blocks_1_context_block_attn_proj", 4), num_layers=2)


def test_mmdit_x_second_attention_and_comfyui_paths_map_like_kohya_names() -> None:
    # alpha 1 over rank 2: the up rows are halved
    kohya = kohya_sd3_to_peft(pair("lora_unet_joint_blocks_0_x_block_attn2_qkv", 6, alpha=1.0), 2)
    assert sorted(kohya) == sorted(
        f"transformer.transformer_blocks.0.attn2.to_{n}.lora_{ab}.weight" for n in "qkv" for ab in "AB"
    )
    assert kohya["transformer.transformer_blocks.0.attn2.to_k.lora_B.weight"].tolist() == [[2, 2.5], [3, 3.5]]
    kohya_name = "lora_unet_joint_blocks_0_x_block_attn2_qkv"
    path = "diffusion_model.joint_blocks.0.x_block.attn2.qkv"
    comfy = {key.replace(kohya_name, path): v for key, v in pair(kohya_name, 6, alpha=1.0).items()}
    assert is_kohya_sd3(comfy)
    converted = kohya_sd3_to_peft(comfy, 2)
    assert all(torch.equal(converted[key], kohya[key]) for key in kohya)


def test_t5_weights_and_dora_files_are_refused_with_the_reason() -> None:
    with pytest.raises(Sd3LoraKeyError, match="T5"):
        kohya_sd3_to_peft(pair("lora_te3_encoder_block_0_layer_0_SelfAttention_q", 4), 2)
    dora = pair("lora_unet_final_layer_linear", 4)
    dora["lora_unet_final_layer_linear.dora_scale"] = torch.ones(1)
    with pytest.raises(Sd3LoraKeyError, match="DoRA"):
        kohya_sd3_to_peft(dora, 2)
    assert not is_kohya_sd3({"transformer.proj_out.lora_A.weight": torch.ones(1)})

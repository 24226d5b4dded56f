"""Train the demo model from scratch on procedural scenes, from a seed, within a time budget.

Stable Diffusion architecture, tiny: AutoencoderKL (64x64 -> 16x16x4 latents), a CLIP-style text
encoder using the real CLIP tokenizer (bundled with sdweb), and a UNet2DConditionModel with cross
attention. Phase 1 trains the VAE, phase 2 the UNet and text encoder together with epsilon prediction
on SD's noise schedule, 10% empty captions so classifier-free guidance works, and an EMA of the UNet.

    OMP_WAIT_POLICY=PASSIVE python -m demo_model.train --minutes 55 --out demo_model/out

The result is a diffusers folder (``<out>/diffusers``) and the single-file checkpoint
(``<out>/sdweb-demo-shapes.safetensors``, fp16, component configs in its metadata).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from demo_model.dataset import batch

logger = logging.getLogger("demo_model.train")

TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "sdweb" / "data" / "tokenizers" / "sd1"

VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1,
    "block_out_channels": [32, 32, 64], "norm_num_groups": 16, "sample_size": 64,
    "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
}
UNET_CONFIG = {
    "sample_size": 16, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
    "block_out_channels": [48, 96, 96], "cross_attention_dim": 64, "attention_head_dim": 8,
    "norm_num_groups": 16,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
TEXT_CONFIG = {
    "vocab_size": 49408, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 3,
    "num_attention_heads": 4, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
    "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407, "projection_dim": 64,
}
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon", "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
}


def train_vae(vae: AutoencoderKL, rng: np.random.Generator, seconds: float, batch_size: int) -> None:
    optimiser = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    started, step = time.monotonic(), 0
    while time.monotonic() - started < seconds:
        images, _, _ = batch(rng, batch_size)
        x = torch.from_numpy(images)
        posterior = vae.encode(x).latent_dist
        z = posterior.sample()
        recon = vae.decode(z).sample
        loss = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x) + 1e-6 * posterior.kl().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        step += 1
        if step % 50 == 0:
            logger.info("vae step %d loss %.4f (%.0f s)", step, loss.item(), time.monotonic() - started)


@torch.no_grad()
def latent_scale(vae: AutoencoderKL, rng: np.random.Generator) -> float:
    images, _, _ = batch(rng, 512)
    latents = vae.encode(torch.from_numpy(images)).latent_dist.mean
    return float(1.0 / latents.std())


def tokenize(tokenizer: CLIPTokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=77, truncation=True,
                     return_tensors="pt").input_ids


def train_diffusion(vae: AutoencoderKL, unet: UNet2DConditionModel, text: CLIPTextModel,
                    tokenizer: CLIPTokenizer, scale: float, rng: np.random.Generator, seconds: float,
                    batch_size: int, on_checkpoint=None, save_every: float = 600.0) -> UNet2DConditionModel:
    scheduler = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k != "set_alpha_to_one"})
    params = list(unet.parameters()) + list(text.parameters())
    optimiser = torch.optim.AdamW(params, lr=6e-4, weight_decay=1e-2)
    ema = copy.deepcopy(unet).requires_grad_(False)
    torch_gen = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
    alphas = scheduler.alphas_cumprod
    started, step = time.monotonic(), 0
    last_save = started
    vae.requires_grad_(False)
    while time.monotonic() - started < seconds:
        elapsed = time.monotonic() - started
        warmup = min(1.0, (step + 1) / 300)
        lr = 6e-4 * warmup * (0.15 + 0.85 * 0.5 * (1 + math.cos(math.pi * elapsed / seconds)))
        for group in optimiser.param_groups:
            group["lr"] = lr
        images, captions, _ = batch(rng, batch_size)
        captions = [c if rng.random() > 0.1 else "" for c in captions]
        with torch.no_grad():
            latents = vae.encode(torch.from_numpy(images)).latent_dist.mean * scale
        noise = torch.randn(latents.shape, generator=torch_gen)
        t = torch.randint(0, 1000, (batch_size,), generator=torch_gen)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        context = text(tokenize(tokenizer, captions)).last_hidden_state
        pred = unet(noisy, t, encoder_hidden_states=context).sample
        loss = F.mse_loss(pred.float(), noise)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters(), strict=True):
                e.lerp_(p, 1 - decay)
        step += 1
        if step % 50 == 0:
            logger.info("unet step %d loss %.4f lr %.2e (%.0f s)", step, loss.item(), lr, elapsed)
        if on_checkpoint is not None and time.monotonic() - last_save > save_every:
            on_checkpoint(ema)
            last_save = time.monotonic()
    return ema


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--minutes", type=float, default=55.0, help="total training budget")
    parser.add_argument("--vae-share", type=float, default=0.15, help="fraction of the budget for the VAE")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("demo_model/out"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR, local_files_only=True)
    vae = AutoencoderKL(**VAE_CONFIG)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    text = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    total = args.minutes * 60
    train_vae(vae, rng, total * args.vae_share, 32)
    scale = latent_scale(vae, rng)
    logger.info("latent scaling factor %.4f", scale)
    vae.register_to_config(scaling_factor=scale)
    def save(unet_weights: UNet2DConditionModel) -> None:
        save_folder(args.out / "diffusers", vae, unet_weights, text, tokenizer)

    ema = train_diffusion(vae, unet, text, tokenizer, scale, rng, total * (1 - args.vae_share),
                          args.batch_size, on_checkpoint=save)
    save(ema)


def save_folder(folder: Path, vae: AutoencoderKL, ema: UNet2DConditionModel, text: CLIPTextModel,
                tokenizer: CLIPTokenizer) -> None:
    for name, module in (("vae", vae), ("unet", ema), ("text_encoder", text)):
        module.save_pretrained(folder / name, safe_serialization=True)
    tokenizer.save_pretrained(folder / "tokenizer")
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "PNDMScheduler", **SCHEDULER_CONFIG, "skip_prk_steps": True}))
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline",
        "vae": ["diffusers", "AutoencoderKL"], "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "PNDMScheduler"], "safety_checker": [None, None],
        "feature_extractor": [None, None], "requires_safety_checker": False,
    }))
    logger.info("saved %s", folder)


if __name__ == "__main__":
    main()

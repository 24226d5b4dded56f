"""Train the demo model from scratch on procedural scenes, from a seed, within a time budget.

Stable Diffusion architecture, tiny: AutoencoderKL (64x64 -> 16x16x4 latents), a CLIP-style text
encoder using the real CLIP tokenizer (bundled with sdweb), and a UNet2DConditionModel with cross
attention.

1. VAE. Besides reconstruction, the latent mean's first three channels are pulled towards the image
   average-pooled to 16x16: the latent becomes a small picture. The VAE learns in a few hundred steps
   instead of thousands, and the UNet's task becomes "paint a 16x16 picture of the caption", which it
   learns far faster than an arbitrary latent code. (Run 1 without this: after 120 VAE steps the
   reconstructions kept the shape's colour in 20% of images, so no UNet could have passed the bar.)
2. Latent pool. ``--pool`` scenes are rendered and encoded once; each UNet step draws from the pool and
   captions the scenes afresh (captions are cheap and vary), so no step pays for the VAE encoder.
3. UNet and text encoder together: v-prediction on SD's noise schedule (an error in the predicted
   picture weighs >= 1 at every noise level, where epsilon + min-SNR weighs it ~0.01 at the start of
   sampling, when the layout is decided), 10% empty captions so classifier-free guidance works, an EMA
   of the UNet. A quarter of each batch are "terminal" samples: t=999 with an input of pure noise, so
   the only way to place the shape is to read the caption (SD's t=999 still leaks the picture at
   amplitude 0.07, and a UNet that follows the leak instead of the words draws shapes anywhere). The
   UNet goes down to 1x1 (see UNET_CONFIG) so a caption's position can become a layout at all.

Runs are bounded by time (``--minutes``); ``--vae-steps``/``--unet-steps`` instead fix the step counts, so
a run logged as "N steps" is reproduced exactly from its seed on any machine.

    OMP_WAIT_POLICY=PASSIVE python -m demo_model.train --minutes 59 --out demo_model/out/run3
    python -m demo_model.export demo_model/out/run3/diffusers
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from demo_model.checker import read_scene
from demo_model.dataset import Scene, batch, caption

logger = logging.getLogger("demo_model.train")

TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "sdweb" / "data" / "tokenizers" / "sd1"

VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1,
    "block_out_channels": [32, 32, 64], "norm_num_groups": 16, "sample_size": 64,
    "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
}
#: Five levels, 16x16 down to a 1x1 bottleneck. A convolution cannot tell left from right in the
#: middle of a picture, and attention has no position embeddings here, so runs 1-2 (three levels,
#: 16 -> 4) learnt colours but ignored "left"/"top"...: their UNet answered those captions identically
#: (measured: x0 at t=999 differed 0.005 between "left" and "right" vs 0.28 between "red" and
#: "green"). At 1x1 the caption's position becomes one global vector, and the first upsampling conv
#: at 2x2 sees the zero padding on a different side in each cell: placing is then a linear function of
#: that vector. In a 6-minute probe this alone made "left"/"right" differ 0.25 (from 0.01). No
#: cross-attention at 16x16: the 256-token level makes a step 3.5x dearer and places nothing.
UNET_CONFIG = {
    "sample_size": 16, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
    "block_out_channels": [32, 64, 96, 96, 96], "cross_attention_dim": 64, "attention_head_dim": 8,
    "norm_num_groups": 16,
    "down_block_types": ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * 4,
    "up_block_types": ["CrossAttnUpBlock2D"] * 4 + ["UpBlock2D"],
}
TEXT_CONFIG = {
    "vocab_size": 49408, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 3,
    "num_attention_heads": 4, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
    "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407, "projection_dim": 64,
}
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction", "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
    # Every sampler starts at t=999, the pure-noise level the terminal samples teach (see train_diffusion).
    "timestep_spacing": "trailing",
}
#: The latent is 4x smaller than the image on each side.
LATENT_FACTOR = 4
MIN_SNR_GAMMA = 5.0
EMPTY_CAPTION_SHARE = 0.1
#: Token embeddings start at unit scale instead of CLIP's 0.02 so that words the UNet cannot use yet
#: ("left", "right") stay distinct until it can; with 0.02 and weight decay run 2's text encoder had
#: made "left" and "right" almost the same vector (distance 0.06 vs 4.0 for "red"/"green").
TOKEN_EMBEDDING_STD = 1.0


class Budget:
    """Stop after ``steps`` steps when given, else after ``seconds``; the learning-rate schedule follows."""

    def __init__(self, seconds: float, steps: int | None) -> None:
        self.seconds, self.steps = seconds, steps
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def progress(self, step: int) -> float:
        return step / self.steps if self.steps else self.elapsed() / self.seconds

    def done(self, step: int) -> bool:
        return self.progress(step) >= 1.0


def cosine_lr(peak: float, step: int, progress: float, warmup: int, floor: float = 0.1) -> float:
    decayed = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return peak * min(1.0, (step + 1) / warmup) * decayed


@torch.no_grad()
def reconstruction_accuracy(vae: AutoencoderKL, images: np.ndarray, scenes: list[Scene]) -> tuple[float, ...]:
    """How often the checker reads shape colour, background and position right after encode -> decode."""
    decoded = vae.decode(vae.encode(torch.from_numpy(images)).latent_dist.mean).sample
    readings = [read_scene(to_image(x)) for x in decoded]
    return tuple(sum(getattr(r, field) == getattr(s, name) for r, s in zip(readings, scenes, strict=True))
                 / len(scenes) for field, name in (("colour", "colour"), ("background", "background"),
                                                   ("position", "position")))


def to_image(x: torch.Tensor) -> Image.Image:
    return Image.fromarray(((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())


def train_vae(vae: AutoencoderKL, rng: np.random.Generator, budget: Budget, batch_size: int) -> int:
    optimiser = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    held_out, _, held_out_scenes = batch(np.random.default_rng(99), 64)
    step = 0
    while not budget.done(step):
        for group in optimiser.param_groups:
            group["lr"] = cosine_lr(2e-3, step, budget.progress(step), warmup=20)
        images, _, _ = batch(rng, batch_size)
        x = torch.from_numpy(images)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        small_picture = F.avg_pool2d(x, LATENT_FACTOR)
        loss = (F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x) + 1e-6 * posterior.kl().mean()
                + F.mse_loss(posterior.mean[:, :3], small_picture))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        step += 1
        if step % 100 == 0:
            accuracy = reconstruction_accuracy(vae, held_out, held_out_scenes)
            logger.info("vae step %d loss %.4f reconstructions read back (colour, background, position) %s "
                        "(%.0f s)", step, loss.item(), [f"{a:.0%}" for a in accuracy], budget.elapsed())
    accuracy = reconstruction_accuracy(vae, held_out, held_out_scenes)
    logger.info("vae done after %d steps; reconstructions read back %s", step, [f"{a:.0%}" for a in accuracy])
    return step


@torch.no_grad()
def encode_pool(vae: AutoencoderKL, rng: np.random.Generator, count: int) -> tuple[torch.Tensor, list[Scene]]:
    """``count`` rendered scenes as unscaled latent means (the VAE is frozen from here on)."""
    latents, scenes = [], []
    for start in range(0, count, 128):
        images, _, chunk = batch(rng, min(128, count - start))
        latents.append(vae.encode(torch.from_numpy(images)).latent_dist.mean)
        scenes.extend(chunk)
    return torch.cat(latents), scenes


def tokenize(tokenizer: CLIPTokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=77, truncation=True,
                     return_tensors="pt").input_ids


def loss_target(prediction: str, latents: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor,
                snr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the UNet is taught to predict, and each sample's loss weight.

    ``epsilon`` with min-SNR-5 weighting weighs an error in the predicted image by ``min(snr, 5)``: at high
    noise (snr ~ 0.01), where the sampler decides *where* the shape goes, that is almost nothing. Run 2
    learnt colours perfectly and positions not at all (chance, 15-19%). ``v_prediction`` weighs the same
    image error by ``snr + 1`` (>= 1 at any noise), capped here at 5 for the low-noise end so the fine
    detail steps do not dominate: the layout gets ~100x the weight at the start of sampling.
    """
    if prediction == "epsilon":
        return noise, torch.clamp(snr, max=MIN_SNR_GAMMA) / snr
    velocity = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents
    return velocity, torch.clamp(snr + 1, max=MIN_SNR_GAMMA) / (snr + 1)


def train_diffusion(unet: UNet2DConditionModel, text: CLIPTextModel, tokenizer: CLIPTokenizer,
                    pool: torch.Tensor, scenes: list[Scene], rng: np.random.Generator, budget: Budget,
                    batch_size: int, on_checkpoint: Callable[[UNet2DConditionModel], None] | None = None,
                    save_every: float = 600.0, peak_lr: float = 1e-3, warmup: int = 100,
                    prediction: str = "v_prediction",
                    terminal_share: float = 0.25) -> tuple[UNet2DConditionModel, int]:
    scheduler = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k != "set_alpha_to_one"})
    params = list(unet.parameters()) + list(text.parameters())
    optimiser = torch.optim.AdamW(params, lr=peak_lr, weight_decay=1e-2)
    ema = copy.deepcopy(unet).requires_grad_(False)
    torch_gen = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
    alphas = scheduler.alphas_cumprod
    snr = alphas / (1 - alphas)
    step, last_save = 0, time.monotonic()
    while not budget.done(step):
        lr = cosine_lr(peak_lr, step, budget.progress(step), warmup=warmup)
        for group in optimiser.param_groups:
            group["lr"] = lr
        picks = rng.integers(0, len(scenes), batch_size)
        latents = pool[torch.from_numpy(picks)]
        captions = [caption(scenes[i], rng) if rng.random() >= EMPTY_CAPTION_SHARE else "" for i in picks]
        noise = torch.randn(latents.shape, generator=torch_gen)
        t = torch.randint(0, 1000, (batch_size,), generator=torch_gen)
        terminal = torch.rand(batch_size, generator=torch_gen) < terminal_share
        t = torch.where(terminal, 999, t)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = torch.where(terminal.view(-1, 1, 1, 1), noise, a.sqrt() * latents + (1 - a).sqrt() * noise)
        context = text(tokenize(tokenizer, captions)).last_hidden_state
        pred = unet(noisy, t, encoder_hidden_states=context).sample
        target, weight = loss_target(prediction, latents, noise, a, snr[t])
        loss = (F.mse_loss(pred.float(), target, reduction="none").mean(dim=(1, 2, 3)) * weight).mean()
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
            logger.info("unet step %d loss %.4f lr %.2e (%.0f s)", step, loss.item(), lr, budget.elapsed())
        if on_checkpoint is not None and time.monotonic() - last_save > save_every:
            on_checkpoint(ema)
            last_save = time.monotonic()
    return ema, step


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--minutes", type=float, default=60.0, help="total training budget")
    parser.add_argument("--vae-share", type=float, default=0.12, help="fraction of the budget for the VAE")
    parser.add_argument("--vae-steps", type=int, default=None, help="fixed VAE steps instead of a time share")
    parser.add_argument("--unet-steps", type=int, default=None, help="fixed UNet steps instead of the time")
    parser.add_argument("--vae-batch-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--pool", type=int, default=12288, help="scenes encoded once for the UNet phase")
    parser.add_argument("--terminal-share", type=float, default=0.25,
                        help="share of each batch taught to draw the caption from pure noise at t=999")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("demo_model/out"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    logger.info("training with %s", vars(args))

    started = time.monotonic()
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR, local_files_only=True)
    vae = AutoencoderKL(**VAE_CONFIG)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    text = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    with torch.no_grad():
        text.embeddings.token_embedding.weight.normal_(0.0, TOKEN_EMBEDDING_STD)
    total = args.minutes * 60
    vae_steps = train_vae(vae, rng, Budget(total * args.vae_share, args.vae_steps), args.vae_batch_size)
    vae.requires_grad_(False).eval()

    pool, scenes = encode_pool(vae, rng, args.pool)
    scale = float(1.0 / pool.std())
    pool *= scale
    logger.info("encoded %d scenes; latent scaling factor %.4f (%.0f s)", len(scenes), scale,
                time.monotonic() - started)
    vae.register_to_config(scaling_factor=scale)

    def save(unet_weights: UNet2DConditionModel) -> None:
        save_folder(args.out / "diffusers", vae, unet_weights, text, tokenizer)

    remaining = total - (time.monotonic() - started)
    ema, unet_steps = train_diffusion(unet, text, tokenizer, pool, scenes, rng,
                                      Budget(remaining, args.unet_steps), args.batch_size, on_checkpoint=save,
                                      terminal_share=args.terminal_share)
    save(ema)
    logger.info("done in %.1f min: %d VAE steps, %d UNet steps (reproduce with --seed %d --vae-steps %d "
                "--unet-steps %d)", (time.monotonic() - started) / 60, vae_steps, unet_steps, args.seed,
                vae_steps, unet_steps)


def save_folder(folder: Path, vae: AutoencoderKL, ema: UNet2DConditionModel, text: CLIPTextModel,
                tokenizer: CLIPTokenizer, prediction: str = "v_prediction") -> None:
    for name, module in (("vae", vae), ("unet", ema), ("text_encoder", text)):
        module.save_pretrained(folder / name, safe_serialization=True)
    tokenizer.save_pretrained(folder / "tokenizer")
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "PNDMScheduler", **SCHEDULER_CONFIG, "skip_prk_steps": True,
                    "prediction_type": prediction}))
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

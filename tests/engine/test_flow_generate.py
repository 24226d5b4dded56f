"""The flow-matching loop (SD 3.x, Flux): diffusers parity, samplers, guidance, grammar, seeds, img2img,
inpainting, hires fix, interrupt/skip and previews, on tiny random-weight models."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sdweb.engine.families import FamilyJob, default_families
from sdweb.engine.seeds import create_batch_noise
from sdweb.params import GenerationParams, Img2ImgParams, JobControl
from tests.engine.conftest import TinyModel
from tests.fixtures.flow_checkpoints import flux_pipe, sd3_pipe

FAMILIES = default_families()


@pytest.fixture(scope="module")
def flux() -> TinyModel:
    return TinyModel(pipe=flux_pipe(dev=True), family="flux-dev")


@pytest.fixture(scope="module")
def sd3() -> TinyModel:
    return TinyModel(pipe=sd3_pipe("sd3.5-large"), family="sd3.5-large")


def params(**changes: Any) -> GenerationParams:
    values: dict[str, Any] = dict(
        prompt="a photo of a cat",
        negative_prompt="",
        steps=3,
        width=64,
        height=64,
        seed=1,
        subseed=2,
        clip_skip=1,
        rng="CPU",
        sampler_name="Euler",
        scheduler="Automatic",
        cfg_scale=1.0,
    )
    values.update(changes)
    return GenerationParams(**values)


def job(**changes: Any) -> FamilyJob:
    values: dict[str, Any] = dict(samplers=None, control=JobControl(), on_step=lambda _s: None)
    values.update(changes)
    return FamilyJob(**values)


def run(model: TinyModel, request: GenerationParams, **job_changes: Any) -> Any:
    return FAMILIES.for_family(model.family).txt2img(model, request, job(**job_changes))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


def test_flux_euler_equals_diffusers_fluxpipeline(flux: TinyModel) -> None:
    ours = run(flux, params(distilled_cfg_scale=3.5)).images[0]
    noise = create_batch_noise(
        seeds=[1],
        subseeds=[2],
        subseed_strength=0,
        seed_resize_from=None,
        width=64,
        height=64,
        rng="CPU",
        device=torch.device("cpu"),
        channels=16,
        scale_factor=2,
    )
    pipe = flux.pipe
    latents = pipe._pack_latents(noise.latents, 1, 16, 32, 32)
    theirs = pipe(
        "a photo of a cat",
        latents=latents,
        height=64,
        width=64,
        num_inference_steps=3,
        guidance_scale=3.5,
        max_sequence_length=512,
    ).images[0]
    assert np.abs(pixels(ours.image) - pixels(theirs)).max() == 0
    assert ours.extra["Distilled CFG Scale"] == 3.5


def test_sd3_euler_with_cfg_equals_diffusers_sd3_pipeline(sd3: TinyModel) -> None:
    ours = run(sd3, params(cfg_scale=4.0, negative_prompt="blurry")).images[0]
    noise = create_batch_noise(
        seeds=[1],
        subseeds=[2],
        subseed_strength=0,
        seed_resize_from=None,
        width=64,
        height=64,
        rng="CPU",
        device=torch.device("cpu"),
        channels=16,
        scale_factor=2,
    )
    theirs = sd3.pipe(
        "a photo of a cat",
        negative_prompt="blurry",
        latents=noise.latents,
        height=64,
        width=64,
        num_inference_steps=3,
        guidance_scale=4.0,
    ).images[0]
    assert np.abs(pixels(ours.image) - pixels(theirs)).max() <= 1
    assert "Distilled CFG Scale" not in ours.extra


def test_sd3_cfg_skipping_runs_calls_without_the_negative_prompt(sd3: TinyModel) -> None:
    """A1111's Skip Early CFG / NGMS, as Forge applies them to SD 3.x: every call skipped is CFG scale 1;
    NGMS below sigma 0.9 (flow sigmas run from 1 to 0) skips some calls and changes the picture."""
    guided = params(cfg_scale=4.0, negative_prompt="blurry")
    all_skipped = run(sd3, guided.model_copy(update={"skip_early_cond": 1.0})).images[0].image
    unguided = run(sd3, guided.model_copy(update={"cfg_scale": 1.0})).images[0].image
    assert np.array_equal(pixels(all_skipped), pixels(unguided))
    plain = run(sd3, guided).images[0].image
    ngms = run(sd3, guided.model_copy(update={"s_min_uncond": 0.9, "s_min_uncond_all": True})).images[0].image
    assert not np.array_equal(pixels(ngms), pixels(plain))
    assert not np.array_equal(pixels(ngms), pixels(unguided))


@pytest.mark.parametrize("sampler", ["Euler", "Heun", "DPM++ 2M", "UniPC"])
def test_flow_samplers_run_and_differ(flux: TinyModel, sampler: str) -> None:
    steps: list[int] = []
    image = run(flux, params(sampler_name=sampler), on_step=lambda s: steps.append(s.step)).images[0].image
    assert image.size == (64, 64) and steps == [1, 2, 3]
    if sampler != "Euler":
        assert not np.array_equal(pixels(image), pixels(run(flux, params()).images[0].image))


def test_other_samplers_and_schedules_are_refused_with_the_reason(flux: TinyModel) -> None:
    with pytest.raises(ValueError, match="use one of Euler, Heun, DPM\\+\\+ 2M, UniPC"):
        run(flux, params(sampler_name="Euler a"))
    with pytest.raises(ValueError, match="schedule type 'Karras' does not fit sampler 'UniPC'"):
        run(flux, params(sampler_name="UniPC", scheduler="Karras"))


def test_distilled_guidance_changes_the_flux_image(flux: TinyModel) -> None:
    low = run(flux, params(distilled_cfg_scale=1.0)).images[0]
    high = run(flux, params(distilled_cfg_scale=6.0)).images[0]
    assert low.extra["Distilled CFG Scale"] == 1.0
    assert not np.array_equal(pixels(low.image), pixels(high.image))


def test_emphasis_prompt_editing_and_long_prompts_change_the_conditioning(
    flux: TinyModel, sd3: TinyModel
) -> None:
    plain = pixels(run(sd3, params(cfg_scale=3.0)).images[0].image)
    weighted = pixels(run(sd3, params(prompt="a photo of a (cat:1.6)", cfg_scale=3.0)).images[0].image)
    edited = pixels(run(sd3, params(prompt="a photo of a [dog:cat:2]", cfg_scale=3.0)).images[0].image)
    assert not np.array_equal(plain, weighted) and not np.array_equal(plain, edited)
    long_prompt = ", ".join(f"detail number {i}" for i in range(200))  # > 512 T5 tokens, > 75 CLIP tokens
    assert run(flux, params(prompt=long_prompt)).images[0].image.size == (64, 64)
    assert run(sd3, params(prompt=long_prompt, cfg_scale=3.0)).images[0].image.size == (64, 64)


def test_batch_images_use_consecutive_seeds_and_variation_seeds_change_them(sd3: TinyModel) -> None:
    batch = run(sd3, params(batch_size=2, seed=10, cfg_scale=2.0)).images
    second = run(sd3, params(seed=11, cfg_scale=2.0)).images[0]
    assert [item.seed for item in batch] == [10, 11]
    assert np.abs(pixels(batch[1].image) - pixels(second.image)).max() <= 1
    varied = run(sd3, params(seed=10, subseed=5, subseed_strength=0.5, cfg_scale=2.0)).images[0]
    assert not np.array_equal(pixels(varied.image), pixels(batch[0].image))


def test_img2img_strength_zero_keeps_the_picture_and_inpainting_keeps_unmasked_pixels(
    flux: TinyModel,
) -> None:
    init = Image.new("RGB", (64, 64), (200, 40, 40))
    family = FAMILIES.for_family(flux.family)
    request = Img2ImgParams(**{**params().model_dump(), "denoising_strength": 0.0})
    kept = family.img2img(flux, request, [init], job()).images[0].image
    assert kept.size == (64, 64)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    inpaint = Img2ImgParams(
        **{**params().model_dump(), "denoising_strength": 0.9, "mask_blur": 0, "inpaint_full_res": False}
    )
    steps: list[int] = []
    result = family.img2img(flux, inpaint, [init], job(on_step=lambda s: steps.append(s.step)), mask=mask)
    out = pixels(result.images[0].image)
    assert (out[:, 40:] == np.array([200, 40, 40])).all()  # outside the mask: the original, exactly
    assert steps == [1, 2]  # int(3 * 0.9) steps run



def test_latent_upscale_resize_mode_encodes_at_the_image_size_and_tiling_is_refused(flux: TinyModel) -> None:
    family = FAMILIES.for_family(flux.family)
    small = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8))
    request = {**params().model_dump(), "denoising_strength": 0.5}
    plain = family.img2img(flux, Img2ImgParams(**request), [small], job()).images[0].image
    latent = family.img2img(flux, Img2ImgParams(**{**request, "resize_mode": 3}), [small], job()).images[0]
    assert latent.image.size == plain.size == (64, 64)
    assert not np.array_equal(pixels(latent.image), pixels(plain))  # latents resized, not pixels
    with pytest.raises(ValueError, match="resize mode 3 .* cannot be used with a mask"):
        family.img2img(flux, Img2ImgParams(**{**request, "resize_mode": 3}), [small], job(),
                       mask=Image.new("L", (48, 32), 255))
    with pytest.raises(ValueError, match="at most 2048 a side"):
        family.img2img(flux, Img2ImgParams(**{**request, "resize_mode": 3}), [Image.new("RGB", (2100, 8))],
                       job())
    with pytest.raises(ValueError, match="seamless tiling is not supported for SD 3.x / Flux"):
        run(flux, params(tiling=True))


def test_hires_fix_runs_both_passes_on_the_flow_loop(flux: TinyModel) -> None:
    totals: list[int] = []
    for upscaler in ("Latent", "Lanczos"):
        request = params(enable_hr=True, hr_scale=2.0, hr_upscaler=upscaler, denoising_strength=0.5)
        result = run(flux, request, on_step=lambda s: totals.append(s.total_steps))
        assert result.images[0].image.size == (128, 128)
    assert set(totals) == {3 + 1}  # first pass 3 steps + int(3 * 0.5)


def test_interrupt_keeps_finished_batches_and_previews_are_made(flux: TinyModel) -> None:
    control = JobControl()
    previews: list[Image.Image] = []

    def on_step(step: Any) -> None:
        if step.preview is not None:
            previews.append(step.preview)
        if step.batch_index == 1 and step.step == 1:
            control.interrupt()

    result = run(flux, params(n_iter=3), control=control, on_step=on_step, preview_every=1)
    assert result.interrupted and len(result.images) == 1
    assert previews and previews[0].size == (32, 32)


def test_token_counter_counts_t5_tokens_against_its_chunk(flux: TinyModel) -> None:
    family = FAMILIES.for_family("flux-dev")
    tokens, limit = family.count_tokens(flux.pipe, "a photo of a cat")
    assert (tokens, limit) == (7, 511)  # "▁", "a", "▁photo", "▁of", "▁", "a", "▁cat"
    long_tokens, long_limit = family.count_tokens(flux.pipe, " ".join(["cat"] * 600))
    assert long_tokens == 600 and long_limit == 1022


def _flux_lora_files(folder: Any, flux: TinyModel) -> None:
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    proj = flux.pipe.transformer.transformer_blocks[0].attn.to_out[0]
    rank = 4
    down = torch.randn(rank, proj.in_features, generator=generator)
    up = torch.randn(proj.out_features, rank, generator=generator)
    folder.mkdir(parents=True, exist_ok=True)
    # kohya's Flux naming (BFL module paths), as diffusers converts it
    save_file(
        {
            "lora_unet_double_blocks_0_img_attn_proj.lora_down.weight": down,
            "lora_unet_double_blocks_0_img_attn_proj.lora_up.weight": up,
            "lora_unet_double_blocks_0_img_attn_proj.alpha": torch.tensor(float(rank)),
        },
        str(folder / "kohya_flux.safetensors"),
    )
    # diffusers / peft naming
    save_file(
        {
            "transformer.transformer_blocks.0.attn.to_out.0.lora_A.weight": down,
            "transformer.transformer_blocks.0.attn.to_out.0.lora_B.weight": up,
        },
        str(folder / "diffusers_flux.safetensors"),
    )
    # BFL module paths with peft's names (ComfyUI-style files)
    save_file(
        {
            "diffusion_model.double_blocks.0.img_attn.proj.lora_A.weight": down,
            "diffusion_model.double_blocks.0.img_attn.proj.lora_B.weight": up,
        },
        str(folder / "bfl_flux.safetensors"),
    )


def test_flux_loras_in_kohya_and_diffusers_form_apply_for_the_job_only(
    flux: TinyModel, tmp_path: Any
) -> None:
    from sdweb.engine.extra_networks.job import ExtraNetworks
    from sdweb.engine.extra_networks.lora import LoraLibrary

    _flux_lora_files(tmp_path / "Lora", flux)
    networks = ExtraNetworks(loras=LoraLibrary(tmp_path / "Lora"))
    plain = pixels(run(flux, params(prompt="a cat")).images[0].image)
    kohya = run(flux, params(prompt="a photo of a cat <lora:kohya_flux:1>"), extra_networks=networks).images[
        0
    ]
    peft = run(
        flux, params(prompt="a photo of a cat <lora:diffusers_flux:1>"), extra_networks=networks
    ).images[0]
    bfl = run(flux, params(prompt="a photo of a cat <lora:bfl_flux:1>"), extra_networks=networks).images[0]
    assert not np.array_equal(plain, pixels(kohya.image))
    assert np.abs(pixels(kohya.image) - pixels(peft.image)).max() <= 1  # the same LoRA, three file forms
    assert np.abs(pixels(kohya.image) - pixels(bfl.image)).max() <= 1
    assert "kohya_flux" in kohya.extra["Lora hashes"]
    assert np.array_equal(plain, pixels(run(flux, params(prompt="a cat")).images[0].image))  # removed after


def test_sd3_loras_in_diffusers_and_kohya_form_give_the_same_image_and_are_hashed(
    sd3: TinyModel, tmp_path: Any
) -> None:
    """diffusers has no kohya converter for SD 3.x: sdweb's maps fused qkv, the swapped adaLN halves and
    kohya's alpha onto the same layers; a key naming no layer is refused by name."""
    from safetensors.torch import save_file

    from sdweb.engine.extra_networks.job import ExtraNetworks
    from sdweb.engine.extra_networks.lora import LoraError, LoraLibrary
    from sdweb.engine.models.hashes import lora_hash

    transformer = sd3.pipe.transformer
    dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    te_width = sd3.pipe.text_encoder.config.hidden_size
    generator = torch.Generator().manual_seed(1)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    rank, alpha = 4, 2.0  # kohya's scale alpha / rank = 0.5
    qkv_down, q_up, k_up, v_up = rand(rank, dim), rand(dim, rank), rand(dim, rank), rand(dim, rank)
    proj_down, proj_up = rand(rank, dim), rand(dim, rank)
    final_down, final_up = rand(rank, dim), rand(2 * dim, rank)
    te_down, te_up = rand(rank, te_width), rand(te_width, rank)
    half = 0.5
    folder = tmp_path / "Lora"
    folder.mkdir()
    diffusers_form = {
        "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": qkv_down,
        "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": q_up * half,
        "transformer.transformer_blocks.0.attn.to_k.lora_A.weight": qkv_down,
        "transformer.transformer_blocks.0.attn.to_k.lora_B.weight": k_up * half,
        "transformer.transformer_blocks.0.attn.to_v.lora_A.weight": qkv_down,
        "transformer.transformer_blocks.0.attn.to_v.lora_B.weight": v_up * half,
        "transformer.transformer_blocks.0.attn.to_add_out.lora_A.weight": proj_down,
        "transformer.transformer_blocks.0.attn.to_add_out.lora_B.weight": proj_up * half,
        # diffusers keeps the final modulation's (shift, scale) halves as (scale, shift)
        "transformer.norm_out.linear.lora_A.weight": final_down,
        "transformer.norm_out.linear.lora_B.weight": torch.cat([final_up[dim:], final_up[:dim]]) * half,
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": te_down,
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": te_up * half,
    }
    save_file({k: v.clone() for k, v in diffusers_form.items()}, str(folder / "sd3_style.safetensors"))
    kohya_form = {}
    for name, down, up in (
        ("lora_unet_joint_blocks_0_x_block_attn_qkv", qkv_down, torch.cat([q_up, k_up, v_up])),
        ("lora_unet_joint_blocks_0_context_block_attn_proj", proj_down, proj_up),
        ("lora_unet_final_layer_adaLN_modulation_1", final_down, final_up),
        ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", te_down, te_up),
    ):
        kohya_form[f"{name}.lora_down.weight"] = down
        kohya_form[f"{name}.lora_up.weight"] = up
        kohya_form[f"{name}.alpha"] = torch.tensor(alpha)
    save_file(kohya_form, str(folder / "kohya_sd3.safetensors"))
    save_file(
        {"lora_unet_joint_blocks_99_x_block_attn_proj.lora_down.weight": proj_down,
         "lora_unet_joint_blocks_99_x_block_attn_proj.lora_up.weight": proj_up},
        str(folder / "other_model.safetensors"),
    )
    networks = ExtraNetworks(loras=LoraLibrary(folder))

    def image(prompt: str) -> Any:
        request = params(prompt=prompt, cfg_scale=4.0, negative_prompt="blurry")
        return run(sd3, request, extra_networks=networks).images[0]

    plain = pixels(image("a photo of a cat").image)
    styled = image("a photo of a cat <lora:sd3_style:1>")
    kohya = image("a photo of a cat <lora:kohya_sd3:1>")
    assert not np.array_equal(plain, pixels(styled.image))
    assert np.abs(pixels(styled.image) - pixels(kohya.image)).max() <= 1
    assert styled.extra["Lora hashes"] == f"sd3_style: {lora_hash(folder / 'sd3_style.safetensors')}"
    assert kohya.extra["Lora hashes"] == f"kohya_sd3: {lora_hash(folder / 'kohya_sd3.safetensors')}"
    with pytest.raises(LoraError, match=r"other_model\.safetensors could not be applied .*joint_blocks_99"):
        image("a photo of a cat <lora:other_model:1>")
    assert not any(sd3.pipe.get_list_adapters().values())
    assert np.array_equal(plain, pixels(image("a photo of a cat").image))  # all removed after


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_embeddings_apply_to_the_clip_encoders_and_are_hashed(
    family: str, flux: TinyModel, sd3: TinyModel, tmp_path: Any
) -> None:
    """Forge's rule: textual inversion on CLIP-L (Flux; an SD1-style file) or CLIP-L + CLIP-G (SD 3.x; an
    SDXL-style clip_l/clip_g file); T5 reads the name as text."""
    from safetensors.torch import save_file

    from sdweb.engine.extra_networks.embeddings import EmbeddingLibrary
    from sdweb.engine.extra_networks.job import ExtraNetworks

    model = flux if family == "flux" else sd3
    generator = torch.Generator().manual_seed(5)
    width_l = model.pipe.text_encoder.config.hidden_size
    if family == "flux":
        vectors = {"emb_params": torch.randn(2, width_l, generator=generator)}
    else:
        width_g = model.pipe.text_encoder_2.config.hidden_size
        vectors = {
            "clip_l": torch.randn(2, width_l, generator=generator),
            "clip_g": torch.randn(2, width_g, generator=generator),
        }
    (tmp_path / "embeddings").mkdir()
    save_file(vectors, str(tmp_path / "embeddings" / "shiny.safetensors"))
    with_library = ExtraNetworks(embeddings=EmbeddingLibrary(tmp_path / "embeddings"))
    without = ExtraNetworks(embeddings=EmbeddingLibrary(tmp_path / "empty"))
    request = params(prompt="a photo of a cat, shiny", cfg_scale=1.0 if family == "flux" else 4.0)
    used = run(model, request, extra_networks=with_library).images[0]
    plain = run(model, request, extra_networks=without).images[0]
    assert not np.array_equal(pixels(used.image), pixels(plain.image))
    assert used.extra["TI hashes"].startswith("shiny: ")
    assert "TI hashes" not in plain.extra


def test_the_load_warm_up_does_not_run_fluxs_t5(flux: TinyModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full T5-XXL forward over 512 tokens takes tens of seconds on a CPU: no warm-up for it."""
    from sdweb.engine.accelerator import warm_up

    calls: list[int] = []
    clip_calls: list[int] = []
    clip_forward = flux.pipe.text_encoder.forward
    monkeypatch.setattr(flux.pipe.text_encoder_2, "forward", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(
        flux.pipe.text_encoder, "forward", lambda *a, **k: clip_calls.append(1) or clip_forward(*a, **k)
    )
    warm_up(flux.pipe)
    assert calls == [] and clip_calls == [1]


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_taesd_previews_use_taef1_and_taesd3_from_vae_approx(family: str, flux: TinyModel, sd3: TinyModel,
                                                             tmp_path: Any) -> None:
    from safetensors.torch import save_file

    from sdweb.engine.previews import Previewer, TaesdDecoder, TaesdLibrary, preview_scope

    model = flux if family == "flux" else sd3
    channels = int(model.pipe.vae.config.latent_channels)
    torch.manual_seed(4)
    decoder = TaesdDecoder(latent_channels=channels, width=8).eval()
    stem = "taef1_decoder" if family == "flux" else "taesd3_decoder"
    state = {key: value.contiguous() for key, value in decoder.state_dict().items()}
    save_file(state, str(tmp_path / f"{stem}.safetensors"))
    seen: dict[str, list[Image.Image]] = {}
    for method, folder in (("TAESD", tmp_path), ("Approx cheap", tmp_path), ("TAESD", tmp_path / "none")):
        previews = seen[f"{method} {folder.name}"] = []
        with preview_scope(Previewer(method, TaesdLibrary(folder))):
            run(model, params(steps=3), on_step=lambda s, kept=previews: kept.append(s.preview) if s.preview
                else None, preview_every=1)
    cheap = seen[f"Approx cheap {tmp_path.name}"]
    taesd = seen[f"TAESD {tmp_path.name}"]
    assert len(taesd) == len(cheap) == 2  # steps 1 and 2 of 3
    # The cheap map gives one pixel per latent; TAESD decodes to 8x that, as the VAE's image would be.
    assert taesd[0].size == (cheap[0].size[0] * 8, cheap[0].size[1] * 8)
    # Without the file: the loop's own cheap 16-channel preview, as before.
    assert [pixels(p).tolist() for p in seen["TAESD none"]] == [pixels(p).tolist() for p in cheap]


def test_flow_models_claim_only_the_settings_they_apply() -> None:
    """SD 3.x / Flux have no alphas_cumprod, UNet schedules or k-diffusion sampler parameters: an infotext
    made with those settings on does not name them; the old prompt-editing timelines are named only where
    they changed a schedule (as for the UNet models)."""
    from sdweb.engine.families import FamilyJob, default_families
    from sdweb.images.infotext import build_infotext
    from sdweb.params import JobControl
    from tests.engine.conftest import TinyModel, tiny_params
    from tests.fixtures.flow_checkpoints import flux_pipe

    model = TinyModel(pipe=flux_pipe(dev=True), family="flux-dev")
    settings = dict(use_downcasted_alpha_bar=True, pad_cond_uncond=True, sgm_noise_multiplier=True,
                    always_discard_next_to_last_sigma=True, rho=5.0, s_churn=0.5, use_old_scheduling=True)
    job = FamilyJob(samplers=None, control=JobControl(), on_step=lambda _s: None)

    def infotext(prompt: str) -> str:
        params = tiny_params(prompt=prompt, negative_prompt="", cfg_scale=1.0, sampler_name="Euler",
                             **settings)
        run = default_families().for_family("flux-dev").txt2img(model, params, job)
        return build_infotext(params, seed=params.seed, subseed=params.subseed, model_name=None,
                              model_hash=None, extra=run.images[0].extra, version="v1.10.1")

    plain = infotext("a cat")
    for key in ("Downcast alphas_cumprod", "Pad conds", "Discard penultimate sigma", "SGM noise multiplier",
                "Schedule rho", "Sigma churn", "Old prompt editing timelines"):
        assert key not in plain, key
    assert "Old prompt editing timelines: True" in infotext("[a cat:a dog:1.0]")  # new: never a dog

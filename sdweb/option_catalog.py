"""The built-in user options: every setting sdweb itself defines (A1111's key names, labels and defaults
where A1111 has the setting), grouped by the Settings tab's sections.

Part of the kernel with :mod:`sdweb.config`, whose :class:`~sdweb.config.OptionSpec` each entry is;
extensions add their own specs beside these (:class:`~sdweb.config.OptionsStore`).
"""

from __future__ import annotations

from sdweb.config import OptionSpec


def _outdir(key: str, default: str, label: str) -> OptionSpec:
    return OptionSpec(key, default, label, "Paths for saving", folder=True)


BUILTIN_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("sd_model_checkpoint", "", "Stable Diffusion checkpoint", "Stable Diffusion"),
    OptionSpec("sd_vae", "Automatic", "SD VAE", "Stable Diffusion"),
    # Forge's name: text encoders / VAE (models/text_encoder, models/VAE) for SD 3.x and Flux checkpoints
    # that ship without them; empty = pick the fitting files automatically.
    OptionSpec("forge_additional_modules", [], "VAE / Text Encoder (SD 3.x, Flux)", "Stable Diffusion"),
    OptionSpec("CLIP_stop_at_last_layers", 1, "Clip skip", "Stable Diffusion", minimum=1, maximum=12),
    OptionSpec("emphasis", "Original", "Emphasis mode: how (word:1.2) weights act (None: not parsed, "
               "brackets are text; Ignore: parsed, no weights; Original: scaled, mean restored; No norm: "
               "scaled only)", "Stable Diffusion", choices=("None", "Ignore", "Original", "No norm")),
    OptionSpec("randn_source", "CPU", "Random number generator source", "Stable Diffusion",
               choices=("CPU", "GPU", "NV")),
    # A1111's ENSD: the noise drawn during sampling comes from seed + delta (sdweb.engine.seeds).
    OptionSpec("eta_noise_seed_delta", 0, "Eta noise seed delta (ENSD)", "Sampler parameters",
               minimum=0, maximum=2**64 - 1),
    # sdweb's own: A1111's k-diffusion samplers exactly (its images), or diffusers' schedulers.
    OptionSpec("sampler_path", "A1111", "Sampler implementation", "Sampler parameters",
               choices=("A1111", "diffusers")),
    OptionSpec("eta_ancestral", 1.0, "Eta for ancestral samplers", "Sampler parameters",
               minimum=0.0, maximum=1.0),
    # A1111's UniPC settings (the UniPC sampler on the A1111 sampler path).
    OptionSpec("uni_pc_variant", "bh1", "UniPC variant", "Sampler parameters",
               choices=("bh1", "bh2", "vary_coeff")),
    OptionSpec("uni_pc_skip_type", "time_uniform", "UniPC skip type", "Sampler parameters",
               choices=("time_uniform", "time_quadratic", "logSNR")),
    OptionSpec("uni_pc_order", 3, "UniPC order (at most the sampling steps)", "Sampler parameters",
               minimum=1, maximum=50),
    OptionSpec("uni_pc_lower_order_final", True, "UniPC lower order final", "Sampler parameters"),
    # A1111's schedule settings (its keys, labels and defaults).
    OptionSpec("sigma_min", 0.0, "Schedule min sigma (0 = the model's)", "Sampler parameters", minimum=0.0,
               maximum=1000.0),
    OptionSpec("sigma_max", 0.0, "Schedule max sigma (0 = the model's)", "Sampler parameters", minimum=0.0,
               maximum=1000.0),
    OptionSpec("rho", 0.0, "Schedule rho (0 = the schedule type's: Karras 7, Polyexponential 1)",
               "Sampler parameters", minimum=0.0, maximum=100.0),
    OptionSpec("beta_dist_alpha", 0.6, "Beta scheduler - alpha", "Sampler parameters", minimum=0.01,
               maximum=100.0),
    OptionSpec("beta_dist_beta", 0.6, "Beta scheduler - beta", "Sampler parameters", minimum=0.01,
               maximum=100.0),
    OptionSpec("img2img_extra_noise", 0.0, "Extra noise multiplier for img2img and hires fix",
               "img2img", minimum=0.0, maximum=1.0),
    OptionSpec("always_discard_next_to_last_sigma", False, "Always discard next-to-last sigma",
               "Sampler parameters"),
    OptionSpec("sgm_noise_multiplier", False, "SGM noise multiplier (match the initial noise to the "
               "official SDXL implementation; txt2img only)", "Sampler parameters"),
    # A1111's sampler parameters (Euler, Heun, DPM2 take all four; the noise scale also DPM2 a, DPM++ 2S a,
    # DPM++ SDE / 2M SDE / 3M SDE, DPM fast) and its CFG skipping; a request field of the same name wins.
    OptionSpec("s_churn", 0.0, "sigma churn", "Sampler parameters", minimum=0.0, maximum=100.0),
    OptionSpec("s_tmin", 0.0, "sigma tmin", "Sampler parameters", minimum=0.0, maximum=10.0),
    OptionSpec("s_tmax", 0.0, "sigma tmax (0 = infinity)", "Sampler parameters", minimum=0.0, maximum=999.0),
    OptionSpec("s_noise", 1.0, "sigma noise", "Sampler parameters", minimum=0.0, maximum=1.1),
    OptionSpec("s_min_uncond", 0.0, "Negative Guidance minimum sigma: below it every other model call runs "
               "without the negative prompt (0 = never)", "Sampler parameters", minimum=0.0, maximum=15.0),
    OptionSpec("s_min_uncond_all", False, "Negative Guidance minimum sigma: every model call below it, not "
               "every other", "Sampler parameters"),
    OptionSpec("skip_early_cond", 0.0, "Ignore negative prompt during early sampling (the fraction of the "
               "model calls; 0 = none)", "Sampler parameters", minimum=0.0, maximum=1.0),
    OptionSpec("sd_noise_schedule", "Default", "Noise schedule for sampling (Zero Terminal SNR: for models "
               "trained with it; A1111's samplers)", "Sampler parameters",
               choices=("Default", "Zero Terminal SNR")),
    # A1111's compatibility settings (its keys and labels); they change the picture, off by default.
    OptionSpec("auto_backcompat", True, "Automatic backward compatibility: a pasted infotext's Version "
               "turns on the compatibility settings that A1111 version had", "Compatibility"),
    OptionSpec("use_old_scheduling", False, "Use old prompt editing timelines (N below 1: a fraction of "
               "the steps, else a step; hires fix reuses the first pass's timeline)", "Compatibility"),
    OptionSpec("use_downcasted_alpha_bar", False, "Downcast model alphas_cumprod to fp16 before sampling "
               "(for reproducing old seeds)", "Compatibility"),
    OptionSpec("pad_cond_uncond", False, "Pad prompt/negative prompt to the same length (faster, changes "
               "images whose prompt and negative prompt differ in length)", "Compatibility"),
    OptionSpec("pad_cond_uncond_v0", False, "Pad prompt/negative prompt (v0): the way before A1111 1.6 "
               "(negative prompt padded with its last vector or cut)", "Compatibility"),
    OptionSpec("samples_format", "png", "File format for images", "Saving images",
               choices=("png", "jpg", "jpeg", "webp")),
    OptionSpec("samples_save", True, "Always save all generated images", "Saving images"),
    OptionSpec("grid_save", True, "Always save all generated image grids", "Saving images"),
    OptionSpec("return_grid", True, "Show grid in results (the API's first image when a batch is saved)",
               "Saving images"),
    OptionSpec("enable_pnginfo", True, "Save generation parameters in the image files (PNG info, EXIF)",
               "Saving images"),
    OptionSpec("jpeg_quality", 80, "Quality for saved jpeg and webp images", "Saving images",
               minimum=1, maximum=100),
    _outdir("outdir_samples", "", "Output directory for images; if empty, the per-tab folders below"),
    _outdir("outdir_txt2img_samples", "outputs/txt2img-images", "Output directory for txt2img images"),
    _outdir("outdir_img2img_samples", "outputs/img2img-images", "Output directory for img2img images"),
    _outdir("outdir_grids", "", "Output directory for grids; if empty, the per-tab folders below"),
    _outdir("outdir_txt2img_grids", "outputs/txt2img-grids", "Output directory for txt2img grids"),
    _outdir("outdir_img2img_grids", "outputs/img2img-grids", "Output directory for img2img grids"),
    # A1111's: img2img runs exactly the steps asked for, on a schedule of steps / denoising strength.
    OptionSpec("img2img_fix_steps", False, "With img2img, do exactly the amount of steps the slider "
               "specifies", "img2img"),
    # A1111's UI switch: img2img colour correction is not implemented here, so only its neutral value.
    OptionSpec("img2img_color_correction", False, "Apply color correction to img2img results (not "
               "supported yet)", "img2img", choices=(False,)),
    OptionSpec("send_seed", True, "Send seed when sending prompt or image to other interface",
               "User interface"),
    OptionSpec("send_size", True, "Send size when sending prompt or image to another interface",
               "User interface"),
    OptionSpec("live_previews_enable", True, "Show live previews of the created image", "Live previews"),
    OptionSpec("live_previews_image_format", "png", "Live preview file format", "Live previews",
               choices=("jpeg", "png", "webp")),
    # A1111's range: -1 (and 0) = no previews while sampling, only the finished image.
    OptionSpec("show_progress_every_n_steps", 5, "Live preview display period (steps; -1 = only after "
               "the batch)", "Live previews", minimum=-1, maximum=32),
    # A1111's "Live preview display method"; TAESD needs models/VAE-approx/taesd(xl)_decoder.
    OptionSpec("show_progress_type", "Approx NN", "Live preview display method (Approx NN: TAESD where its "
               "file is in models/VAE-approx, else Approx cheap)", "Live previews",
               choices=("Full", "Approx NN", "Approx cheap", "TAESD")),
    # Forge-like: VAE decode/encode switch to tiles when an image would need more memory than this.
    OptionSpec("vae_tile_budget_mb", 0, "VAE tiling: memory budget of one VAE decode/encode in MB; larger "
               "images are made in tiles (0 = automatic: 1280 MB on CPU, most of the free GPU memory)",
               "Performance", minimum=0, maximum=1_000_000),
    OptionSpec("torch_threads", 0, "CPU threads for torch (0 = all cores)", "Performance",
               minimum=0, maximum=256),
)

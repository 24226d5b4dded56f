"""Infotext: A1111's exact layout when writing, A1111's rules when reading, and the way back to a request."""

from __future__ import annotations

from typing import Any

import pytest

from sdweb.images.infotext import (
    InfotextError,
    build_infotext,
    hires_infotext,
    infotext_to_params,
    parse_infotext,
    split_sampler_name,
)
from sdweb.images.infotext_versions import infotext_version, version_backcompat
from sdweb.params import (
    A1111_COMPAT_INFOTEXT,
    CFG_SKIP_INFOTEXT,
    SCHEDULE_SETTINGS,
    SIGMA_DEFAULTS,
    GenerationParams,
)

# Real infotexts, as A1111 / Forge wrote them (gathered from public posts and A1111's sources).
# v1.9.4, LCM LoRA + textual inversions, separate VAE, Clip skip 2.
A1111_V194 = (
    "1girl,A superstar on stage.,, <lora:LCM_15:1>, <lora:ip-adapter-faceid-plusv2_sd15_lora:1>\n"
    "Negative prompt: MajicNegative_V2,badhandv4,\n"
    "Steps: 6, Sampler: LCM, Schedule type: Automatic, CFG scale: 1.5, Seed: 3748719078, "
    "Size: 768x1024, Model hash: 19bbe9faa4, Model: fantasticmix_k2, VAE hash: 07af11b95c, "
    "VAE: vae-ft-mse-840000-ema-pruned.safetensors, Clip skip: 2, "
    'Lora hashes: "LCM_15: aaebf6360f7d, ip-adapter-faceid-plusv2_sd15_lora: a95a0f4bdcb9", '
    'TI hashes: "MajicNegative_V2: a53884ef726b, badhandv4: 5e40d722fc3d", '
    "Downcast alphas_cumprod: True, Version: v1.9.4"
)
# Early 2023 (before "Schedule type" and "Version"): old sampler name with the schedule in it, hires fix.
A1111_FEB_2023 = (
    "(masterpiece, sidelighting, finely detailed beautiful eyes: 1.2), masterpiece*portrait, realistic, "
    "3d face, glowing eyes, shiny hair, lustrous skin, solo, embarassed\n"
    "Negative prompt: (worst quality, low quality:1.4), watermark, logo,\n"
    "Steps: 32, Sampler: DPM++ SDE Karras, CFG scale: 9, Seed: 3624413002, Size: 512x768, "
    "Model hash: aad629159b, Model: __Custom_FaceBombMix-fp16-no-ema, Denoising strength: 0.5, "
    "Clip skip: 2, ENSD: 31337, Hires upscale: 2, Hires steps: 14, Hires upscaler: R-ESRGAN 4x+ Anime6B"
)
# v1.5.1 as posted on Civitai (seed removed by the poster), 960x540 first pass.
A1111_V151_TAIL = (
    "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 5, Size: 960x540, Model hash: e3edb8a26f, "
    "Model: GhostMix-V2.0-fp16-BakedVAE, Denoising strength: 0.5, Clip skip: 2, Hires upscale: 2, "
    "Hires steps: 20, Hires upscaler: R-ESRGAN 4x+ Anime6B, "
    'Lora hashes: "zyd232_InkStyle_v1_0: 96718d4b1924, jinx: faecb6cfeccd", '
    'TI hashes: "EasyNegative: c74b4e810b03, ng_deepnegative_v1_75t: 54e7e4826d53", Version: v1.5.1'
)
# The example in A1111's parse_generation_parameters docstring (legacy 8-hex model hash).
A1111_DOCSTRING = (
    "girl with an artist's beret, determined, blue eyes, desert scene, computer monitors, heavy makeup, "
    "by Alphonse Mucha and Charlie Bowater, ((eyeshadow)), (coquettish), detailed, intricate\n"
    "Negative prompt: ugly, fat, obese, chubby, (((deformed))), [blurry], bad anatomy, disfigured, "
    "poorly drawn face, mutation, mutated, (extra_limb), (ugly), (poorly drawn hands), messy drawing\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b"
)
# The reference file's example, with a real version string.
REFERENCE_EXAMPLE = (
    "a photo of a cat\n"
    "Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 12345, Size: 512x768, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1"
)


def rebuild(text: str) -> str:
    """parse -> request + extras -> build, as "send to txt2img" then generate would write it."""
    params, extras = infotext_to_params(parse_infotext(text))
    model_name = extras.pop("Model", None)
    model_hash = extras.pop("Model hash", None)
    vae_name = extras.pop("VAE", None)
    vae_hash = extras.pop("VAE hash", None)
    version = extras.pop("Version", None)
    return build_infotext(
        params,
        seed=params.seed,
        subseed=params.subseed,
        model_name=model_name,
        model_hash=model_hash,
        vae_name=vae_name,
        vae_hash=vae_hash,
        clip_skip=params.clip_skip or 1,
        rng=params.rng or "GPU",
        extra={**extras, **(hires_infotext(params) if params.enable_hr else {})},
        version=version,  # type: ignore[arg-type]
    )


def build(params: GenerationParams, **overrides: Any) -> str:
    kwargs: dict[str, Any] = {
        "seed": params.seed,
        "subseed": params.subseed,
        "model_name": "v1-5-pruned-emaonly",
        "model_hash": "6ce0161689",
        "version": "0.1.0",
    }
    kwargs.update(overrides)
    if params.enable_hr:  # as the service writes a hires fix image's infotext
        kwargs["extra"] = {**kwargs.get("extra", {}), **hires_infotext(params)}
    return build_infotext(params, **kwargs)


# --- writing -----------------------------------------------------------------------------------


def test_build_writes_a1111_layout_and_key_order() -> None:
    params = GenerationParams(
        prompt="a photo of a cat",
        negative_prompt="blurry",
        steps=20,
        sampler_name="Euler a",
        scheduler="Automatic",
        cfg_scale=7,
        seed=12345,
        width=512,
        height=768,
    )
    text = build(params, rng="GPU", version="v1.10.1")
    assert text == (
        "a photo of a cat\n"
        "Negative prompt: blurry\n"
        "Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 12345, Size: 512x768, "
        "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1"
    )


def test_build_optional_keys_appear_only_when_they_apply_in_a1111_order() -> None:
    params = GenerationParams(
        prompt="p",
        seed=1,
        subseed=99,
        subseed_strength=0.25,
        seed_resize_from_w=640,
        seed_resize_from_h=448,
        cfg_scale=7.5,
        tiling=True,
    )
    text = build(
        params,
        vae_name="vae-ft-mse-840000-ema-pruned.safetensors",
        vae_hash="735e4c3a44",
        clip_skip=2,
        rng="CPU",
        extra={"Lora hashes": "add_detail: 7c6bad76eb54", "Denoising strength": 0.4, "Emphasis": None},
    )
    assert text.splitlines()[-1] == (
        "Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.5, Seed: 1, Size: 512x512, "
        "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, VAE hash: 735e4c3a44, "
        "VAE: vae-ft-mse-840000-ema-pruned.safetensors, Variation seed: 99, Variation seed strength: 0.25, "
        "Seed resize from: 640x448, Denoising strength: 0.4, Clip skip: 2, RNG: CPU, Tiling: True, "
        'Lora hashes: "add_detail: 7c6bad76eb54", Version: 0.1.0'
    )


def test_build_leaves_out_defaults_and_none() -> None:
    params = GenerationParams(prompt="p", seed=5, subseed=77, subseed_strength=0.0)
    text = build(params, model_name=None, model_hash=None, clip_skip=1, rng="GPU")
    assert text == "p\nSteps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 5, " \
        "Size: 512x512, Version: 0.1.0"
    for absent in ("Variation seed", "Clip skip", "RNG", "Model", "Negative prompt", "Seed resize from"):
        assert absent not in text


def test_build_quotes_only_values_with_comma_colon_or_newline() -> None:
    params = GenerationParams(prompt="p", seed=1)
    text = build(
        params,
        extra={
            "Plain": "R-ESRGAN 4x+ Anime6B",
            "Comma": "a, b",
            "Colon": "name: 0123",
            "Newline": "line1\nline2",
            "Quote": 'say "hi"',
            "Unicode": "日本, 語",
        },
    )
    last = text.splitlines()[-1]
    assert "Plain: R-ESRGAN 4x+ Anime6B," in last
    assert 'Comma: "a, b"' in last
    assert 'Colon: "name: 0123"' in last
    assert 'Newline: "line1\\nline2"' in last
    assert 'Quote: say "hi"' in last
    assert 'Unicode: "日本, 語"' in last  # ensure_ascii=False, as A1111
    assert text.count("\n") == 1  # the newline inside a value never breaks the parameter line


def test_build_writes_a_value_equal_to_its_key_as_a_bare_flag() -> None:
    # A1111 does this (and its parser then skips the flag); kept for identical output.
    text = build(GenerationParams(prompt="p", seed=1), extra={"Flag": "Flag"})
    assert text.endswith(", Flag, Version: 0.1.0")


def test_build_uses_per_image_prompt_and_seed() -> None:
    params = GenerationParams(prompt="template", negative_prompt="neg", seed=-1)
    text = build(params, seed=4242, prompt="styled prompt", negative_prompt="styled neg")
    assert text.startswith("styled prompt\nNegative prompt: styled neg\n")
    assert "Seed: 4242," in text


def test_build_multiline_prompt_and_empty_prompt() -> None:
    params = GenerationParams(prompt="line one\nline two", negative_prompt="neg one\nneg two", seed=3)
    text = build(params)
    assert text.startswith("line one\nline two\nNegative prompt: neg one\nneg two\nSteps: 20,")
    empty = build(GenerationParams(prompt="", negative_prompt="", seed=3))
    assert empty.startswith("Steps: 20, ")


# --- reading -----------------------------------------------------------------------------------


def test_parse_real_a1111_v194() -> None:
    parsed = parse_infotext(A1111_V194)
    assert parsed["Prompt"] == "1girl,A superstar on stage.,, <lora:LCM_15:1>, " \
        "<lora:ip-adapter-faceid-plusv2_sd15_lora:1>"
    assert parsed["Negative prompt"] == "MajicNegative_V2,badhandv4,"
    assert parsed["Steps"] == "6"
    assert parsed["Sampler"] == "LCM"
    assert parsed["CFG scale"] == "1.5"
    assert parsed["Seed"] == "3748719078"
    assert (parsed["Size-1"], parsed["Size-2"]) == ("768", "1024")
    assert parsed["Lora hashes"] == "LCM_15: aaebf6360f7d, ip-adapter-faceid-plusv2_sd15_lora: a95a0f4bdcb9"
    assert parsed["TI hashes"] == "MajicNegative_V2: a53884ef726b, badhandv4: 5e40d722fc3d"
    assert parsed["Clip skip"] == "2"
    assert parsed["RNG"] == "GPU"  # default: not written means GPU
    assert parsed["Version"] == "v1.9.4"


def test_parse_applies_defaults_for_missing_keys() -> None:
    parsed = parse_infotext(A1111_DOCSTRING)
    assert parsed["Clip skip"] == "1"
    assert parsed["RNG"] == "GPU"
    assert parsed["Schedule type"] == "Automatic"
    assert parsed["Model hash"] == "45dee52b"
    assert parsed["Negative prompt"].startswith("ugly, fat, obese")


def test_parse_last_line_with_fewer_than_three_pairs_is_prompt() -> None:
    parsed = parse_infotext("a castle\nstyle: gothic, mood: dark")
    assert parsed["Prompt"] == "a castle\nstyle: gothic, mood: dark"
    assert "style" not in parsed and "Steps" not in parsed


def test_parse_multiline_prompt_and_negative() -> None:
    text = (
        "first line\n  second line  \nNegative prompt: bad one\nbad two\n"
        "Steps: 10, Sampler: Euler, CFG scale: 5, Seed: 1, Size: 64x64"
    )
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == "first line\nsecond line"  # lines stripped, as A1111
    assert parsed["Negative prompt"] == "bad one\nbad two"


def test_parse_quoted_values_are_json_decoded() -> None:
    text = 'p\nSteps: 10, Sampler: Euler, CFG scale: 5, Note: "a \\"quoted\\", value\\nnext", Other: x'
    parsed = parse_infotext(text)
    assert parsed["Note"] == 'a "quoted", value\nnext'
    assert parsed["Other"] == "x"


def test_parse_splits_every_wxh_value() -> None:
    parsed = parse_infotext(A1111_V194.replace("Clip skip: 2", "Seed resize from: 640x448, Clip skip: 2"))
    assert (parsed["Seed resize from-1"], parsed["Seed resize from-2"]) == ("640", "448")


def test_parse_params_only_text() -> None:
    parsed = parse_infotext(A1111_V151_TAIL)
    assert parsed["Prompt"] == "" and parsed["Negative prompt"] == ""
    assert parsed["Hires upscaler"] == "R-ESRGAN 4x+ Anime6B"


# --- back to a request -------------------------------------------------------------------------


def test_infotext_to_params_maps_fields_and_returns_the_rest() -> None:
    params, extras = infotext_to_params(parse_infotext(A1111_V194))
    assert params.prompt.startswith("1girl,A superstar")
    assert params.negative_prompt == "MajicNegative_V2,badhandv4,"
    assert (params.steps, params.sampler_name, params.scheduler) == (6, "LCM", "Automatic")
    assert params.cfg_scale == 1.5
    assert params.seed == 3748719078
    assert (params.width, params.height) == (768, 1024)
    assert params.clip_skip == 2
    assert params.rng == "GPU"
    assert params.checkpoint is None
    assert extras["Model hash"] == "19bbe9faa4"
    assert extras["Model"] == "fantasticmix_k2"
    assert params.use_downcasted_alpha_bar is True  # A1111's "Downcast alphas_cumprod" setting
    assert params.use_old_scheduling is False
    assert list(extras) == ["Model hash", "Model", "VAE hash", "VAE", "Lora hashes", "TI hashes", "Version"]


def test_infotext_to_params_splits_old_sampler_names() -> None:
    params, extras = infotext_to_params(parse_infotext(A1111_FEB_2023))
    assert (params.sampler_name, params.scheduler) == ("DPM++ SDE", "Karras")
    assert params.seed == 3624413002
    assert params.eta_noise_seed_delta == 31337 and "ENSD" not in extras
    assert (params.enable_hr, params.hr_scale, params.hr_second_pass_steps) == (True, 2.0, 14)
    assert (params.hr_upscaler, params.denoising_strength) == ("R-ESRGAN 4x+ Anime6B", 0.5)
    assert not any(key.startswith("Hires ") for key in extras)
    assert split_sampler_name("DPM++ 2M SDE Exponential", None) == ("DPM++ 2M SDE", "Exponential")
    assert split_sampler_name("DPM++ 2M Karras", "Exponential") == ("DPM++ 2M Karras", "Exponential")
    assert split_sampler_name("Euler a", "Automatic") == ("Euler a", "Automatic")
    assert split_sampler_name("Karras", None) == ("Karras", "Automatic")


def test_infotext_to_params_variation_and_seed_resize() -> None:
    params = GenerationParams(prompt="p", seed=10, subseed=20, subseed_strength=0.3,
                              seed_resize_from_w=512, seed_resize_from_h=640)
    back, _ = infotext_to_params(parse_infotext(build(params)))
    assert (back.subseed, back.subseed_strength) == (20, 0.3)
    assert (back.seed_resize_from_w, back.seed_resize_from_h) == (512, 640)


def test_infotext_to_params_rejoins_size_pairs_in_extras() -> None:
    text = REFERENCE_EXAMPLE.replace("Version:", "Tile size: 64x96, Version:")
    _, extras = infotext_to_params(parse_infotext(text))
    assert extras["Tile size"] == "64x96"
    assert "Tile size-1" not in extras


def test_infotext_to_params_refuses_values_a_request_cannot_hold() -> None:
    # 540 is not a multiple of 8: refused with the field named, never rounded.
    with pytest.raises(InfotextError, match="height"):
        infotext_to_params(parse_infotext(A1111_V151_TAIL))
    with pytest.raises(InfotextError, match="Steps"):
        infotext_to_params(parse_infotext("p\nSteps: many, Sampler: Euler, CFG scale: 7, Seed: 1"))


def test_infotext_to_params_reads_the_noise_fields() -> None:
    text = REFERENCE_EXAMPLE.replace("Version", "RNG: NV, ENSD: 31337, Eta: 0.5, Version")
    params, extras = infotext_to_params(parse_infotext(text))
    assert (params.rng, params.eta_noise_seed_delta, params.eta) == ("NV", 31337, 0.5)
    assert not {"RNG", "ENSD", "Eta"} & set(extras)
    # No RNG key: A1111's default GPU noise, which the caller says how to reproduce (NV without CUDA).
    plain, _ = infotext_to_params(parse_infotext(REFERENCE_EXAMPLE), gpu_rng="NV")
    assert (plain.rng, plain.eta_noise_seed_delta, plain.sampler_path) == ("NV", 0, "A1111")
    with pytest.raises(InfotextError, match="RNG"):
        infotext_to_params(parse_infotext(REFERENCE_EXAMPLE.replace("Version", "RNG: Mersenne, Version")))
    notes: list[str] = []
    odd = REFERENCE_EXAMPLE.replace("Version", "RNG: X, Version")
    lenient, _ = infotext_to_params(parse_infotext(odd), problems=notes)
    assert lenient.rng is None and "RNG 'X'" in notes[0]


def test_noise_fields_and_the_sampler_path_are_written_and_read_back() -> None:
    params = GenerationParams(prompt="p", seed=3, eta_noise_seed_delta=31337, eta=0.67,
                              sampler_path="diffusers")
    text = build(params, rng="NV")
    assert "ENSD: 31337" in text and "RNG: NV" in text and "Eta: 0.67" in text
    assert "Sampler path: diffusers" in text
    back, extras = infotext_to_params(parse_infotext(text))
    assert (back.eta_noise_seed_delta, back.rng, back.eta) == (31337, "NV", 0.67)
    assert back.sampler_path == "diffusers"
    # the engine leaves ENSD out where it did not act (a sampler without extra noise)
    assert "ENSD" not in build(params, extra={"ENSD": None})
    # A1111's DDIM writes its eta as "Eta DDIM" (its default is 0)
    ddim = GenerationParams(prompt="p", seed=3, sampler_name="DDIM", eta=0.3)
    assert "Eta DDIM: 0.3" in build(ddim) and "Eta:" not in build(ddim)
    assert "Eta" not in build(ddim.model_copy(update={"eta": 0.0}))
    assert infotext_to_params(parse_infotext(build(ddim)))[0].eta == 0.3


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [A1111_V194, REFERENCE_EXAMPLE], ids=["a1111-v1.9.4", "reference"])
def test_real_modern_a1111_strings_rebuild_exactly(text: str) -> None:
    assert rebuild(text) == text


def test_old_a1111_string_keeps_every_value_through_a_rebuild() -> None:
    again = parse_infotext(rebuild(A1111_FEB_2023))
    first = parse_infotext(A1111_FEB_2023)
    # The rebuilt text states the schedule explicitly; every original value survives.
    assert again["Sampler"] == "DPM++ SDE" and again["Schedule type"] == "Karras"
    for key, value in first.items():
        if key not in ("Sampler", "Schedule type"):
            assert again[key] == value, key


@pytest.mark.parametrize(
    "params, overrides",
    [
        (GenerationParams(prompt="a cat", seed=1), {}),
        (GenerationParams(prompt="(masterpiece:1.2), a cat, <lora:add_detail:0.5>",
                          negative_prompt="lowres, bad anatomy", seed=4294967294, cfg_scale=6.5,
                          sampler_name="DPM++ 2M", scheduler="Karras", width=832, height=1216, steps=150,
                          enable_hr=True, hr_scale=2, hr_second_pass_steps=10, hr_upscaler="Latent",
                          denoising_strength=0.55),
         {"extra": {"Lora hashes": "add_detail: 7c6bad76eb54"}}),
        (GenerationParams(prompt="line 1\nline 2", negative_prompt="n1\nn2", seed=7, subseed=8,
                          subseed_strength=1.0, seed_resize_from_w=256, seed_resize_from_h=320, tiling=True),
         {"clip_skip": 3, "rng": "CPU", "vae_name": "my vae, v2", "vae_hash": "abcdef0123"}),
        (GenerationParams(prompt="日本語のプロンプト: 猫", negative_prompt="", seed=0),
         {"model_name": "model: with colon", "extra": {"Note": 'quote " and\nnewline'}}),
        (GenerationParams(prompt="masterpiece, 1girl", seed=11, enable_hr=True, hr_resize_x=1024,
                          hr_resize_y=1536),
         {"extra": {"Hashes": '{"vae": "c6a580b13a", "model": "0f1b80cfe8", "lora:detail": "7c6bad76eb"}',
                    "Path": "C:\\models\\"}}),
        (GenerationParams(prompt="a castle", negative_prompt="fog", seed=3, enable_hr=True,
                          hr_prompt="a castle, sharp details, <lora:detail:0.4>",
                          hr_negative_prompt="blur, fog",
                          hr_sampler_name="DPM++ 2M", hr_scheduler="Karras"),
         {}),
    ],
    ids=["minimal", "civitai-style", "multiline-variation", "unicode-quoted", "json-and-backslashes",
         "hires-overrides"],
)
def test_strings_we_write_rebuild_exactly(params: GenerationParams, overrides: dict[str, Any]) -> None:
    text = build(params, **overrides)
    assert rebuild(text) == text
    back, _ = infotext_to_params(parse_infotext(text))
    resolved = {"rng", "clip_skip", "subseed", "batch_size", "n_iter", "eta_noise_seed_delta", "sampler_path",
                *A1111_COMPAT_INFOTEXT, *SCHEDULE_SETTINGS, *SIGMA_DEFAULTS, *CFG_SKIP_INFOTEXT, "emphasis",
                "sd_noise_schedule"}
    assert back.model_dump(exclude=resolved) == params.model_dump(exclude=resolved)


@pytest.mark.parametrize(
    ("sampler", "values", "written"),
    [
        ("Euler", {"s_churn": 0.5, "s_tmin": 0.1, "s_tmax": 20.0, "s_noise": 1.003},
         "Sigma churn: 0.5, Sigma tmin: 0.1, Sigma tmax: 20, Sigma noise: 1.003"),
        # s_tmax 0 is infinity (the default); DPM2 a takes s_noise only, Euler a none (A1111's lists).
        ("Heun", {"s_churn": 1.0, "s_tmax": 0.0}, "Sigma churn: 1"),
        ("DPM2 a", {"s_churn": 1.0, "s_noise": 0.9}, "Sigma noise: 0.9"),
        ("Euler a", {"s_churn": 1.0, "s_noise": 0.9}, ""),
    ],
)
def test_sampler_parameters_are_written_where_the_sampler_takes_them_and_read_back(
        sampler: str, values: dict[str, float], written: str) -> None:
    params = GenerationParams(prompt="p", sampler_name=sampler, seed=1, **values)
    text = build(params)
    pairs = text.splitlines()[-1].split(", ")
    assert ", ".join(pair for pair in pairs if pair.startswith("Sigma ")) == written
    back, extras = infotext_to_params(parse_infotext(text))
    assert not any(key.startswith("Sigma") for key in extras)
    for key, value in parse_infotext(text).items():
        if key.startswith("Sigma "):
            assert getattr(back, {"Sigma churn": "s_churn", "Sigma tmin": "s_tmin", "Sigma tmax": "s_tmax",
                                  "Sigma noise": "s_noise"}[key]) == float(value)
    # Absent keys are the defaults where the image was made, not this machine's settings.
    taken = {"s_churn", "s_tmin", "s_tmax", "s_noise"} if sampler in ("Euler", "Heun") else {"s_noise"}
    unwritten = [name for name in SIGMA_DEFAULTS if name not in values or name not in taken]
    assert {name: getattr(back, name) for name in unwritten} == {
        name: SIGMA_DEFAULTS[name] for name in unwritten}


def test_cfg_skipping_keys_round_trip() -> None:
    params = GenerationParams(prompt="p", seed=1, s_min_uncond=1.5, s_min_uncond_all=True,
                              skip_early_cond=0.2)
    text = build(params)
    assert text.endswith("Skip Early CFG: 0.2, NGMS: 1.5, NGMS all steps: True, Version: 0.1.0")
    back, extras = infotext_to_params(parse_infotext(text))
    assert (back.s_min_uncond, back.s_min_uncond_all, back.skip_early_cond) == (1.5, True, 0.2)
    assert not {"NGMS", "NGMS all steps", "Skip Early CFG"} & set(extras)
    plain, _ = infotext_to_params(parse_infotext(build(GenerationParams(prompt="p", seed=1))))
    assert (plain.s_min_uncond, plain.s_min_uncond_all, plain.skip_early_cond) == (0.0, False, 0.0)
    assert "NGMS" not in build(GenerationParams(prompt="p", seed=1, s_min_uncond=0.0, s_min_uncond_all=True))


def test_hires_overrides_are_written_as_a1111_writes_them_and_read_back() -> None:
    params = GenerationParams(prompt="a fox", negative_prompt="blur", sampler_name="Euler a", seed=2,
                              enable_hr=True, hr_scale=1.5, denoising_strength=0.4, hr_prompt="a fox, fur",
                              hr_negative_prompt="blur, noise", hr_sampler_name="DPM++ 2M Karras")
    text = build(params)
    assert "Denoising strength: 0.4, " in text
    assert ("Hires upscale: 1.5, Hires upscaler: Latent, "
            'Hires sampler: DPM++ 2M Karras, Hires prompt: "a fox, fur", '
            'Hires negative prompt: "blur, noise", Version') in text
    back, extras = infotext_to_params(parse_infotext(text))
    # An old-style sampler name carries its schedule type, as the first pass's does.
    assert (back.hr_sampler_name, back.hr_scheduler) == ("DPM++ 2M", "Karras")
    assert (back.hr_prompt, back.hr_negative_prompt) == ("a fox, fur", "blur, noise")
    assert (back.enable_hr, back.hr_scale, back.denoising_strength) == (True, 1.5, 0.4)
    assert list(extras) == ["Model hash", "Model", "Version"]


def test_overrides_equal_to_the_first_pass_are_not_written() -> None:
    params = GenerationParams(prompt="a fox", sampler_name="Euler", enable_hr=True, hr_prompt="a fox",
                              hr_sampler_name="Euler")
    assert "Hires prompt" not in build(params) and "Hires sampler" not in build(params)


def test_a_value_that_does_not_fit_is_noted_when_asked_instead_of_raising() -> None:
    problems: list[str] = []
    text = A1111_FEB_2023.replace("Hires upscale: 2", "Hires upscale: 17").replace("Steps: 32", "Steps: many")
    params, _ = infotext_to_params(parse_infotext(text), problems=problems)
    assert params.hr_scale == 2.0 and params.steps == 20  # defaults
    assert params.hr_second_pass_steps == 14 and params.seed == 3624413002  # the rest is kept
    assert any("hr_scale" in problem for problem in problems)
    assert any("Steps" in problem for problem in problems)
    with pytest.raises(InfotextError, match="hr_scale"):
        infotext_to_params(parse_infotext(A1111_FEB_2023.replace("Hires upscale: 2", "Hires upscale: 17")))


def test_a1111_unipc_settings_are_read_and_written_under_a1111s_keys() -> None:
    base = "a cat\nSteps: 20, Sampler: UniPC, CFG scale: 7, Seed: 1, Size: 512x512"
    params, rest = infotext_to_params(parse_infotext(
        f"{base}, UniPC variant: bh2, UniPC skip type: logSNR, UniPC order: 2.0, "
        "UniPC lower order final: false"))
    assert (params.uni_pc_variant, params.uni_pc_skip_type, params.uni_pc_order,
            params.uni_pc_lower_order_final) == ("bh2", "logSNR", 2, False)
    assert not [key for key in rest if key.startswith("UniPC")]
    # absent keys are A1111's defaults, not this machine's settings
    params, _rest = infotext_to_params(parse_infotext(base))
    assert (params.uni_pc_variant, params.uni_pc_skip_type, params.uni_pc_order,
            params.uni_pc_lower_order_final) == ("bh1", "time_uniform", 3, True)
    # written when they differ from A1111's defaults, for UniPC only, and read back the same
    changed = params.model_copy(update={"uni_pc_order": 2, "uni_pc_variant": "vary_coeff"})
    text = build_infotext(changed, seed=1, subseed=1, model_name="m", model_hash="h", rng="GPU", version="v")
    assert "UniPC order: 2" in text and "UniPC variant: vary_coeff" in text and "UniPC skip type" not in text
    again, _rest = infotext_to_params(parse_infotext(text))
    assert (again.uni_pc_order, again.uni_pc_variant) == (2, "vary_coeff")
    euler = changed.model_copy(update={"sampler_name": "Euler"})
    assert "UniPC" not in build_infotext(euler, seed=1, subseed=1, model_name="m", model_hash="h", rng="GPU",
                                         version="v")
    with pytest.raises(InfotextError, match="UniPC order"):
        infotext_to_params(parse_infotext(f"{base}, UniPC order: 2.5"))


# --- A1111's "Automatic backward compatibility" (infotext_versions.backcompat) ------------------------


def _a1111(version: str, prompt: str = "a [cat:dog:0.5]", sampler: str = "Euler a") -> dict[str, Any]:
    return parse_infotext(f"{prompt}\nSteps: 20, Sampler: {sampler}, CFG scale: 7, Seed: 1, Size: 512x512, "
                          f"Version: {version}")


def test_an_a1111_1_5_infotext_turns_on_the_settings_that_version_had() -> None:
    old = version_backcompat(_a1111("v1.5.1"))
    assert old["Old prompt editing timelines"] is True  # "[" in the prompt
    assert old["Downcast alphas_cumprod"] is True
    assert "Pad conds v0" not in old  # not DDIM / PLMS
    params, extras = infotext_to_params(old)
    assert (params.use_old_scheduling, params.use_downcasted_alpha_bar) == (True, True)
    assert (params.pad_cond_uncond_v0, params.pad_cond_uncond) == (False, False)
    assert "Old prompt editing timelines" not in extras
    ddim = version_backcompat(_a1111("v1.5.1", prompt="a cat", sampler="DDIM"))
    assert ddim["Pad conds v0"] is True and "Old prompt editing timelines" not in ddim
    assert version_backcompat(_a1111("v1.5.1", prompt="a cat", sampler="PLMS"))["Pad conds v0"] is True


def test_from_1_6_0_only_the_downcast_applies_until_v1_7_0_225() -> None:
    v160 = version_backcompat(_a1111("v1.6.0", sampler="DDIM"))
    assert "Pad conds v0" not in v160 and "Old prompt editing timelines" not in v160
    assert v160["Downcast alphas_cumprod"] is True
    # A1111 compares git describe versions as packaging does: v1.7.0-224 is 1.7.0.post224
    assert version_backcompat(_a1111("v1.7.0-224-g1234abcd"))["Downcast alphas_cumprod"] is True
    assert "Downcast alphas_cumprod" not in version_backcompat(_a1111("v1.7.0-225-g1234abcd"))
    # a release candidate's describe string keeps "v1.7.0-RC": before the release, so before v1.7.0-225
    assert version_backcompat(_a1111("v1.7.0-RC-5-gabcdef0"))["Downcast alphas_cumprod"] is True
    assert version_backcompat(_a1111("v1.10.1")) == _a1111("v1.10.1")
    params, _ = infotext_to_params(version_backcompat(_a1111("v1.10.1")))
    assert (params.use_old_scheduling, params.use_downcasted_alpha_bar) == (False, False)


def test_versions_a1111_cannot_read_add_nothing() -> None:
    forge = _a1111("f2.0.1v1.10.1-previous-665-gae278f79")
    assert infotext_version("f2.0.1v1.10.1-previous-665-gae278f79") is None
    assert version_backcompat(forge) == forge
    no_version = parse_infotext("a [cat:dog:0.5]\nSteps: 20, Sampler: DDIM, CFG scale: 7, Seed: 1, "
                                "Size: 64x64")
    assert version_backcompat(no_version) == no_version
    # sdweb's own pictures (Version 0.x) are not old A1111 ones
    ours = build(GenerationParams(prompt="a [cat:dog:0.5]", sampler_name="DDIM", seed=1))
    assert parse_infotext(ours)["Version"] == "0.1.0" and infotext_version("0.1.0") is None
    assert version_backcompat(parse_infotext(ours)) == parse_infotext(ours)


def test_backcompat_sets_the_keys_whatever_the_infotext_said() -> None:
    """A1111 assigns True unconditionally (it writes the keys only when on, so "False" is never its own)."""
    text = _a1111("v1.5.1")
    text["Old prompt editing timelines"] = "False"
    assert version_backcompat(text)["Old prompt editing timelines"] is True

"""A1111's "Emphasis" modes and "Noise schedule for sampling" end to end: the request field changes the
picture (or keeps today's, bit for bit, at A1111's defaults), the infotext carries it, and a pasted
infotext with the key remakes the image the setting makes.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from sdweb.engine.generate import run_txt2img
from sdweb.engine.samplers.registry import FunctionSamplerPlan, SamplerRegistry
from sdweb.images.infotext import build_infotext, infotext_to_params, parse_infotext
from sdweb.params import GenerationParams, JobControl
from tests.engine.conftest import tiny_params
from tests.engine.kdiffusion_oracle import load
from tests.engine.test_kdiffusion_parity import SD_CONFIG, a1111_schedule, ldm_alphas_cumprod

_LINE = "Steps: 2, Sampler: Euler, Schedule type: Automatic, CFG scale: 7, Seed: 1234, Size: 64x64, RNG: CPU"


def _run(model: Any, samplers: Any, params: GenerationParams) -> tuple[torch.Tensor, dict[str, Any]]:
    run = run_txt2img(model, params, samplers=samplers, control=JobControl(), on_step=lambda _: None,
                      output_type="latent")
    return torch.cat([item.image for item in run.images]), run.images[0].extra


def _pasted(text: str) -> GenerationParams:
    params, _extras = infotext_to_params(parse_infotext(text), gpu_rng="CPU")
    return params.model_copy(update={"subseed": 99, "clip_skip": 1})  # what the service resolves


def _infotext(params: GenerationParams, extra: dict[str, Any]) -> str:
    return build_infotext(params, seed=params.seed, subseed=params.subseed, model_name=None, model_hash=None,
                          rng="CPU", extra=extra, version="v1.10.1")


# -- Emphasis ------------------------------------------------------------------------------------------------


def test_emphasis_original_keeps_todays_image_and_no_norm_changes_it(sd1_model: Any, samplers: Any) -> None:
    prompt = "(cat:1.3) on a mat"
    today, today_extra = _run(sd1_model, samplers, tiny_params(prompt=prompt))
    original, original_extra = _run(sd1_model, samplers, tiny_params(prompt=prompt, emphasis="Original"))
    assert torch.equal(original, today)
    assert "Emphasis" not in today_extra and "Emphasis" not in original_extra  # A1111's default: unwritten
    no_norm, extra = _run(sd1_model, samplers, tiny_params(prompt=prompt, emphasis="No norm"))
    assert not torch.allclose(no_norm, today, atol=1e-4)
    assert extra["Emphasis"] == "No norm"
    # "Ignore": the weights are dropped, so it is the plain prompt's image.
    ignore, _ = _run(sd1_model, samplers, tiny_params(prompt=prompt, emphasis="Ignore"))
    assert torch.equal(ignore, _run(sd1_model, samplers, tiny_params(prompt="cat on a mat"))[0])


def test_a_pasted_emphasis_remakes_the_image_the_setting_makes(sd1_model: Any, samplers: Any) -> None:
    by_hand = tiny_params(prompt="(cat:1.3) on a mat", emphasis="No norm")
    latents, extra = _run(sd1_model, samplers, by_hand)
    text = _infotext(by_hand, extra)
    assert text.endswith(", Emphasis: No norm, Version: v1.10.1")
    pasted = _pasted(text)
    assert pasted.emphasis == "No norm"
    assert torch.equal(_run(sd1_model, samplers, pasted)[0], latents)
    # Without the key: A1111's default where the picture was made.
    assert _pasted(f"(cat:1.3) on a mat\nNegative prompt: blurry\n{_LINE}").emphasis == "Original"


def test_emphasis_key_goes_where_a1111_writes_it() -> None:
    params = tiny_params(prompt="(cat:1.3)", use_old_scheduling=True, use_downcasted_alpha_bar=True,
                         pad_cond_uncond=True, sd_noise_schedule="Zero Terminal SNR")
    text = _infotext(params, {"Lora hashes": "x: 0123456789ab", "Emphasis": "Ignore"})
    assert text.splitlines()[-1].endswith(
        'Lora hashes: "x: 0123456789ab", Old prompt editing timelines: True, Emphasis: Ignore, '
        "Downcast alphas_cumprod: True, Noise Schedule: Zero Terminal SNR, Pad conds: True, "
        "Version: v1.10.1")


# -- Noise schedule: Zero Terminal SNR -----------------------------------------------------------------------


def a1111_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """A1111's rescale_zero_terminal_snr_abar (modules/sd_models.py), restated step by step."""
    alphas_bar_sqrt = alphas_cumprod.sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt -= last
    alphas_bar_sqrt *= first / (first - last)
    alphas_bar = alphas_bar_sqrt**2
    alphas_bar[-1] = 4.8973451890853435e-08
    return alphas_bar


class _RescaledLDM(torch.nn.Module):
    """What k-diffusion's CompVisDenoiser reads from A1111's model after apply_alpha_schedule_override."""

    def __init__(self) -> None:
        super().__init__()
        self.alphas_cumprod = a1111_zero_terminal_snr(ldm_alphas_cumprod())


@pytest.mark.parametrize("schedule", ["Uniform", "Karras", "Exponential", "SGM Uniform"])
def test_zero_terminal_snr_sigmas_are_k_diffusions_on_the_rescaled_alphas(samplers: SamplerRegistry,
                                                                          schedule: str) -> None:
    sampling, external = load()
    inner = external.CompVisDenoiser(_RescaledLDM(), quantize=True)
    expected = a1111_schedule(schedule, 8, inner, sampling)
    plan = samplers.build("Euler", schedule, SD_CONFIG, zero_terminal_snr=True)
    assert isinstance(plan, FunctionSamplerPlan)
    torch.testing.assert_close(plan.sigmas(8), expected.float(), rtol=1e-6, atol=1e-6)
    assert plan.model_sigmas().sigma_max == pytest.approx(inner.sigma_max.item(), rel=1e-6)
    assert plan.model_sigmas().sigma_max > 4500  # the almost-zero last alpha: sqrt(1 / 4.9e-8)
    plain = samplers.build("Euler", schedule, SD_CONFIG)
    assert plain.sigmas(8)[0] < 15  # the default schedule's largest sigma is about 14.6


def test_zero_terminal_snr_table_reaches_ddim(samplers: SamplerRegistry) -> None:
    plan = samplers.build("DDIM", "Automatic", SD_CONFIG, zero_terminal_snr=True)
    assert isinstance(plan, FunctionSamplerPlan)
    torch.testing.assert_close(plan.alphas_cumprod(), a1111_zero_terminal_snr(ldm_alphas_cumprod()),
                               rtol=0, atol=0)
    # A1111's order with "Downcast alphas_cumprod": fp16 first, then rescaled in fp16.
    both = samplers.build("Euler", "Karras", SD_CONFIG, downcast_alphas=True, zero_terminal_snr=True)
    expected = a1111_zero_terminal_snr(ldm_alphas_cumprod().half())
    assert both.alphas_cumprod().dtype == torch.float16
    assert torch.equal(both.alphas_cumprod(), expected)


def test_a_pasted_noise_schedule_remakes_the_image_the_setting_makes(sd1_model: Any, samplers: Any) -> None:
    by_hand = tiny_params(sd_noise_schedule="Zero Terminal SNR")
    latents, extra = _run(sd1_model, samplers, by_hand)
    default, _ = _run(sd1_model, samplers, tiny_params())
    assert not torch.allclose(latents, default, atol=1e-4)
    assert torch.equal(_run(sd1_model, samplers, tiny_params(sd_noise_schedule="Default"))[0], default)
    text = _infotext(by_hand, extra)
    assert text.endswith(", Noise Schedule: Zero Terminal SNR, Version: v1.10.1")
    pasted = _pasted(text)
    assert pasted.sd_noise_schedule == "Zero Terminal SNR"
    assert torch.equal(_run(sd1_model, samplers, pasted)[0], latents)
    assert _pasted(f"a photo of a cat\nNegative prompt: blurry\n{_LINE}").sd_noise_schedule == "Default"


def test_zero_terminal_snr_with_fp16_alphas_is_refused_naming_both(sd1_model: Any, samplers: Any) -> None:
    params = tiny_params(sd_noise_schedule="Zero Terminal SNR", use_downcasted_alpha_bar=True)
    with pytest.raises(ValueError, match="sd_noise_schedule.*use_downcasted_alpha_bar"):
        _run(sd1_model, samplers, params)


@torch.inference_mode()
def test_sd3_encoder_applies_the_emphasis_mode_to_clip_and_t5() -> None:
    from sdweb.engine.families.flow_encode import FlowTextEncoder
    from tests.fixtures.flow_checkpoints import sd3_pipe

    pipe = sd3_pipe("sd3.5-large")

    def encoded(text: str, mode: str = "Original") -> torch.Tensor:
        encoder = FlowTextEncoder(pipe, "sd3", device="cpu", dtype=torch.float32, max_sequence_length=32,
                                  emphasis=mode)
        return encoder.encode_texts([text])[0].hidden

    prompt = "(cat:1.3) on a mat"
    original = encoded(prompt)
    assert torch.equal(encoded(prompt, "Ignore"), encoded("cat on a mat"))
    no_norm = encoded(prompt, "No norm")
    assert not torch.allclose(no_norm, original)
    assert no_norm.shape == original.shape
    t5_no_norm, t5_original = no_norm[:, -32:], original[:, -32:]  # the CLIP chunk, then T5's 32 positions
    assert not torch.allclose(t5_no_norm, t5_original)  # T5's states are weighted too, as Forge does
    assert not torch.allclose(encoded(prompt, "None"), encoded(prompt, "Ignore"))


def test_a_prompt_schedule_is_encoded_as_one_a1111_batch(sd1_model: Any, samplers: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from sdweb.engine.encode import PromptEncoder

    seen: list[tuple[list[str], list[list[int]]]] = []
    encode = PromptEncoder.encode_texts

    def spy(self: Any, texts: Any, **kwargs: Any) -> Any:
        seen.append((list(texts), [list(group) for group in kwargs.get("groups", ())]))
        return encode(self, texts, **kwargs)

    monkeypatch.setattr(PromptEncoder, "encode_texts", spy)
    _run(sd1_model, samplers, tiny_params(prompt="(cat:1.3) on a mat", negative_prompt="(cat:1.3) on a mat"))
    assert seen[-1] == (["(cat:1.3) on a mat", ""], [])  # one text per schedule: as before
    # Prompt editing: the prompt's two texts are one batch; the negative prompt's same text is its own.
    _run(sd1_model, samplers, tiny_params(prompt="[(cat:1.3) on a mat:dog on a mat:1]",
                                          negative_prompt="(cat:1.3) on a mat"))
    texts, groups = seen[-1]
    assert texts == ["(cat:1.3) on a mat", "dog on a mat", "(cat:1.3) on a mat", ""]
    assert groups == [[0, 1]]


def test_schedule_texts_share_single_text_schedules_and_group_edited_ones() -> None:
    from sdweb.engine.encode import schedule_texts

    plan = schedule_texts([["a (cat:1.2)", "a dog", "a (cat:1.2)"], ["a (cat:1.2)"], ["a dog"], [""]])
    assert plan.texts == ["a (cat:1.2)", "a dog", "a (cat:1.2)", "a dog", ""]
    assert plan.groups == [[0, 1, 0]]  # A1111's batch keeps the repeated text (alternation)
    assert plan.lookups == [{"a (cat:1.2)": 0, "a dog": 1}, {"a (cat:1.2)": 2}, {"a dog": 3}, {"": 4}]


@torch.inference_mode()
def test_sd3_encoder_restores_the_mean_over_a_schedules_batch() -> None:
    from sdweb.engine.families.flow_encode import FlowTextEncoder
    from tests.fixtures.flow_checkpoints import sd3_pipe

    encoder = FlowTextEncoder(sd3_pipe("sd3.5-large"), "sd3", device="cpu", dtype=torch.float32,
                              max_sequence_length=32)
    texts = ["a (cat:1.3) on a mat", "a dog on a mat"]
    grouped = encoder.encode_texts(texts, groups=[[0, 1]])
    apart = encoder.encode_texts(texts)
    assert torch.equal(apart[1].hidden, encoder.encode_texts(texts[1:])[0].hidden)
    assert not torch.allclose(grouped[1].hidden, apart[1].hidden)  # the weighted text moved the dog's


def test_flow_models_make_no_noise_schedule_claim() -> None:
    from sdweb.engine.families import FamilyJob, default_families
    from tests.engine.conftest import TinyModel
    from tests.fixtures.flow_checkpoints import flux_pipe

    model = TinyModel(pipe=flux_pipe(dev=True), family="flux-dev")
    params = tiny_params(prompt="a cat", negative_prompt="", cfg_scale=1.0,
                         sd_noise_schedule="Zero Terminal SNR")
    job = FamilyJob(samplers=None, control=JobControl(), on_step=lambda _s: None)
    run = default_families().for_family("flux-dev").txt2img(model, params, job)
    assert "Noise Schedule" not in _infotext(params, run.images[0].extra)


def test_hires_fix_keeps_the_first_passs_emphasis_key(sd1_model: Any, samplers: Any) -> None:
    """A1111 writes "Emphasis" once any encoding of the job had a bracket: a hires prompt without one
    does not take away the first pass's."""
    from sdweb.engine.hires import run_hires_txt2img

    params = tiny_params(prompt="(cat:1.3) on a mat", emphasis="No norm", enable_hr=True, hr_scale=1.5,
                         hr_upscaler="Latent", hr_second_pass_steps=2, denoising_strength=0.6,
                         hr_prompt="a cat on a mat")
    run = run_hires_txt2img(sd1_model, params, samplers=samplers, control=JobControl(),
                            on_step=lambda _: None)
    assert run.images[0].extra["Emphasis"] == "No norm"


def test_the_diffusers_path_turns_on_its_schedulers_zero_snr_rescaling(samplers: SamplerRegistry) -> None:
    plan = samplers.build("Euler", "Automatic", SD_CONFIG, path="diffusers", zero_terminal_snr=True)
    assert not isinstance(plan, FunctionSamplerPlan)
    assert plan.scheduler.config.rescale_betas_zero_snr is True
    plain = samplers.build("Euler", "Automatic", SD_CONFIG, path="diffusers")
    assert plain.scheduler.config.rescale_betas_zero_snr is False

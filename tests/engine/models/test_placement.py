"""Offload chosen per model from its size and the free GPU memory; --medvram/--lowvram force it; the flow
loop runs offloaded on CUDA (GPU-marked)."""

from __future__ import annotations

import pytest
import torch

from sdweb.engine.models.placement import choose_offload

GIB = 1024**3
SIZES = {"transformer": 12 * GIB, "text_encoder_2": 9 * GIB, "vae": GIB // 4, "text_encoder": GIB // 4}


def test_a_model_that_fits_stays_on_the_gpu() -> None:
    placement = choose_offload(SIZES, free=40 * GIB)
    assert placement.offload == "none" and "fits" in placement.reason


def test_a_model_too_big_for_the_gpu_is_offloaded_by_component_then_layer_by_layer() -> None:
    model = choose_offload(SIZES, free=16 * GIB)
    assert model.offload == "model" and "transformer" in model.reason and "16.0 GiB" in model.reason
    sequential = choose_offload(SIZES, free=8 * GIB)
    assert sequential.offload == "sequential" and "layer by layer" in sequential.reason


def test_flags_force_the_offload_and_cpu_never_offloads() -> None:
    assert choose_offload(SIZES, free=80 * GIB, forced="model").reason == "model offload forced by --medvram"
    assert choose_offload(SIZES, free=80 * GIB, forced="sequential").offload == "sequential"
    assert choose_offload(SIZES, free=None, device_type="cpu").offload == "none"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_flux_on_cuda_is_offloaded_when_it_does_not_fit(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from sdweb.engine.devices import RuntimeConfig, attention_processor_names
    from sdweb.engine.families import FamilyJob, default_families
    from sdweb.engine.models.hashes import HashCache
    from sdweb.engine.models.loader import load_checkpoint
    from sdweb.engine.models.registry import CheckpointRegistry
    from sdweb.params import GenerationParams, JobControl
    from tests.fixtures.flow_checkpoints import all_in_one_state, save, tiny_flux_components

    save(all_in_one_state(tiny_flux_components()), tmp_path / "ckpt" / "flux-dev.safetensors")
    info = CheckpointRegistry([tmp_path / "ckpt"], HashCache(tmp_path / "h.json")).find("flux-dev")
    runtime = RuntimeConfig(
        device=torch.device("cuda", 0),
        dtype=torch.bfloat16,
        vae_dtype=torch.float32,
        attention="sdpa",
        offload="none",
        vae_tiling=False,
        threads=4,
    )
    # Pretend the GPU is nearly full: the transformer alone (the largest part) still fits.
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (3 * 1024**3 + 10**6, 80 * 1024**3))
    monkeypatch.setattr("sdweb.engine.models.placement.WORKING_MARGIN_BYTES", 3 * 1024**3)
    loaded = load_checkpoint(info, runtime)
    assert any(
        hasattr(module, "_hf_hook")
        for module in loaded.pipe.components.values()
        if isinstance(module, torch.nn.Module)
    )
    assert attention_processor_names(loaded.pipe)
    params = GenerationParams(
        prompt="a cat",
        steps=2,
        width=64,
        height=64,
        seed=1,
        subseed=1,
        clip_skip=1,
        rng="CPU",
        sampler_name="Euler",
        cfg_scale=1.0,
    )
    run = (
        default_families()
        .for_family(loaded.family)
        .txt2img(loaded, params, FamilyJob(samplers=None, control=JobControl(), on_step=lambda _s: None))
    )
    assert run.images[0].image.size == (64, 64)


def test_on_cuda_the_choice_and_its_reason_are_logged_and_kept_on_the_runtime(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """fit_runtime measures the free memory (faked here: no GPU in CI) and logs what it chose and why."""
    from sdweb.engine.devices import RuntimeConfig
    from sdweb.engine.models.placement import fit_runtime

    class Pipe:  # components of 2 MiB (transformer) and 1 MiB (text encoder)
        components = {
            "transformer": torch.nn.Linear(512, 1024, bias=False),
            "text_encoder": torch.nn.Linear(256, 1024, bias=False),
            "tokenizer": object(),
        }

    runtime = RuntimeConfig(
        device=torch.device("cuda", 0),
        dtype=torch.float32,
        vae_dtype=torch.float32,
        attention="sdpa",
        offload="none",
        vae_tiling=False,
        threads=1,
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("sdweb.engine.models.placement.WORKING_MARGIN_BYTES", 1024**2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (7 * 1024**2 // 2, 80 * GIB))
    caplog.set_level("INFO", logger="sdweb.engine.models.placement")
    model = fit_runtime(Pipe(), runtime, "flux1-dev.safetensors")
    assert model.offload == "model"
    assert "flux1-dev.safetensors: the model (0.0 GiB) does not fit" in caplog.text
    assert "its largest part (transformer" in model.reasons[-1]
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (GIB, 80 * GIB))
    assert fit_runtime(Pipe(), runtime, "flux1-dev.safetensors") is runtime  # fits: nothing changes
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1024**2, 80 * GIB))
    assert fit_runtime(Pipe(), runtime, "flux1-dev.safetensors").offload == "sequential"

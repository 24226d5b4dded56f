"""Loading SD 3.x / Flux from every file form, offline: all-in-one, transformer-only + module files, fp8
(kept fp8), GGUF (kept quantized), diffusers folders; missing and mismatched modules are clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from sdweb.engine.devices import RuntimeConfig
from sdweb.engine.models.errors import MissingModuleError, ModuleMismatchError
from sdweb.engine.models.flow_loader import storage_summary
from sdweb.engine.models.hashes import HashCache
from sdweb.engine.models.loader import detect_file, load_checkpoint
from sdweb.engine.models.modules import ModuleRegistry
from sdweb.engine.models.registry import CheckpointRegistry
from tests.fixtures.flow_checkpoints import flux_pipe, tiny_flux_components, write_flow_library

RUNTIME = RuntimeConfig(
    device=torch.device("cpu"),
    dtype=torch.float32,
    vae_dtype=torch.float32,
    attention="sdpa",
    offload="none",
    vae_tiling=False,
    threads=1,
)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("flow-data")
    paths = write_flow_library(root)
    paths["root"] = root
    return paths


@pytest.fixture(scope="module")
def checkpoints(library: dict[str, Path]) -> CheckpointRegistry:
    root = library["root"]
    return CheckpointRegistry(
        [root / "models" / "Stable-diffusion"], HashCache(root / "cache" / "hashes.json")
    )


@pytest.fixture(scope="module")
def modules(library: dict[str, Path]) -> ModuleRegistry:
    root = library["root"]
    return ModuleRegistry(root / "models" / "text_encoder", root / "models" / "VAE")


def _load(
    checkpoints: CheckpointRegistry,
    modules: ModuleRegistry,
    name: str,
    chosen: tuple[str, ...] = (),
    runtime: RuntimeConfig = RUNTIME,
) -> Any:
    info = checkpoints.find(name)
    detection = detect_file(info.path, info.name, info.kind)
    picked = modules.resolve(detection, checkpoint=info.name, chosen=chosen)
    return load_checkpoint(info, runtime, modules=picked)


def test_every_form_is_listed_with_its_family(checkpoints: CheckpointRegistry) -> None:
    families = {info.name: (info.family, info.detect_error) for info in checkpoints.refresh()}
    assert families == {
        "flux-dev-aio.safetensors": ("flux-dev", None),
        "flux-schnell.safetensors": ("flux-schnell", None),
        "flux-schnell-fp8.safetensors": ("flux-schnell", None),
        "flux-schnell-Q8_0.gguf": ("flux-schnell", None),
        "sd35-large-aio.safetensors": ("sd3.5-large", None),
        "sd35-medium.safetensors": ("sd3.5-medium", None),
    }


def test_all_in_one_flux_loads_its_own_weights(checkpoints, modules) -> None:
    loaded = _load(checkpoints, modules, "flux-dev-aio.safetensors")
    reference = tiny_flux_components(dev=True)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        expected, got = reference[name].state_dict(), loaded.pipe.components[name].state_dict()
        assert all(torch.equal(expected[k], got[k]) for k in expected), name
    assert loaded.family == "flux-dev" and loaded.vae_name is None


def test_transformer_only_flux_gets_its_modules_picked_automatically(checkpoints, modules, library) -> None:
    info = checkpoints.find("flux-schnell.safetensors")
    detection = detect_file(info.path, info.name, info.kind)
    picked = modules.resolve(detection, checkpoint=info.name)
    assert {slot: item.name for slot, item in picked.items()} == {
        "clip_l": "clip_l.safetensors",
        "t5xxl": "t5xxl_fp16.safetensors",
        "vae": "ae.safetensors",
    }
    loaded = load_checkpoint(info, RUNTIME, modules=picked, vae_hash="0123456789")
    assert loaded.vae_name == "ae.safetensors"
    reference = tiny_flux_components(dev=False)["transformer"].state_dict()
    got = loaded.pipe.transformer.state_dict()
    assert all(torch.equal(reference[k], got[k]) for k in reference)


def test_sd35_transformer_only_takes_clip_g_and_the_fitting_t5(checkpoints, modules) -> None:
    info = checkpoints.find("sd35-medium.safetensors")
    detection = detect_file(info.path, info.name, info.kind)
    picked = modules.resolve(detection, checkpoint=info.name)
    assert {slot: item.name for slot, item in picked.items()} == {
        "clip_l": "clip_l.safetensors",
        "clip_g": "clip_g.safetensors",
        "vae": "sd3_vae.safetensors",
        "t5xxl": "t5xxl_sd3_fp8_e4m3fn.safetensors",
    }
    loaded = load_checkpoint(info, RUNTIME, modules=picked)
    # The fp8 T5 file stays fp8 in memory (its linear layers are cast per forward) and runs at the
    # compute dtype (T5's feed-forward casts its input to the output layer's weight dtype first).
    t5 = loaded.pipe.text_encoder_3
    attention = t5.encoder.block[0].layer[0].SelfAttention
    assert attention.q.weight.dtype == t5.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype
    assert attention.q.weight.dtype == torch.float8_e4m3fn
    with torch.inference_mode():
        hidden = loaded.pipe.text_encoder_3(torch.tensor([[3, 7, 1]]))[0]
    assert hidden.dtype == RUNTIME.dtype and torch.isfinite(hidden).all()


def test_fp8_weights_stay_fp8_and_compute_close_to_the_fp32_model(checkpoints, modules) -> None:
    fp8 = _load(checkpoints, modules, "flux-schnell-fp8.safetensors")
    assert storage_summary(fp8.pipe)["transformer"] == "float8_e4m3fn"
    reference = flux_pipe(dev=False).transformer
    x = torch.randn(1, 16, 64)
    inputs = dict(
        hidden_states=x,
        encoder_hidden_states=torch.randn(1, 5, 32),
        pooled_projections=torch.randn(1, 32),
        timestep=torch.tensor([0.5]),
        img_ids=torch.zeros(16, 3),
        txt_ids=torch.zeros(5, 3),
        return_dict=False,
    )
    with torch.inference_mode():
        expected = reference(**inputs)[0]
        got = fp8.pipe.transformer(**inputs)[0]
    assert torch.allclose(expected, got, atol=0.15), (expected - got).abs().max()
    assert storage_summary(fp8.pipe)["transformer"] == "float8_e4m3fn"  # still fp8 after running
    block = fp8.pipe.transformer.transformer_blocks[0]
    # the modulation layers stay as the file holds them; biases are not rounded to fp8
    assert block.norm1.linear.weight.dtype == torch.float8_e4m3fn
    assert block.attn.to_q.bias.dtype == block.norm1.linear.bias.dtype == RUNTIME.dtype


def test_gguf_transformer_stays_quantized(checkpoints, modules) -> None:
    loaded = _load(checkpoints, modules, "flux-schnell-Q8_0.gguf")
    assert storage_summary(loaded.pipe)["transformer"] == "gguf:Q8_0"
    assert loaded.family == "flux-schnell"


def test_a_missing_module_names_the_file_and_the_folder(checkpoints, tmp_path: Path) -> None:
    empty = ModuleRegistry(tmp_path / "text_encoder", tmp_path / "VAE")
    info = checkpoints.find("flux-schnell.safetensors")
    with pytest.raises(MissingModuleError) as excinfo:
        empty.resolve(detect_file(info.path, info.name, info.kind), checkpoint=info.name)
    message = str(excinfo.value)
    assert (
        "t5xxl_fp16.safetensors" in message
        and "clip_l.safetensors" in message
        and "ae.safetensors" in message
    )
    assert str(tmp_path / "text_encoder") in message


def test_a_chosen_module_that_does_not_fit_is_refused(checkpoints, modules) -> None:
    info = checkpoints.find("flux-schnell.safetensors")
    detection = detect_file(info.path, info.name, info.kind)
    with pytest.raises(ModuleMismatchError, match="t5xxl_sd3_fp8_e4m3fn.safetensors does not fit"):
        modules.resolve(detection, checkpoint=info.name, chosen=["t5xxl_sd3_fp8_e4m3fn.safetensors"])
    with pytest.raises(
        ModuleMismatchError, match=r"clip_g.safetensors does not fit .*no slot for .*CLIP, 48"
    ):
        modules.resolve(detection, checkpoint=info.name, chosen=["clip_g"])


def test_diffusers_folders_load_offline(tmp_path: Path) -> None:
    from sdweb.engine.models.registry import CheckpointRegistry

    folder = tmp_path / "models" / "flux-tiny"
    flux_pipe(dev=True).save_pretrained(folder)
    registry = CheckpointRegistry([tmp_path / "models"], HashCache(tmp_path / "hashes.json"))
    info = registry.find("flux-tiny")
    assert (info.kind, info.family) == ("diffusers", "flux-dev")
    loaded = load_checkpoint(info, RUNTIME)
    assert type(loaded.pipe).__name__ == "FluxPipeline" and loaded.family == "flux-dev"


def test_gguf_tensors_are_streamed_as_diffusers_reads_them(library: dict[str, Path]) -> None:
    from diffusers.models.model_loading_utils import load_gguf_checkpoint

    from sdweb.engine.models.gguf_io import read_gguf_state

    path = library["flux_schnell_gguf"]
    expected = load_gguf_checkpoint(str(path))
    got = read_gguf_state(path, plain_dtype=torch.bfloat16)
    assert got.keys() == expected.keys()
    for key, tensor in expected.items():
        quant = getattr(tensor, "quant_type", None)
        assert getattr(got[key], "quant_type", None) == quant, key
        if quant is None:  # plain tensors (norms, biases) arrive at the compute dtype
            assert got[key].dtype == torch.bfloat16
            assert torch.equal(got[key], tensor.to(torch.bfloat16)), key
        else:  # quantized ones stay as the file's blocks
            assert got[key].dtype == torch.uint8 and torch.equal(got[key], tensor), key
    prefixed = read_gguf_state(path, prefix="double_blocks.0.")
    assert prefixed and all(not key.startswith("double_blocks") for key in prefixed)


def test_a_gguf_quantization_diffusers_cannot_dequantize_is_refused_by_name(tmp_path: Path) -> None:
    import gguf
    import numpy as np

    from sdweb.engine.models.errors import UnsupportedCheckpointError
    from sdweb.engine.models.gguf_io import read_gguf_state

    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), arch="flux")
    iq = gguf.GGMLQuantizationType.IQ2_XXS  # llama.cpp has it, diffusers' dequantizer does not
    writer.add_tensor("img_in.weight", np.zeros((4, gguf.GGML_QUANT_SIZES[iq][1]), np.uint8), raw_dtype=iq)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedCheckpointError, match="IQ2_XXS"):
        read_gguf_state(path)


def test_a_lora_applies_to_an_fp8_transformer(checkpoints, modules, tmp_path: Path) -> None:
    """peft would give the LoRA the fp8 storage dtype of its base layer, which cannot multiply."""
    import numpy as np
    from safetensors.torch import save_file

    from sdweb.engine.extra_networks.job import ExtraNetworks
    from sdweb.engine.extra_networks.lora import LoraLibrary
    from sdweb.engine.families import FamilyJob, default_families
    from sdweb.params import GenerationParams, JobControl

    loaded = _load(checkpoints, modules, "flux-schnell-fp8.safetensors")
    proj = loaded.pipe.transformer.transformer_blocks[0].attn.to_out[0]
    generator = torch.Generator().manual_seed(0)
    (tmp_path / "Lora").mkdir()
    save_file(
        {
            "transformer.transformer_blocks.0.attn.to_out.0.lora_A.weight": torch.randn(
                4, proj.in_features, generator=generator
            ),
            "transformer.transformer_blocks.0.attn.to_out.0.lora_B.weight": torch.randn(
                proj.out_features, 4, generator=generator
            ),
        },
        str(tmp_path / "Lora" / "style.safetensors"),
    )
    networks = ExtraNetworks(loras=LoraLibrary(tmp_path / "Lora"))
    family = default_families().for_family(loaded.family)

    def image(prompt: str) -> np.ndarray:
        params = GenerationParams(prompt=prompt, steps=2, width=64, height=64, seed=1, subseed=1, clip_skip=1,
                                  rng="CPU", sampler_name="Euler", cfg_scale=1.0)
        job = FamilyJob(samplers=None, control=JobControl(), on_step=lambda _s: None, extra_networks=networks)
        return np.asarray(family.txt2img(loaded, params, job).images[0].image).astype(int)

    assert not np.array_equal(image("a cat"), image("a cat <lora:style:1>"))
    assert proj.weight.dtype == torch.float8_e4m3fn  # the base layer is still stored in fp8

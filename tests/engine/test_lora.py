"""LoRA tags on the tiny SD1 model: weights, several at once, te/unet split, clean-up, errors, infotext."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from sdweb.engine.extra_networks.job import ExtraNetworks
from sdweb.engine.extra_networks.lora import LoraError, LoraLibrary
from sdweb.engine.generate import run_txt2img
from sdweb.engine.models.hashes import HashCache, lora_hash
from sdweb.engine.samplers.registry import SamplerRegistry
from sdweb.params import JobControl, StepProgress
from tests.engine.conftest import TinyModel, tiny_params
from tests.fixtures.lora import kohya_sdxl_text_lora_state, write_tiny_sd1_lora


@pytest.fixture()
def lora_dir(tmp_path: Path, sd1_pipe: Any) -> Path:
    folder = tmp_path / "Lora"
    write_tiny_sd1_lora(folder / "detail.safetensors", sd1_pipe, seed=1,
                        metadata={"ss_output_name": "add_detail", "ss_tag_frequency": '{"cats": {"cat": 3}}'})
    write_tiny_sd1_lora(folder / "styles" / "style.safetensors", sd1_pipe, seed=2)
    return folder


@pytest.fixture()
def networks(lora_dir: Path, tmp_path: Path) -> ExtraNetworks:
    return ExtraNetworks(loras=LoraLibrary(lora_dir, hashes=HashCache(tmp_path / "cache")))


def _latents(model: TinyModel, samplers: SamplerRegistry, prompt: str, networks: ExtraNetworks | None,
             **kwargs: Any) -> torch.Tensor:
    run = run_txt2img(model, tiny_params(prompt=prompt), samplers=samplers, control=JobControl(),
                      on_step=kwargs.pop("on_step", lambda _: None), output_type="latent",
                      extra_networks=networks)
    return run.images[0].image


def _differ(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def _no_adapters(pipe: Any) -> bool:
    components = [pipe.unet, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)]
    peft_layers = [name for component in components if component is not None
                   for name, module in component.named_modules() if hasattr(module, "lora_A")]
    return not any(pipe.get_list_adapters().values()) and not peft_layers


def test_weight_zero_is_no_lora_weight_one_changes_the_image_and_the_next_request_is_clean(
        sd1_model: TinyModel, samplers: SamplerRegistry, networks: ExtraNetworks) -> None:
    plain = _latents(sd1_model, samplers, "a cat", networks)
    zero = _latents(sd1_model, samplers, "a cat <lora:detail:0>", networks)
    assert _no_adapters(sd1_model.pipe)
    one = _latents(sd1_model, samplers, "a cat <lora:detail:1>", networks)
    assert _no_adapters(sd1_model.pipe)
    after = _latents(sd1_model, samplers, "a cat", networks)

    assert _differ(zero, plain) <= 1e-5
    assert _differ(one, plain) > 1e-2
    assert _differ(after, plain) <= 1e-6


def test_two_loras_at_once_differ_from_each_alone(sd1_model: TinyModel, samplers: SamplerRegistry,
                                                   networks: ExtraNetworks) -> None:
    detail = _latents(sd1_model, samplers, "a cat <lora:detail:1>", networks)
    style = _latents(sd1_model, samplers, "a cat <lora:style:1>", networks)
    both = _latents(sd1_model, samplers, "a cat <lora:detail:1> <lora:style:1>", networks)
    assert _differ(both, detail) > 1e-2 and _differ(both, style) > 1e-2
    assert _no_adapters(sd1_model.pipe)
    # A LoRA at weight 0 beside another one changes nothing.
    detail_alone = _latents(sd1_model, samplers, "a cat <lora:detail:1> <lora:style:0>", networks)
    assert _differ(detail_alone, detail) <= 1e-5


def test_text_encoder_and_unet_weights_apart(sd1_model: TinyModel, samplers: SamplerRegistry,
                                             networks: ExtraNetworks) -> None:
    plain = _latents(sd1_model, samplers, "a cat", networks)
    full = _latents(sd1_model, samplers, "a cat <lora:detail:1>", networks)
    te_only = _latents(sd1_model, samplers, "a cat <lora:detail:1:0>", networks)
    unet_only = _latents(sd1_model, samplers, "a cat <lora:detail:0:1>", networks)
    named = _latents(sd1_model, samplers, "a cat <lora:detail:unet=1:te=0>", networks)
    for partial in (te_only, unet_only):
        assert _differ(partial, plain) > 1e-3
        assert _differ(partial, full) > 1e-3
    assert _differ(te_only, unet_only) > 1e-3
    assert _differ(named, unet_only) <= 1e-6
    # A second number is the UNet weight; without it the UNet takes the first one.
    same = _latents(sd1_model, samplers, "a cat <lora:detail:1:1>", networks)
    assert _differ(same, full) <= 1e-6


def test_unknown_name_is_an_error_listing_known_ones(sd1_model: TinyModel, samplers: SamplerRegistry,
                                                     networks: ExtraNetworks) -> None:
    with pytest.raises(LoraError, match=r"LoRA 'nope' not found .*known: detail, style"):
        _latents(sd1_model, samplers, "a cat <lora:nope:1>", networks)
    assert _no_adapters(sd1_model.pipe)
    # The same check, torch-free, for the service's validation.
    assert networks.loras is not None
    with pytest.raises(LoraError, match="known: detail, style"):
        networks.loras.check_prompt("a cat <lora:detail:1> <lora:nope>")


def test_alias_and_case_find_the_file(networks: ExtraNetworks) -> None:
    library = networks.loras
    assert library is not None
    assert library.names() == ["detail", "style"]
    assert library.find("add_detail").name == "detail"
    assert library.find("DETAIL").name == "detail"
    requests = library.check_prompt("x <lora:detail:0.5> <lora:style:0.3:0.7> <lora:detail:0.25>")
    assert [(r.file.name, r.te_weight, r.unet_weight) for r in requests] == [
        ("detail", 0.75, 0.75), ("style", 0.3, 0.7)]


def test_bad_tags_are_errors(networks: ExtraNetworks) -> None:
    library = networks.loras
    assert library is not None
    with pytest.raises(LoraError, match="hypernetworks are not supported"):
        library.check_prompt("a cat <hypernet:anime:1>")
    with pytest.raises(LoraError, match="unknown extra network kind 'foo'"):
        library.check_prompt("a cat <foo:bar>")
    with pytest.raises(LoraError, match="weight 'lots' is not a number"):
        library.check_prompt("a cat <lora:detail:lots>")


def test_lora_hashes_in_the_infotext(sd1_model: TinyModel, samplers: SamplerRegistry, networks: ExtraNetworks,
                                     lora_dir: Path) -> None:
    run = run_txt2img(sd1_model, tiny_params(prompt="a cat <lora:add_detail:0.8>, <lora:style:1>"),
                      samplers=samplers, control=JobControl(), on_step=lambda _: None,
                      extra_networks=networks)
    detail = lora_hash(lora_dir / "detail.safetensors")
    style = lora_hash(lora_dir / "styles" / "style.safetensors")
    assert len(detail) == 12 and detail != style
    assert run.images[0].extra == {"Lora hashes": f"add_detail: {detail}, style: {style}"}
    plain = run_txt2img(sd1_model, tiny_params(prompt="a cat"), samplers=samplers, control=JobControl(),
                        on_step=lambda _: None, extra_networks=networks)
    assert "Lora hashes" not in plain.images[0].extra


def test_loras_are_removed_when_the_job_fails(sd1_model: TinyModel, samplers: SamplerRegistry,
                                              networks: ExtraNetworks) -> None:
    plain = _latents(sd1_model, samplers, "a cat", networks)

    def fail(_progress: StepProgress) -> None:
        raise RuntimeError("boom in the middle of sampling")

    with pytest.raises(RuntimeError, match="boom"):
        _latents(sd1_model, samplers, "a cat <lora:detail:1> <lora:style:1>", networks, on_step=fail)
    assert _no_adapters(sd1_model.pipe)
    assert _differ(_latents(sd1_model, samplers, "a cat", networks), plain) <= 1e-6


def test_a_file_diffusers_cannot_convert_is_a_clear_error(sd1_model: TinyModel, samplers: SamplerRegistry,
                                                         lora_dir: Path, networks: ExtraNetworks) -> None:
    save_file({"lora_unet_no_such_module.lora_down.weight": torch.zeros(4, 7),
               "lora_unet_no_such_module.lora_up.weight": torch.zeros(7, 4)},
              str(lora_dir / "broken.safetensors"))
    (lora_dir / "garbage.safetensors").write_bytes(b"not a safetensors file at all")
    assert networks.loras is not None
    networks.loras.refresh()
    with pytest.raises(LoraError, match=r"LoRA broken\.safetensors could not be applied"):
        _latents(sd1_model, samplers, "a cat <lora:detail:1> <lora:broken:1>", networks)
    assert _no_adapters(sd1_model.pipe)
    with pytest.raises(LoraError, match=r"LoRA garbage\.safetensors cannot be read"):
        _latents(sd1_model, samplers, "a cat <lora:garbage:1>", networks)
    assert _no_adapters(sd1_model.pipe)


def test_library_items_have_the_a1111_shape(networks: ExtraNetworks, lora_dir: Path) -> None:
    assert networks.loras is not None
    items = networks.loras.items()
    assert [item["name"] for item in items] == ["detail", "style"]
    detail = items[0]
    assert detail["alias"] == "add_detail"
    assert detail["path"] == str(lora_dir / "detail.safetensors")
    assert detail["metadata"]["ss_tag_frequency"] == {"cats": {"cat": 3}}
    assert items[1]["alias"] == "style"
    (lora_dir / "new.safetensors").write_bytes((lora_dir / "detail.safetensors").read_bytes())
    assert "new" not in networks.loras.names()
    networks.loras.refresh()
    assert "new" in networks.loras.names()
    # A tag naming a file added since the last scan finds it without a refresh.
    (lora_dir / "newer.safetensors").write_bytes((lora_dir / "detail.safetensors").read_bytes())
    assert networks.loras.find("newer").path == lora_dir / "newer.safetensors"


def test_sdxl_text_encoder_lora_on_the_tiny_sdxl_model(sdxl_pipe: Any, samplers: SamplerRegistry,
                                                       tmp_path: Path) -> None:
    folder = tmp_path / "Lora"
    folder.mkdir()
    save_file(kohya_sdxl_text_lora_state(sdxl_pipe, seed=3), str(folder / "xl.safetensors"))
    networks = ExtraNetworks(loras=LoraLibrary(folder))
    model = TinyModel(pipe=sdxl_pipe, family="sdxl")
    plain = _latents(model, samplers, "a cat", networks)
    with_lora = _latents(model, samplers, "a cat <lora:xl:1>", networks)
    assert _no_adapters(sdxl_pipe)
    assert _differ(with_lora, plain) > 1e-3
    assert _differ(_latents(model, samplers, "a cat <lora:xl:0>", networks), plain) <= 1e-5
    assert _differ(_latents(model, samplers, "a cat", networks), plain) <= 1e-6


@pytest.mark.gpu
def test_lora_on_cuda_half_precision(samplers: SamplerRegistry, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    from tests.fixtures.checkpoints import tiny_sd1_components

    pipe = StableDiffusionPipeline(**tiny_sd1_components()).to("cuda", torch.float16)
    model = TinyModel(pipe=pipe, device=torch.device("cuda"), dtype=torch.float16)
    write_tiny_sd1_lora(tmp_path / "detail.safetensors", pipe, seed=1)
    networks = ExtraNetworks(loras=LoraLibrary(tmp_path))
    plain = _latents(model, samplers, "a cat", networks)
    zero = _latents(model, samplers, "a cat <lora:detail:0>", networks)
    one = _latents(model, samplers, "a cat <lora:detail:1>", networks)
    assert _no_adapters(pipe)
    after = _latents(model, samplers, "a cat", networks)
    assert _differ(zero, plain) <= 1e-3
    assert _differ(one, plain) > 1e-2
    assert _differ(after, plain) <= 1e-3

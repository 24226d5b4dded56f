"""Loading single-file checkpoints and diffusers folders into pipelines, offline, without a second copy."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)
from safetensors.torch import load_file, save_file

from sdweb.engine.models.errors import CheckpointReadError, UnsupportedCheckpointError
from sdweb.engine.models.loader import LoadedModel
from tests.fixtures.checkpoints import (
    _tiny_vae,
    sd1_ldm_state_dict,
    tiny_sd1_components,
    tiny_sd2v_components,
    tiny_sdxl_components,
    write_ldm_ckpt,
    write_ldm_safetensors,
    write_tiny_diffusers_folder,
    write_tiny_sd1,
    write_tiny_sd2v,
    write_tiny_sdxl,
    write_tiny_sdxl_diffusers_folder,
    write_tiny_vae,
)

Load = Callable[..., LoadedModel]
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def assert_same_weights(built: dict[str, Any], pipe: Any, names: tuple[str, ...] = COMPONENTS) -> None:
    for name in names:
        if name not in built:
            continue
        expected = built[name].state_dict()
        got = getattr(pipe, name).state_dict()
        assert set(got) == set(expected), name
        different = [k for k in expected if not torch.equal(expected[k].to(got[k].dtype), got[k])]
        assert not different, f"{name}: {different[:3]}"


@pytest.mark.parametrize(
    ("fixture", "builder", "family", "pipeline"),
    [
        ("tiny_sd1_path", tiny_sd1_components, "sd1", StableDiffusionPipeline),
        ("tiny_sd2v_path", tiny_sd2v_components, "sd2-v", StableDiffusionPipeline),
        ("tiny_sdxl_path", tiny_sdxl_components, "sdxl", StableDiffusionXLPipeline),
    ],
)
def test_ldm_file_loads_back_to_the_exact_weights_it_was_written_from(
    request: pytest.FixtureRequest,
    load: Load,
    fixture: str,
    builder: Callable[[], dict],
    family: str,
    pipeline: type,
) -> None:
    path: Path = request.getfixturevalue(fixture)

    model = load(path)

    assert model.family == family
    assert isinstance(model.pipe, pipeline)
    assert_same_weights(builder(), model.pipe)
    assert model.pipe.scheduler.config.prediction_type == model.detection.prediction_type
    # No weight is left on the meta device or in another dtype.
    for name in COMPONENTS:
        module = getattr(model.pipe, name, None)
        if module is not None:
            assert {p.device.type for p in module.parameters()} == {"cpu"}
            assert {p.dtype for p in module.parameters()} == {torch.float32}


def test_sd2v_loads_with_a_v_prediction_scheduler(tiny_sd2v_path: Path, load: Load) -> None:
    model = load(tiny_sd2v_path)

    assert model.detection.prediction_type == "v_prediction"
    assert model.pipe.scheduler.config.prediction_type == "v_prediction"
    assert model.pipe.tokenizer.pad_token == "!"  # OpenCLIP's tokenizer, not OpenAI CLIP's


def test_loaded_sd1_generates_a_64px_image_in_two_steps(tiny_sd1_path: Path, load: Load) -> None:
    model = load(tiny_sd1_path)

    result = model.pipe(
        "a photo of an astronaut riding a horse",
        num_inference_steps=2,
        height=64,
        width=64,
        guidance_scale=7.0,
        generator=torch.Generator().manual_seed(1),
        output_type="np",
    )

    image = result.images[0]
    assert image.shape == (64, 64, 3)
    assert np.isfinite(image).all()


def test_loaded_sdxl_runs_one_step(tiny_sdxl_path: Path, load: Load) -> None:
    model = load(tiny_sdxl_path)

    result = model.pipe(
        "a cat",
        num_inference_steps=1,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(1),
        output_type="np",
    )

    assert result.images[0].shape == (64, 64, 3)


def test_apply_runtime_is_called_with_the_pipeline(
    tiny_sd1_path: Path, load: Load, applied_runtimes: Any
) -> None:
    model = load(tiny_sd1_path)

    assert applied_runtimes.pipes == [model.pipe]


def test_weights_are_cast_while_reading_and_vae_keeps_its_own_dtype(tiny_sd1_path: Path, load: Load) -> None:
    model = load(tiny_sd1_path, dtype=torch.bfloat16, vae_dtype=torch.float32)

    assert {p.dtype for p in model.pipe.unet.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.pipe.text_encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.pipe.vae.parameters()} == {torch.float32}
    assert model.dtype == torch.bfloat16
    built = tiny_sd1_components()
    assert_same_weights(built, model.pipe, ("vae",))
    expected = built["unet"].state_dict()["conv_in.weight"].to(torch.bfloat16)
    assert torch.equal(model.pipe.unet.state_dict()["conv_in.weight"], expected)


def test_fp16_file_loads_into_fp32(tmp_path: Path, load: Load) -> None:
    built = tiny_sd1_components()
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in sd1_ldm_state_dict(built).items()}
    path = write_ldm_safetensors(state, tmp_path / "half.safetensors")

    model = load(path)

    assert {p.dtype for p in model.pipe.unet.parameters()} == {torch.float32}
    expected = built["unet"].state_dict()["conv_in.weight"].half().float()
    assert torch.equal(model.pipe.unet.state_dict()["conv_in.weight"], expected)


def test_model_size_counts_every_weight_once(tiny_sd1_path: Path, load: Load) -> None:
    model = load(tiny_sd1_path)

    params = sum(
        p.numel() * p.element_size()
        for name in ("unet", "vae", "text_encoder")
        for p in getattr(model.pipe, name).parameters()
    )
    assert params <= model.nbytes() <= params * 1.01
    assert model.to("cpu") is model
    assert model.device == torch.device("cpu")


def test_ckpt_in_original_layout_loads_through_the_weights_only_unpickler(tmp_path: Path, load: Load) -> None:
    built = tiny_sd1_components()
    path = write_ldm_ckpt(sd1_ldm_state_dict(built), tmp_path / "tiny.ckpt")

    model = load(path)

    assert model.family == "sd1"
    assert_same_weights(built, model.pipe)


def test_reduced_model_without_middle_block_loads_through_the_same_path(tmp_path: Path, load: Load) -> None:
    built = tiny_sd1_components(mid_block_type=None)
    path = write_ldm_safetensors(sd1_ldm_state_dict(built), tmp_path / "bk-sdm-like.safetensors")

    model = load(path)

    assert model.pipe.unet.mid_block is None
    assert_same_weights(built, model.pipe)


def test_diffusers_folder_loads_offline(tmp_path: Path, load: Load) -> None:
    folder = write_tiny_diffusers_folder(tmp_path / "tiny-sd1-diffusers")

    model = load(folder)

    assert model.family == "sd1"
    assert isinstance(model.pipe, StableDiffusionPipeline)
    assert_same_weights(tiny_sd1_components(), model.pipe)


@pytest.mark.parametrize("ldm", [True, False], ids=["ldm-keys", "diffusers-keys"])
def test_vae_file_replaces_the_checkpoint_vae(
    tiny_sd1_path: Path, tmp_path: Path, load: Load, ldm: bool
) -> None:
    vae_path = write_tiny_vae(tmp_path / "other.vae.safetensors", ldm=ldm)
    torch.manual_seed(7)  # write_tiny_vae's default seed
    expected = _tiny_vae().state_dict()

    model = load(tiny_sd1_path, vae_path=vae_path)

    got = model.pipe.vae.state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert model.vae_name == "other.vae.safetensors"
    assert model.vae_hash == hashlib.sha256(vae_path.read_bytes()).hexdigest()[:10]
    # The checkpoint's own VAE differs, so the override really happened.
    own = tiny_sd1_components()["vae"].state_dict()
    assert not torch.equal(own["decoder.conv_out.weight"], got["decoder.conv_out.weight"])


def test_vae_prefixed_with_first_stage_model_is_accepted(
    tiny_sd1_path: Path, tmp_path: Path, load: Load
) -> None:
    plain = write_tiny_vae(tmp_path / "plain.safetensors")
    prefixed = tmp_path / "prefixed.safetensors"
    save_file({"first_stage_model." + k: v for k, v in load_file(str(plain)).items()}, str(prefixed))

    model = load(tiny_sd1_path, vae_path=prefixed)

    assert torch.equal(
        model.pipe.vae.state_dict()["decoder.conv_out.weight"],
        load_file(str(plain))["decoder.conv_out.weight"],
    )


def test_checkpoint_without_vae_needs_a_vae_file(tmp_path: Path, load: Load) -> None:
    state = {
        k: v
        for k, v in sd1_ldm_state_dict(tiny_sd1_components()).items()
        if not k.startswith("first_stage_model.")
    }
    path = write_ldm_safetensors(state, tmp_path / "no-vae.safetensors")

    with pytest.raises(UnsupportedCheckpointError, match="no-vae.safetensors: the checkpoint has no VAE"):
        load(path)
    model = load(path, vae_path=write_tiny_vae(tmp_path / "v.safetensors"))
    assert model.pipe.vae is not None


def test_lora_like_safetensors_is_refused_with_a_clear_message(tmp_path: Path, load: Load) -> None:
    path = tmp_path / "my_lora.safetensors"
    save_file(
        {
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4),
            "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0),
        },
        str(path),
    )

    with pytest.raises(UnsupportedCheckpointError, match=r"my_lora\.safetensors: looks like a LoRA"):
        load(path)


def test_truncated_checkpoint_is_refused_as_truncated(
    tiny_sd1_path: Path, tmp_path: Path, load: Load
) -> None:
    data = tiny_sd1_path.read_bytes()
    path = tmp_path / "half-downloaded.safetensors"
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(CheckpointReadError, match=r"half-downloaded\.safetensors: truncated"):
        load(path)


@pytest.mark.parametrize(
    ("builder", "writer", "family", "pipeline"),
    [
        (tiny_sd1_components, write_tiny_sd1, "sd1-inpaint", StableDiffusionPipeline),
        (tiny_sd2v_components, write_tiny_sd2v, "sd2-inpaint", StableDiffusionPipeline),
        (tiny_sdxl_components, write_tiny_sdxl, "sdxl-inpaint", StableDiffusionXLPipeline),
    ],
)
def test_inpainting_checkpoints_load_with_a_9_channel_unet(
    tmp_path: Path, load: Load, builder: Callable[..., dict], writer: Callable[..., Path], family: str,
    pipeline: type,
) -> None:
    path = writer(tmp_path / "model-inpainting.safetensors", in_channels=9)

    loaded = load(path)

    assert loaded.family == family
    assert isinstance(loaded.pipe, pipeline)
    assert loaded.pipe.unet.config.in_channels == 9
    assert loaded.pipe.unet.config.out_channels == 4
    assert loaded.pipe.scheduler.config.prediction_type == "epsilon"
    assert_same_weights(builder(in_channels=9), loaded.pipe)


def test_depth_checkpoint_is_refused_with_what_sdweb_runs_instead(tmp_path: Path, load: Load) -> None:
    path = write_tiny_sd1(tmp_path / "depth.safetensors", in_channels=5)

    expected = r"depth\.safetensors: not supported yet: depth-to-image .* inpainting \(9-channel\)"
    with pytest.raises(UnsupportedCheckpointError, match=expected):
        load(path)


@pytest.mark.parametrize(
    ("builder", "saver", "family"),
    [
        (tiny_sd1_components, StableDiffusionInpaintPipeline, "sd1-inpaint"),
        (tiny_sdxl_components, StableDiffusionXLInpaintPipeline, "sdxl-inpaint"),
    ],
)
def test_inpainting_diffusers_folders_load(
    tmp_path: Path, load: Load, builder: Callable[..., dict], saver: type, family: str
) -> None:
    folder = tmp_path / "inpainting"
    saver(**builder(in_channels=9)).save_pretrained(str(folder), safe_serialization=True)

    loaded = load(folder)

    assert loaded.family == family
    assert loaded.pipe.unet.config.in_channels == 9
    assert_same_weights(builder(in_channels=9), loaded.pipe)


def test_unrelated_keys_and_ema_weights_are_never_read(tmp_path: Path, load: Load) -> None:
    built = tiny_sd1_components()
    state = sd1_ldm_state_dict(built)
    # An EMA copy under its flattened LDM names, like training checkpoints carry.
    ema = {
        "model_ema." + k.removeprefix("model.diffusion_model.").replace(".", ""): torch.full_like(v, 9.0)
        for k, v in state.items()
        if k.startswith("model.diffusion_model.")
    }
    path = write_ldm_safetensors(
        {**state, **ema, "model_ema.decay": torch.tensor(0.999)}, tmp_path / "ema.safetensors"
    )

    model = load(path)

    assert_same_weights(built, model.pipe, ("unet",))


def test_yaml_beside_an_sd2_file_makes_it_epsilon(tiny_sd2v_path: Path, tmp_path: Path, load: Load) -> None:
    path = tmp_path / "sd2-base.safetensors"
    path.write_bytes(tiny_sd2v_path.read_bytes())
    path.with_suffix(".yaml").write_text('model:\n  params:\n    parameterization: "eps"\n', encoding="utf-8")

    model = load(path)

    assert model.family == "sd2"
    assert model.pipe.scheduler.config.prediction_type == "epsilon"


def test_sdxl_diffusers_folder_loads_offline(tmp_path: Path, load: Load) -> None:
    folder = write_tiny_sdxl_diffusers_folder(tmp_path / "tiny-sdxl-diffusers")

    model = load(folder)

    assert model.family == "sdxl"
    assert isinstance(model.pipe, StableDiffusionXLPipeline)
    assert_same_weights(tiny_sdxl_components(), model.pipe)


def test_vae_file_replaces_a_diffusers_folder_vae(tmp_path: Path, load: Load) -> None:
    folder = write_tiny_diffusers_folder(tmp_path / "tiny-sd1-diffusers")
    vae_path = write_tiny_vae(tmp_path / "other.vae.safetensors")

    model = load(folder, vae_path=vae_path)

    assert torch.equal(
        model.pipe.vae.state_dict()["decoder.conv_out.weight"],
        load_file(str(vae_path))["decoder.conv_out.weight"],
    )
    assert model.vae_name == "other.vae.safetensors"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tiny_sd1_loads_in_fp16_and_steps_on_cuda(tiny_sd1_path: Path, applied_runtimes: Any) -> None:
    from sdweb.engine.generate import run_txt2img
    from sdweb.engine.models.loader import load_checkpoint
    from sdweb.engine.samplers import builtin
    from sdweb.engine.samplers.registry import SamplerRegistry
    from sdweb.params import JobControl
    from tests.engine.conftest import tiny_params
    from tests.engine.models.conftest import CpuRuntime, checkpoint_info

    runtime = CpuRuntime(device=torch.device("cuda"), dtype=torch.float16, vae_dtype=torch.float16)
    model = load_checkpoint(checkpoint_info(tiny_sd1_path), runtime)  # type: ignore[arg-type]

    assert {p.device.type for p in model.pipe.unet.parameters()} == {"cuda"}
    samplers = SamplerRegistry.from_plugin_results([("builtin", builtin.register_samplers())],
                                                   [("builtin", builtin.register_schedules())])
    run = run_txt2img(model, tiny_params(steps=1), samplers=samplers, control=JobControl(),
                      on_step=lambda _: None)
    assert np.asarray(run.images[0].image).std() > 1.0


def test_sd1_file_with_the_old_text_encoder_layout_loads(tmp_path: Path, load: Load) -> None:
    # Early SD1 files saved CLIP without the ``text_model.`` level.
    built = tiny_sd1_components()
    old = "cond_stage_model.transformer.text_model."
    state = {
        (k.replace(old, "cond_stage_model.transformer.") if k.startswith(old) else k): v
        for k, v in sd1_ldm_state_dict(built).items()
    }
    path = write_ldm_safetensors(state, tmp_path / "old-layout.safetensors")

    model = load(path)

    assert_same_weights(built, model.pipe, ("text_encoder",))


def test_the_tensors_read_from_the_file_become_the_weights_without_a_copy(
    tiny_sd1_path: Path, load: Load, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The memory promise (peak ~ model size) rests on this: each tensor read is adopted, never copied.
    import sdweb.engine.models.loader as loader

    read_pointers: set[int] = set()
    real_reader = loader.iter_safetensors_tensors

    def recording_reader(*args: Any, **kwargs: Any) -> Any:
        for key, tensor in real_reader(*args, **kwargs):
            read_pointers.add(tensor.untyped_storage().data_ptr())
            yield key, tensor

    monkeypatch.setattr(loader, "iter_safetensors_tensors", recording_reader)

    model = load(tiny_sd1_path)

    for name in ("unet", "vae", "text_encoder"):
        params = list(getattr(model.pipe, name).parameters())
        if name == "vae":
            # Except the VAE's conv weights, re-laid out as channels_last at load on the CPU (faster
            # decodes, sdweb.engine.devices.vae_channels_last): a copy of those alone (the VAE is ~4% of
            # an SD model), each old tensor freed as its new one is made.
            moved = [p for p in params if p.dim() == 4]
            assert moved and all(p.is_contiguous(memory_format=torch.channels_last) for p in moved)
            params = [p for p in params if all(p is not m for m in moved)]
        adopted = [p for p in params if p.untyped_storage().data_ptr() in read_pointers]
        assert len(adopted) == len(params), name


def test_training_vae_ckpt_with_loss_weights_loads(tiny_sd1_path: Path, tmp_path: Path, load: Load) -> None:
    plain = load_file(str(write_tiny_vae(tmp_path / "plain.safetensors")))
    vae_ckpt = tmp_path / "vae-ft-mse.ckpt"
    extra = {"loss.discriminator.main.0.weight": torch.zeros(8, 3, 4, 4), "loss.logvar": torch.zeros(())}
    torch.save({"state_dict": {**plain, **extra}}, vae_ckpt)

    model = load(tiny_sd1_path, vae_path=vae_ckpt)

    assert torch.equal(
        model.pipe.vae.state_dict()["decoder.conv_out.weight"], plain["decoder.conv_out.weight"]
    )

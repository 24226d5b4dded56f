"""ControlNet units in the loop, with tiny random ControlNets written at test time in each file layout."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sdweb.engine.control.controlnet import ControlNetUnitError, prepare_controlnets
from sdweb.engine.control.library import ControlNetLibrary
from sdweb.engine.generate import run_txt2img
from sdweb.engine.img2img import run_img2img
from sdweb.engine.models.errors import UnsafeCheckpointError, UnsupportedCheckpointError
from sdweb.images.control_maps import PreprocessorRegistry
from sdweb.images.controlnet_infotext import PASTED_FIELDS, parse_unit_line
from sdweb.params import ControlNetUnit, Img2ImgParams, JobControl
from tests.engine.conftest import TinyModel, tiny_params
from tests.fixtures.controlnet import write_tiny_controlnet


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _picture(size: int = 64) -> Image.Image:
    array = np.zeros((size, size, 3), dtype=np.uint8)
    array[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255
    return Image.fromarray(array)


@pytest.fixture(scope="module")
def sd1_folder(tmp_path_factory: pytest.TempPathFactory, sd1_pipe: Any) -> Path:
    folder = tmp_path_factory.mktemp("ControlNet")
    write_tiny_controlnet(folder / "control_tiny_sd15_canny.safetensors", sd1_pipe.unet, layout="original")
    write_tiny_controlnet(folder / "tiny_diffusers_cn.safetensors", sd1_pipe.unet, layout="diffusers", seed=8)
    write_tiny_controlnet(folder / "control_tiny_sd15_pickle.pth", sd1_pipe.unet, layout="original", seed=9)
    return folder


def _run(model: TinyModel, samplers: Any, library: ControlNetLibrary | None,
         units: tuple[ControlNetUnit, ...],
         previews: list[Image.Image] | None = None, **changes: Any) -> Image.Image:
    params = tiny_params(controlnet_units=units, **changes)
    job = prepare_controlnets(units, model=model, library=library,
                              preprocessors=PreprocessorRegistry.with_builtins()) if units else None

    def on_step(step: Any) -> None:
        if previews is not None and step.preview is not None:
            previews.append(step.preview)

    run = run_txt2img(model, params, samplers=samplers, control=JobControl(), on_step=on_step,
                      preview_every=1 if previews is not None else 0, controlnets=job)
    return run.images[0].image


def _unit(**changes: Any) -> ControlNetUnit:
    values: dict[str, Any] = {"model": "control_tiny_sd15_canny", "module": "none", "image": _png(_picture())}
    values.update(changes)
    return ControlNetUnit(**values)


def _same(a: Image.Image, b: Image.Image) -> bool:
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def test_library_lists_both_layouts_with_family_and_hash(sd1_folder: Path) -> None:
    library = ControlNetLibrary([sd1_folder])
    files = {file.name: file for file in library.files()}
    assert files["control_tiny_sd15_canny"].family == "sd1"
    assert files["tiny_diffusers_cn"].family == "sd1"
    assert files["control_tiny_sd15_pickle"].family is None  # pickles are only inspected when loaded
    title = files["control_tiny_sd15_canny"].title
    assert title.startswith("control_tiny_sd15_canny [") and len(title.split("[")[1]) == 9
    assert library.find(title).name == "control_tiny_sd15_canny"
    assert library.find("CONTROL_TINY_SD15_CANNY [00000000]").name == "control_tiny_sd15_canny"


def test_unit_changes_the_image_and_weight_zero_does_not(sd1_model: TinyModel, samplers: Any,
                                                         sd1_folder: Path) -> None:
    library = ControlNetLibrary([sd1_folder])
    plain = _run(sd1_model, samplers, None, ())
    with_unit = _run(sd1_model, samplers, library, (_unit(),))
    assert not _same(plain, with_unit)
    assert _same(plain, _run(sd1_model, samplers, library, (_unit(weight=0.0),)))
    # A disabled unit is no unit.
    assert _same(plain, _run(sd1_model, samplers, library, (_unit(enabled=False),)))


@pytest.mark.parametrize("model_name", ["tiny_diffusers_cn", "control_tiny_sd15_pickle"])
def test_other_layouts_load_and_steer(sd1_model: TinyModel, samplers: Any, sd1_folder: Path,
                                      model_name: str) -> None:
    library = ControlNetLibrary([sd1_folder])
    plain = _run(sd1_model, samplers, None, ())
    assert not _same(plain, _run(sd1_model, samplers, library, (_unit(model=model_name),)))


def test_original_and_diffusers_layouts_of_one_model_give_the_same_image(
        sd1_model: TinyModel, samplers: Any, sd1_pipe: Any, tmp_path: Path) -> None:
    write_tiny_controlnet(tmp_path / "a.safetensors", sd1_pipe.unet, layout="original", seed=3)
    write_tiny_controlnet(tmp_path / "b.safetensors", sd1_pipe.unet, layout="diffusers", seed=3)
    library = ControlNetLibrary([tmp_path])
    first = _run(sd1_model, samplers, library, (_unit(model="a"),))
    second = _run(sd1_model, samplers, library, (_unit(model="b"),))
    assert _same(first, second)


def test_guidance_window_leaves_the_first_half_untouched(sd1_model: TinyModel, samplers: Any,
                                                         sd1_folder: Path) -> None:
    library = ControlNetLibrary([sd1_folder])
    plain: list[Image.Image] = []
    late: list[Image.Image] = []
    _run(sd1_model, samplers, None, (), previews=plain, steps=4)
    _run(sd1_model, samplers, library, (_unit(guidance_start=0.5, guidance_end=1.0),), previews=late, steps=4)
    assert len(plain) == len(late) == 3  # previews after steps 1, 2, 3
    assert _same(plain[0], late[0]) and _same(plain[1], late[1])
    assert not _same(plain[2], late[2])


@pytest.mark.parametrize("mode", ["My prompt is more important", "ControlNet is more important"])
def test_control_modes_differ_from_balanced(sd1_model: TinyModel, samplers: Any, sd1_folder: Path,
                                            mode: str) -> None:
    library = ControlNetLibrary([sd1_folder])
    balanced = _run(sd1_model, samplers, library, (_unit(),))
    assert not _same(balanced, _run(sd1_model, samplers, library, (_unit(control_mode=mode),)))


def test_two_units_add_up(sd1_model: TinyModel, samplers: Any, sd1_folder: Path) -> None:
    library = ControlNetLibrary([sd1_folder])
    one = _run(sd1_model, samplers, library, (_unit(),))
    two = _run(sd1_model, samplers, library, (_unit(), _unit(model="tiny_diffusers_cn", module="invert")))
    assert not _same(one, two)


def test_img2img_unit_uses_the_init_image_without_its_own(sd1_model: TinyModel, samplers: Any,
                                                          sd1_folder: Path) -> None:
    library = ControlNetLibrary([sd1_folder])
    params = Img2ImgParams(**{**tiny_params(steps=4).model_dump(), "denoising_strength": 0.5})
    init = _picture()

    def run(units: tuple[ControlNetUnit, ...]) -> Image.Image:
        job = prepare_controlnets(units, model=sd1_model, library=library,
                                  preprocessors=PreprocessorRegistry.with_builtins(), init_image=init)
        return run_img2img(sd1_model, params, [init], samplers=samplers, control=JobControl(),
                           on_step=lambda _s: None, controlnets=job).images[0].image

    assert not _same(run(()), run((_unit(image=None),)))


def test_resize_modes_fit_the_map_to_the_size(sd1_model: TinyModel, sd1_folder: Path) -> None:
    library = ControlNetLibrary([sd1_folder])
    wide = Image.new("RGB", (128, 64), "white")
    for mode in ("Just Resize", "Crop and Resize", "Resize and Fill"):
        unit = _unit(image=_png(wide), resize_mode=mode)
        job = prepare_controlnets((unit,), model=sd1_model, library=library,
                                  preprocessors=PreprocessorRegistry.with_builtins())
        assert job is not None
        assert job.control_map(job.units[0], 64, 96).size == (64, 96)


def test_infotext_lines_as_the_extension_writes_them(sd1_model: TinyModel, sd1_folder: Path) -> None:
    library = ControlNetLibrary([sd1_folder])
    job = prepare_controlnets((_unit(module="canny"),), model=sd1_model, library=library,
                              preprocessors=PreprocessorRegistry.with_builtins())
    assert job is not None
    title = library.find("control_tiny_sd15_canny").title
    assert job.infotext() == {"ControlNet 0": (
        f"Module: canny, Model: {title}, Weight: 1.0, Resize Mode: Crop and Resize, Processor Res: 512, "
        "Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.0, Guidance End: 1.0, "
        "Pixel Perfect: False, Control Mode: Balanced")}
    # What a paste reads back from it is the unit that ran (its -1 sliders as the preprocessor set them).
    unit = _unit(module="canny", model=title, weight=0.6, resize_mode="Just Resize", guidance_start=0.2,
                 guidance_end=0.9, pixel_perfect=True, control_mode="ControlNet is more important",
                 processor_res=320, threshold_a=50, threshold_b=150)
    job = prepare_controlnets((unit,), model=sd1_model, library=library,
                              preprocessors=PreprocessorRegistry.with_builtins())
    assert job is not None
    pasted = parse_unit_line(0, job.infotext()["ControlNet 0"])
    assert pasted.notes == ()
    assert dict(pasted.values) == {name: getattr(unit, name) for name in PASTED_FIELDS}


def test_wrong_family_and_missing_parts_are_clear_errors(sd1_model: TinyModel, sdxl_pipe: Any,
                                                         tmp_path: Path) -> None:
    write_tiny_controlnet(tmp_path / "xl_canny.safetensors", sdxl_pipe.unet, layout="original")
    library = ControlNetLibrary([tmp_path])
    registry = PreprocessorRegistry.with_builtins()
    with pytest.raises(ControlNetUnitError, match=r"unit 0 \(model\).*SDXL ControlNet.*SD 1.x"):
        prepare_controlnets((_unit(model="xl_canny"),), model=sd1_model, library=library,
                            preprocessors=registry)
    assert library.cache.loaded() == []  # refused before anything was loaded
    with pytest.raises(ControlNetUnitError, match=r"unit 1 \(model\).*not found"):
        prepare_controlnets((_unit(enabled=False), _unit(model="nope")), model=sd1_model, library=library,
                            preprocessors=registry)
    with pytest.raises(ControlNetUnitError, match=r"unit 0 \(image\)"):
        prepare_controlnets((_unit(model="xl_canny", image=None),), model=TinyModel(pipe=sdxl_pipe,
                                                                                       family="sdxl"),
                            library=library, preprocessors=registry)
    with pytest.raises(ControlNetUnitError, match=r"unit 0 \(module\)"):
        prepare_controlnets((_unit(model="xl_canny", module="nope"),),
                            model=TinyModel(pipe=sdxl_pipe, family="sdxl"), library=library,
                            preprocessors=registry)


def test_sdxl_controlnet_steers_an_sdxl_checkpoint(sdxl_pipe: Any, samplers: Any, tmp_path: Path) -> None:
    write_tiny_controlnet(tmp_path / "xl_canny.safetensors", sdxl_pipe.unet, layout="original")
    write_tiny_controlnet(tmp_path / "xl_diffusers.safetensors", sdxl_pipe.unet, layout="diffusers")
    library = ControlNetLibrary([tmp_path])
    model = TinyModel(pipe=sdxl_pipe, family="sdxl")
    assert {file.family for file in library.files()} == {"sdxl"}
    plain = _run(model, samplers, None, ())
    assert not _same(plain, _run(model, samplers, library, (_unit(model="xl_canny"),)))
    assert not _same(plain, _run(model, samplers, library, (_unit(model="xl_diffusers"),)))


class _Evil:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (print, ("pwned",))


def test_a_pickle_that_runs_code_is_refused(sd1_model: TinyModel, tmp_path: Path) -> None:
    path = tmp_path / "control_evil.pth"
    torch.save({"control_model.input_hint_block.0.weight": torch.zeros(1), "x": _Evil()}, path)
    library = ControlNetLibrary([tmp_path])
    with pytest.raises(UnsafeCheckpointError, match="control_evil.pth"):
        prepare_controlnets((_unit(model="control_evil"),), model=sd1_model, library=library,
                            preprocessors=PreprocessorRegistry.with_builtins())


def test_a_checkpoint_in_the_controlnet_folder_is_listed_as_unusable(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)},
              str(tmp_path / "checkpoint.safetensors"))
    library = ControlNetLibrary([tmp_path])
    assert library.titles() == []
    with pytest.raises(LookupError, match="Stable Diffusion checkpoint"):
        library.find("checkpoint")
    assert issubclass(UnsupportedCheckpointError, Exception)


@pytest.mark.gpu
def test_a_unit_steers_the_image_on_cuda_in_half_precision(sd1_folder: Path, samplers: Any) -> None:
    from diffusers import StableDiffusionPipeline

    from tests.fixtures.checkpoints import tiny_sd1_components

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pipe = StableDiffusionPipeline(**tiny_sd1_components()).to("cuda", torch.float16)
    model = TinyModel(pipe=pipe, device=torch.device("cuda"), dtype=torch.float16)
    library = ControlNetLibrary([sd1_folder])
    plain = _run(model, samplers, None, ())
    steered = _run(model, samplers, library, (_unit(),))
    assert not _same(plain, steered)
    loaded, _detection = library.load(library.find("control_tiny_sd15_canny"), dtype=torch.float16,
                                      device=pipe.unet.device, unet_config=dict(pipe.unet.config))
    assert loaded.device.type == "cuda" and loaded.dtype == torch.float16


@pytest.fixture(scope="module")
def ip_folders(tmp_path_factory: pytest.TempPathFactory, sd1_pipe: Any) -> tuple[Path, Path]:
    from tests.fixtures.controlnet import write_tiny_clip_vision, write_tiny_ip_adapter

    root = tmp_path_factory.mktemp("ip")
    write_tiny_ip_adapter(root / "ControlNet" / "ip-adapter_tiny_sd15.safetensors", sd1_pipe.unet)
    write_tiny_clip_vision(root / "clip_vision" / "clip_vision_tiny.safetensors")
    return root / "ControlNet", root / "clip_vision"


def test_ip_adapter_unit_steers_the_image_and_the_unet_gets_its_attention_back(
        sd1_model: TinyModel, samplers: Any, ip_folders: tuple[Path, Path]) -> None:
    models, clip_vision = ip_folders
    library = ControlNetLibrary([models], clip_vision_dirs=[clip_vision])
    (file,) = library.files()
    assert file.kind == "ip-adapter" and file.error is None
    before = {name: type(processor) for name, processor in sd1_model.pipe.unet.attn_processors.items()}
    unit = _unit(model="ip-adapter_tiny_sd15", module="ip-adapter_clip_sd15")
    plain = _run(sd1_model, samplers, None, ())
    steered = _run(sd1_model, samplers, library, (unit,))
    assert not _same(plain, steered)
    assert {name: type(p) for name, p in sd1_model.pipe.unet.attn_processors.items()} == before
    weightless = _unit(model="ip-adapter_tiny_sd15", weight=0.0)
    assert _same(plain, _run(sd1_model, samplers, library, (weightless,)))
    late: list[Image.Image] = []
    first: list[Image.Image] = []
    _run(sd1_model, samplers, None, (), previews=first, steps=4)
    _run(sd1_model, samplers, library, (_unit(model="ip-adapter_tiny_sd15", guidance_start=0.5),),
         previews=late, steps=4)
    assert _same(first[0], late[0]) and _same(first[1], late[1]) and not _same(first[2], late[2])


def test_ip_adapter_and_controlnet_units_work_together(sd1_model: TinyModel, samplers: Any,
                                                      ip_folders: tuple[Path, Path],
                                                      sd1_folder: Path) -> None:
    models, clip_vision = ip_folders
    library = ControlNetLibrary([sd1_folder, models], clip_vision_dirs=[clip_vision])
    ip_unit = _unit(model="ip-adapter_tiny_sd15", module="ip-adapter-auto")
    ip_only = _run(sd1_model, samplers, library, (ip_unit,))
    both = _run(sd1_model, samplers, library, (_unit(), ip_unit))
    assert not _same(ip_only, both)
    job = prepare_controlnets((_unit(), ip_unit), model=sd1_model, library=library,
                              preprocessors=PreprocessorRegistry.with_builtins())
    assert job is not None and list(job.infotext()) == ["ControlNet 0", "ControlNet 1"]
    assert "Module: ip-adapter-auto, Model: ip-adapter_tiny_sd15 [" in job.infotext()["ControlNet 1"]


def test_ip_adapter_plus_reads_the_hidden_states(sd1_model: TinyModel, samplers: Any, sd1_pipe: Any,
                                                ip_folders: tuple[Path, Path], tmp_path: Path) -> None:
    from tests.fixtures.controlnet import write_tiny_ip_adapter

    write_tiny_ip_adapter(tmp_path / "ip-adapter-plus_tiny_sd15.safetensors", sd1_pipe.unet, plus=True)
    library = ControlNetLibrary([tmp_path], clip_vision_dirs=[ip_folders[1]])
    plain = _run(sd1_model, samplers, None, ())
    steered = _run(sd1_model, samplers, library, (_unit(model="ip-adapter-plus_tiny_sd15"),))
    assert not _same(plain, steered)


def test_ip_adapter_without_a_fitting_clip_vision_is_a_clear_error(sd1_model: TinyModel,
                                                                   ip_folders: tuple[Path, Path],
                                                                   tmp_path: Path) -> None:
    models, _clip_vision = ip_folders
    library = ControlNetLibrary([models], clip_vision_dirs=[tmp_path])
    with pytest.raises(ControlNetUnitError, match=r"unit 0 \(model\).*CLIP vision encoder with 32-wide"):
        prepare_controlnets((_unit(model="ip-adapter_tiny_sd15"),), model=sd1_model, library=library,
                            preprocessors=PreprocessorRegistry.with_builtins())


def test_t2i_adapter_units_in_both_layouts(sd1_model: TinyModel, samplers: Any, sd1_pipe: Any,
                                           tmp_path: Path) -> None:
    from tests.fixtures.controlnet import write_tiny_t2i_adapter

    write_tiny_t2i_adapter(tmp_path / "t2iadapter_tiny_diffusers.safetensors", sd1_pipe.unet)
    write_tiny_t2i_adapter(tmp_path / "t2iadapter_tiny_original.safetensors", sd1_pipe.unet,
                           layout="original")
    library = ControlNetLibrary([tmp_path])
    assert {file.kind for file in library.files()} == {"t2i-adapter"}
    plain = _run(sd1_model, samplers, None, ())
    first = _run(sd1_model, samplers, library, (_unit(model="t2iadapter_tiny_diffusers"),))
    assert not _same(plain, first)
    assert _same(first, _run(sd1_model, samplers, library, (_unit(model="t2iadapter_tiny_original"),)))
    weightless = _unit(model="t2iadapter_tiny_original", weight=0)
    assert _same(plain, _run(sd1_model, samplers, library, (weightless,)))
    assert not _same(first, _run(sd1_model, samplers, library, (
        _unit(model="t2iadapter_tiny_diffusers", control_mode="ControlNet is more important"),)))


def test_hires_fix_runs_each_unit_in_the_passes_its_hr_option_names(sd1_model: TinyModel, samplers: Any,
                                                                    sd1_folder: Path) -> None:
    from sdweb.engine.hires import run_hires_txt2img

    library = ControlNetLibrary([sd1_folder])
    params = tiny_params(enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", steps=2, denoising_strength=0.5)

    def hires(option: str | None) -> Image.Image:
        units = (_unit(hr_option=option),) if option else ()
        job = prepare_controlnets(units, model=sd1_model, library=library,
                                  preprocessors=PreprocessorRegistry.with_builtins()) if units else None
        run = run_hires_txt2img(sd1_model, params, samplers=samplers, control=JobControl(),
                                on_step=lambda _s: None, controlnets=job)
        assert run.images[0].image.size == (96, 96)
        return run.images[0].image

    images = {option: hires(option) for option in (None, "Both", "Low res only", "High res only")}
    assert len({np.asarray(image).tobytes() for image in images.values()}) == 4  # each changes something else


def test_inpainting_units_without_a_picture_see_what_the_latents_show(sd1_model: TinyModel, samplers: Any,
                                                                      sd1_folder: Path) -> None:
    library = ControlNetLibrary([sd1_folder])
    unit = _unit(image=None, module="invert")
    init = _picture()
    job = prepare_controlnets((unit,), model=sd1_model, library=library,
                              preprocessors=PreprocessorRegistry.with_builtins(), init_image=init)
    assert job is not None
    white = Image.new("RGB", (64, 64), "white")
    stack = job.for_pass(64, 64, device="cpu", dtype=torch.float32, init_picture=white)
    assert stack is not None and float(stack.active[0][1].max()) == 0.0  # inverted white: the crop's map
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    params = Img2ImgParams(**{**tiny_params(steps=4).model_dump(), "denoising_strength": 0.75,
                              "inpaint_full_res": True, "inpaint_full_res_padding": 4})

    def inpaint(units: tuple[ControlNetUnit, ...]) -> Image.Image:
        prepared = prepare_controlnets(units, model=sd1_model, library=library,
                                       preprocessors=PreprocessorRegistry.with_builtins(), init_image=init)
        return run_img2img(sd1_model, params, [init], samplers=samplers, control=JobControl(), mask=mask,
                           on_step=lambda _s: None, controlnets=prepared).images[0].image

    assert not _same(inpaint(()), inpaint((unit,)))


def test_inpaint_units_mark_the_masked_pixels_and_need_a_mask(sd1_model: TinyModel, samplers: Any,
                                                              sd1_folder: Path) -> None:
    library = ControlNetLibrary([sd1_folder])
    registry = PreprocessorRegistry.with_builtins()
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # the left half
    unit = _unit(module="inpaint_global_harmonious", mask=_png(mask), resize_mode="Just Resize")
    job = prepare_controlnets((unit,), model=sd1_model, library=library, preprocessors=registry)
    assert job is not None
    stack = job.for_pass(64, 64, device="cpu", dtype=torch.float32)
    assert stack is not None
    hint = stack.active[0][1][0]
    assert float(hint[:, :, :30].max()) == -1.0 and float(hint[:, :, 34:].min()) >= 0.0
    plain = _run(sd1_model, samplers, library, (_unit(resize_mode="Just Resize"),))
    assert not _same(plain, _run(sd1_model, samplers, library, (unit,)))
    with pytest.raises(ControlNetUnitError, match=r"unit 0 \(mask\).*inpaint_only"):
        prepare_controlnets((_unit(module="inpaint_only"),), model=sd1_model, library=library,
                            preprocessors=registry)


def test_units_run_with_a_prompt_longer_than_the_negative(sd1_model: TinyModel, samplers: Any,
                                                          sd1_folder: Path,
                                                          ip_folders: tuple[Path, Path]) -> None:
    """A 2-chunk prompt beside a 1-chunk negative: the UNet and each ControlNet see each one's own keys
    (A1111 runs them apart); with "Pad conds" both see the padded ones, which is another image."""
    models, clip_vision = ip_folders
    library = ControlNetLibrary([sd1_folder, models], clip_vision_dirs=[clip_vision])
    units = (_unit(), _unit(model="ip-adapter_tiny_sd15", module="ip-adapter-auto"))
    long_prompt = ", ".join(["a red house on a green hill under a blue sky"] * 9)
    apart = _run(sd1_model, samplers, library, units, prompt=long_prompt, negative_prompt="blurry")
    padded = _run(sd1_model, samplers, library, units, prompt=long_prompt, negative_prompt="blurry",
                  pad_cond_uncond=True)
    assert apart.size == (64, 64) and not _same(apart, padded)
    assert not _same(apart, _run(sd1_model, samplers, None, (), prompt=long_prompt, negative_prompt="blurry"))

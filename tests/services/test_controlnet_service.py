"""The ControlNet service: extensions' preprocessors (register_controlnet_preprocessors), the checks a
request gets before it is queued, and the model list filtered by the checkpoint's family."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageOps

from sdweb.engine.control.library import ControlNetLibrary
from sdweb.extensions.manager import PluginHost
from sdweb.params import ControlNetUnit, GenerationParams
from sdweb.plugin_api import ControlPreprocessorSpec, hookimpl
from sdweb.services.controlnet import ControlNetRequestError, ControlNetService
from tests.fixtures.annotators import hed_state, write_annotator
from tests.fixtures.checkpoints import tiny_sd1_components, tiny_sdxl_components
from tests.fixtures.controlnet import write_tiny_controlnet


class _Posterize:
    @hookimpl
    def register_controlnet_preprocessors(self) -> list[Any]:
        return [
            ControlPreprocessorSpec("posterize",
                                    lambda image, _res, bits, _b: ImageOps.posterize(image, int(bits)),
                                    tags=("Tile",), threshold_a=("Bits", 1, 1, 8)),
            ControlPreprocessorSpec("canny", lambda image, *_args: image),  # taken: refused, logged
            "not a spec",
        ]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cn-service")
    write_tiny_controlnet(root / "control_sd15_canny.safetensors", tiny_sd1_components()["unet"])
    write_tiny_controlnet(root / "control_xl_canny.safetensors", tiny_sdxl_components()["unet"])
    return root


def test_an_extension_adds_a_preprocessor(folder: Path) -> None:
    plugins = PluginHost()
    plugins.register(_Posterize(), "posterizer")
    service = ControlNetService(ControlNetLibrary([folder]), plugins=plugins)
    assert service.module_names()[-1] == "posterize" and service.module_names().count("canny") == 1
    picture = Image.new("RGB", (8, 8), (200, 100, 50))
    (result,) = service.detect("posterize", [picture])
    assert result.getpixel((0, 0)) == (128, 0, 0)  # 1 bit per channel (the slider's default)
    assert "posterize" in service.control_types()["Tile"]["module_list"]
    assert service.module_detail()["posterize"]["sliders"][1]["name"] == "Bits"


def test_models_are_filtered_by_the_checkpoint_family(folder: Path) -> None:
    service = ControlNetService(ControlNetLibrary([folder]))
    assert [title.split(" [")[0] for title in service.model_titles("sd1-inpaint")] == ["control_sd15_canny"]
    assert [title.split(" [")[0] for title in service.model_titles("sdxl")] == ["control_xl_canny"]
    assert len(service.model_titles()) == 2


def test_checks_name_the_unit_and_field(folder: Path) -> None:
    service = ControlNetService(ControlNetLibrary([folder]))

    def check(family: str, *, img2img: bool = False, **unit: Any) -> None:
        values: dict[str, Any] = {"model": "control_sd15_canny", "image": b"x"}
        values.update(unit)
        service.check(GenerationParams(controlnet_units=(ControlNetUnit(enabled=False),
                                                         ControlNetUnit(**values))), family, img2img=img2img)

    check("sd1")
    check("sd1", image=None, img2img=True)  # img2img: the init image
    for family, unit, message in (
            ("sdxl", {}, r"unit 1 \(model\).*SD 1.x ControlNet.*SDXL"),
            ("sd1", {"model": "None"}, r"unit 1 \(model\): no ControlNet model"),
            ("sd1", {"model": "nope"}, r"unit 1 \(model\).*not found"),
            ("sd1", {"module": "nope"}, r"unit 1 \(module\)"),
            ("sd1", {"image": None}, r"unit 1 \(image\)"),
            ("flux", {}, r"unit 1 \(model\).*not flux")):
        with pytest.raises(ControlNetRequestError, match=message):
            check(family, **unit)


def test_model_based_annotators_are_listed_and_refused_naming_their_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sdweb.engine.control import annotators
    from sdweb.engine.control.annotators import AnnotatorRunner

    # As here: controlnet-aux (torchvision) does not import beside the CPU torch build.
    monkeypatch.setattr(annotators, "aux_problem", lambda: "the controlnet-aux package, which did not import")
    write_tiny_controlnet(tmp_path / "control_sd15_depth.safetensors", tiny_sd1_components()["unet"])
    service = ControlNetService(ControlNetLibrary([tmp_path]),
                                annotators=AnnotatorRunner(tmp_path / "annotators", download=False))
    assert {"depth_midas", "softedge_hed", "lineart_realistic"} <= set(service.module_names())
    assert not service.module_detail()["depth_midas"]["model_free"]
    unit = ControlNetUnit(model="control_sd15_depth", module="depth_midas", image=b"x")
    with pytest.raises(ControlNetRequestError, match=r"unit 0 \(module\).*midas-501f0c75.pt.*controlnet-aux"):
        service.check(GenerationParams(controlnet_units=(unit,)), "sd1")
    with pytest.raises(ValueError, match=r"annotators/dpt_hybrid-midas-501f0c75.pt.*controlnet-aux"):
        service.detect("depth_midas", [Image.new("RGB", (8, 8))])
    # sdweb's own networks: offline without the file, the message names it; with it, the unit passes.
    hed = ControlNetUnit(model="control_sd15_depth", module="softedge_hed", image=b"x")
    with pytest.raises(ControlNetRequestError, match=r"unit 0 \(module\).*annotators/ControlNetHED.pth.*off"):
        service.check(GenerationParams(controlnet_units=(hed,)), "sd1")
    write_annotator(tmp_path / "annotators", "ControlNetHED.pth", hed_state())
    service.check(GenerationParams(controlnet_units=(hed,)), "sd1")
    edges = service.detect("softedge_hed", [Image.new("RGB", (8, 8), "white")], processor_res=64)
    assert edges[0].size == (64, 64)

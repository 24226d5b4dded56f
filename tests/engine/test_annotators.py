"""Model-based ControlNet annotators (softedge_hed, lineart_*): files in the published key layouts with
random weights, read from a tmp ``annotators`` folder, run through the preprocessor registry the
service and the engine use. Offline throughout: a missing file is a message naming it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdweb.engine.control import annotators
from sdweb.engine.control.annotators import AnnotatorRunner
from sdweb.images.control_maps import PreprocessorRegistry, PreprocessorUnavailableError
from tests.fixtures.annotators import (
    anime_state,
    hed_state,
    lineart_state,
    write_annotator,
    write_pickle_with_code,
)


def _picture(width: int = 80, height: int = 48) -> Image.Image:
    """A bright square and a dark bar on grey: edges a network (even a random one) responds to."""
    array = np.full((height, width, 3), 128, dtype=np.uint8)
    array[8:40, 10:42] = (250, 240, 230)
    array[20:28, 50:78] = (10, 20, 30)
    return Image.fromarray(array)


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    folder = tmp_path / "ControlNet" / "annotators"
    write_annotator(folder, "ControlNetHED.pth", hed_state())
    write_annotator(folder, "sk_model.pth", lineart_state(seed=1))
    write_annotator(folder, "sk_model2.safetensors", lineart_state(seed=2))  # a safetensors copy is read too
    write_annotator(folder, "netG.pth", anime_state())
    return folder


def _registry(folder: Path, **options: object) -> tuple[PreprocessorRegistry, AnnotatorRunner]:
    runner = AnnotatorRunner(folder, download=False, **options)  # type: ignore[arg-type]
    return PreprocessorRegistry.with_builtins(folder, runner), runner


@pytest.mark.parametrize("name", ["softedge_hed", "softedge_hedsafe", "lineart_realistic", "lineart_coarse",
                                  "lineart_anime"])
def test_each_annotator_makes_a_map_at_the_processor_resolution(folder: Path, name: str) -> None:
    registry, _runner = _registry(folder)
    preprocessor = registry.find(name)
    assert preprocessor.problem() is None
    assert not preprocessor.detail()["model_free"]
    result = preprocessor.run(_picture(), processor_res=64)
    assert result.mode == "RGB" and result.size == (107, 64)  # short side 48 -> 64, as the extension does
    pixels = np.asarray(result)
    assert np.array_equal(pixels[..., 0], pixels[..., 2])  # a grey map
    assert pixels.std() > 1.0  # not a blank map: the picture's content shows
    again = np.asarray(preprocessor.run(_picture(), processor_res=64))
    assert np.array_equal(pixels, again)  # deterministic
    if name == "softedge_hedsafe":
        assert set(np.unique(pixels)) <= {0, 128, 255}  # the "safe" step keeps three levels


def test_maps_follow_the_picture(folder: Path) -> None:
    registry, _runner = _registry(folder)
    flat = Image.new("RGB", (64, 64), (128, 128, 128))
    for name in ("softedge_hed", "lineart_realistic", "lineart_anime"):
        plain = np.asarray(registry.find(name).run(flat, processor_res=64)).astype(int)
        busy = np.asarray(registry.find(name).run(_picture(64, 64), processor_res=64)).astype(int)
        assert np.abs(busy - plain).max() > 10, name  # the square and the bar change the map
    # The two lineart files differ (realistic / coarse) and give different maps.
    realistic = np.asarray(registry.find("lineart_realistic").run(_picture(), processor_res=64))
    coarse = np.asarray(registry.find("lineart_coarse").run(_picture(), processor_res=64))
    assert not np.array_equal(realistic, coarse)


def test_networks_are_loaded_once_and_kept(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry, runner = _registry(folder)
    reads: list[str] = []
    real = annotators.read_weights
    monkeypatch.setattr(annotators, "read_weights", lambda path: reads.append(path.name) or real(path))
    for _ in range(3):
        registry.find("softedge_hed").run(_picture(), processor_res=64)
    registry.find("softedge_hedsafe").run(_picture(), processor_res=64)  # the same file
    assert reads == ["ControlNetHED.pth"]
    runner.unload()
    registry.find("softedge_hed").run(_picture(), processor_res=64)
    assert reads == ["ControlNetHED.pth", "ControlNetHED.pth"]


def test_a_missing_file_offline_is_refused_naming_it(tmp_path: Path) -> None:
    registry, _runner = _registry(tmp_path / "annotators")
    preprocessor = registry.find("lineart_anime")
    problem = preprocessor.problem()
    assert problem is not None and str(tmp_path / "annotators" / "netG.pth") in problem
    assert "downloads are off" in problem and "lllyasviel/Annotators" in problem
    with pytest.raises(PreprocessorUnavailableError, match=r"netG\.pth"):
        preprocessor.run(_picture())


def test_a_file_is_fetched_from_the_hub_on_first_use_when_downloads_are_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    asked: list[tuple[str, str]] = []

    def fake_download(repo_id: str, filename: str, local_dir: str) -> str:
        asked.append((repo_id, filename))
        return str(write_annotator(Path(local_dir), filename, hed_state()))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    folder = tmp_path / "annotators"
    runner = AnnotatorRunner(folder, download=True)
    registry = PreprocessorRegistry.with_builtins(folder, runner)
    assert registry.find("softedge_hed").problem() is None  # it may be fetched: not refused up front
    registry.find("softedge_hed").run(_picture(), processor_res=64)
    registry.find("softedge_hed").run(_picture(), processor_res=64)
    assert asked == [("lllyasviel/Annotators", "ControlNetHED.pth")]
    assert (folder / "ControlNetHED.pth").is_file()


def test_a_failed_download_names_the_file_and_the_folder(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def offline(repo_id: str, filename: str, local_dir: str) -> str:
        raise OSError("no route to host")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    registry, runner = _registry(tmp_path / "annotators")
    runner.download = True
    with pytest.raises(PreprocessorUnavailableError,
                       match=r"sk_model\.pth.*could not be downloaded \(OSError: no route to host\)"):
        registry.find("lineart_realistic").run(_picture())


def test_a_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "annotators"
    write_pickle_with_code(folder / "ControlNetHED.pth")
    registry, _runner = _registry(folder)
    with pytest.raises(PreprocessorUnavailableError, match=r"refused to load ControlNetHED\.pth.*pickle"):
        registry.find("softedge_hed").run(_picture())


def test_a_file_of_another_layout_is_refused_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / "annotators"
    write_annotator(folder, "sk_model.pth", hed_state())  # a HED file under the lineart name
    write_annotator(folder, "ControlNetHED.pth", {**hed_state(), "block9.extra": hed_state()["norm"]})
    registry, _runner = _registry(folder)
    with pytest.raises(PreprocessorUnavailableError, match=r"sk_model\.pth is not the expected annotator"):
        registry.find("lineart_realistic").run(_picture())
    with pytest.raises(PreprocessorUnavailableError, match=r"ControlNetHED\.pth does not fit"):
        registry.find("softedge_hed").run(_picture())


def test_the_real_layouts_build() -> None:
    """At the published widths (64 -> 512) the builders take every tensor (shapes from the releases)."""
    for build, state in ((annotators.build_hed, hed_state(64)), (annotators.build_lineart, lineart_state(64)),
                         (annotators.build_anime, anime_state(64, prefix=""))):
        network = build(state, "file")
        assert set(network.state_dict()) == set(state)


def test_controlnet_aux_annotators_name_their_files_and_the_package(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(annotators, "aux_problem",
                        lambda: "the controlnet-aux package, which did not import (RuntimeError: nms)")
    registry, _runner = _registry(tmp_path / "annotators")
    problem = registry.find("openpose").problem()
    assert problem is not None
    assert str(tmp_path / "annotators" / "body_pose_model.pth") in problem and "controlnet-aux" in problem
    seg = registry.find("seg_ufade20k").problem()
    assert seg is not None and "no runner" in seg


def test_install_hint_says_how_and_why() -> None:
    hint = annotators.AUX_INSTALL_HINT
    assert "pip install 'sdweb[annotators]'" in hint and "torchvision" in hint

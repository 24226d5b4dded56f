"""Model-based ControlNet annotators (softedge_hed, lineart_*): files in the published key layouts with
random weights, read from a tmp ``annotators`` folder, run through the preprocessor registry the
service and the engine use. Offline throughout: a missing file is a message naming it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdweb.engine.control import annotator_nets, annotators
from sdweb.engine.control.annotators import AnnotatorRunner
from sdweb.engine.control.openpose import build_openpose
from sdweb.images.control_maps import PreprocessorRegistry, PreprocessorUnavailableError
from tests.fixtures.annotators import (
    anime_state,
    hed_state,
    lineart_state,
    mlsd_state,
    openpose_state,
    pidinet_state,
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
    write_annotator(folder, "table5_pidinet.pth", pidinet_state())
    write_annotator(folder, "mlsd_large_512_fp32.pth", mlsd_state())
    write_annotator(folder, "body_pose_model.pth", openpose_state())
    return folder


def _registry(folder: Path, **options: object) -> tuple[PreprocessorRegistry, AnnotatorRunner]:
    runner = AnnotatorRunner(folder, download=False, **options)  # type: ignore[arg-type]
    return PreprocessorRegistry.with_builtins(folder, runner), runner


@pytest.mark.parametrize("name", ["softedge_hed", "softedge_hedsafe", "lineart_realistic", "lineart_coarse",
                                  "lineart_anime", "softedge_pidinet", "softedge_pidisafe"])
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
    if name in ("softedge_hedsafe", "softedge_pidisafe"):
        assert set(np.unique(pixels)) <= {0, 128, 255}  # the "safe" step keeps three levels


@pytest.mark.parametrize("name", ["scribble_hed", "scribble_pidinet"])
def test_scribble_annotators_give_binary_maps(folder: Path, name: str) -> None:
    registry, _runner = _registry(folder)
    scribble = np.asarray(registry.find(name).run(_picture(), processor_res=64))
    assert scribble.shape == (64, 107, 3) and set(np.unique(scribble)) <= {0, 255}
    assert "Scribble" in registry.find(name).tags


def test_the_extensions_older_names_find_the_annotators(folder: Path) -> None:
    registry, _runner = _registry(folder)
    for old, name in (("hed", "softedge_hed"), ("pidinet_safe", "softedge_pidisafe"),
                      ("lineart", "lineart_realistic"), ("fake_scribble", "scribble_hed"),
                      ("pidinet_scribble", "scribble_pidinet"), ("depth", "depth_midas"),
                      ("segmentation", "seg_ufade20k")):
        assert registry.find(old).name == name
    assert np.array_equal(np.asarray(registry.find("hed").run(_picture(), processor_res=64)),
                          np.asarray(registry.find("softedge_hed").run(_picture(), processor_res=64)))


def test_maps_follow_the_picture(folder: Path) -> None:
    registry, _runner = _registry(folder)
    flat = Image.new("RGB", (64, 64), (128, 128, 128))
    for name in ("softedge_hed", "lineart_realistic", "lineart_anime", "softedge_pidinet", "mlsd"):
        plain = np.asarray(registry.find(name).run(flat, processor_res=64)).astype(int)
        busy = np.asarray(registry.find(name).run(_picture(64, 64), processor_res=64)).astype(int)
        assert np.abs(busy - plain).max() > 10, name  # the square and the bar change the map
    # The two lineart files differ (realistic / coarse) and give different maps.
    realistic = np.asarray(registry.find("lineart_realistic").run(_picture(), processor_res=64))
    coarse = np.asarray(registry.find("lineart_coarse").run(_picture(), processor_res=64))
    assert not np.array_equal(realistic, coarse)


def test_mlsd_draws_line_segments_and_its_thresholds_apply(folder: Path) -> None:
    registry, _runner = _registry(folder)
    mlsd = registry.find("mlsd")
    assert [slider["name"] for slider in mlsd.detail()["sliders"]] == [
        "Resolution", "MLSD Value Threshold", "MLSD Distance Threshold"]
    lines = np.asarray(mlsd.run(_picture(), processor_res=64))[..., 0]  # -1: the slider defaults (0.1, 0.1)
    assert lines.shape == (64, 107) and set(np.unique(lines)) == {0, 255}  # 1-pixel white lines on black
    # Only segments whose centre scores above the value threshold: the sigmoid never reaches 1.
    none = np.asarray(mlsd.run(_picture(), processor_res=64, threshold_a=1.5))[..., 0]
    assert none.max() == 0
    # Longer segments only: a huge distance threshold draws fewer pixels.
    long_only = np.asarray(mlsd.run(_picture(), processor_res=64, threshold_b=19.0))[..., 0]
    assert (long_only > 0).sum() < (lines > 0).sum()


def test_mlsd_segments_come_from_peaks_above_the_thresholds() -> None:
    import torch

    maps = torch.full((1, 9, 8, 8), 0.0)
    maps[0, 0] = -10.0  # sigmoid ~ 0 everywhere...
    maps[0, 0, 2, 3] = 5.0  # ...but one strong centre at x=3, y=2
    maps[0, 0, 2, 4] = 4.0  # a weaker neighbour: not a local maximum, dropped
    maps[0, 0, 6, 6] = 5.0  # a strong centre whose segment is too short
    maps[0, 1:5, 2, 3] = torch.tensor([-2.0, 0.0, 2.0, 1.0])  # start (x-2, y), end (x+2, y+1)
    maps[0, 1:5, 6, 6] = torch.tensor([0.1, 0.0, 0.0, 0.0])
    segments = annotator_nets.mlsd_segments(maps, 0.1, 1.0)
    assert segments.tolist() == [[2.0, 4.0, 10.0, 6.0]]  # in input pixels: map pixels times 2


def test_openpose_runs_from_its_file(folder: Path) -> None:
    registry, _runner = _registry(folder)
    openpose = registry.find("openpose")
    assert openpose.problem() is None
    first = np.asarray(openpose.run(_picture(), processor_res=64))
    assert first.shape == (64, 107, 3)
    assert np.array_equal(first, np.asarray(openpose.run(_picture(), processor_res=64)))


#: Two people's 18 keypoints (x, y) in a 552 x 368 picture (COCO order: nose, neck, right arm, left arm,
#: right leg, left leg, eyes, ears).
_PERSON = ((184, 60), (184, 100), (150, 100), (130, 150), (120, 200), (218, 100), (238, 150), (248, 200),
           (160, 200), (158, 270), (156, 340), (208, 200), (210, 270), (212, 340), (176, 52), (192, 52),
           (166, 58), (202, 58))
_PEOPLE = (tuple((x + 120, y) for x, y in _PERSON), tuple((x - 80, y + 10) for x, y in _PERSON))


class _PoseMaps:
    """Stands in for the body network: heatmaps with a blob at each part and affinity fields along each
    limb, at the network's 1/8 of the picture it is given (which is scaled to 184 pixels high)."""

    def __call__(self, pixels: object) -> tuple[object, object]:
        import torch

        from sdweb.engine.control.openpose import LIMB_FIELDS, LIMBS

        height, width = pixels.shape[-2] // 8, pixels.shape[-1] // 8  # type: ignore[attr-defined]
        def cell(value: float) -> float:  # picture pixel -> map cell (pixel centres; the picture is 368 high)
            return (value * 0.5 + 0.5) / 8 - 0.5

        ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
        heat, fields = np.zeros((19, height, width)), np.zeros((38, height, width))
        for person in _PEOPLE:
            for part, (x, y) in enumerate(person):
                heat[part] += np.exp(-((xs - cell(x)) ** 2 + (ys - cell(y)) ** 2) / (2 * 0.8 ** 2))
            for (a, b), (fx, fy) in zip(LIMBS, LIMB_FIELDS, strict=True):
                (xa, ya), (xb, yb) = person[a - 1], person[b - 1]
                xa, ya, xb, yb = cell(xa), cell(ya), cell(xb), cell(yb)
                length = float(np.hypot(xb - xa, yb - ya))
                ux, uy = (xb - xa) / length, (yb - ya) / length
                along = (xs - xa) * ux + (ys - ya) * uy
                across = np.abs((ys - ya) * ux - (xs - xa) * uy)
                band = (along >= -1) & (along <= length + 1) & (across <= 1.5)
                fields[fx][band], fields[fy][band] = ux, uy
        return torch.from_numpy(fields[None]).float(), torch.from_numpy(heat[None]).float()


def test_openpose_finds_and_draws_each_person() -> None:
    from sdweb.engine.control.openpose import COLOURS, detect_people, openpose_map

    picture = np.full((368, 552, 3), 100, dtype=np.uint8)
    people, peaks = detect_people(_PoseMaps(), picture, "cpu")
    where = {peak[3]: (peak[0], peak[1]) for part in peaks for peak in part}
    found = sorted(tuple(where[index] for index in person) for person in people)
    assert len(found) == 2 and all(index >= 0 for person in people for index in person)  # 18 parts each
    for person, expected in zip(found, sorted(_PEOPLE), strict=True):
        assert np.abs(np.subtract(person, expected)).max() <= 2  # every part where it is (within 2 px)
    drawn = openpose_map(_PoseMaps(), picture, "cpu")
    for person in _PEOPLE:
        for part, (x, y) in enumerate(person):
            if part not in (14, 15):  # the eyes' discs overlap each other and the nose's
                assert tuple(drawn[y, x]) == COLOURS[part]
        # The neck - right shoulder limb, halfway: its colour at 60 %.
        (x0, y0), (x1, y1) = person[1], person[2]
        assert tuple(drawn[(y0 + y1) // 2, (x0 + x1) // 2]) == (153, 0, 0)
    assert drawn[5, 5].tolist() == [0, 0, 0]  # black elsewhere


def test_networks_are_loaded_once_and_kept(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry, runner = _registry(folder)
    reads: list[str] = []
    real = annotators.read_weights
    monkeypatch.setattr(annotators, "read_weights", lambda path: reads.append(path.name) or real(path))
    for _ in range(3):
        registry.find("softedge_hed").run(_picture(), processor_res=64)
    registry.find("softedge_hedsafe").run(_picture(), processor_res=64)  # the same file
    assert reads == ["ControlNetHED.pth"]
    registry.unload_models()  # what the engine's unload_all (POST /sdapi/v1/unload-checkpoint) calls
    registry.find("softedge_hed").run(_picture(), processor_res=64)
    assert reads == ["ControlNetHED.pth", "ControlNetHED.pth"]
    assert runner is registry.runner


def test_with_a_park_device_networks_visit_the_device_only_to_run(folder: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """--medvram / --lowvram: loaded networks wait on the park device (as the upscalers do)."""
    import torch

    moves: list[str] = []
    real_to = torch.nn.Module.to

    def to(module: torch.nn.Module, *args: object, **kwargs: object) -> torch.nn.Module:
        moves.append(str(args[0]) if args else str(kwargs))
        return real_to(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", to)
    registry, runner = _registry(folder, device=lambda: "cpu:0", park_device=lambda: "cpu")
    registry.find("softedge_hed").run(_picture(), processor_res=64)
    registry.find("softedge_hed").run(_picture(), processor_res=64)
    assert moves == ["cpu", "cpu:0", "cpu", "cpu:0", "cpu"]  # loaded parked; to the device and back per run
    assert runner.park_device() == "cpu" and runner.device() == "cpu:0"
    moves.clear()
    plain, _ = _registry(folder)  # no parking: loaded onto the device once, never moved again
    plain.find("softedge_hed").run(_picture(), processor_res=64)
    plain.find("softedge_hed").run(_picture(), processor_res=64)
    assert moves == ["cpu"]


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
    for build, state in ((annotator_nets.build_hed, hed_state(64)),
                         (annotator_nets.build_lineart, lineart_state(64)),
                         (annotator_nets.build_anime, anime_state(64, prefix=""))):
        network = build(state, "file")
        assert set(network.state_dict()) == set(state)
    wrapped = pidinet_state(60, 24)["state_dict"]
    pidinet = {key.removeprefix("module."): value for key, value in wrapped.items()}
    assert set(annotator_nets.build_mlsd(mlsd_state(), "file").state_dict()) == set(mlsd_state())
    assert set(build_openpose(openpose_state(), "file").state_dict()) == set(openpose_state())
    network = annotator_nets.build_pidinet(pidinet, "file")
    assert set(network.state_dict()) == set(pidinet)
    # Radial-difference blocks become 5x5 plain convolutions, the others stay 3x3.
    assert tuple(network.state_dict()["block1_2.conv1.weight"].shape) == (60, 1, 5, 5)
    assert tuple(network.state_dict()["block1_1.conv1.weight"].shape) == (60, 1, 3, 3)


def test_pixel_difference_kernels_equal_the_differences_they_stand_for() -> None:
    """Each converted kernel gives what the pixel-difference operation computes on a 5x5 patch."""
    import torch

    torch.manual_seed(0)
    weight = torch.randn(1, 1, 3, 3, dtype=torch.float64)
    patch = torch.randn(1, 1, 5, 5, dtype=torch.float64)
    w = weight[0, 0]
    centre = patch[0, 0, 2, 2]
    inner = patch[0, 0, 1:4, 1:4]

    def plain(kernel: torch.Tensor) -> float:
        size = kernel.shape[-1]
        start = (5 - size) // 2
        return float((patch[0, 0, start:start + size, start:start + size] * kernel[0, 0]).sum())

    # central: sum of w * (x_i - x_centre)
    assert plain(annotator_nets.pixel_difference_kernel("cd", weight)) == pytest.approx(
        float((w * (inner - centre)).sum()))
    # angular: each ring tap's weight times (its x - the next x clockwise); the centre's weight is unused
    ring = [(0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0)]
    angular = sum(float(w[ring[k]]) * float(inner[ring[k]] - inner[ring[(k + 1) % 8]]) for k in range(8))
    assert plain(annotator_nets.pixel_difference_kernel("ad", weight)) == pytest.approx(angular)
    # radial: per direction k (row by row), (x at twice the offset - x at the offset) times weight k + 1 of
    # the flattened kernel (the release's convention: its trained weights expect exactly this pairing)
    directions = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    flat = w.flatten()
    radial = sum(float(flat[k + 1]) * float(patch[0, 0, 2 + 2 * dy, 2 + 2 * dx] - patch[0, 0, 2 + dy, 2 + dx])
                 for k, (dy, dx) in enumerate(directions))
    assert plain(annotator_nets.pixel_difference_kernel("rd", weight)) == pytest.approx(radial)


def test_controlnet_aux_annotators_name_their_files_and_the_package(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(annotators, "aux_problem",
                        lambda: "the controlnet-aux package, which did not import (RuntimeError: nms)")
    registry, _runner = _registry(tmp_path / "annotators")
    for name in ("openpose_full", "openpose_hand", "openpose_face", "openpose_faceonly"):  # controlnet-aux's
        problem = registry.find(name).problem()
        assert problem is not None
        assert str(tmp_path / "annotators" / "hand_pose_model.pth") in problem and "controlnet-aux" in problem
    seg = registry.find("seg_ufade20k").problem()
    assert seg is not None and "no runner" in seg


class _FakeAuxDetector:
    """Stands in for a controlnet-aux detector class: records how it is loaded and called."""

    loads: list[tuple[str, str, dict[str, object]]] = []
    calls: list[dict[str, object]] = []

    @classmethod
    def from_pretrained(cls, folder: str, filename: str, **keywords: object) -> _FakeAuxDetector:
        cls.loads.append((folder, filename, keywords))
        return cls()

    def to(self, _device: object) -> _FakeAuxDetector:
        return self

    def __call__(self, picture: np.ndarray, **options: object) -> np.ndarray:
        self.calls.append(options)
        return np.full(picture.shape, 77, dtype=np.uint8)


def test_controlnet_aux_detectors_load_from_the_annotators_folder(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    fake = types.ModuleType("controlnet_aux")
    fake.MidasDetector = fake.LeresDetector = _FakeAuxDetector  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "controlnet_aux", fake)
    monkeypatch.setattr(_FakeAuxDetector, "loads", [])
    monkeypatch.setattr(_FakeAuxDetector, "calls", [])
    folder = tmp_path / "annotators"
    write_pickle_with_code(folder / "dpt_hybrid-midas-501f0c75.pt")
    for file in ("res101.pth", "latest_net_G.pth"):
        write_annotator(folder, file, {"weight": hed_state()["norm"]})
    registry, _runner = _registry(folder)
    assert registry.find("depth").problem() is None  # it imports, the file is there
    with pytest.raises(PreprocessorUnavailableError, match=r"refused to load dpt_hybrid-midas"):
        registry.find("depth_midas").run(_picture(), processor_res=64)
    assert _FakeAuxDetector.loads == []  # refused before controlnet-aux unpickles it
    leres = registry.find("depth_leres")
    depth = np.asarray(leres.run(_picture(), processor_res=64, threshold_a=10, threshold_b=20))
    assert depth.shape == (64, 107, 3) and depth.max() == depth.min() == 77
    assert _FakeAuxDetector.loads == [(str(folder), "res101.pth", {"pix2pix_filename": "latest_net_G.pth"})]
    assert _FakeAuxDetector.calls[0]["thr_a"] == 10 and _FakeAuxDetector.calls[0]["thr_b"] == 20
    leres.run(_picture(), processor_res=64)  # loaded once; the sliders' defaults (0, 0) when not given
    assert len(_FakeAuxDetector.loads) == 1 and _FakeAuxDetector.calls[1]["thr_a"] == 0


def test_install_hint_says_how_and_why() -> None:
    hint = annotators.AUX_INSTALL_HINT
    assert "pip install 'sdweb[annotators]'" in hint and "torchvision" in hint

"""img2img's "Generate batch": each uploaded picture is its own job with the same settings, every result is
saved and all are shown together; unreadable pictures are skipped and named; Interrupt stops the batch."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from sdweb.params import GenerationResult, Img2ImgParams
from sdweb.ui.components.jobs import SessionJobs
from sdweb.ui.components.results import ResultPanel
from sdweb.ui.components.uploads import UploadError
from sdweb.ui.tabs.img2img_batch import MAX_BATCH_PICTURES, batch_paths, combined_view, run_batch
from sdweb.ui.tabs.img2img_inputs import OutpaintChoice, picture_job
from tests.fakes import FakeEngine, make_services

PARAMS = Img2ImgParams(prompt="a boat", steps=2, width=64, height=64, seed=7, denoising_strength=0.5)


class _Slot:
    """Stands in for a panel component: updates are keyed by it."""

    def __init__(self, name: str) -> None:
        self.name = name


def _panel() -> ResultPanel:
    names = ("message", "progress", "preview", "gallery", "infotext", "view")
    return ResultPanel(**{name: _Slot(name) for name in names})  # type: ignore[arg-type]


def _pictures(folder: Path, colours: list[tuple[int, int, int]]) -> list[str]:
    paths = []
    for index, colour in enumerate(colours):
        path = folder / f"in{index}.png"
        Image.new("RGB", (64, 64), colour).save(path)
        paths.append(str(path))
    return paths


def _run(services: Any, paths: list[str], make_job: Any = None) -> list[dict[Any, Any]]:
    make_job = make_job or (lambda picture: picture_job(PARAMS, picture, None, None))

    async def collect() -> list[dict[Any, Any]]:
        return [update async for update in run_batch(services, paths, make_job, panel, SessionJobs(), None)]

    panel = _panel()
    updates = asyncio.run(collect())
    return [{key.name: value for key, value in update.items()} for update in updates]


@pytest.fixture()
def services(tmp_path: Path):
    services, engine = make_services(tmp_path / "data", engine=FakeEngine())
    services.engine_fake = engine
    yield services
    services.worker.close()


def test_each_picture_is_its_own_job_saved_and_shown_together(services, tmp_path: Path) -> None:
    paths = _pictures(tmp_path, [(255, 0, 0), (0, 0, 255), (0, 255, 0)])
    updates = _run(services, paths)
    engine = services.engine_fake
    assert [images[0].getpixel((0, 0)) for images in engine.init_images] == [(255, 0, 0), (0, 0, 255),
                                                                             (0, 255, 0)]
    assert all(call.prompt == "a boat" and call.denoising_strength == 0.5 for call in engine.calls)
    final = updates[-1]
    view = final["view"]
    assert len(view.items) == 3 and all(Path(item).is_file() for item in view.items)  # saved files
    assert all("img2img" in str(item) for item in view.items)
    assert view.seeds == [7, 7, 7]  # same settings for every picture
    assert "3 images from 3 of 3 pictures" in final["progress"]


def test_an_unreadable_picture_is_skipped_and_named(services, tmp_path: Path) -> None:
    paths = _pictures(tmp_path, [(255, 0, 0)])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    final = _run(services, [str(broken), *paths])[-1]
    assert len(final["view"].items) == 1
    assert "Skipped: broken.png" in final["progress"]


def test_outpainting_applies_to_every_picture(services, tmp_path: Path) -> None:
    paths = _pictures(tmp_path, [(255, 0, 0), (0, 0, 255)])
    choice = OutpaintChoice(enabled=True, pixels=16, sides=("right",))
    _run(services, paths, lambda picture: picture_job(PARAMS, picture, None, choice))
    engine = services.engine_fake
    assert [images[0].size for images in engine.init_images] == [(80, 64), (80, 64)]
    assert all(mask is not None and mask.size == (80, 64) for mask in engine.masks)


def test_interrupt_stops_the_batch_and_keeps_what_was_made(tmp_path: Path) -> None:
    services, engine = make_services(tmp_path / "data", engine=FakeEngine(step_delay=0.2))
    try:
        paths = _pictures(tmp_path, [(255, 0, 0), (0, 0, 255), (0, 255, 0)])

        def make_job(picture: Image.Image) -> Any:
            job = picture_job(PARAMS.model_copy(update={"steps": 5}), picture, None, None)
            if engine.calls:  # the second picture: interrupt while it runs
                asyncio.get_running_loop().call_later(0.3, services.generation.interrupt)
            return job

        updates = _run(services, paths, make_job)
        final = updates[-1]
        # Progress says which picture is being made; the end says the batch was interrupted.
        assert any("Picture 1 of 3: in0.png" in update.get("progress", "") for update in updates)
        assert final["progress"].count("Interrupted") == 1
        assert len(engine.calls) == 2  # the third picture never started
    finally:
        services.worker.close()


def test_batch_paths_need_files_and_a_bound(tmp_path: Path) -> None:
    with pytest.raises(UploadError, match="Upload the pictures"):
        batch_paths([])
    assert batch_paths([SimpleNamespace(name="/a.png"), "/b.png"]) == ["/a.png", "/b.png"]
    with pytest.raises(UploadError, match=f"at most {MAX_BATCH_PICTURES}"):
        batch_paths([f"/{index}.png" for index in range(MAX_BATCH_PICTURES + 1)])


def test_combined_view_keeps_every_result_in_order() -> None:
    first = GenerationResult(params=PARAMS, images=[1, 2], seeds=[1, 2], subseeds=[3, 4],
                             infotexts=["a", "b"], paths=["/1.png", "/2.png"])
    second = GenerationResult(params=PARAMS, images=[5], seeds=[9], subseeds=[8], infotexts=["c"], paths=[])
    view = combined_view([first, second])
    assert view.items == ["/1.png", "/2.png", 5] and view.seeds == [1, 2, 9]
    assert view.infotexts == ["a", "b", "c"]

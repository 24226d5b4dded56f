"""img2img through GenerationService: the same GPU queue, its own output folder, infotext, history."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from PIL import Image

from sdweb.params import GenerationParams, Img2ImgParams
from sdweb.services.generation import GenerationError
from tests.fakes import FakeEngine, colour_for, make_services


@pytest.fixture()
def services_and_engine(tmp_path: Path):
    services, engine = make_services(tmp_path, engine=FakeEngine())
    yield services, engine
    services.worker.close()


def small(**kwargs) -> Img2ImgParams:
    base = {"prompt": "a red circle", "steps": 10, "width": 64, "height": 64, "seed": 100,
            "denoising_strength": 0.5}
    base.update(kwargs)
    return Img2ImgParams(**base)


def test_img2img_images_are_saved_apart_with_their_infotext(services_and_engine) -> None:
    services, engine = services_and_engine
    init = Image.new("RGB", (32, 32), (0, 200, 0))
    result = services.generation.submit_img2img(small(denoising_strength=0.0), [init]).wait()
    assert engine.init_images == [[init]]
    (path,) = result.paths
    assert Path(path).parent.parent.name == "img2img-images"
    with Image.open(path) as image:
        assert image.size == (64, 64) and image.getpixel((5, 5)) == (0, 200, 0)
        text = image.info["parameters"]
    assert "Denoising strength: 0, " in text and "Size: 64x64" in text and "Seed: 100" in text
    # A1111's place for the key: after Model, before Clip skip / RNG.
    assert text.index("Model:") < text.index("Denoising strength") < text.index("RNG")


def test_history_keeps_a_restorable_request_and_the_img2img_fields(services_and_engine) -> None:
    services, _engine = services_and_engine
    result = services.generation.submit_img2img(small(prompt="a green field", denoising_strength=0.6),
                                                [Image.new("RGB", (8, 8))]).wait()
    (entry,) = services.history.search("green field")
    assert entry.id == result.history_id
    assert type(entry.params) is GenerationParams and entry.params.prompt == "a green field"
    assert entry.extra["kind"] == "img2img" and entry.extra["denoising_strength"] == 0.6


def test_several_init_images_make_the_batch(services_and_engine) -> None:
    services, engine = services_and_engine
    colours = [(255, 0, 0), (0, 0, 255)]
    inits = [Image.new("RGB", (64, 64), colour) for colour in colours]
    result = services.generation.submit_img2img(small(batch_size=4, denoising_strength=0.0), inits).wait()
    assert result.params.batch_size == 2 and result.seeds == [100, 101]
    assert [image.getpixel((0, 0)) for image in result.images] == colours
    with pytest.raises(GenerationError, match="3 init images for a batch size of 2"):
        services.generation.submit_img2img(small(batch_size=2), inits + inits[:1])
    with pytest.raises(GenerationError, match="needs an init image"):
        services.generation.submit_img2img(small(), [])
    with pytest.raises(GenerationError, match="need init images"):
        services.generation.submit(small())


def test_strength_one_is_the_seeds_image(services_and_engine) -> None:
    services, _engine = services_and_engine
    result = services.generation.submit_img2img(small(denoising_strength=1.0),
                                                [Image.new("RGB", (64, 64))]).wait()
    assert result.images[0].getpixel((0, 0)) == colour_for(100, "a red circle")


def test_img2img_waits_in_the_one_gpu_queue(tmp_path: Path) -> None:
    services, _engine = make_services(tmp_path, engine=FakeEngine(step_delay=0.02))
    try:
        first = services.generation.submit(GenerationParams(prompt="x", steps=20, width=64, height=64))
        second = services.generation.submit_img2img(small(steps=10, denoising_strength=0.5),
                                                    [Image.new("RGB", (8, 8))])
        deadline = time.monotonic() + 10
        while first.progress.state == "queued" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert second.progress.state == "queued"
        assert services.generation.queue_position(second) >= 1
        result = second.wait(30)
        assert first.finished and result.images
    finally:
        services.worker.close()


def test_img2img_fix_steps_comes_from_the_setting_unless_the_request_says(services_and_engine) -> None:
    services, engine = services_and_engine
    init = Image.new("RGB", (32, 32), (0, 200, 0))
    services.generation.submit_img2img(small(), [init]).wait()
    assert engine.calls[-1].img2img_fix_steps is False  # A1111's default
    assert engine.calls[-1].denoising_steps == 6  # int(0.5 * 10) + 1
    services.options.update({"img2img_fix_steps": True})
    services.generation.submit_img2img(small(), [init]).wait()
    assert engine.calls[-1].img2img_fix_steps is True and engine.calls[-1].denoising_steps == 10
    services.generation.submit_img2img(small(img2img_fix_steps=False), [init]).wait()
    assert engine.calls[-1].img2img_fix_steps is False
    text = services.generation.submit_img2img(small(), [init]).wait().infotexts[0]
    assert "fix" not in text.lower()  # a setting, not an infotext key (as A1111)

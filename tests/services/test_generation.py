"""GenerationService with the real wiring and a fake engine: queue, seeds, saving, control."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from sdweb.params import GenerationParams
from sdweb.services.generation import GenerationError
from tests.fakes import FakeEngine, colour_for, make_services


@pytest.fixture()
def services(tmp_path: Path):
    services, _engine = make_services(tmp_path, engine=FakeEngine())
    yield services
    services.worker.close()


def small(**kwargs) -> GenerationParams:
    base = {"prompt": "a red circle", "steps": 3, "width": 64, "height": 64, "seed": 100}
    base.update(kwargs)
    return GenerationParams(**base)


def test_images_are_saved_with_infotext_and_batch_seeds(services) -> None:
    result = services.generation.generate(small(batch_size=2, n_iter=2))
    assert result.seeds == [100, 101, 102, 103]
    assert len(result.paths) == 4
    for path, seed in zip(result.paths, result.seeds, strict=True):
        assert Path(path).name.endswith(f"-{seed}.png")
        with Image.open(path) as image:
            assert image.getpixel((0, 0)) == colour_for(seed, "a red circle")
            text = image.info["parameters"]
        assert f"Seed: {seed}" in text and "Steps: 3" in text and "Model hash: 0123456789" in text
    assert result.grid_path is not None and Path(result.grid_path).exists()


def test_random_seed_is_resolved_and_remembered(services) -> None:
    result = services.generation.generate(small(seed=-1))
    assert 0 <= result.seeds[0] <= 4_294_967_294
    assert services.generation.last_seed == result.seeds[0]
    assert f"Seed: {result.seeds[0]}" in result.infotexts[0]


def test_generation_is_recorded_in_history(services) -> None:
    result = services.generation.generate(small(prompt="a blue square"))
    assert result.history_id is not None
    found = services.history.search("square")
    assert [entry.params.prompt for entry in found] == ["a blue square"]


def test_unknown_sampler_is_refused_before_queueing(services) -> None:
    with pytest.raises(GenerationError) as info:
        services.generation.submit(small(sampler_name="Nope"))
    assert "Nope" in info.value.message and "Euler a" in info.value.message


def test_unknown_checkpoint_is_refused(services) -> None:
    with pytest.raises(GenerationError) as info:
        services.generation.submit(small(checkpoint="missing-model"))
    assert "missing-model" in info.value.message


def test_jobs_run_in_arrival_order(tmp_path: Path) -> None:
    engine = FakeEngine(step_delay=0.01)
    services, _ = make_services(tmp_path, engine=engine)
    try:
        jobs = [services.generation.submit(small(prompt=f"job {i}", seed=i), save=False) for i in range(5)]
        assert services.generation.queue_position(jobs[-1]) >= 1
        for job in jobs:
            job.wait(30)
        assert [params.prompt for params in engine.calls] == [f"job {i}" for i in range(5)]
    finally:
        services.worker.close()


def test_interrupt_keeps_finished_images(tmp_path: Path) -> None:
    services, _ = make_services(tmp_path, engine=FakeEngine(step_delay=0.05))
    try:
        job = services.generation.submit(small(n_iter=5, steps=4))
        while job.progress.job_no < 1:
            time.sleep(0.01)
        assert services.generation.interrupt(job.id)
        result = job.wait(30)
        assert result.interrupted
        assert 1 <= len(result.images) < 5
        assert len(result.paths) == len(result.images)
        assert job.progress.state == "interrupted"
    finally:
        services.worker.close()


def test_skip_drops_only_the_current_batch(tmp_path: Path) -> None:
    services, _ = make_services(tmp_path, engine=FakeEngine(step_delay=0.05))
    try:
        job = services.generation.submit(small(n_iter=3, steps=4), save=False)
        while job.progress.state != "running":
            time.sleep(0.01)
        services.generation.skip(job.id)
        result = job.wait(30)
        assert not result.interrupted
        assert len(result.images) == 2
    finally:
        services.worker.close()


def test_progress_is_visible_from_another_thread(tmp_path: Path) -> None:
    services, _ = make_services(tmp_path, engine=FakeEngine(step_delay=0.05))
    seen: list[int] = []
    try:
        job = services.generation.submit(small(steps=6), save=False)

        def watch() -> None:
            while not job.finished:
                seen.append(services.generation.progress(job).sampling_step)
                time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        watcher.start()
        job.wait(30)
        watcher.join()
        assert any(0 < step < 6 for step in seen)
        assert job.progress.fraction == 1.0
    finally:
        services.worker.close()


def test_engine_failure_is_reported_not_raised_raw(tmp_path: Path) -> None:
    engine = FakeEngine(fail_with=RuntimeError("CUDA out of memory"))
    services, _ = make_services(tmp_path, engine=engine)
    try:
        job = services.generation.submit(small())
        with pytest.raises(GenerationError) as info:
            job.wait(30)
        assert "out of memory" in info.value.message
        assert job.progress.state == "failed"
        # the worker survives: the next job runs
        engine.fail_with = None
        assert services.generation.generate(small()).images
    finally:
        services.worker.close()

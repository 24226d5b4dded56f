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


def _saved(services) -> list[Path]:
    return sorted(services.images.images_dir("txt2img").rglob("*.png"))


@pytest.mark.parametrize("report_batches", [True, False], ids=["engine-reports-batches", "end-of-job-only"])
def test_each_batch_is_saved_and_in_history_while_the_job_still_runs(tmp_path: Path,
                                                                       report_batches: bool) -> None:
    services, _ = make_services(tmp_path, engine=FakeEngine(step_delay=0.02, report_batches=report_batches))
    try:
        job = services.generation.submit(small(n_iter=4, steps=5, prompt="a slow batch"))
        while job.progress.job_no < 2 and not job.finished:  # the third batch is being made
            time.sleep(0.005)
        files_while_running = _saved(services)
        rows_while_running = services.history.search("slow batch")
        result = job.wait(30)
        if report_batches:
            # Batches 1 and 2 are on disk and in the history row before the job ends (A1111 saves each
            # image as it is decoded): a crash now would lose at most the batch being made.
            assert len(files_while_running) >= 2
            assert len(rows_while_running) == 1
            assert len(rows_while_running[0].output_paths) >= 2
            assert set(rows_while_running[0].output_paths) <= {str(p) for p in files_while_running}
        else:
            assert files_while_running == []
        assert len(result.paths) == 4 and [Path(p) for p in result.paths] == _saved(services)
        rows = services.history.search("slow batch")
        assert len(rows) == 1 and list(rows[0].output_paths) == result.paths
        assert rows[0].id == result.history_id and list(rows[0].seeds) == [100, 101, 102, 103]
        assert rows[0].extra["grid_path"] == result.grid_path
    finally:
        services.worker.close()


def test_interrupted_job_history_row_says_so(tmp_path: Path) -> None:
    services, _ = make_services(tmp_path, engine=FakeEngine(step_delay=0.03))
    try:
        job = services.generation.submit(small(n_iter=5, steps=4, prompt="cut short"))
        while job.progress.job_no < 1:
            time.sleep(0.005)
        services.generation.interrupt(job.id)
        result = job.wait(30)
        rows = services.history.search("cut short")
        assert len(rows) == 1 and rows[0].extra["interrupted"] is True
        assert list(rows[0].output_paths) == result.paths and len(result.paths) == len(result.images)
    finally:
        services.worker.close()


@pytest.mark.parametrize("failure", ["read-only", "disk-full"])
def test_unwritable_outputs_folder_still_returns_the_images_with_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    import errno
    import os

    from sdweb.images.store import ImageStore

    services, _ = make_services(tmp_path, engine=FakeEngine())
    outputs = services.images.root
    outputs.mkdir(parents=True, exist_ok=True)
    if failure == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders (the disk-full case covers this run)")
        outputs.chmod(0o500)
        reason = "Permission denied"
    else:
        real_encode = ImageStore._encode

        def encode_then_fill_the_disk(image, handle, *args, **kwargs):  # half a file, then ENOSPC
            real_encode(image, handle, *args, **kwargs)
            handle.truncate(handle.tell() // 2)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), handle.name)

        monkeypatch.setattr(ImageStore, "_encode", staticmethod(encode_then_fill_the_disk))
        reason = os.strerror(errno.ENOSPC)
    try:
        result = services.generation.generate(small(batch_size=2, n_iter=2, prompt="nowhere to go"))
        assert len(result.images) == 4 and result.paths == [] and result.grid_path is None
        assert len(result.warnings) == 1, result.warnings
        warning = result.warnings[0]
        assert "could not save to outputs" in warning and reason in warning
        assert "returned but not kept" in warning and str(tmp_path) not in warning
        assert [p for p in outputs.rglob("*") if p.is_file()] == []  # nothing half-written
        # The history still has the request (with its seeds), though no file.
        rows = services.history.search("nowhere")
        assert len(rows) == 1 and list(rows[0].seeds) == [100, 101, 102, 103] and rows[0].output_paths == ()
    finally:
        outputs.chmod(0o700)
        services.worker.close()

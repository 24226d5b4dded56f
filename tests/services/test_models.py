"""ModelService: which checkpoint is selected, the demo fallback, switching and failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdweb.services.factory import build_services
from tests.fakes import FakeEngine, make_settings
from tests.fixtures.checkpoints import write_tiny_sd1


@pytest.fixture()
def demo_file(tmp_path: Path) -> Path:
    return write_tiny_sd1(tmp_path / "bundled" / "demo-shapes.safetensors")


def build(root: Path, demo: Path, monkeypatch: pytest.MonkeyPatch, **overrides):
    monkeypatch.setattr("sdweb.services.factory.DEMO_CHECKPOINT", demo)
    engine = FakeEngine()
    overrides.setdefault("skip_demo_model", False)
    services = build_services(make_settings(root, **overrides), engine_factory=lambda _s: engine)
    return services, engine


def test_with_no_checkpoint_the_demo_is_selected_and_labelled(tmp_path: Path, demo_file: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    services, engine = build(tmp_path / "data", demo_file, monkeypatch)
    try:
        [info] = services.models.list_checkpoints()
        assert info.demo and info.name == "demo-shapes.safetensors"
        services.models.load_selected(wait=True)
        status = services.models.status()
        assert status.state == "ready" and status.is_demo
        assert engine.loaded == [info.title]
    finally:
        services.worker.close()


def test_the_users_own_checkpoint_wins_over_the_demo(tmp_path: Path, demo_file: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    write_tiny_sd1(root / "models" / "Stable-diffusion" / "zzz-mine.safetensors")
    services, _ = build(root, demo_file, monkeypatch)
    try:
        names = [info.name for info in services.models.list_checkpoints()]
        assert names == ["zzz-mine.safetensors", "demo-shapes.safetensors"]
        assert services.models.selected_title().startswith("zzz-mine.safetensors")
    finally:
        services.worker.close()


def test_skip_demo_model_leaves_an_empty_list_with_a_hint(tmp_path: Path, demo_file: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    services, _ = build(tmp_path / "data", demo_file, monkeypatch, skip_demo_model=True)
    try:
        assert services.models.list_checkpoints() == []
        services.models.load_selected(wait=True)
        status = services.models.status()
        assert status.state == "none" and "models" in status.message and "Stable-diffusion" in status.message
    finally:
        services.worker.close()


def test_a_failed_switch_keeps_the_selected_model(tmp_path: Path, demo_file: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    services, _ = build(tmp_path / "data", demo_file, monkeypatch)
    try:
        services.models.load_selected(wait=True)
        before = services.options.get("sd_model_checkpoint")
        with pytest.raises(LookupError):
            services.models.select("no-such-model")
        assert services.options.get("sd_model_checkpoint") == before
    finally:
        services.worker.close()


def test_status_follows_a_model_a_job_switched_to(tmp_path: Path, demo_file: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    write_tiny_sd1(root / "models" / "Stable-diffusion" / "other.safetensors")
    services, engine = build(root, demo_file, monkeypatch)
    try:
        services.models.load_selected(wait=True)
        assert services.models.status().title.startswith("other.safetensors")
        demo = next(info for info in services.models.list_checkpoints() if info.demo)
        engine.current = demo  # a request with its own checkpoint made the engine switch
        status = services.models.status()
        assert status.state == "ready" and status.title == demo.title and status.is_demo
        services.models.unload()
        assert services.models.status().state == "idle"
    finally:
        services.worker.close()


def test_a_downloaded_checkpoint_is_listed_at_once_and_selectable(tmp_path: Path, demo_file: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fixtures.fake_hub import REPO, running_hub

    services, _engine = build(tmp_path / "data", demo_file, monkeypatch)
    seen: list[tuple[int, int]] = []
    try:
        assert not services.models.has_own_checkpoint()  # only the bundled demo
        with running_hub() as hub:
            data = write_tiny_sd1(tmp_path / "upload" / "tiny.safetensors").read_bytes()
            hub.add(REPO, "tiny.safetensors", data)
            monkeypatch.setenv("HF_ENDPOINT", hub.url)
            info = services.models.download(f"{REPO}:tiny.safetensors",
                                            progress=lambda done, total: seen.append((done, total)))
        assert info.path == services.settings.paths.ckpt_dirs[0] / "tiny.safetensors"
        assert info.family == "sd1" and not info.demo
        assert [i.title for i in services.models.list_checkpoints()][0] == info.title
        assert seen[-1] == (len(data), len(data))
        # The user's own checkpoint now comes before the bundled demo.
        assert services.models.selected_title() == info.title
        assert services.models.has_own_checkpoint()
    finally:
        services.worker.close(timeout=2)


def test_a_download_that_cannot_reach_the_hub_says_so_and_lists_nothing_new(
        tmp_path: Path, demo_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from sdweb.engine.models.download import DownloadError

    services, _engine = build(tmp_path / "data", demo_file, monkeypatch)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    try:
        before = [i.title for i in services.models.list_checkpoints()]
        with pytest.raises(DownloadError, match="cannot reach the Hugging Face hub"):
            services.models.download("sd15")
        with pytest.raises(ValueError, match="well-known name"):
            services.models.download("not a repo")
        assert [i.title for i in services.models.list_checkpoints()] == before
    finally:
        services.worker.close(timeout=2)

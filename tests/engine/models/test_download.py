"""Model download against the fake hub of tests/fixtures/fake_hub.py (the hub's URL layout on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdweb.engine.models.download import (
    KNOWN_MODELS,
    ChecksumMismatchError,
    DownloadError,
    download_model,
    parse_model_spec,
)
from tests.fixtures.fake_hub import REPO, FakeHub, payload, running_hub


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with running_hub() as state:
        yield state


def test_full_download_reports_progress_and_lands_verified_in_the_folder(
    hub: FakeHub, tmp_path: Path
) -> None:
    data = payload(3_000_000)
    hub.add(REPO, "tiny.safetensors", data)
    seen: list[tuple[int, int]] = []

    path = download_model(
        f"{REPO}:tiny.safetensors",
        tmp_path / "Stable-diffusion",
        progress=lambda done, total: seen.append((done, total)),
        endpoint=hub.url,
    )

    assert path == tmp_path / "Stable-diffusion" / "tiny.safetensors"
    assert path.read_bytes() == data
    assert not list(path.parent.glob("*.incomplete"))
    assert seen[-1] == (len(data), len(data))
    assert all(total == len(data) for _, total in seen)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_a_repo_with_one_checkpoint_needs_no_file_name(hub: FakeHub, tmp_path: Path) -> None:
    hub.add(REPO, "only.safetensors", payload(1000))
    hub.add(REPO, "README.md", b"hello")
    assert download_model(REPO, tmp_path, progress=None, endpoint=hub.url).name == "only.safetensors"


def test_a_repo_with_several_checkpoints_asks_which(hub: FakeHub, tmp_path: Path) -> None:
    hub.add(REPO, "a.safetensors", payload(10))
    hub.add(REPO, "b.safetensors", payload(10, 1))
    with pytest.raises(DownloadError, match=r"several checkpoints \(a.safetensors, b.safetensors\)"):
        download_model(REPO, tmp_path, progress=None, endpoint=hub.url)


def test_an_interrupted_download_keeps_its_partial_file_and_the_next_call_resumes_it(
    hub: FakeHub, tmp_path: Path
) -> None:
    data = payload(2_000_000, 2)
    hub.add(REPO, "big.safetensors", data)
    hub.drop_after = 700_000

    with pytest.raises(DownloadError, match="run the same download again to resume"):
        download_model(f"{REPO}:big.safetensors", tmp_path, progress=None, endpoint=hub.url, retries=0)
    partial = tmp_path / "big.safetensors.incomplete"
    assert partial.exists() and 0 < partial.stat().st_size < len(data)
    assert not (tmp_path / "big.safetensors").exists()

    kept = partial.stat().st_size
    path = download_model(f"{REPO}:big.safetensors", tmp_path, progress=None, endpoint=hub.url)
    assert path.read_bytes() == data
    assert hub.range_requests == [f"bytes={kept}-"]
    assert not partial.exists()


def test_a_dropped_connection_is_resumed_within_the_same_call(hub: FakeHub, tmp_path: Path) -> None:
    data = payload(1_500_000, 3)
    hub.add(REPO, "big.safetensors", data)
    hub.drop_after = 500_000
    seen: list[int] = []

    path = download_model(
        f"{REPO}:big.safetensors", tmp_path, progress=lambda done, _: seen.append(done), endpoint=hub.url
    )

    assert path.read_bytes() == data
    assert len(hub.range_requests) == 1
    assert seen[-1] == len(data)


def test_a_file_whose_hash_does_not_match_is_refused_and_its_partial_removed(
    hub: FakeHub, tmp_path: Path
) -> None:
    data = payload(400_000, 4)
    hub.add(REPO, "bad.safetensors", data)
    # The hub claims another sha256 than the bytes it serves (a corrupted mirror or a tampered file).
    hub.advertised_sha256[(REPO, "bad.safetensors")] = hashlib.sha256(b"something else").hexdigest()

    with pytest.raises(ChecksumMismatchError, match="failed verification.*removed"):
        download_model(f"{REPO}:bad.safetensors", tmp_path, progress=None, endpoint=hub.url)
    assert list(tmp_path.iterdir()) == []


def test_a_well_known_model_is_checked_against_its_published_hash_not_the_servers(
    hub: FakeHub, tmp_path: Path
) -> None:
    sd15 = KNOWN_MODELS[0]
    # A server that serves other bytes and advertises their (matching) hash: only the table catches it.
    hub.add(sd15.repo_id, sd15.filename, payload(1000, 5))
    hub.advertised_sha256[(sd15.repo_id, sd15.filename)] = "0" * 64

    with pytest.raises(ChecksumMismatchError, match="different .* than the published release"):
        download_model("sd15", tmp_path, progress=None, endpoint=hub.url)
    assert list(tmp_path.iterdir()) == []


def test_a_server_that_is_down_fails_fast_with_a_clear_message(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once the socket is closed
    started = time.monotonic()
    with pytest.raises(DownloadError, match="cannot reach the Hugging Face hub"):
        download_model(f"{REPO}:x.safetensors", tmp_path, progress=None, endpoint=f"http://127.0.0.1:{port}")
    assert time.monotonic() - started < 5


def test_a_missing_file_is_named_in_the_error(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="no file 'nope.safetensors' in someone/tiny-model"):
        download_model(f"{REPO}:nope.safetensors", tmp_path, progress=None, endpoint=hub.url)


def test_a_file_already_downloaded_is_not_fetched_again(hub: FakeHub, tmp_path: Path) -> None:
    data = payload(5000, 6)
    hub.add(REPO, "done.safetensors", data)
    (tmp_path / "done.safetensors").write_bytes(data)
    hub.files[(REPO, "done.safetensors")] = data
    hub.drop_after = 0  # any GET would fail: the file must come from disk
    assert (
        download_model(
            f"{REPO}:done.safetensors", tmp_path, progress=None, endpoint=hub.url, retries=0
        ).read_bytes()
        == data
    )


def test_well_known_names_and_repo_specs_parse() -> None:
    sd15 = parse_model_spec("SD15")
    assert (sd15.repo_id, sd15.filename, sd15.sha256) == (
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "v1-5-pruned-emaonly.safetensors",
        "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa",
    )
    assert parse_model_spec("stabilityai/stable-diffusion-xl-base-1.0").sha256 == (
        "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b"
    )
    custom = parse_model_spec("me/model@v2:sub/file.safetensors")
    assert (custom.repo_id, custom.revision, custom.filename, custom.sha256) == (
        "me/model",
        "v2",
        "sub/file.safetensors",
        None,
    )
    with pytest.raises(ValueError, match="well-known name"):
        parse_model_spec("not a repo")
    with pytest.raises(ValueError):
        parse_model_spec("me/model:../../etc/passwd")


def test_the_command_line_downloads_into_the_checkpoint_folder(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sdweb.cli import main

    hub.add(REPO, "cli.safetensors", payload(300_000, 7))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)

    assert main(["--data-dir", str(tmp_path), "--download-model", f"{REPO}:cli.safetensors"]) == 0

    saved = tmp_path / "models" / "Stable-diffusion" / "cli.safetensors"
    assert saved.read_bytes() == payload(300_000, 7)
    out, err = capsys.readouterr()
    assert str(saved) in out
    assert "100%" in err


def test_the_command_line_says_when_the_hub_cannot_be_reached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sdweb.cli import main

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")

    assert main(["--data-dir", str(tmp_path), "--download-model", "sd15"]) == 1
    assert "cannot reach the Hugging Face hub" in capsys.readouterr().err

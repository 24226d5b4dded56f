"""Pickle files that would run code when unpickled are refused, and the code never runs."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from sdweb.engine.models.errors import CheckpointError, CheckpointReadError, UnsafeCheckpointError
from sdweb.engine.models.loader import LoadedModel
from sdweb.engine.models.pickle_io import torch_load_weights_only

Load = Callable[..., LoadedModel]


class _WritesMarker:
    """Unpickling this calls ``Path.touch(marker)``: what a malicious checkpoint would do, harmlessly."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))  # type: ignore[return-value]


def _payload(marker: Path) -> dict[str, object]:
    return {
        "state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)},
        "x": _WritesMarker(marker),
    }


def write_plain_pickle(path: Path, marker: Path) -> Path:
    with path.open("wb") as f:
        pickle.dump(_payload(marker), f)
    return path


def write_torch_zip(path: Path, marker: Path) -> Path:
    torch.save(_payload(marker), path)
    return path


def write_torch_legacy(path: Path, marker: Path) -> Path:
    torch.save(_payload(marker), path, _use_new_zipfile_serialization=False)
    return path


WRITERS = {
    "plain-pickle.ckpt": write_plain_pickle,
    "torch-zip.ckpt": write_torch_zip,
    "torch-legacy.pt": write_torch_legacy,
    "renamed-pickle.safetensors": write_plain_pickle,
    "renamed-torch-zip.safetensors": write_torch_zip,
}


@pytest.mark.parametrize("filename", list(WRITERS))
def test_code_carrying_pickle_is_refused_and_never_runs(tmp_path: Path, load: Load, filename: str) -> None:
    marker = tmp_path / "pwned"
    path = WRITERS[filename](tmp_path / filename, marker)
    assert not marker.exists()

    with pytest.raises(CheckpointError) as excinfo:
        load(path)

    assert "unsafe or invalid checkpoint" in str(excinfo.value)
    assert str(excinfo.value).startswith(filename)
    assert not marker.exists()
    if filename.endswith(".safetensors"):
        assert isinstance(excinfo.value, CheckpointReadError)
    else:
        assert isinstance(excinfo.value, UnsafeCheckpointError)


def test_the_payload_really_writes_the_marker_when_unpickled_unsafely(tmp_path: Path) -> None:
    # Guards the test above: if this payload did nothing, "marker never appears" would prove nothing.
    marker = tmp_path / "pwned"
    path = write_plain_pickle(tmp_path / "evil.ckpt", marker)

    with path.open("rb") as f:
        pickle.load(f)  # noqa: S301 - deliberately unsafe, on our own harmless payload

    assert marker.exists()


def test_text_file_named_ckpt_is_an_invalid_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "notes.ckpt"
    path.write_text("this is not a checkpoint")

    with pytest.raises(UnsafeCheckpointError, match=r"notes\.ckpt: unsafe or invalid checkpoint"):
        torch_load_weights_only(path)


def test_plain_weights_pickle_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "weights.ckpt"
    torch.save({"state_dict": {"a": torch.ones(2)}, "global_step": 3}, path)

    state = torch_load_weights_only(path)

    assert list(state) == ["a"]
    assert torch.equal(state["a"], torch.ones(2))

"""Shared set-up for the script tests: the real services around a FakeEngine, checkpoints copied in."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.fakes import FakeEngine, make_services, write_fake_checkpoint


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny SD1 file, written once per module (torch) and copied wherever a test needs one."""
    return write_fake_checkpoint(tmp_path_factory.mktemp("ckpt"), "model-a.safetensors")


def start_services(root: Path, checkpoint_file: Path, *, names: tuple[str, ...] = ("model-a.safetensors",),
                   engine: FakeEngine | None = None) -> tuple[Any, FakeEngine]:
    folder = root / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    for name in names:
        shutil.copy(checkpoint_file, folder / name)
    return make_services(root, engine=engine or FakeEngine(), with_checkpoint=False)


@pytest.fixture()
def scripted(tmp_path: Path, checkpoint_file: Path) -> Iterator[tuple[Any, FakeEngine]]:
    services, engine = start_services(tmp_path, checkpoint_file)
    yield services, engine
    services.worker.close()


def box_of(image: Image.Image, colour: tuple[int, int, int]) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the pixels of exactly ``colour`` in ``image``, or None."""
    pixels = np.asarray(image.convert("RGB"))
    ys, xs = np.nonzero(np.all(pixels == colour, axis=-1))
    if not len(xs):
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def has_ink(image: Image.Image, box: tuple[int, int, int, int]) -> bool:
    return bool((np.asarray(image.convert("L").crop(box)) < 128).any())

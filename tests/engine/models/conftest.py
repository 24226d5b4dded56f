"""Fixtures for the model-manager tests: tiny checkpoints (written once per session) and a CPU runtime.

``tiny_sd1_path``, ``tiny_sd2v_path`` and ``tiny_sdxl_path`` are single-file checkpoints in the original
LDM key layout (see ``tests/fixtures/checkpoints.py``). Tests must not modify them; a test that needs a
variant (a .yaml beside it, a damaged copy) writes its own under ``tmp_path``.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from sdweb.engine.models.registry import CheckpointInfo
from tests.fixtures.checkpoints import write_tiny_sd1, write_tiny_sd2v, write_tiny_sdxl


@pytest.fixture(scope="session")
def tiny_sd1_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_sd1(tmp_path_factory.mktemp("tiny-sd1") / "tiny-sd1.safetensors")


@pytest.fixture(scope="session")
def tiny_sd2v_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_sd2v(tmp_path_factory.mktemp("tiny-sd2v") / "tiny-sd2v.safetensors")


@pytest.fixture(scope="session")
def tiny_sdxl_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl") / "tiny-sdxl.safetensors")


def checkpoint_info(path: Path) -> CheckpointInfo:
    """A registry entry for ``path``, as the registry would list it."""
    path = Path(path)
    kind = "diffusers" if path.is_dir() else ("safetensors" if path.suffix == ".safetensors" else "ckpt")
    stat = path.stat()
    return CheckpointInfo(
        path=path,
        name=path.name,
        model_name=path.stem if kind != "diffusers" else path.name,
        kind=kind,
        size=stat.st_size,
        mtime=stat.st_mtime,
    )


@dataclass
class CpuRuntime:
    """What the loader reads of ``sdweb.engine.devices.RuntimeConfig``."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    vae_dtype: torch.dtype = torch.float32


@dataclass
class RuntimeCalls:
    pipes: list[Any] = field(default_factory=list)


@pytest.fixture
def applied_runtimes(monkeypatch: pytest.MonkeyPatch) -> Iterator[RuntimeCalls]:
    """Records ``apply_runtime(pipe, runtime)`` calls instead of running the devices module's."""
    calls = RuntimeCalls()

    def apply_runtime(pipe: Any, runtime: Any) -> None:
        calls.pipes.append(pipe)
        pipe.to(runtime.device)

    try:
        import sdweb.engine.devices as devices
    except ImportError:
        devices = types.ModuleType("sdweb.engine.devices")
        monkeypatch.setitem(sys.modules, "sdweb.engine.devices", devices)
    monkeypatch.setattr(devices, "apply_runtime", apply_runtime, raising=False)
    yield calls


@pytest.fixture
def load(applied_runtimes: RuntimeCalls) -> Callable[..., Any]:
    """``load(path, dtype=..., vae_dtype=..., vae_path=...)`` -> LoadedModel on CPU."""
    from sdweb.engine.models.loader import load_checkpoint

    def _load(
        path: Path, *, dtype: torch.dtype = torch.float32, vae_dtype: torch.dtype | None = None, **kwargs: Any
    ) -> Any:
        runtime = CpuRuntime(dtype=dtype, vae_dtype=vae_dtype or dtype)
        return load_checkpoint(checkpoint_info(path), runtime, **kwargs)  # type: ignore[arg-type]

    return _load

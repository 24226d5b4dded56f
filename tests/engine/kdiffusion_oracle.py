"""k-diffusion (the package A1111 runs) as the test oracle, imported without its heavy package ``__init__``.

``k_diffusion/__init__.py`` imports its training code (torchvision, kornia, wandb ...), which sdweb does
not install. The oracle needs only ``k_diffusion.sampling`` and ``k_diffusion.external``: they are loaded
from the installed package's files under a private module name, with a stand-in for the one helper of
``k_diffusion.utils`` they use (``append_dims``), so nothing of the training stack is imported.

``load()`` returns ``(sampling, external)`` or skips the test when k-diffusion is not installed
(``pip install --no-deps k-diffusion torchdiffeq``; see the ``test`` extra).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

_NAME = "_kdiffusion_oracle"


def _append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    missing = target_dims - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}")
    return x[(...,) + (None,) * missing]


def load() -> tuple[Any, Any]:
    """``(k_diffusion.sampling, k_diffusion.external)`` as private modules."""
    if f"{_NAME}.sampling" in sys.modules:
        return sys.modules[f"{_NAME}.sampling"], sys.modules[f"{_NAME}.external"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("k-diffusion is not installed (pip install --no-deps k-diffusion torchdiffeq)")
    for needed in ("torchdiffeq", "torchsde", "scipy", "tqdm"):
        if importlib.util.find_spec(needed) is None:
            pytest.skip(f"k-diffusion's sampling module needs {needed}")
    root = Path(next(iter(spec.submodule_search_locations)))
    package = types.ModuleType(_NAME)
    package.__path__ = [str(root)]
    sys.modules[_NAME] = package
    utils = types.ModuleType(f"{_NAME}.utils")
    utils.append_dims = _append_dims  # type: ignore[attr-defined]
    sys.modules[f"{_NAME}.utils"] = utils
    package.utils = utils  # type: ignore[attr-defined]
    loaded = []
    for name in ("sampling", "external"):
        module_spec = importlib.util.spec_from_file_location(f"{_NAME}.{name}", root / f"{name}.py")
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[f"{_NAME}.{name}"] = module
        module_spec.loader.exec_module(module)
        setattr(package, name, module)
        loaded.append(module)
    sampling, external = loaded
    # A1111 replaces k-diffusion's to_d with a version that divides by the scalar sigma as is.
    sampling.to_d = lambda x, sigma, denoised: (x - denoised) / sigma
    return sampling, external

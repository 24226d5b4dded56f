"""Checkpoint merging, tensor by tensor (A1111's "Checkpoint Merger").

Methods (A1111's names and formulas, computed in float32 per tensor):

* "Weighted sum": ``(1 - M) * A + M * B``.
* "Add difference": ``A + M * (B - C)`` (a key B has and C lacks adds nothing, as in A1111).
* "No interpolation": A as it is (to convert it to fp16, bake in a VAE or drop keys).

The result has A's keys, in A's order, shapes and dtypes (float16 for floating-point tensors with
``half``). Only floating-point tensors present in both are merged; integer ones (position ids) are
A's. An inpainting (9 input channels) or instruct-pix2pix (8) A merged with a plain B merges B into
A's first 4 channels, as A1111 does; the other way round is refused, as are shapes that do not match.

Memory: safetensors inputs are read one tensor at a time (a seek and a read per key, for A, B and C)
and the output is written as it is computed (:func:`~sdweb.engine.models.safetensors_io.write_safetensors`),
so a merge holds a few tensors, not three models. ``.ckpt`` inputs have to be unpickled whole.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sdweb.engine.models.detect import VAE_PREFIX
from sdweb.engine.models.safetensors_io import (
    DTYPE_SIZES,
    SafetensorsHeader,
    _read_exactly,
    _torch_dtype,
    read_safetensors_header,
    safetensors_dtype,
    write_safetensors,
)
from sdweb.engine.models.shape_facts import is_ldm_vae

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

MergeMethod = Literal["Weighted sum", "Add difference", "No interpolation"]
MERGE_METHODS: tuple[MergeMethod, ...] = ("No interpolation", "Weighted sum", "Add difference")
#: Keys A1111 never merges (some files store these ids as floats).
SKIP_ON_MERGE = frozenset({"cond_stage_model.transformer.text_model.embeddings.position_ids"})
_VAE_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


class MergeError(ValueError):
    """A merge that cannot be done; the message names the model, the key or the setting."""


class TensorSource:
    """The tensors of one checkpoint file, read by key on demand (safetensors) or held (pickles)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._header: SafetensorsHeader | None = None
        self._held: dict[str, torch.Tensor] | None = None
        if self.path.suffix.lower() == ".safetensors":
            self._header = read_safetensors_header(self.path)
            self._file = self.path.open("rb", buffering=0)
            self.metadata = dict(self._header.metadata)
        else:
            from sdweb.engine.models.pickle_io import torch_load_weights_only

            self._held = torch_load_weights_only(self.path)
            self.metadata = {}

    def keys(self) -> list[str]:
        if self._header is not None:
            return sorted(self._header.entries, key=lambda key: self._header.entries[key].start)  # type: ignore[union-attr]
        return list(self._held or {})

    def __contains__(self, key: str) -> bool:
        return key in (self._header.entries if self._header is not None else self._held or {})

    def shape(self, key: str) -> tuple[int, ...]:
        if self._header is not None:
            return self._header.entries[key].shape
        return tuple((self._held or {})[key].shape)

    def dtype(self, key: str) -> str:
        """The safetensors dtype name ("F16", "F32" ...)."""
        if self._header is not None:
            return self._header.entries[key].dtype
        return safetensors_dtype((self._held or {})[key])

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {key: self.shape(key) for key in self.keys()}

    def read(self, key: str) -> torch.Tensor:
        import torch

        if self._header is None:
            return (self._held or {})[key]
        entry = self._header.entries[key]
        tensor = torch.empty(entry.shape, dtype=_torch_dtype(entry.dtype))
        if entry.nbytes:
            self._file.seek(entry.start)
            _read_exactly(self._file, tensor.view(-1).view(torch.uint8).numpy(), self.path, key)
        return tensor

    def close(self) -> None:
        if self._header is not None:
            self._file.close()
        self._held = None


@dataclass(frozen=True)
class MergePlan:
    """What to merge and how (paths resolved by the caller)."""

    method: MergeMethod
    primary: Path
    secondary: Path | None = None
    tertiary: Path | None = None
    multiplier: float = 0.3
    half: bool = False
    vae: Path | None = None
    #: A regular expression: matching keys are left out of the result (A1111's "Discard weights").
    discard: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MergeOutcome:
    path: Path
    keys: int
    merged: int
    is_inpainting: bool = False
    is_instruct_pix2pix: bool = False


def _is_float(dtype: str) -> bool:
    return dtype in ("F64", "F32", "F16", "BF16")


def check_plan(plan: MergePlan) -> None:
    """Raise :class:`MergeError` for a method, multiplier or discard pattern that cannot be used."""
    if plan.method not in MERGE_METHODS:
        raise MergeError(f"interp_method {plan.method!r} is not one of {', '.join(MERGE_METHODS)}")
    if plan.method != "No interpolation" and plan.secondary is None:
        raise MergeError(f"{plan.method} needs a secondary model (B)")
    if plan.method == "Add difference" and plan.tertiary is None:
        raise MergeError("Add difference needs a tertiary model (C)")
    if not 0.0 <= plan.multiplier <= 1.0:
        raise MergeError(f"multiplier must be from 0 to 1 (got {plan.multiplier})")
    if plan.discard:
        try:
            re.compile(plan.discard)
        except re.error as exc:
            raise MergeError(f"discard_weights {plan.discard!r} is not a regular expression: {exc}") from None


def channel_variant(a: tuple[int, ...], b: tuple[int, ...], key: str) -> str | None:
    """"inpainting" / "instruct-pix2pix" when A's input conv has 9 / 8 channels and B's 4; else an error."""
    if len(a) == len(b) == 4 and a[0] == b[0] and a[2:] == b[2:]:
        if a[1] == 4 and b[1] in (8, 9):
            kind = "inpainting" if b[1] == 9 else "instruct-pix2pix"
            raise MergeError(f"when merging an {kind} model with a normal one, A must be the {kind} model")
        if b[1] == 4 and a[1] in (8, 9):
            return "inpainting" if a[1] == 9 else "instruct-pix2pix"
    raise MergeError(f"{key}: A has shape {list(a)} and B {list(b)}; the models do not have the same "
                     f"architecture")


def _vae_tensors(path: Path, target: TensorSource) -> dict[str, torch.Tensor]:
    """A VAE file's tensors under A's keys (``first_stage_model.*``), converted to the original layout."""
    from sdweb.engine.models.ldm_layout import vae_to_ldm

    source = TensorSource(path)
    try:
        state = {key: source.read(key) for key in source.keys()}
    finally:
        source.close()
    prefix = next((p for p in (VAE_PREFIX, "vae.") if any(k.startswith(p) for k in state)), "")
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    state = {k: v for k, v in state.items() if k.startswith(_VAE_PARTS)}
    if not state:
        raise MergeError(f"{path.name} holds no VAE weights")
    if not is_ldm_vae({k: tuple(v.shape) for k, v in state.items()}):
        try:
            state = vae_to_ldm(state, prefix="")
        except (KeyError, ValueError, IndexError) as exc:
            raise MergeError(f"{path.name}: unexpected VAE layout ({exc})") from None
    baked: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        full = VAE_PREFIX + key
        if full not in target:
            continue
        shape = target.shape(full)
        if tuple(tensor.shape) != shape:
            if tensor.numel() != _numel(shape):
                raise MergeError(f"VAE {path.name} does not fit A: {key} is {list(tensor.shape)}, A has "
                                 f"{list(shape)}")
            tensor = tensor.reshape(shape)  # attention as 1x1 convs or as linear layers
        baked[full] = tensor
    if not baked:
        raise MergeError(f"VAE {path.name} has no weights A uses; is A a checkpoint with a VAE?")
    return baked


def _formula(theta_a: torch.Tensor, theta_b: torch.Tensor, m: float, *, difference: bool) -> torch.Tensor:
    """A1111's: ``A + M * (B - C)`` (``theta_b`` is already ``B - C``), or ``(1 - M) * A + M * B``."""
    return theta_a + m * theta_b if difference else (1 - m) * theta_a + m * theta_b


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def merge_checkpoints(plan: MergePlan, output: Path, *,
                      on_progress: Callable[[int, int], None] | None = None) -> MergeOutcome:
    """Merge as ``plan`` says into ``output`` (a ``.safetensors`` path), tensor by tensor.

    Raises:
        MergeError: the plan or the models cannot be merged (the message says why).
        CheckpointError: an input file cannot be read.
    """
    import torch

    check_plan(plan)
    sources: list[TensorSource] = []
    try:
        a = TensorSource(plan.primary)
        sources.append(a)
        b = c = None
        if plan.secondary is not None and plan.method != "No interpolation":
            b = TensorSource(plan.secondary)
            sources.append(b)
        if plan.tertiary is not None and plan.method == "Add difference":
            c = TensorSource(plan.tertiary)
            sources.append(c)
        vae = _vae_tensors(plan.vae, a) if plan.vae is not None else {}

        # 1. The result's layout: A's keys (minus the discarded), A's shapes, dtypes (fp16 when asked).
        discard = re.compile(plan.discard) if plan.discard else None
        keys = [key for key in a.keys() if not (discard and discard.search(key))]
        variants: set[str] = set()
        merged_keys: set[str] = set()
        layout: list[tuple[str, str, tuple[int, ...]]] = []
        for key in keys:
            dtype = a.dtype(key)
            if b is not None and key in b and key not in SKIP_ON_MERGE and _is_float(dtype) \
                    and _is_float(b.dtype(key)):
                if a.shape(key) != b.shape(key):
                    variants.add(channel_variant(a.shape(key), b.shape(key), key) or "")
                if c is not None and key in c and c.shape(key) != b.shape(key):
                    raise MergeError(f"{key}: B has shape {list(b.shape(key))} and C {list(c.shape(key))}; "
                                     f"the models do not have the same architecture")
                merged_keys.add(key)
            if plan.half and _is_float(dtype):
                dtype = "F16"
            if dtype not in DTYPE_SIZES:
                raise MergeError(f"{key} has dtype {dtype}, which cannot be written")
            layout.append((key, dtype, a.shape(key)))
        if b is not None and not merged_keys:
            raise MergeError(f"{a.path.name} and {b.path.name} share no weights to merge")

        # 2. Compute and write each tensor in turn.
        m = float(plan.multiplier)
        total = len(layout)

        def tensors() -> Iterator[tuple[str, torch.Tensor]]:
            for index, (key, dtype, _shape) in enumerate(layout):
                tensor = vae[key] if key in vae else a.read(key)
                if key in merged_keys and key not in vae:
                    theta_a = tensor.to(torch.float32)
                    theta_b = b.read(key).to(torch.float32)  # type: ignore[union-attr]
                    if c is not None:
                        theta_b = theta_b - c.read(key).to(torch.float32) if key in c else \
                            torch.zeros_like(theta_b)
                    if theta_a.shape != theta_b.shape:  # A's extra input channels stay A's
                        theta_a[:, 0:4] = _formula(theta_a[:, 0:4], theta_b, m, difference=c is not None)
                        tensor = theta_a
                    else:
                        tensor = _formula(theta_a, theta_b, m, difference=c is not None)
                if tensor.is_floating_point():
                    tensor = tensor.to(_torch_dtype(dtype))
                if on_progress is not None:
                    on_progress(index + 1, total)
                yield key, tensor

        write_safetensors(output, layout, tensors(), plan.metadata)
        logger.info("merged %s into %s (%d of %d tensors merged)", plan.primary.name, output,
                    len(merged_keys), total)
        return MergeOutcome(path=output, keys=total, merged=len(merged_keys),
                            is_inpainting="inpainting" in variants,
                            is_instruct_pix2pix="instruct-pix2pix" in variants)
    finally:
        for source in sources:
            source.close()

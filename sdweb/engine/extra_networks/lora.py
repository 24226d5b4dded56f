"""LoRA files in ``models/Lora``: listing, the ``<lora:...>`` tags of a prompt, and applying them to a job.

Owns three things:

* :class:`LoraLibrary` lists the ``.safetensors`` files under the LoRA folder (recursive; the name is the
  file stem, as in A1111; the alias is the training metadata's ``ss_output_name``). Listing reads only
  the safetensors header, and the module imports no torch at load time, so the service layer can
  validate names and the API can list files without starting the engine.
* :func:`lora_requests` turns a prompt's ``<lora:...>`` tags into :class:`LoraRequest` objects with
  A1111's weight rules: ``<lora:name:w>`` is ``te = unet = w``; ``<lora:name:te:unet>`` gives the UNet
  its own weight; ``te=``/``unet=`` named arguments win over positional ones; no number means 1.0. The
  same LoRA twice adds its weights (A1111 applies it twice, which for a LoRA is the same thing).
* :func:`applied_loras` loads the requested files into a pipeline through diffusers/peft (its kohya
  ``lora_unet_*`` / ``lora_te*_*`` conversion; SD 3.x kohya files through
  :mod:`sdweb.engine.extra_networks.lora_sd3`, which diffusers lacks), sets each adapter's text-encoder
  and UNet weight, and removes every adapter again when the job ends, whatever way it ends, so the next
  request is clean.
  Under ``--medvram``/``--lowvram`` the offload hooks are taken off while adapters are added or removed
  and put back with the same execution device (``sdweb.engine.accelerator.offload_suspended``).

The "Lora hashes" infotext value is A1111's: for each tag as written, the first 12 hex of sha256 over
the file's tensor bytes (``sdweb.engine.models.hashes.lora_hash``), cached in the shared HashCache.
"""

from __future__ import annotations

import json
import logging
import struct
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdweb.engine.models.hashes import HashCache, lora_hash
from sdweb.prompts.parser import ExtraNetworkCall, strip_extra_networks

logger = logging.getLogger(__name__)

#: Tag kinds that mean a LoRA (A1111's built-in Lora extension answers to both).
LORA_KINDS = ("lora", "lyco")
#: Tag kinds sdweb knows but does not implement; refused with a clear message.
UNSUPPORTED_KINDS = {"hypernet": "hypernetworks are not supported; remove the <hypernet:...> tag"}
#: Adapter names are ours, not the file names: peft module dicts refuse dots and other characters.
ADAPTER_PREFIX = "sdweb_lora_"
#: How many known names an "unknown LoRA" error lists.
KNOWN_NAMES_SHOWN = 8
_MAX_HEADER = 100 * 1024 * 1024


class LoraError(ValueError):
    """A LoRA tag that cannot be applied: unknown name, bad weight, unreadable or incompatible file."""


@dataclass(frozen=True)
class LoraFile:
    """One LoRA file on disk."""

    name: str  # file stem: what ``<lora:name>`` refers to
    path: Path

    def metadata(self) -> dict[str, Any]:
        """The safetensors ``__metadata__`` (kohya training facts), JSON values decoded; {} if unreadable."""
        try:
            return _read_metadata(self.path)
        except (OSError, ValueError) as exc:
            logger.warning("cannot read the metadata of LoRA %s: %s", self.path, exc)
            return {}

    @property
    def alias(self) -> str:
        """``ss_output_name`` from the metadata (A1111's alias), else the name."""
        alias = self.metadata().get("ss_output_name")
        return str(alias) if alias else self.name


@dataclass(frozen=True)
class LoraRequest:
    """One LoRA to apply to a job, with its weights."""

    file: LoraFile
    mentioned_name: str  # as written in the prompt (the infotext uses it)
    te_weight: float = 1.0
    unet_weight: float = 1.0


class LoraLibrary:
    """The LoRA files under one folder. Thread-safe; rescans on :meth:`refresh` (and on first use)."""

    def __init__(self, folder: Path, *, hashes: HashCache | None = None) -> None:
        self._folder = Path(folder)
        self._hashes = hashes
        self._lock = threading.Lock()
        self._files: dict[str, LoraFile] | None = None

    @property
    def folder(self) -> Path:
        return self._folder

    @property
    def hashes(self) -> HashCache | None:
        """The shared hash cache (the engine's embedding library uses it too)."""
        return self._hashes

    def refresh(self) -> list[LoraFile]:
        """Rescan the folder; returns the files found, sorted by name."""
        found: dict[str, LoraFile] = {}
        if self._folder.is_dir():
            for path in sorted(self._folder.rglob("*"), key=lambda p: str(p).lower()):
                if not path.is_file() or path.suffix.lower() != ".safetensors":
                    continue
                file = LoraFile(name=path.stem, path=path)
                if file.name in found:
                    logger.warning("two LoRA files are named %r: using %s, ignoring %s",
                                   file.name, found[file.name].path, path)
                    continue
                found[file.name] = file
        with self._lock:
            self._files = found
        return self.files()

    def files(self) -> list[LoraFile]:
        with self._lock:
            files = self._files
        if files is None:
            return self.refresh()
        return sorted(files.values(), key=lambda f: f.name.lower())

    def names(self) -> list[str]:
        """The names a ``<lora:name>`` tag may use (torch-free)."""
        return [file.name for file in self.files()]

    def find(self, name: str) -> LoraFile:
        """The file for ``name``: exact name, then alias, then case-insensitive name.

        Raises:
            LoraError: nothing matches; the message lists some known names.
        """
        found = _match(name, self.files())
        if found is None:
            # A file dropped in since the last scan works without pressing refresh.
            found = _match(name, self.refresh())
        if found is None:
            raise LoraError(self._unknown_message(name, self.files()))
        return found

    def hash(self, file: LoraFile) -> str:
        """The 12-hex "Lora hashes" value of ``file`` (cached on disk when a HashCache was given)."""
        return self._hashes.lora_hash(file.path) if self._hashes is not None else lora_hash(file.path)

    def items(self) -> list[dict[str, Any]]:
        """``/sdapi/v1/loras`` items: ``{name, alias, path, metadata}``."""
        out = []
        for file in self.files():
            metadata = file.metadata()
            alias = metadata.get("ss_output_name") or file.name
            out.append({"name": file.name, "alias": str(alias), "path": str(file.path), "metadata": metadata})
        return out

    def check_prompt(self, prompt: str) -> list[LoraRequest]:
        """Parse ``prompt``'s extra-network tags and check them without loading anything.

        Raises:
            LoraError: an unknown LoRA name, a weight that is not a number, or an unsupported tag kind.
        """
        _text, calls = strip_extra_networks(prompt)
        return lora_requests(calls, self)

    def _unknown_message(self, name: str, files: Sequence[LoraFile]) -> str:
        if not files:
            return f"LoRA {name!r} not found: there are no LoRA files in {self._folder}"
        names = [file.name for file in files]
        shown = ", ".join(names[:KNOWN_NAMES_SHOWN])
        more = f" (and {len(names) - KNOWN_NAMES_SHOWN} more)" if len(names) > KNOWN_NAMES_SHOWN else ""
        return f"LoRA {name!r} not found in {self._folder}; known: {shown}{more}"


def _match(name: str, files: Sequence[LoraFile]) -> LoraFile | None:
    by_name = {file.name: file for file in files}
    if name in by_name:
        return by_name[name]
    for file in files:
        if file.alias == name:
            return file
    folded = [file for file in files if file.name.lower() == name.lower()]
    return folded[0] if folded else None


def lora_requests(calls: Sequence[ExtraNetworkCall], library: LoraLibrary) -> list[LoraRequest]:
    """The LoRAs ``calls`` ask for, in order of first mention (duplicates' weights added up).

    Tags of unknown kinds are refused, as are ``<hypernet:...>`` tags: a tag that does nothing would
    make an image that silently differs from the one the user pasted.
    """
    merged: dict[str, LoraRequest] = {}
    for call in calls:
        kind = call.kind.lower()
        if kind in UNSUPPORTED_KINDS:
            raise LoraError(f"<{call.kind}:{':'.join(call.items)}>: {UNSUPPORTED_KINDS[kind]}")
        if kind not in LORA_KINDS:
            raise LoraError(f"<{call.kind}:{':'.join(call.items)}>: unknown extra network kind "
                            f"{call.kind!r}; known: {', '.join(LORA_KINDS)}")
        if not call.name:
            raise LoraError(f"<{call.kind}:{':'.join(call.items)}>: the LoRA name is missing")
        te, unet = _weights(call)
        file = library.find(call.name)
        previous = merged.get(file.name)
        if previous is not None:
            te, unet = te + previous.te_weight, unet + previous.unet_weight
        merged[file.name] = LoraRequest(file=file, mentioned_name=call.name, te_weight=te, unet_weight=unet)
    return list(merged.values())


def _weights(call: ExtraNetworkCall) -> tuple[float, float]:
    """A1111's rule: te = 1st number (1.0), unet = 2nd number (else te); ``te=``/``unet=`` override."""
    tag = f"<{call.kind}:{':'.join(call.items)}>"

    def number(text: str, what: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise LoraError(f"{tag}: the {what} weight {text!r} is not a number") from None

    args, named = call.args, call.named
    te = number(args[0], "text encoder") if args else 1.0
    if "te" in named:
        te = number(named["te"], "text encoder")
    unet = number(args[1], "UNet") if len(args) > 1 else te
    if "unet" in named:
        unet = number(named["unet"], "UNet")
    return te, unet


def lora_hashes_infotext(requests: Sequence[LoraRequest], library: LoraLibrary) -> str | None:
    """The "Lora hashes" value: ``"name: 0123456789ab, other: ..."`` (None when no LoRA is used)."""
    parts = []
    for request in requests:
        name = request.mentioned_name.replace(":", "").replace(",", "")
        try:
            parts.append(f"{name}: {library.hash(request.file)}")
        except OSError as exc:
            logger.warning("cannot hash LoRA %s: %s", request.file.path, exc)
    return ", ".join(parts) or None


# ---------------------------------------------------------------------------------------------
# Applying LoRAs to a pipeline (imports torch and diffusers lazily: listing stays torch-free)
# ---------------------------------------------------------------------------------------------


@contextmanager
def applied_loras(pipe: Any, requests: Sequence[LoraRequest]) -> Iterator[None]:
    """Load ``requests`` into ``pipe`` as peft adapters for the block; remove them all afterwards.

    The pipeline must be held exclusively by the job (``ModelCache.use``). The adapters are deleted and
    the peft layers unloaded in a ``finally``: after an error, an interrupt or a skipped batch the
    pipeline computes exactly what it computed before.

    Raises:
        LoraError: a file cannot be read or diffusers cannot convert it (the message names the file).
    """
    if not requests:
        yield
        return
    from sdweb.engine.accelerator import offload_suspended

    adapters: list[str] = []
    try:
        with offload_suspended(pipe):
            _load_adapters(pipe, requests, adapters)
        yield
    finally:
        if adapters:
            with offload_suspended(pipe):
                _remove_adapters(pipe, adapters)


def _load_adapters(pipe: Any, requests: Sequence[LoraRequest], adapters: list[str]) -> None:
    """Load each request as an adapter (its name appended to ``adapters`` first) and set the weights."""
    for index, request in enumerate(requests):
        adapter = f"{ADAPTER_PREFIX}{index}"
        state = _bfl_peft_keys_as_kohya(pipe, _load_state_dict(request.file.path))
        state = _kohya_sd3_as_peft(pipe, state, request.file.path.name)
        adapters.append(adapter)  # before loading: a half-loaded adapter is cleaned up too
        try:
            with _quiet_load_report():
                pipe.load_lora_weights(state, adapter_name=adapter)
        except Exception as exc:
            raise LoraError(f"LoRA {request.file.path.name} could not be applied to this model: "
                            f"{exc}") from exc
        if not any(adapter in names for names in pipe.get_list_adapters().values()):
            # diffusers only warns when no key of the file names a layer of this model (a LoRA made for
            # another family, or a key layout it does not convert for this one).
            family = type(pipe).__name__.removesuffix("Pipeline")
            raise LoraError(f"LoRA {request.file.path.name} could not be applied to this model: none of "
                            f"its weights match a layer of this {family} model (a LoRA for another model "
                            "family, or a key format that is not converted for this one)")
        _lora_weights_off_fp8(pipe)
        logger.info("LoRA %s loaded (te %.3g, unet %.3g)", request.file.name, request.te_weight,
                    request.unet_weight)
    components = pipe.get_list_adapters()  # {"unet": [...], "text_encoder": [...], ...}
    weights: list[dict[str, float]] = []
    for adapter, request in zip(adapters, requests, strict=True):
        # SD 3.x / Flux have a "transformer" where SD has its "unet": it takes the unet weight.
        weights.append({component: (request.unet_weight if component in ("unet", "transformer")
                                    else request.te_weight)
                        for component, names in components.items() if adapter in names})
    pipe.set_adapters(adapters, adapter_weights=weights)


def _lora_weights_off_fp8(pipe: Any) -> None:
    """Peft gives a LoRA its base layer's weight dtype; fp8-stored layers (SD 3.x / Flux fp8 files) would get
    fp8 LoRA matrices, which cannot be multiplied. They go to the component's compute dtype instead.
    """
    import torch

    fp8 = tuple(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, name))
    for component in getattr(pipe, "components", {}).values():
        if not isinstance(component, torch.nn.Module):
            continue
        named = list(component.named_parameters())
        stuck = [param for name, param in named if "lora_" in name and param.dtype in fp8]
        if not stuck:
            continue
        compute = next((param.dtype for name, param in named
                        if "lora_" not in name and param.is_floating_point() and param.dtype not in fp8),
                       torch.bfloat16)
        for param in stuck:
            param.data = param.data.to(compute)


def _bfl_peft_keys_as_kohya(pipe: Any, state: dict[str, Any]) -> dict[str, Any]:
    """Flux LoRAs with BFL module paths and peft's ``lora_A``/``lora_B`` names (ComfyUI-style
    ``diffusion_model.double_blocks.0.img_attn.proj.lora_A.weight``) as the ``lora_down``/``lora_up`` names
    diffusers' kohya/ComfyUI converter reads (no alpha: the converter's default, rank, is peft's scale 1).
    diffusers itself finds no layer for them and would skip the file.
    """
    if type(pipe).__name__ != "FluxPipeline":
        return state
    weights = [key for key in state if key.endswith(".weight")]
    if not weights or not all(key.startswith("diffusion_model.") for key in weights):
        return state
    if not any(".lora_A." in key for key in weights) or any(".lora_down." in key for key in weights):
        return state
    return {key.replace(".lora_A.", ".lora_down.").replace(".lora_B.", ".lora_up."): value
            for key, value in state.items()}


def _kohya_sd3_as_peft(pipe: Any, state: dict[str, Any], name: str) -> dict[str, Any]:
    """Kohya / MMDiT-path SD 3.x LoRAs in the peft layout diffusers loads (it has no converter for them)."""
    if type(pipe).__name__ != "StableDiffusion3Pipeline":
        return state
    from sdweb.engine.extra_networks.lora_sd3 import Sd3LoraKeyError, is_kohya_sd3, kohya_sd3_to_peft

    if not is_kohya_sd3(state):
        return state
    try:
        return kohya_sd3_to_peft(state, int(pipe.transformer.config.num_layers))
    except Sd3LoraKeyError as exc:
        raise LoraError(f"LoRA {name} could not be applied to this model: {exc}") from exc


class _DropLoadReport(logging.Filter):
    """transformers logs a table of every base weight as "MISSING" for each text-encoder LoRA load."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()


@contextmanager
def _quiet_load_report() -> Iterator[None]:
    # Only for the load call (jobs run one at a time on the GPU worker); real errors still raise.
    target = logging.getLogger("transformers.integrations.peft")
    dropper = _DropLoadReport()
    target.addFilter(dropper)
    try:
        yield
    finally:
        target.removeFilter(dropper)


def _remove_adapters(pipe: Any, adapters: Sequence[str]) -> None:
    present = {name for names in pipe.get_list_adapters().values() for name in names}
    ours = [name for name in adapters if name in present]
    if ours:
        pipe.delete_adapters(ours)
    if not any(pipe.get_list_adapters().values()):
        # No adapter left: take the peft wrapper layers out too, so later jobs run the plain modules.
        pipe.unload_lora_weights()
    logger.debug("LoRA adapters removed: %s", ", ".join(ours))


def _load_state_dict(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (OSError, SafetensorError) as exc:
        raise LoraError(f"LoRA {path.name} cannot be read: {exc}") from exc


def _read_metadata(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError("too short for a safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        if length > _MAX_HEADER:
            raise ValueError("impossible safetensors header length")
        header = json.loads(f.read(length).decode("utf-8"))
    raw = header.get("__metadata__") or {}
    metadata: dict[str, Any] = {}
    for key, value in raw.items():
        # kohya stores nested facts (tag frequencies, dataset dirs) as JSON strings; A1111 decodes them.
        if isinstance(value, str) and value[:1] in "{[":
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        metadata[key] = value
    return metadata


"""The ControlNet models on disk (``models/ControlNet``, ``--controlnet-dir``): listing, names, lookup.

Listing is torch-free and cheap: files are stat'ed, safetensors headers read to detect the family
(:mod:`sdweb.engine.control.detect`; stored in the hash cache beside the file's hashes, so a later
start reads nothing), and each model is titled as the sd-webui-controlnet extension titles it:
``name [hash]`` with A1111's 8-hex model hash (64 KiB read at 1 MiB). Pickle files (``.pth``) cannot be
inspected without unpickling them, so their family is only known once loaded.

A request names a model by title, by name (any case; the extension's ``cn_models_names``), or by a
title whose hash changed (the name decides). Loaded models live in the library's
:class:`~sdweb.engine.models.cache.SideModelCache`, keyed by file version and by what the checkpoint
lends them (attention heads), so one file serves SD 1.5 checkpoints of every kind.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdweb.engine.control.detect import (
    FAMILY_LABELS,
    ControlDetection,
    detect_controlnet,
    is_t2i_adapter,
    t2i_adapter_family,
)
from sdweb.engine.models.cache import SideModelCache
from sdweb.engine.models.errors import CheckpointReadError, UnsupportedCheckpointError
from sdweb.engine.models.hashes import HashCache, legacy_hash

logger = logging.getLogger(__name__)

CONTROLNET_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
_TITLE = re.compile(r"^(?P<name>.+?) \[(?P<hash>[0-9a-fA-F]{8,10})\]$")
_FACT = "controlnet_detection_v2"


class ControlNetNotFoundError(LookupError):
    """A unit names a ControlNet model that is not in the folders."""


@dataclass(frozen=True)
class ControlNetFile:
    """One ControlNet model on disk."""

    path: Path
    #: File name without extension (folder name for diffusers folders): what the extension lists.
    name: str
    size: int
    mtime: float
    shorthash: str | None = None
    #: ``sd1`` / ``sd2`` / ``sdxl``; None while unknown (pickles before their first load).
    family: str | None = None
    #: Why the file cannot be used (not a ControlNet, unreadable), else None.
    error: str | None = None
    #: ``controlnet`` or ``ip-adapter``; None while unknown (pickles before their first load).
    kind: str | None = None

    @property
    def title(self) -> str:
        return f"{self.name} [{self.shorthash}]" if self.shorthash else self.name

    @property
    def family_label(self) -> str:
        return FAMILY_LABELS.get(self.family or "", "unknown family")


class ControlNetLibrary:
    """The ControlNet files under some folders. Thread-safe; rescans on :meth:`refresh` (and first use)."""

    def __init__(
        self,
        folders: Iterable[Path],
        *,
        hashes: HashCache | None = None,
        cache: SideModelCache | None = None,
        clip_vision_dirs: Iterable[Path] = (),
    ) -> None:
        self._folders = tuple(dict.fromkeys(Path(folder) for folder in folders))
        #: ``models/clip_vision``: the CLIP vision encoders IP-Adapters need.
        self.clip_vision_dirs = tuple(Path(folder) for folder in clip_vision_dirs)
        self._hashes = hashes
        self._lock = threading.Lock()
        self._files: list[ControlNetFile] | None = None
        self.cache = cache or SideModelCache(capacity=2)

    @property
    def folders(self) -> tuple[Path, ...]:
        return self._folders

    # -- listing -------------------------------------------------------------------------------------
    def refresh(self) -> list[ControlNetFile]:
        found: dict[str, ControlNetFile] = {}
        for folder in self._folders:
            if not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*"), key=lambda p: str(p).lower()):
                if "annotators" in path.relative_to(folder).parts:
                    continue  # preprocessor weights, not ControlNets
                file = self._inspect(path)
                if file is None:
                    continue
                if file.name.lower() in found:
                    logger.warning(
                        "two ControlNet models are named %r: using %s, ignoring %s",
                        file.name,
                        found[file.name.lower()].path,
                        path,
                    )
                    continue
                found[file.name.lower()] = file
        if self._hashes is not None:
            self._hashes.flush()
        files = sorted(found.values(), key=lambda f: f.name.lower())
        with self._lock:
            self._files = files
        return list(files)

    def files(self) -> list[ControlNetFile]:
        with self._lock:
            files = self._files
        return list(files) if files is not None else self.refresh()

    def usable(self, family: str | None = None) -> list[ControlNetFile]:
        """Files that are ControlNets sdweb runs; with ``family``, those of that family (or unknown)."""
        return [
            file
            for file in self.files()
            if file.error is None and (family is None or file.family in (None, family))
        ]

    def titles(self, family: str | None = None) -> list[str]:
        return [file.title for file in self.usable(family)]

    def _inspect(self, path: Path) -> ControlNetFile | None:
        weights: Path | None = None
        if path.is_dir():
            if not (path / "config.json").is_file():
                return None
            weights = next(
                (
                    path / name
                    for name in (
                        "diffusion_pytorch_model.safetensors",
                        "diffusion_pytorch_model.fp16.safetensors",
                    )
                    if (path / name).is_file()
                ),
                None,
            )
            if weights is None:
                return None
            name = path.name
        elif path.suffix.lower() in CONTROLNET_SUFFIXES and path.is_file():
            if (
                path.parent != path
                and (path.parent / "config.json").is_file()
                and path.name.startswith("diffusion_pytorch_model")
            ):
                return None  # inside a diffusers folder: listed as the folder
            weights = path
            name = path.stem
        else:
            return None
        stat = weights.stat()
        shorthash = self._short_hash(weights)
        family, error, kind = self._detect(weights, name)
        return ControlNetFile(
            path=path,
            name=name,
            size=stat.st_size,
            mtime=stat.st_mtime,
            shorthash=shorthash,
            family=family,
            error=error,
            kind=kind,
        )

    def _short_hash(self, path: Path) -> str | None:
        try:
            return self._hashes.legacy_hash(path) if self._hashes is not None else legacy_hash(path)
        except OSError as exc:
            logger.warning("cannot hash %s: %s", path, exc)
            return None

    def _detect(self, path: Path, name: str) -> tuple[str | None, str | None, str | None]:
        if path.suffix.lower() != ".safetensors":
            return None, None, None
        if self._hashes is not None:
            fact = self._hashes.get_fact(path, _FACT)
            if isinstance(fact, dict):
                return fact.get("family"), fact.get("error"), fact.get("kind")
        from sdweb.engine.control.ip_adapter import ip_adapter_family, is_ip_adapter
        from sdweb.engine.models.safetensors_io import read_safetensors_header

        family: str | None = None
        error: str | None = None
        kind: str | None = None
        try:
            shapes = read_safetensors_header(path).shapes()
            if is_ip_adapter(shapes):
                family, kind = ip_adapter_family(shapes), "ip-adapter"
            elif is_t2i_adapter(shapes):
                family, kind = t2i_adapter_family(shapes), "t2i-adapter"
            else:
                family, kind = detect_controlnet(shapes, name=name).family, "controlnet"
        except (UnsupportedCheckpointError, CheckpointReadError) as exc:
            error = str(exc)
        if self._hashes is not None:
            try:
                self._hashes.put_fact(
                    path, _FACT, {"family": family, "error": error, "kind": kind}, save=False
                )
            except OSError:
                pass
        return family, error, kind

    # -- lookup ----------------------------------------------------------------------------------------
    def find(self, query: str) -> ControlNetFile:
        """The file a unit's ``model`` names: title, name (any case), or name with a stale hash."""
        found = self._match(query, self.files()) or self._match(query, self.refresh())
        if found is None:
            known = ", ".join(self.titles()[:8]) or f"none (put ControlNet models in {self._folders[0]})"
            raise ControlNetNotFoundError(f"ControlNet model {query!r} not found; known: {known}")
        if found.error is not None:
            raise ControlNetNotFoundError(found.error)
        return found

    @staticmethod
    def _match(query: str, files: list[ControlNetFile]) -> ControlNetFile | None:
        text = query.strip()
        for file in files:
            if file.title == text:
                return file
        titled = _TITLE.match(text)
        name = (titled.group("name") if titled else text).strip().lower()
        for file in files:
            if file.name.lower() == name or file.path.name.lower() == name:
                return file
        return None

    # -- loading (imports torch) ------------------------------------------------------------------------
    def load(
        self, file: ControlNetFile, *, dtype: Any, device: Any, unet_config: dict[str, Any] | None = None
    ) -> tuple[Any, ControlDetection]:
        """``(ControlNetModel, detection)`` for ``file``, from the cache or loaded (safe loading only)."""
        from sdweb.engine.control.loader import load_controlnet

        hints = tuple(
            sorted(
                (key, repr(value))
                for key, value in (unet_config or {}).items()
                if key
                in (
                    "attention_head_dim",
                    "num_attention_heads",
                    "upcast_attention",
                    "addition_time_embed_dim",
                    "block_out_channels",
                )
            )
        )
        key = (str(file.path), file.size, file.mtime, str(dtype), str(device), hints)
        return self.cache.get(
            key,
            lambda: load_controlnet(
                file.path, name=file.name, dtype=dtype, device=device, unet_config=unet_config
            ),
        )

    def load_t2i_adapter(self, file: ControlNetFile, *, dtype: Any, device: Any) -> Any:
        """A ``T2IAdapter`` for a T2I-Adapter file, cached like ControlNets."""
        from sdweb.engine.control.loader import load_t2i_adapter

        key = ("t2i-adapter", str(file.path), file.size, file.mtime, str(dtype), str(device))
        return self.cache.get(
            key, lambda: load_t2i_adapter(file.path, name=file.name, dtype=dtype, device=device)
        )

    def load_ip_adapter(self, file: ControlNetFile, *, unet: Any) -> tuple[Any, Any]:
        """``(IpAdapterModel, CLIP vision model)`` for an IP-Adapter file, cached like ControlNets."""
        from sdweb.engine.control.ip_adapter import find_clip_vision, load_clip_vision, load_ip_adapter

        dtype, device = unet.dtype, unet.device
        key = ("ip-adapter", str(file.path), file.size, file.mtime, str(dtype), str(device))
        adapter = self.cache.get(
            key, lambda: load_ip_adapter(file.path, name=file.name, unet=unet, dtype=dtype, device=device)
        )
        vision_path = find_clip_vision(self.clip_vision_dirs, adapter.needs, file.title)
        stat = vision_path.stat()
        vision_key = ("clip-vision", str(vision_path), stat.st_size, stat.st_mtime, str(dtype), str(device))
        vision = self.cache.get(vision_key, lambda: load_clip_vision(vision_path, dtype=dtype, device=device))
        return adapter, vision

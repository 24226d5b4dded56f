"""Which checkpoints and VAEs exist on disk, what A1111 calls them, and how a request names one.

Owns discovery (recursive scan of the checkpoint folders), A1111-compatible names and titles
(``sub/model.safetensors [shorthash]``), lookup by any name or hash A1111 accepts, and the choice of a
VAE ("Automatic", "None" or a file in ``models/VAE``).

Listing is cheap by design: it stats files and reads safetensors headers (keys, shapes) to detect the
model family; detection results are stored beside the hashes (same path + size + mtime key, plus the
``.yaml`` beside the file and a fingerprint of the detection code), so a later start lists without
re-reading headers. **Listing never hashes a file whose hash is not cached yet** — a 7 GB checkpoint takes
tens of seconds to hash. Hashes come from the :class:`~sdweb.engine.models.hashes.HashCache`; uncached
ones are computed by :meth:`CheckpointRegistry.ensure_hash` (one file, e.g. when it is loaded, so the
infotext gets its "Model hash") or :meth:`CheckpointRegistry.hash_all` (explicitly, in the background).

Pure python: importing this module, listing and lookup never import torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from sdweb.engine.models.errors import CheckpointNotFoundError, VaeNotFoundError
from sdweb.engine.models.hashes import HashCache, file_sha256, short_hash

logger = logging.getLogger(__name__)

CheckpointKind = Literal["safetensors", "ckpt", "gguf", "diffusers"]

CHECKPOINT_SUFFIXES: dict[str, CheckpointKind] = {
    ".safetensors": "safetensors",
    ".ckpt": "ckpt",
    ".pt": "ckpt",
    ".gguf": "gguf",  # SD 3.x / Flux transformers (sdweb.engine.models.gguf_io)
}
VAE_SUFFIXES = (".safetensors", ".pt", ".ckpt")
#: A1111's convention for a VAE that belongs to one checkpoint: ``<checkpoint stem>.vae.<ext>``.
VAE_BESIDE_SUFFIXES = tuple(".vae" + suffix for suffix in VAE_SUFFIXES)
DIFFUSERS_MARKER = "model_index.json"
VAE_AUTOMATIC = "Automatic"
VAE_NONE = "None"
_HASHLIKE = re.compile(r"[0-9a-fA-F]{8}|[0-9a-fA-F]{10}|[0-9a-fA-F]{64}")
_TITLE_WITH_HASH = re.compile(r"^(?P<name>.+?) \[(?P<hash>[0-9a-fA-F]{8}|[0-9a-fA-F]{10})\]$")
_KNOWN_IN_MESSAGE = 5


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint as listed: where it is, what A1111 calls it, its hashes when known, its family."""

    path: Path
    #: Path relative to its models folder, with extension and forward slashes ("sub/model.safetensors").
    name: str
    #: A1111's ``model_name``: name without extension, "/" and "\\" replaced by "_" (infotext "Model").
    model_name: str
    kind: CheckpointKind
    size: int
    mtime: float
    sha256: str | None = None
    shorthash: str | None = None
    legacy_hash: str | None = None
    #: From detection; None while unknown (a .ckpt is only inspected when it is loaded).
    family: str | None = None
    #: Why detection rejected the file (not a checkpoint, truncated, unsupported); None when fine.
    detect_error: str | None = None
    demo: bool = False

    @property
    def title(self) -> str:
        """A1111's title: ``name [shorthash]``, or just the name while the hash is not known."""
        return f"{self.name} [{self.shorthash}]" if self.shorthash else self.name

    @property
    def name_without_extension(self) -> str:
        if self.kind == "diffusers":
            return self.name
        return _strip_suffix(self.name)

    @property
    def stem(self) -> str:
        """The file name without folder and extension (A1111's ``name_for_extra``)."""
        return self.name_without_extension.rsplit("/", 1)[-1]

    @property
    def short_title(self) -> str:
        return f"{self.stem} [{self.shorthash}]" if self.shorthash else self.stem

    @property
    def is_demo(self) -> bool:
        return self.demo

    @property
    def usable(self) -> bool:
        return self.detect_error is None


@dataclass(frozen=True)
class VaeInfo:
    """A VAE file: in ``models/VAE`` or a ``<checkpoint>.vae.<ext>`` beside a checkpoint."""

    path: Path
    #: Path relative to the folder it was found in, with extension ("vae-ft-mse.safetensors").
    name: str
    size: int
    mtime: float

    @property
    def name_without_extension(self) -> str:
        return _strip_suffix(self.name)


def _strip_suffix(name: str) -> str:
    head, dot, _ = name.rpartition(".")
    return head if dot and "/" not in name[len(head):] else name


def _a1111_model_name(name: str, kind: CheckpointKind) -> str:
    flat = name.replace("/", "_").replace("\\", "_")
    return flat if kind == "diffusers" else _strip_suffix(flat)


def _relative_name(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _walk(root: Path) -> Iterator[tuple[Path, list[str], list[str]]]:
    """os.walk following symlinked folders (models are often symlinked in), without looping."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        # Hidden folders hold caches and partial downloads (.git, .cache/huggingface), not models.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        yield Path(dirpath), dirnames, sorted(f for f in filenames if not f.startswith("."))


def _is_beside_vae(filename: str) -> bool:
    return filename.lower().endswith(VAE_BESIDE_SUFFIXES)


@dataclass(frozen=True)
class _Detected:
    #: (size, mtime_ns) of the file and of its .yaml (None when absent): a change means detect again.
    stamp: tuple[int, int, tuple[int, int] | None]
    family: str | None
    error: str | None


class CheckpointRegistry:
    """The checkpoints found in ``dirs`` (recursively); an instance, refreshed on demand.

    Found: ``.safetensors``, ``.ckpt`` and ``.pt`` files, and diffusers folders (a folder holding
    ``model_index.json``, listed as one entry and not descended into). Files named
    ``<x>.vae.safetensors|.pt|.ckpt`` are VAEs by A1111's convention and are not listed. A file that is
    not a usable checkpoint (a LoRA, garbage, a truncated download) is still listed, with
    ``detect_error`` saying why, so the UI can show it greyed out with the reason.

    Thread-safe: one lock guards the listing; scanning and hashing run outside it.
    """

    def __init__(
        self, dirs: Sequence[Path], hash_cache: HashCache, *, demo_files: Sequence[Path] = ()
    ) -> None:
        """``demo_files``: bundled demo checkpoints, listed after the user's own (marked ``demo``)."""
        if not dirs:
            raise ValueError("CheckpointRegistry needs at least one checkpoint folder")
        self._dirs = tuple(Path(d) for d in dirs)
        self._demo_files = tuple(Path(f) for f in demo_files if Path(f).is_file())
        self._hash_cache = hash_cache
        self._lock = threading.RLock()
        self._infos: list[CheckpointInfo] = []
        self._scanned = False
        # Detection results by path, reused while size and mtime are unchanged: refresh stays cheap.
        self._detected: dict[Path, _Detected] = {}
        self._detector_fingerprint: str | None = None

    @property
    def dirs(self) -> tuple[Path, ...]:
        return self._dirs

    # -- listing --------------------------------------------------------------------------------
    def refresh(self) -> list[CheckpointInfo]:
        """Rescan the folders and return the new listing. Reads headers; never hashes uncached files."""
        found: list[CheckpointInfo] = []
        seen: set[Path] = set()
        for root in self._dirs:
            if not root.is_dir():
                logger.debug("checkpoint folder %s does not exist", root)
                continue
            for info in self._scan(root):
                real = info.path.resolve()
                if real in seen:  # the same file reached through two folders or a symlink
                    continue
                seen.add(real)
                found.append(info)
        found.sort(key=lambda info: (info.name.lower(), info.name))
        for demo in self._demo_files:
            info = self._file_info(demo, demo.parent, "safetensors")
            if info is not None and demo.resolve() not in seen:
                found.append(replace(info, demo=True))
        self._hash_cache.flush()
        with self._lock:
            self._infos = found
            self._scanned = True
            self._detected = {p: d for p, d in self._detected.items() if p in seen or p.resolve() in seen}
        logger.info("found %d checkpoint(s) in %s", len(found), ", ".join(map(str, self._dirs)))
        return list(found)

    def list(self) -> list[CheckpointInfo]:
        """The listing, sorted by name (case-insensitive) as A1111 does; scans on first use."""
        with self._lock:
            if self._scanned:
                return list(self._infos)
        return self.refresh()

    def _scan(self, root: Path) -> Iterator[CheckpointInfo]:
        for folder, dirnames, filenames in _walk(root):
            if DIFFUSERS_MARKER in filenames:
                # Its component files are not checkpoints of their own. A root that is itself a
                # diffusers folder (--ckpt-dir pointed at one model) is listed under its folder name.
                dirnames[:] = []
                info = self._diffusers_info(folder, root if folder != root else root.parent)
                if info is not None:
                    yield info
                continue
            for filename in filenames:
                kind = CHECKPOINT_SUFFIXES.get(Path(filename).suffix.lower())
                if kind is None or _is_beside_vae(filename):
                    continue
                info = self._file_info(folder / filename, root, kind)
                if info is not None:
                    yield info

    def _file_info(self, path: Path, root: Path, kind: CheckpointKind) -> CheckpointInfo | None:
        try:
            stat = path.stat()
        except OSError as exc:  # a dangling symlink, a file removed mid-scan
            logger.warning("skipping %s: %s", path, exc)
            return None
        name = _relative_name(path, root)
        sha256 = self._hash_cache.get(path, "sha256")
        family, error = self._detect(path, name, kind, stat.st_size, stat.st_mtime_ns)
        return CheckpointInfo(
            path=path,
            name=name,
            model_name=_a1111_model_name(name, kind),
            kind=kind,
            size=stat.st_size,
            mtime=stat.st_mtime,
            sha256=sha256,
            shorthash=short_hash(sha256) if sha256 else None,
            legacy_hash=self._hash_cache.get(path, "legacy"),
            family=family,
            detect_error=error,
        )

    def _diffusers_info(self, folder: Path, root: Path) -> CheckpointInfo | None:
        try:
            marker = (folder / DIFFUSERS_MARKER).stat()
            size = sum(
                (Path(dirpath) / f).stat().st_size
                for dirpath, _, files in os.walk(folder, followlinks=True)
                for f in files
            )
        except OSError as exc:
            logger.warning("skipping diffusers folder %s: %s", folder, exc)
            return None
        name = _relative_name(folder, root)
        family: str | None = None
        error: str | None = None
        try:
            from sdweb.engine.models.detect import detect_diffusers_folder

            detection = detect_diffusers_folder(folder)
            family = detection.family
            if detection.unsupported_reason:
                error = f"{name}: not supported yet: {detection.unsupported_reason}"
        except Exception as exc:  # listed with the reason, as for single files
            error = str(exc) or type(exc).__name__
        if error:
            logger.info("%s is not a usable diffusers model: %s", folder, error)
        return CheckpointInfo(
            path=folder,
            name=name,
            model_name=_a1111_model_name(name, "diffusers"),
            kind="diffusers",
            size=size,
            mtime=marker.st_mtime,
            family=family,
            detect_error=error,
        )

    def _detect(
        self, path: Path, name: str, kind: CheckpointKind, size: int, mtime_ns: int
    ) -> tuple[str | None, str | None]:
        if kind not in ("safetensors", "gguf"):
            # Reading a pickle's keys means unpickling it: that waits until the model is loaded.
            return None, None
        yaml_path = path.with_suffix(".yaml")
        try:
            yaml_stat = yaml_path.stat()
            yaml_stamp: tuple[int, int] | None = (yaml_stat.st_size, yaml_stat.st_mtime_ns)
        except OSError:
            yaml_stamp = None
        stamp = (size, mtime_ns, yaml_stamp)
        with self._lock:
            known = self._detected.get(path)
        if known is not None and known.stamp == stamp:
            return known.family, known.error
        persisted = self._persisted_detection(path, yaml_stamp)
        if persisted is not None:
            with self._lock:
                self._detected[path] = _Detected(stamp, *persisted)
            return persisted
        family: str | None = None
        error: str | None = None
        try:
            # Imported here: the sibling modules are pure python too, but a broken one must not stop
            # the app from listing (and showing) what it found.
            from sdweb.engine.models.detect import detect_checkpoint
            from sdweb.engine.models.safetensors_io import read_safetensors_header

            if kind == "gguf":
                from sdweb.engine.models.gguf_io import read_gguf_shapes

                shapes = read_gguf_shapes(path)
            else:
                shapes = read_safetensors_header(path).shapes()
            yaml_text = yaml_path.read_text(encoding="utf-8") if yaml_stamp is not None else None
            detection = detect_checkpoint(shapes, name=name, yaml_text=yaml_text)
            family = detection.family
            if detection.unsupported_reason:
                error = f"{name}: not supported yet: {detection.unsupported_reason}"
        except Exception as exc:  # any unreadable file is listed with the reason, never a traceback
            error = str(exc) or type(exc).__name__
        if error:
            logger.info("%s is not a usable checkpoint: %s", path, error)
        with self._lock:
            self._detected[path] = _Detected(stamp, family, error)
        version = self._detector_version()
        if version is not None:
            record = {"detector": version, "yaml": list(yaml_stamp) if yaml_stamp else None,
                      "family": family, "error": error}
            try:
                self._hash_cache.put_fact(path, "detection", record, save=False)
            except OSError:
                pass  # the file vanished mid-scan; it is simply not remembered
        return family, error

    def _persisted_detection(
        self, path: Path, yaml_stamp: tuple[int, int] | None
    ) -> tuple[str | None, str | None] | None:
        """A detection result stored by an earlier run, if file, .yaml and detector are all unchanged.

        This is what lets a fresh start list many large checkpoints without re-reading their headers.
        """
        record = self._hash_cache.get_fact(path, "detection")
        version = self._detector_version()
        if not isinstance(record, dict) or version is None or record.get("detector") != version:
            return None
        if record.get("yaml") != (list(yaml_stamp) if yaml_stamp else None):
            return None
        family, error = record.get("family"), record.get("error")
        if not (family is None or isinstance(family, str)) or not (error is None or isinstance(error, str)):
            return None
        return family, error

    def _detector_version(self) -> str | None:
        """A fingerprint of the detection code: changed code re-detects rather than trust old results."""
        if self._detector_fingerprint is None:
            source = b""
            for module in ("sdweb.engine.models.detect", "sdweb.engine.models.detect_flow"):
                spec = importlib.util.find_spec(module)
                try:
                    source += Path(spec.origin).read_bytes() if spec and spec.origin else b""
                except OSError:
                    pass
            self._detector_fingerprint = hashlib.sha256(source).hexdigest()[:16] if source else ""
        return self._detector_fingerprint or None

    # -- hashing --------------------------------------------------------------------------------
    def ensure_hash(self, info: CheckpointInfo) -> CheckpointInfo:
        """Return ``info`` with its sha256, short and legacy hash, computing (once) what is not cached.

        A diffusers folder has no single-file hash: it is returned unchanged.
        """
        if info.kind == "diffusers" or (info.sha256 and info.legacy_hash):
            return info
        sha256 = self._hash_cache.sha256(info.path)
        legacy = self._hash_cache.legacy_hash(info.path)
        updated = replace(info, sha256=sha256, shorthash=short_hash(sha256), legacy_hash=legacy)
        self._replace(info, updated)
        return updated

    def hash_all(self, on_file: Callable[[CheckpointInfo], None] | None = None) -> list[CheckpointInfo]:
        """Hash every listed checkpoint not hashed yet (slow the first time); return the new listing."""
        for info in self.list():
            if info.kind != "diffusers" and not (info.sha256 and info.legacy_hash):
                try:
                    updated = self.ensure_hash(info)
                except OSError as exc:
                    logger.warning("could not hash %s: %s", info.path, exc)
                    continue
                if on_file is not None:
                    on_file(updated)
        return self.list()

    def _replace(self, old: CheckpointInfo, new: CheckpointInfo) -> None:
        with self._lock:
            self._infos = [new if item.path == old.path else item for item in self._infos]

    # -- lookup ---------------------------------------------------------------------------------
    def find(self, query: str) -> CheckpointInfo:
        """The checkpoint ``query`` names, trying in order: title, name, name without extension,
        A1111 model name, short hash, full sha256, legacy hash (then file stem and ``name [hash]``).

        A title whose hash is not cached yet (``x.safetensors [abc123def0]`` saved by an earlier run
        or another tool) hashes that one file to confirm it. Lookup by hash only sees hashed files:
        see :meth:`hash_all`. Raises :class:`CheckpointNotFoundError` naming known titles.
        """
        query = query.strip()
        infos = self.list()
        if not infos:
            raise CheckpointNotFoundError(self.empty_message())
        lowered = query.lower()
        hashlike = bool(_HASHLIKE.fullmatch(query))
        keys: list[Callable[[CheckpointInfo], bool]] = [
            lambda i: i.title == query,
            lambda i: i.name == query,
            lambda i: i.name_without_extension == query,
            lambda i: i.model_name == query,
            lambda i: hashlike and i.shorthash == lowered,
            lambda i: hashlike and i.sha256 == lowered,
            lambda i: hashlike and i.legacy_hash == lowered,
            lambda i: i.stem == query or i.short_title == query,
        ]
        for matches in keys:
            found = next((info for info in infos if matches(info)), None)
            if found is not None:
                return found
        if hashlike and len(query) == 8:
            found = self._find_by_legacy_hash(lowered, infos)
            if found is not None:
                return found
        titled = _TITLE_WITH_HASH.match(query)
        if titled:
            return self._find_by_title_with_hash(query, titled["name"], titled["hash"].lower(), infos)
        raise CheckpointNotFoundError(self._not_found_message(query, infos, hashlike))

    def _find_by_legacy_hash(self, legacy: str, infos: list[CheckpointInfo]) -> CheckpointInfo | None:
        # Legacy hashes read 64 KiB per file: cheap enough to compute for a lookup, unlike sha256.
        for info in infos:
            if info.kind == "diffusers" or info.legacy_hash:
                continue
            try:
                value = self._hash_cache.legacy_hash(info.path)
            except OSError:
                continue
            updated = replace(info, legacy_hash=value)
            self._replace(info, updated)
            if value == legacy:
                return updated
        return None

    def _find_by_title_with_hash(
        self, query: str, name: str, wanted: str, infos: list[CheckpointInfo]
    ) -> CheckpointInfo:
        candidates = [
            info for info in infos
            if name in (info.name, info.name_without_extension, info.model_name, info.stem)
        ]
        for info in candidates:
            hashed = self.ensure_hash(info)
            if wanted in (hashed.shorthash, hashed.legacy_hash):
                return hashed
        if candidates:
            found = ", ".join(self.ensure_hash(info).title for info in candidates)
            raise CheckpointNotFoundError(
                f"checkpoint {query!r} not found: {found} has another hash (the file was changed or "
                f"replaced); choose it by its new title"
            )
        raise CheckpointNotFoundError(self._not_found_message(query, infos, hashlike=False))

    def _not_found_message(self, query: str, infos: list[CheckpointInfo], hashlike: bool) -> str:
        titles = [info.title for info in infos]
        shown = ", ".join(titles[:_KNOWN_IN_MESSAGE])
        more = f" and {len(titles) - _KNOWN_IN_MESSAGE} more" if len(titles) > _KNOWN_IN_MESSAGE else ""
        message = f"checkpoint {query!r} not found; known checkpoints: {shown}{more}"
        unhashed = sum(1 for info in infos if info.kind != "diffusers" and not info.sha256)
        if hashlike and unhashed:
            message += (f" ({unhashed} checkpoint(s) are not hashed yet, so they cannot be found by hash "
                        f"until they are)")
        return message

    def empty_message(self) -> str:
        folders = " or ".join(str(d) for d in self._dirs)
        return f"no checkpoints found; put .safetensors files in {folders}"


class VaeRegistry:
    """The VAEs a user can choose: files in the VAE folder (recursive) plus, for "Automatic",
    ``<checkpoint stem>.vae.<ext>`` files beside a checkpoint (A1111's convention).
    """

    def __init__(self, vae_dir: Path, hash_cache: HashCache | None = None) -> None:
        self._dir = Path(vae_dir)
        self._hash_cache = hash_cache
        self._lock = threading.Lock()
        self._infos: list[VaeInfo] | None = None

    @property
    def folder(self) -> Path:
        return self._dir

    def refresh(self) -> list[VaeInfo]:
        found: list[VaeInfo] = []
        if self._dir.is_dir():
            for folder, _, filenames in _walk(self._dir):
                for filename in filenames:
                    if Path(filename).suffix.lower() not in VAE_SUFFIXES:
                        continue
                    path = folder / filename
                    try:
                        stat = path.stat()
                    except OSError as exc:
                        logger.warning("skipping %s: %s", path, exc)
                        continue
                    found.append(VaeInfo(path, _relative_name(path, self._dir), stat.st_size, stat.st_mtime))
        found.sort(key=lambda info: (info.name.lower(), info.name))
        with self._lock:
            self._infos = found
        return list(found)

    def list(self) -> list[VaeInfo]:
        with self._lock:
            if self._infos is not None:
                return list(self._infos)
        return self.refresh()

    def choices(self) -> list[str]:
        """What the "SD VAE" setting offers, in A1111's order."""
        return [VAE_AUTOMATIC, VAE_NONE, *(info.name for info in self.list())]

    def find(self, name: str) -> VaeInfo:
        """The VAE called ``name`` (file name with or without extension, or path relative to the folder)."""
        name = name.strip()
        infos = self.list()
        for matches in (
            lambda i: i.name == name,
            lambda i: i.name_without_extension == name,
            lambda i: i.path.name == name,
            lambda i: _strip_suffix(i.path.name) == name,
        ):
            found = next((info for info in infos if matches(info)), None)
            if found is not None:
                return found
        if not infos:
            raise VaeNotFoundError(f"VAE {name!r} not found; no VAE files in {self._dir}")
        shown = ", ".join(info.name for info in infos[:_KNOWN_IN_MESSAGE])
        more = f" and {len(infos) - _KNOWN_IN_MESSAGE} more" if len(infos) > _KNOWN_IN_MESSAGE else ""
        raise VaeNotFoundError(f"VAE {name!r} not found in {self._dir}; known VAEs: {shown}{more}")

    def resolve(self, choice: str | None, checkpoint: CheckpointInfo) -> Path | None:
        """The VAE file to use with ``checkpoint``, or None for the checkpoint's own VAE.

        ``choice``: ``None`` or "Automatic" -> ``<checkpoint stem>.vae.safetensors|.pt|.ckpt`` beside the
        checkpoint, else one with the same stem in the VAE folder, else the checkpoint's own; "None" ->
        the checkpoint's own; anything else -> that file in the VAE folder (an unknown name raises
        :class:`VaeNotFoundError` rather than silently using another VAE).
        """
        if choice is None or choice == VAE_AUTOMATIC:
            return self._automatic(checkpoint)
        if choice == VAE_NONE:
            return None
        return self.find(choice).path

    def short_hash(self, path: Path) -> str:
        """A1111's "VAE hash" for infotext: first 10 hex of the file's sha256 (cached when a cache is set)."""
        if self._hash_cache is not None:
            return short_hash(self._hash_cache.sha256(path))
        return short_hash(file_sha256(path))

    def _automatic(self, checkpoint: CheckpointInfo) -> Path | None:
        if checkpoint.kind == "diffusers":
            return None  # the folder has its own vae/ subfolder
        base = checkpoint.path.with_name(_strip_suffix(checkpoint.path.name))
        for suffix in VAE_BESIDE_SUFFIXES:
            beside = base.with_name(base.name + suffix)
            if beside.is_file():
                return beside
        stem = checkpoint.stem
        for info in self.list():
            if _strip_suffix(info.path.name) in (stem, stem + ".vae"):
                return info.path
        return None

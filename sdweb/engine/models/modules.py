"""Text encoders and VAEs kept apart from the checkpoint (Forge's "VAE / Text Encoder" modules).

SD 3.5 and Flux are often downloaded as a transformer alone (``flux1-dev.safetensors``, a GGUF file),
with ``clip_l.safetensors``, ``clip_g.safetensors``, ``t5xxl_fp16.safetensors`` / ``t5xxl_fp8_e4m3fn``
in ``models/text_encoder`` and ``ae.safetensors`` in ``models/VAE``. This module owns:

* :class:`ModuleRegistry`: the module files of those folders, each detected from its safetensors header
  (kind, width, latent channels; :func:`sdweb.engine.models.detect_flow.detect_module`); pure Python.
* :meth:`ModuleRegistry.resolve`: which file fills each slot a checkpoint lacks. A module the user chose
  (Forge's ``forge_additional_modules``: file names or paths) wins, and replaces the checkpoint's own;
  else the matching files are picked automatically (name hints first: ``ae``/``flux`` or ``sd3`` for
  the VAE, ``fp16`` before ``fp8`` for T5). A chosen file that fits no slot is a
  :class:`~sdweb.engine.models.errors.ModuleMismatchError` naming it and why; a slot nothing fills is a
  :class:`~sdweb.engine.models.errors.MissingModuleError` naming the file to put where.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdweb.engine.models.detect_flow import SLOT_LABELS, ModuleInfo, detect_module, module_problem
from sdweb.engine.models.errors import MissingModuleError, ModuleMismatchError, ModuleNotFoundInFoldersError

logger = logging.getLogger(__name__)

MODULE_SUFFIXES = (".safetensors",)
#: Preferred file-name hints per slot and family, best first (a file with none of them comes after).
_HINTS: dict[tuple[str, str], tuple[str, ...]] = {
    ("flux", "vae"): ("ae.", "flux"),
    ("sd3", "vae"): ("sd3",),
    ("flux", "t5xxl"): ("fp16", "bf16", "fp8"),
    ("sd3", "t5xxl"): ("fp16", "bf16", "fp8"),
}


@dataclass(frozen=True)
class ModuleFile:
    """One file of ``models/text_encoder`` or ``models/VAE``, with what it holds."""

    path: Path
    #: Path relative to its folder ("t5xxl_fp16.safetensors").
    name: str
    #: "text_encoder" or "VAE".
    folder: str
    size: int
    mtime: float
    module: ModuleInfo | None = None
    #: Why it is not a module sdweb can use (a LoRA, an SD 1.5 VAE is fine: it is listed with its channels).
    error: str | None = None
    #: The safetensors dtype most of its weights are stored in ("F16", "F8_E4M3", "BF16"...).
    storage: str = ""

    __hash__ = None  # type: ignore[assignment]

    @property
    def slots(self) -> tuple[str, ...]:
        return self.module.slots if self.module is not None else ()

    def describe(self) -> str:
        if self.module is None:
            return f"{self.name} ({self.error})"
        what = {"clip": "CLIP", "t5": "T5", "vae": "VAE"}[self.module.kind]
        unit = "latent channels" if self.module.kind == "vae" else "wide"
        return f"{self.name} ({what}, {self.module.width} {unit})"


class ModuleRegistry:
    """The module files in ``text_encoder_dir`` and ``vae_dir`` (recursive); thread-safe."""

    def __init__(self, text_encoder_dir: Path, vae_dir: Path) -> None:
        self._folders = (("text_encoder", Path(text_encoder_dir)), ("VAE", Path(vae_dir)))
        self._lock = threading.Lock()
        self._files: list[ModuleFile] | None = None
        self._known: dict[Path, ModuleFile] = {}

    @property
    def text_encoder_dir(self) -> Path:
        return self._folders[0][1]

    @property
    def vae_dir(self) -> Path:
        return self._folders[1][1]

    def refresh(self) -> list[ModuleFile]:
        found: list[ModuleFile] = []
        for label, root in self._folders:
            if not root.is_dir():
                continue
            for path in sorted(root.rglob("*")):
                if path.suffix.lower() not in MODULE_SUFFIXES or any(p.startswith(".") for p in path.parts):
                    continue
                item = self._inspect(path, root, label)
                if item is not None:
                    found.append(item)
        with self._lock:
            self._files = found
        return list(found)

    def list(self) -> list[ModuleFile]:
        with self._lock:
            if self._files is not None:
                return list(self._files)
        return self.refresh()

    def usable(self) -> list[ModuleFile]:
        """Files that hold a text encoder or a VAE."""
        return [item for item in self.list() if item.module is not None]

    def _inspect(self, path: Path, root: Path, label: str) -> ModuleFile | None:
        try:
            stat = path.stat()
        except OSError as exc:
            logger.warning("skipping %s: %s", path, exc)
            return None
        known = self._known.get(path)
        if known is not None and (known.size, known.mtime) == (stat.st_size, stat.st_mtime):
            return known
        name = path.relative_to(root).as_posix()
        module: ModuleInfo | None = None
        error: str | None = None
        storage = ""
        try:
            from sdweb.engine.models.safetensors_io import read_safetensors_header

            header = read_safetensors_header(path)
            shapes = header.shapes()
            prefix = next(
                (p for p in ("first_stage_model.", "vae.") if any(k.startswith(p) for k in shapes)), ""
            )
            module = detect_module(shapes, name=name, prefix=prefix)
            if module is None:
                error = "not a text encoder or VAE sdweb recognises"
            dtypes = [entry.dtype for entry in header.entries.values() if len(entry.shape) == 2]
            storage = max(set(dtypes), key=dtypes.count) if dtypes else ""
        except Exception as exc:  # listed with the reason, never a traceback
            error = str(exc) or type(exc).__name__
        item = ModuleFile(
            path=path,
            name=name,
            folder=label,
            size=stat.st_size,
            mtime=stat.st_mtime,
            module=module,
            error=error,
            storage=storage,
        )
        self._known[path] = item
        return item

    # -- lookup ---------------------------------------------------------------------------------
    def find(self, query: str) -> ModuleFile:
        """The module file ``query`` names: its name, file name, stem, or a path inside the folders."""
        query = str(query).strip()
        files = self.list()
        as_path = Path(query)
        for matches in (
            lambda f: f.name == query,
            lambda f: f.path.name == query,
            lambda f: f.path.stem == query,
            lambda f: as_path.is_absolute() and f.path.resolve() == as_path.resolve(),
        ):
            found = next((item for item in files if matches(item)), None)
            if found is not None:
                return found
        known = ", ".join(item.name for item in files[:8]) or "none"
        raise ModuleNotFoundInFoldersError(
            f"module {query!r} not found in {self.text_encoder_dir} or {self.vae_dir}; known: {known}"
        )

    # -- choosing modules for a checkpoint ------------------------------------------------------
    def resolve(
        self, detection: Any, *, checkpoint: str, chosen: Sequence[str] = (), vae_file: Path | None = None
    ) -> dict[str, ModuleFile]:
        """The module file for each slot of ``detection`` to fill from the folders.

        Args:
            detection: a flow-family :class:`~sdweb.engine.models.detect.Detection`.
            checkpoint: the checkpoint's name, for messages.
            chosen: module names or paths the user picked (they replace the checkpoint's own modules).
            vae_file: a VAE file chosen through the "SD VAE" setting (it fills the VAE slot).

        Raises:
            ModuleNotFoundInFoldersError: a chosen name that is no file in the folders.
            ModuleMismatchError: a chosen module that fits no slot of this checkpoint.
            MissingModuleError: a required slot that neither the file nor the folders fill.
        """
        family = detection.config_family
        transformer = detection.transformer_config or {}
        slots = (*detection.required, *detection.optional)
        picked: dict[str, ModuleFile] = {}
        # 1. What the user chose.
        explicit = [self.find(name) for name in chosen]
        if vae_file is not None:
            explicit.append(self._file_for_path(vae_file))
        for item in explicit:
            slot = self._place(item, family, transformer, slots, picked, detection.modules, checkpoint)
            picked[slot] = item
        # 2. Automatic choices for the slots still empty.
        for slot in slots:
            if slot in picked or slot in detection.modules:
                continue
            found = self._automatic(slot, family, transformer, picked, detection.modules)
            if found is not None:
                picked[slot] = found
                logger.info(
                    "%s: using %s as its %s (found in %s)", checkpoint, found.name, slot, found.path.parent
                )
        missing = [
            slot for slot in detection.required if slot not in picked and slot not in detection.modules
        ]
        if missing:
            raise MissingModuleError(self._missing_message(checkpoint, detection, missing))
        return picked

    def file_for_path(self, path: Path) -> ModuleFile:
        """The module file at ``path`` (in the folders, or a VAE beside a checkpoint)."""
        return self._file_for_path(path)

    def _file_for_path(self, path: Path) -> ModuleFile:
        path = Path(path)
        for item in self.list():
            if item.path.resolve() == path.resolve():
                return item
        # A VAE beside the checkpoint (A1111's <name>.vae.safetensors) is outside the folders: inspect it.
        item = self._inspect(path, path.parent, "VAE")
        if item is None:
            raise ModuleNotFoundInFoldersError(f"VAE file {path} cannot be read")
        return item

    def _place(
        self,
        item: ModuleFile,
        family: str,
        transformer: Mapping[str, Any],
        slots: Iterable[str],
        picked: Mapping[str, ModuleFile],
        embedded: Mapping[str, ModuleInfo],
        checkpoint: str,
    ) -> str:
        if item.module is None:
            raise ModuleMismatchError(f"{item.name} cannot be used with {checkpoint}: {item.error}")
        problems = []
        for slot in slots:
            if slot in picked:
                continue
            others = {**embedded, **{s: f.module for s, f in picked.items() if f.module is not None}}
            problem = module_problem(family, transformer, slot, item.module, others)
            if problem is None:
                return slot
            if slot in item.module.slots:
                problems.append(f"as its {slot}: {problem}")
        why = "; ".join(problems) or f"the model has no slot for {item.describe()}"
        raise ModuleMismatchError(f"{item.name} does not fit {checkpoint} ({why})")

    def _automatic(
        self,
        slot: str,
        family: str,
        transformer: Mapping[str, Any],
        picked: Mapping[str, ModuleFile],
        embedded: Mapping[str, ModuleInfo],
    ) -> ModuleFile | None:
        others = {**embedded, **{s: f.module for s, f in picked.items() if f.module is not None}}
        taken = {id(f) for f in picked.values()}
        candidates = [
            item
            for item in self.usable()
            if id(item) not in taken
            and item.module is not None
            and slot in item.module.slots
            and module_problem(family, transformer, slot, item.module, others) is None
        ]
        if not candidates:
            return None
        hints = _HINTS.get((family, slot), ())

        def rank(item: ModuleFile) -> tuple[int, int, str]:
            lowered = item.path.name.lower()
            hint = next((i for i, h in enumerate(hints) if h in lowered), len(hints))
            # A CLIP whose file name says which one it is beats a reduced one that merely fits.
            exact = 0 if len(item.module.slots) == 1 else 1  # type: ignore[union-attr]
            return (exact, hint, item.name.lower())

        return min(candidates, key=rank)

    def _missing_message(self, checkpoint: str, detection: Any, missing: Sequence[str]) -> str:
        needs = "; ".join(SLOT_LABELS[slot] for slot in missing)
        folders = {slot: (self.vae_dir if slot == "vae" else self.text_encoder_dir) for slot in missing}
        where = ", ".join(f"{slot} in {folder}" for slot, folder in folders.items())
        near = [
            item.describe()
            for item in self.list()
            if item.module is not None and set(item.module.slots) & set(missing)
        ]
        unfit = f" (found, but they do not fit: {', '.join(near)})" if near else ""
        carried = ", ".join(detection.modules) or "no text encoder or VAE"
        return (
            f"{checkpoint} is a {detection.family} model file with {carried} inside; it also needs a "
            f"{needs}. Put the file(s) there ({where}) or choose them as additional modules{unfit}"
        )

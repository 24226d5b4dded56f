"""MergeService: A1111's Checkpoint Merger for the UI tab, the API and ``webui.py merge``.

It owns the choices around a merge (which files, which name, which metadata) and hands the tensor
work to :func:`sdweb.engine.models.merge.merge_checkpoints`, on the GPU worker so a merge never
competes with a generation for memory:

1. The models are found by any name or hash the registry accepts; models of different families
   (SD 1.x with SDXL ...) are refused with both families named, before anything is read.
2. The result is ``<models/Stable-diffusion>/<name>.safetensors``: A1111's name
   (``0.7(a) + 0.3(b)``, ``a + 0.3(b - c)``) or the custom one, ``.inpainting`` added for an
   inpainting result. A name that is taken is refused rather than overwritten.
3. Metadata as A1111 writes it: the inputs' fields (``copy_metadata_fields``), the user's JSON,
   ``format: pt``, and the merge recipe (``sd_merge_recipe``, ``sd_merge_models`` keyed by the
   inputs' sha256) when ``add_merge_recipe``.
4. The new file is listed at once, with its hash (the title users see).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdweb.services.worker import GpuWorker

logger = logging.getLogger(__name__)

METHODS = ("No interpolation", "Weighted sum", "Add difference")
#: A1111's "Copy config from" choices (index = its radio's value).
CONFIG_SOURCES = ("A, B or C", "B", "C", "Don't")
_FAMILY_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
_BAD_NAME_CHARS = set('/\\:*?"<>|\0')


class MergeRequestError(ValueError):
    """A merge request that cannot be done; the message names the field (or model) and says why."""


@dataclass(frozen=True)
class MergeRequest:
    """A1111's Checkpoint Merger fields (``run_modelmerger``'s arguments, same names)."""

    primary_model_name: str
    secondary_model_name: str = ""
    tertiary_model_name: str = ""
    interp_method: str = "Weighted sum"
    multiplier: float = 0.3
    save_as_half: bool = False
    custom_name: str = ""
    checkpoint_format: str = "safetensors"
    config_source: int | str = 0
    bake_in_vae: str = "None"
    discard_weights: str = ""
    save_metadata: bool = True
    add_merge_recipe: bool = True
    copy_metadata_fields: bool = True
    metadata_json: str = ""


@dataclass(frozen=True)
class MergeResult:
    title: str
    path: Path
    sha256: str
    message: str


class MergeService:
    """Merges checkpoints into the first checkpoint folder and lists the result."""

    def __init__(self, registry: Any, vaes: Any, worker: GpuWorker | None = None) -> None:
        self._registry = registry
        self._vaes = vaes
        self._worker = worker
        self._lock = threading.Lock()
        #: ``(tensors done, tensors in all)`` of the merge running now, for the UI.
        self.progress: tuple[int, int] = (0, 0)

    def merge(self, request: MergeRequest,
              on_progress: Callable[[int, int], None] | None = None) -> MergeResult:
        """Check ``request``, merge (on the GPU worker when there is one) and list the result.

        Raises:
            MergeRequestError: a field or a model that cannot be used (the message says which).
        """
        plan, output, config = self._plan(request)
        if self._worker is None or self._worker.on_worker_thread():
            self._run(plan, output, on_progress)
        else:
            self._worker.submit(lambda: self._run(plan, output, on_progress),
                                label=f"merge {output.name}").wait()
        if config is not None:
            shutil.copyfile(config, output.with_suffix(".yaml"))
        return self._listed(output, request)

    # -- checking ------------------------------------------------------------------------------
    def _plan(self, request: MergeRequest) -> tuple[Any, Path, Path | None]:
        from sdweb.engine.models.merge import MergeError, MergePlan, check_plan

        method = request.interp_method
        if method not in METHODS:
            raise MergeRequestError(f"interp_method: {method!r} is not one of {', '.join(METHODS)}")
        if request.checkpoint_format.lower().lstrip(".") != "safetensors":
            raise MergeRequestError(f"checkpoint_format: {request.checkpoint_format!r}: sdweb writes "
                                    f".safetensors only (pickle .ckpt files can run code when loaded)")
        if not 0.0 <= float(request.multiplier) <= 1.0:
            raise MergeRequestError(f"multiplier: from 0 to 1 (got {request.multiplier})")
        a = self._find("primary_model_name", request.primary_model_name, needed=True)
        b = self._find("secondary_model_name", request.secondary_model_name, needed=method != METHODS[0])
        c = self._find("tertiary_model_name", request.tertiary_model_name, needed=method == METHODS[2])
        if method == METHODS[0]:
            b = c = None
        elif method == METHODS[1]:
            c = None
        shapes = self._check_families([info for info in (a, b, c) if info is not None])
        variant = self._variant(shapes, a, b)
        vae = None
        if request.bake_in_vae and request.bake_in_vae not in ("None", "none"):
            try:
                vae = Path(self._vaes.find(request.bake_in_vae).path)
            except LookupError as exc:
                raise MergeRequestError(f"bake_in_vae: {str(exc).strip(chr(39) + chr(34))}") from None
        output = self._output_path(request, a, b, c, variant)
        metadata = self._metadata(request, a, b, c, variant) if request.save_metadata else {}
        plan = MergePlan(method=method, primary=Path(a.path), secondary=Path(b.path) if b else None,  # type: ignore[arg-type]
                         tertiary=Path(c.path) if c else None, multiplier=float(request.multiplier),
                         half=bool(request.save_as_half), vae=vae, discard=request.discard_weights,
                         metadata=metadata)
        try:
            check_plan(plan)
        except MergeError as exc:
            raise MergeRequestError(str(exc)) from None
        return plan, output, self._config(request, a, b, c)

    def _find(self, field: str, query: str, *, needed: bool) -> Any:
        if not query or not query.strip():
            if needed:
                raise MergeRequestError(f"{field}: this merge needs a model here")
            return None
        try:
            info = self._registry.find(query)
        except LookupError as exc:
            raise MergeRequestError(f"{field}: {str(exc).strip(chr(39) + chr(34))}") from None
        if info.kind == "diffusers":
            raise MergeRequestError(f"{field}: {info.name} is a diffusers folder; merge single-file "
                                    f"checkpoints")
        return info

    def _check_families(self, infos: list[Any]) -> dict[Path, dict[str, tuple[int, ...]]]:
        """Each input's shapes; :class:`MergeRequestError` when one is unreadable or of another family."""
        from sdweb.engine.models.detect import detect_checkpoint
        from sdweb.engine.models.loader import read_checkpoint_shapes

        families = []
        shapes_of: dict[Path, dict[str, tuple[int, ...]]] = {}
        for info in infos:
            try:
                shapes, _ = read_checkpoint_shapes(Path(info.path), info.kind)
                detection = detect_checkpoint(shapes, name=info.name)
            except Exception as exc:  # an unreadable or foreign file: say so with its name
                raise MergeRequestError(f"{info.name} cannot be merged: {exc}") from None
            shapes_of[Path(info.path)] = shapes
            families.append((info, detection.config_family, detection.family))
        first, first_family, first_variant = families[0]
        for info, family, variant in families[1:]:
            if family != first_family:
                raise MergeRequestError(
                    f"{first.name} is {_FAMILY_NAMES.get(first_family, first_family)} ({first_variant}) but "
                    f"{info.name} is {_FAMILY_NAMES.get(family, family)} ({variant}): checkpoints of "
                    f"different families have different layers and cannot be merged")
        return shapes_of

    @staticmethod
    def _variant(shapes: dict[Path, dict[str, tuple[int, ...]]], a: Any, b: Any) -> str:
        """"inpainting" / "instruct-pix2pix" when A has those extra input channels and B does not; else ""."""
        from sdweb.engine.models.merge import MergeError, channel_variant

        if b is None:
            return ""
        key = "model.diffusion_model.input_blocks.0.0.weight"
        first, second = shapes[Path(a.path)].get(key), shapes[Path(b.path)].get(key)
        if first is None or second is None or first == second:
            return ""
        try:
            return channel_variant(first, second, key) or ""
        except MergeError as exc:
            raise MergeRequestError(str(exc)) from None

    def _output_path(self, request: MergeRequest, a: Any, b: Any, c: Any, variant: str) -> Path:
        name = request.custom_name.strip()
        if name:
            name = name.removesuffix(".safetensors")
            if _unsafe_name(name):
                raise MergeRequestError(f"custom_name: {request.custom_name!r} must be a plain file name (no "
                                        f"folders, no / \\ : * ? \" < > |)")
        elif b is None:
            name = a.model_name
        elif c is None:
            m = float(request.multiplier)
            name = f"{round(1 - m, 2)}({a.model_name}) + {round(m, 2)}({b.model_name})"
        else:
            name = f"{a.model_name} + {round(float(request.multiplier), 2)}({b.model_name} - {c.model_name})"
        folder = Path(self._registry.dirs[0])
        folder.mkdir(parents=True, exist_ok=True)
        output = folder / (f"{name}.{variant}.safetensors" if variant else f"{name}.safetensors")
        if output.exists():
            raise MergeRequestError(f"custom_name: {output.name} already exists in {folder}; choose another "
                                    f"name")
        return output

    def _metadata(self, request: MergeRequest, a: Any, b: Any, c: Any, variant: str) -> dict[str, str]:
        from sdweb.engine.models.safetensors_io import read_safetensors_header

        inputs = [info for info in (a, b, c) if info is not None]
        headers = {}
        for info in inputs:
            headers[info.path] = (read_safetensors_header(Path(info.path)).metadata
                                  if info.kind == "safetensors" else {})
        metadata: dict[str, str] = {}
        if request.copy_metadata_fields:
            for info in inputs:
                metadata.update(headers[info.path])
        if request.metadata_json.strip():
            try:
                extra = json.loads(request.metadata_json)
            except json.JSONDecodeError as exc:
                raise MergeRequestError(f"metadata_json: not valid JSON ({exc})") from None
            if not isinstance(extra, dict):
                raise MergeRequestError("metadata_json: must be a JSON object ({\"key\": \"value\"})")
            metadata.update({str(k): v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
        metadata["format"] = "pt"
        if request.add_merge_recipe:
            hashed = [self._registry.ensure_hash(info) for info in inputs]
            sha = {info.path: info.sha256 for info in hashed}
            recipe = {
                "type": "webui",  # merged with the web UI's built-in merger (A1111's marker)
                "primary_model_hash": sha.get(a.path),
                "secondary_model_hash": sha.get(b.path) if b is not None else None,
                "tertiary_model_hash": sha.get(c.path) if c is not None else None,
                "interp_method": request.interp_method,
                "multiplier": float(request.multiplier),
                "save_as_half": bool(request.save_as_half),
                "custom_name": request.custom_name,
                "config_source": request.config_source,
                "bake_in_vae": request.bake_in_vae,
                "discard_weights": request.discard_weights,
                "is_inpainting": variant == "inpainting",
                "is_instruct_pix2pix": variant == "instruct-pix2pix",
            }
            models: dict[str, Any] = {}
            for info in hashed:
                own = headers[info.path]
                models[info.sha256] = {"name": info.name, "legacy_hash": info.legacy_hash,
                                       "sd_merge_recipe": _json_or_none(own.get("sd_merge_recipe"))}
                models.update(_json_or_none(own.get("sd_merge_models")) or {})
            metadata["sd_merge_recipe"] = json.dumps(recipe)
            metadata["sd_merge_models"] = json.dumps(models)
        return metadata

    def _config(self, request: MergeRequest, a: Any, b: Any, c: Any) -> Path | None:
        """The ``.yaml`` to copy beside the result (A1111's "Copy config from")."""
        source = request.config_source
        index = CONFIG_SOURCES.index(source) if isinstance(source, str) and source in CONFIG_SOURCES \
            else source
        if index not in range(len(CONFIG_SOURCES)):
            raise MergeRequestError(f"config_source: 0-3 or one of {', '.join(CONFIG_SOURCES)} "
                                    f"(got {source!r})")
        candidates = {0: (a, b, c), 1: (b,), 2: (c,), 3: ()}[int(index)]
        for info in candidates:
            if info is not None and Path(info.path).with_suffix(".yaml").is_file():
                return Path(info.path).with_suffix(".yaml")
        return None

    # -- running -------------------------------------------------------------------------------
    def _run(self, plan: Any, output: Path, on_progress: Callable[[int, int], None] | None) -> None:
        from sdweb.engine.models.merge import MergeError, merge_checkpoints

        def progress(done: int, total: int) -> None:
            self.progress = (done, total)
            if on_progress is not None:
                on_progress(done, total)

        with self._lock:
            try:
                merge_checkpoints(plan, output, on_progress=progress)
            except MergeError as exc:
                raise MergeRequestError(str(exc)) from None
            finally:
                self.progress = (0, 0)

    def _listed(self, path: Path, request: MergeRequest) -> MergeResult:
        found = [info for info in self._registry.refresh() if Path(info.path).resolve() == path.resolve()]
        if not found:
            raise MergeRequestError(f"{path.name} was written but is not listed; check the models folder")
        info = self._registry.ensure_hash(found[0])
        logger.info("checkpoint merged: %s (%s)", info.title, request.interp_method)
        return MergeResult(title=info.title, path=path, sha256=info.sha256 or "",
                           message=f"Checkpoint saved to {path}")


def _json_or_none(value: str | None) -> Any:
    if not value:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _unsafe_name(name: str) -> bool:
    """Whether a merged checkpoint's custom name could name anything but one file in the folder."""
    from sdweb.safepath import UnsafePathError, plain_name

    try:
        plain_name(name, what="custom_name")
    except UnsafePathError:
        return True
    return bool(set(name) & _BAD_NAME_CHARS) or ".." in name

"""Launch settings (command-line flags), the data-folder layout, and the persisted user options.

This module is part of the small kernel every layer may import: it knows nothing of torch or gradio.

* :class:`LaunchSettings` holds what the command line said, once, frozen. It is built by
  :func:`sdweb.cli.parse_launch_settings` in the composition root and passed down; nothing reads
  ``sys.argv`` at import time.
* :class:`DataPaths` derives every folder from ``--data-dir`` (A1111's flag) and the per-folder flags.
* :class:`OptionsStore` is the ``config.json`` the settings tab edits, with A1111 key names where they
  exist. Values are validated against :class:`OptionSpec` definitions; extensions add their own specs.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "fp16", "bf16"]
Attention = Literal["auto", "sdpa", "xformers", "sliced"]
Offload = Literal["none", "model", "sequential"]

#: The folder that holds the package: the default data folder is the checkout itself (as in A1111).
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class DataPaths:
    """Every folder and file sdweb reads or writes, derived from one data folder."""

    root: Path
    ckpt_dirs: tuple[Path, ...]
    vae_dir: Path
    lora_dir: Path
    embeddings_dir: Path
    extensions_dir: Path
    outputs_dir: Path
    config_file: Path
    styles_file: Path
    history_db: Path
    cache_dir: Path

    @classmethod
    def from_root(
        cls,
        root: Path,
        *,
        ckpt_dir: Path | None = None,
        vae_dir: Path | None = None,
        lora_dir: Path | None = None,
        embeddings_dir: Path | None = None,
    ) -> DataPaths:
        root = root.resolve()
        ckpt_dirs = [root / "models" / "Stable-diffusion"]
        if ckpt_dir is not None:
            ckpt_dirs.append(ckpt_dir.resolve())
        return cls(
            root=root,
            ckpt_dirs=tuple(ckpt_dirs),
            vae_dir=(vae_dir or root / "models" / "VAE").resolve(),
            lora_dir=(lora_dir or root / "models" / "Lora").resolve(),
            embeddings_dir=(embeddings_dir or root / "embeddings").resolve(),
            extensions_dir=root / "extensions",
            outputs_dir=root / "outputs",
            config_file=root / "config.json",
            styles_file=root / "styles.csv",
            history_db=root / "history.db",
            cache_dir=root / "cache",
        )

    @property
    def text_encoder_dir(self) -> Path:
        """``models/text_encoder``: Forge's folder of CLIP-L / CLIP-G / T5-XXL files for SD 3.x and Flux."""
        return self.root / "models" / "text_encoder"

    @property
    def esrgan_dir(self) -> Path:
        """``models/ESRGAN``: A1111's folder of ESRGAN-family upscaler models (.pth, .safetensors)."""
        return self.root / "models" / "ESRGAN"

    def ensure(self) -> None:
        """Create the folders a user is expected to drop files into."""
        for folder in (*self.ckpt_dirs[:1], self.vae_dir, self.text_encoder_dir, self.lora_dir,
                       self.embeddings_dir,
                       self.extensions_dir, self.outputs_dir, self.cache_dir):
            folder.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class LaunchSettings:
    """What the command line asked for. Frozen: changing a flag means restarting."""

    paths: DataPaths
    listen: bool = False
    host: str = "127.0.0.1"
    port: int = 7860
    api: bool = False
    nowebui: bool = False
    gradio_auth: tuple[tuple[str, str], ...] = ()
    api_auth: tuple[tuple[str, str], ...] = ()
    device: str = "auto"
    precision: Precision = "auto"
    no_half_vae: bool = False
    attention: Attention = "auto"
    offload: Offload = "none"
    vae_tiling: bool = False
    models_in_memory: int = 1
    threads: int | None = None
    disable_all_extensions: bool = False
    enable_insecure_extension_access: bool = False
    ckpt: str | None = None
    skip_demo_model: bool = False
    #: Image URLs in API requests may point at this machine or the LAN (A1111's api_forbid_local_requests
    #: switched off).
    api_allow_local_requests: bool = False
    #: CORS: origins allowed to call the server from a browser page (A1111's --cors-allow-origins[-regex]).
    cors_allow_origins: tuple[str, ...] = ()
    cors_allow_origins_regex: str | None = None
    #: ``--workers local[:N]``: jobs run on N local Ray workers (0 = one per GPU); None = in this process.
    workers: int | None = None
    #: ``--ray-address HOST:PORT``: jobs run on the workers of that Ray cluster (docs/multi-gpu.md).
    ray_address: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def auth_required(self) -> bool:
        return bool(self.gradio_auth or self.api_auth)

    @property
    def effective_api_auth(self) -> tuple[tuple[str, str], ...]:
        """API credentials: its own, else the UI's, so a protected UI never sits beside an open API."""
        return self.api_auth or self.gradio_auth

    @property
    def extension_changes_allowed(self) -> bool:
        """A1111's rule: on a LAN, installing code needs the explicit insecure flag."""
        return not self.listen or self.enable_insecure_extension_access

    def public_flags(self) -> dict[str, Any]:
        """The flags as ``/sdapi/v1/cmd-flags`` shows them: never a password."""
        return {
            "data_dir": str(self.paths.root),
            "ckpt_dir": str(self.paths.ckpt_dirs[-1]) if len(self.paths.ckpt_dirs) > 1 else None,
            "vae_dir": str(self.paths.vae_dir),
            "lora_dir": str(self.paths.lora_dir),
            "embeddings_dir": str(self.paths.embeddings_dir),
            "listen": self.listen,
            "port": self.port,
            "api": self.api,
            "nowebui": self.nowebui,
            "gradio_auth": "<set>" if self.gradio_auth else None,
            "api_auth": "<set>" if self.api_auth else None,
            "device": self.device,
            "precision": self.precision,
            "no_half_vae": self.no_half_vae,
            "attention": self.attention,
            "xformers": self.attention == "xformers",
            "opt_sdp_attention": self.attention == "sdpa",
            "medvram": self.offload == "model",
            "lowvram": self.offload == "sequential",
            "models_in_memory": self.models_in_memory,
            "threads": self.threads,
            "disable_all_extensions": self.disable_all_extensions,
            "enable_insecure_extension_access": self.enable_insecure_extension_access,
            "api_allow_local_requests": self.api_allow_local_requests,
            "cors_allow_origins": ",".join(self.cors_allow_origins) or None,
            "cors_allow_origins_regex": self.cors_allow_origins_regex,
            "workers": self.workers,
            "ray_address": self.ray_address,
        }


def parse_credentials(text: str) -> tuple[tuple[str, str], ...]:
    """Parse ``user:pass[,user2:pass2]`` (A1111's ``--gradio-auth`` format; newlines also separate)."""
    pairs: list[tuple[str, str]] = []
    for item in text.replace("\n", ",").split(","):
        item = item.strip()
        if not item:
            continue
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise ValueError(f"credentials must look like user:password, got {item.split(':')[0]!r}:...")
        pairs.append((user, password))
    return tuple(pairs)


# ---------------------------------------------------------------------------------------------
# Options (config.json)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptionSpec:
    """One user option: its key (A1111's where one exists), default, type and allowed values."""

    key: str
    default: Any
    label: str
    section: str = "General"
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    #: A callable returning the allowed values at call time (checkpoint titles, sampler names).
    dynamic_choices: Callable[[], Iterable[Any]] | None = field(default=None, compare=False)

    def validate(self, value: Any) -> Any:
        """Return ``value`` converted to this option's type, or raise ValueError naming the option."""
        kind = type(self.default)
        if self.default is None:
            return value
        try:
            if kind is bool:
                if not isinstance(value, bool):
                    raise TypeError
                converted: Any = value
            elif kind is int:
                if isinstance(value, bool) or not float(value).is_integer():
                    raise TypeError
                converted = int(value)
            elif kind is float:
                if isinstance(value, bool):
                    raise TypeError
                converted = float(value)
            elif kind is str:
                if not isinstance(value, str):
                    raise TypeError
                converted = value
            elif kind is list:
                if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
                    raise TypeError
                converted = list(value)
            else:
                converted = value
        except (TypeError, ValueError):
            expected = "list of strings" if kind is list else kind.__name__
            raise ValueError(f"option {self.key!r} must be a {expected}, got {value!r}") from None
        if self.minimum is not None and converted < self.minimum:
            raise ValueError(f"option {self.key!r} must be >= {self.minimum}, got {converted}")
        if self.maximum is not None and converted > self.maximum:
            raise ValueError(f"option {self.key!r} must be <= {self.maximum}, got {converted}")
        allowed = self.choices
        if allowed is None and self.dynamic_choices is not None:
            allowed = tuple(self.dynamic_choices())
        if allowed is not None and converted not in allowed:
            raise ValueError(f"option {self.key!r} must be one of {list(allowed)}, got {converted!r}")
        return converted


BUILTIN_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("sd_model_checkpoint", "", "Stable Diffusion checkpoint", "Stable Diffusion"),
    OptionSpec("sd_vae", "Automatic", "SD VAE", "Stable Diffusion"),
    # Forge's name: text encoders / VAE (models/text_encoder, models/VAE) for SD 3.x and Flux checkpoints
    # that ship without them; empty = pick the fitting files automatically.
    OptionSpec("forge_additional_modules", [], "VAE / Text Encoder (SD 3.x, Flux)", "Stable Diffusion"),
    OptionSpec("CLIP_stop_at_last_layers", 1, "Clip skip", "Stable Diffusion", minimum=1, maximum=12),
    OptionSpec("randn_source", "CPU", "Random number generator source", "Stable Diffusion",
               choices=("CPU", "GPU")),
    OptionSpec("eta_ancestral", 1.0, "Eta for ancestral samplers", "Sampler parameters",
               minimum=0.0, maximum=1.0),
    OptionSpec("samples_format", "png", "File format for images", "Saving images",
               choices=("png", "jpg", "jpeg", "webp")),
    OptionSpec("samples_save", True, "Always save all generated images", "Saving images"),
    OptionSpec("grid_save", True, "Always save all generated image grids", "Saving images"),
    OptionSpec("jpeg_quality", 80, "Quality for saved jpeg and webp images", "Saving images",
               minimum=1, maximum=100),
    OptionSpec("outdir_txt2img_samples", "outputs/txt2img-images", "Output directory for txt2img images",
               "Paths for saving"),
    OptionSpec("outdir_txt2img_grids", "outputs/txt2img-grids", "Output directory for txt2img grids",
               "Paths for saving"),
    OptionSpec("live_previews_enable", True, "Show live previews of the created image", "Live previews"),
    OptionSpec("show_progress_every_n_steps", 5, "Live preview display period (steps)", "Live previews",
               minimum=1, maximum=32),
    OptionSpec("torch_threads", 0, "CPU threads for torch (0 = all cores)", "Performance",
               minimum=0, maximum=256),
)


class OptionsStore:
    """The persisted options (``config.json``), validated on every change, written atomically.

    Unknown keys found in an existing file (say, from an A1111 install) are kept and written back
    untouched, so nothing a user had is lost.
    """

    def __init__(self, path: Path, specs: Iterable[OptionSpec] = BUILTIN_OPTIONS) -> None:
        self._path = path
        self._lock = threading.RLock()
        self._specs: dict[str, OptionSpec] = {}
        self._values: dict[str, Any] = {}
        self._listeners: list[Callable[[str, Any], None]] = []
        for spec in specs:
            self.add_spec(spec)
        self._load()

    # -- specs -----------------------------------------------------------------------------
    def add_spec(self, spec: OptionSpec) -> None:
        with self._lock:
            if spec.key in self._specs:
                raise ValueError(f"option {spec.key!r} is defined twice")
            self._specs[spec.key] = spec

    @property
    def specs(self) -> list[OptionSpec]:
        with self._lock:
            return list(self._specs.values())

    # -- reading ---------------------------------------------------------------------------
    def get(self, key: str) -> Any:
        with self._lock:
            if key in self._values:
                return self._values[key]
            if key in self._specs:
                return self._specs[key].default
            raise KeyError(f"unknown option {key!r}")

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            merged = {key: spec.default for key, spec in self._specs.items()}
            merged.update(self._values)
            return merged

    # -- writing ---------------------------------------------------------------------------
    def validate(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Return the converted values, or raise ValueError for the first bad or unknown key."""
        with self._lock:
            converted: dict[str, Any] = {}
            for key, value in changes.items():
                spec = self._specs.get(key)
                if spec is None:
                    raise ValueError(f"unknown option {key!r}")
                converted[key] = spec.validate(value)
            return converted

    def update(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Validate all changes first, then apply and persist them together (all or nothing)."""
        converted = self.validate(changes)
        with self._lock:
            self._values.update(converted)
            self._save()
            listeners = list(self._listeners)
        for key, value in converted.items():
            for listener in listeners:
                try:
                    listener(key, value)
                except Exception:  # a listener must not undo a saved change
                    logger.exception("option listener failed for %s", key)
        return converted

    def subscribe(self, listener: Callable[[str, Any], None]) -> None:
        """Call ``listener(key, value)`` after each applied change (to apply it without restart)."""
        with self._lock:
            self._listeners.append(listener)

    # -- persistence -----------------------------------------------------------------------
    def _load(self) -> None:
        if not self._path.exists():
            return
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            backup = self._path.with_suffix(".json.bad")
            logger.error("could not read %s (%s); keeping a copy at %s and using defaults",
                         self._path, exc, backup)
            try:
                self._path.replace(backup)
            except OSError:
                pass
            return
        for key, value in data.items():
            spec = self._specs.get(key)
            if spec is None:
                self._values[key] = value  # kept for compatibility, not editable here
                continue
            try:
                self._values[key] = spec.validate(value)
            except ValueError as exc:
                logger.warning("ignoring stored option: %s", exc)

    def _save(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".json", dir=self._path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self._values, handle, indent=4, sort_keys=True, default=str)
                handle.flush()
                os.fsync(handle.fileno())  # the new file is whole on disk before it takes the name
            os.replace(tmp, self._path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

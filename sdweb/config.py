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
    #: ``--controlnet-dir``: another folder of ControlNet models beside ``models/ControlNet``.
    extra_controlnet_dir: Path | None = None

    @classmethod
    def from_root(
        cls,
        root: Path,
        *,
        ckpt_dir: Path | None = None,
        vae_dir: Path | None = None,
        lora_dir: Path | None = None,
        embeddings_dir: Path | None = None,
        controlnet_dir: Path | None = None,
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
            extra_controlnet_dir=controlnet_dir.resolve() if controlnet_dir is not None else None,
        )

    @property
    def text_encoder_dir(self) -> Path:
        """``models/text_encoder``: Forge's folder of CLIP-L / CLIP-G / T5-XXL files for SD 3.x and Flux."""
        return self.root / "models" / "text_encoder"

    @property
    def vae_approx_dir(self) -> Path:
        """``models/VAE-approx``: A1111's folder of live-preview decoders (``taesd_decoder.pth``...)."""
        return self.root / "models" / "VAE-approx"

    @property
    def controlnet_dir(self) -> Path:
        """``models/ControlNet``: the sd-webui-controlnet extension's folder of ControlNet models."""
        return self.root / "models" / "ControlNet"

    @property
    def clip_vision_dir(self) -> Path:
        """``models/clip_vision``: CLIP vision encoders for IP-Adapters (Hugging Face layout)."""
        return self.root / "models" / "clip_vision"

    @property
    def controlnet_dirs(self) -> tuple[Path, ...]:
        """Where ControlNet models are looked for: ``models/ControlNet``, then ``--controlnet-dir``."""
        extra = (self.extra_controlnet_dir,) if self.extra_controlnet_dir is not None else ()
        return (self.controlnet_dir, *extra)

    @property
    def esrgan_dir(self) -> Path:
        """``models/ESRGAN``: A1111's folder of ESRGAN-family upscaler models (.pth, .safetensors)."""
        return self.root / "models" / "ESRGAN"

    def client_scrubber(self) -> Any:
        """A :class:`sdweb.safepath.PathScrubber` for messages to clients: folders relative to the data
        folder, the ones given by flags outside it by their flag, no other absolute path.
        """
        from sdweb.safepath import PathScrubber, is_inside

        named: dict[Path, str] = {folder: "--ckpt-dir" for folder in self.ckpt_dirs[1:]}
        named.update({self.vae_dir: "--vae-dir", self.lora_dir: "--lora-dir",
                      self.embeddings_dir: "--embeddings-dir"})
        if self.extra_controlnet_dir is not None:
            named[self.extra_controlnet_dir] = "--controlnet-dir"
        # Folders inside the data folder are shown relative to it; only the others by their flag.
        return PathScrubber(self.root, {folder: label for folder, label in named.items()
                                        if not is_inside(folder, self.root)})

    def ensure(self) -> None:
        """Create the folders a user is expected to drop files into."""
        for folder in (*self.ckpt_dirs[:1], self.vae_dir, self.text_encoder_dir, self.lora_dir,
                       self.controlnet_dir,
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
    #: Output folder options (``outdir_*``) may be absolute paths outside the data folder when set over
    #: the API or from another machine (the local Settings tab may always set them).
    allow_outdir_anywhere: bool = False
    #: CORS: origins allowed to call the server from a browser page (A1111's --cors-allow-origins[-regex]).
    cors_allow_origins: tuple[str, ...] = ()
    cors_allow_origins_regex: str | None = None
    #: ``--allowed-hosts``: Host header names answered besides loopback names and this machine's own
    #: addresses (a guard against DNS rebinding); ``*`` turns the check off.
    allowed_hosts: tuple[str, ...] = ()
    #: ``--max-body-mb``: the largest request body, in MiB (413 above it, before anything is read or queued).
    max_body_mb: int = 64
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
            "allow_outdir_anywhere": self.allow_outdir_anywhere,
            "cors_allow_origins": ",".join(self.cors_allow_origins) or None,
            "cors_allow_origins_regex": self.cors_allow_origins_regex,
            "workers": self.workers,
            "ray_address": self.ray_address,
            "allowed_hosts": ",".join(self.allowed_hosts) or None,
            "max_body_mb": self.max_body_mb,
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


class OptionsError(ValueError):
    """One or more option values were refused; ``problems`` maps each option key to its message."""

    def __init__(self, problems: Mapping[str, str]) -> None:
        self.problems = dict(problems)
        super().__init__("; ".join(self.problems.values()))


def _shown(values: Iterable[Any], limit: int = 20) -> str:
    listed = [repr(value) if not isinstance(value, str) else value for value in values]
    more = f" and {len(listed) - limit} more" if len(listed) > limit else ""
    return ", ".join(listed[:limit]) + more


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
    #: A folder: relative to the data folder and inside it ("" = the default folder), see
    #: :func:`sdweb.safepath.folder_option`; absolute paths only where the caller allows them.
    folder: bool = False
    #: Called with the converted value at validation time; returns the value to store (a VAE name as
    #: listed) or raises ValueError / LookupError whose message names the allowed values.
    check: Callable[[Any], Any] | None = field(default=None, compare=False)

    def validate(self, value: Any, *, data_root: Path | None = None, allow_outside: bool = False) -> Any:
        """Return ``value`` converted to this option's type, or raise ValueError naming the option
        and what it may hold.
        """
        kind = type(self.default)
        if self.default is None:
            return value
        try:
            if kind is bool:
                if not isinstance(value, bool):
                    raise TypeError
                converted: Any = value
            elif kind is int:
                # A number written as text ("2", as some clients send) is taken as A1111 would use it.
                if isinstance(value, bool) or not float(_number_text(value)).is_integer():
                    raise TypeError
                converted = int(float(_number_text(value)))
            elif kind is float:
                if isinstance(value, bool):
                    raise TypeError
                converted = float(_number_text(value))
                if converted != converted or converted in (float("inf"), float("-inf")):
                    raise TypeError
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
        except (TypeError, ValueError, OverflowError):
            expected = {list: "list of strings", bool: "true or false", int: "whole number",
                        float: "number", str: "text"}.get(kind, kind.__name__)
            raise ValueError(f"option {self.key!r} must be a {expected}, got {value!r}") from None
        low, high = self.minimum, self.maximum
        if (low is not None and converted < low) or (high is not None and converted > high):
            span = (f"between {low:g} and {high:g}" if low is not None and high is not None
                    else f">= {low:g}" if low is not None else f"<= {high:g}")
            raise ValueError(f"option {self.key!r} must be {span}, got {converted!r}")
        allowed = self.choices
        if allowed is None and self.dynamic_choices is not None:
            allowed = tuple(self.dynamic_choices())
        if allowed is not None and converted not in allowed:
            raise ValueError(f"option {self.key!r} must be one of: {_shown(allowed)}; got {converted!r}")
        if self.folder and converted != "":
            from sdweb.safepath import UnsafePathError, folder_option

            try:
                folder_option(converted, data_root or PROJECT_ROOT, what=f"option {self.key!r}",
                              allow_outside=allow_outside)
            except UnsafePathError as exc:
                raise ValueError(str(exc)) from None
        if self.check is not None:
            try:
                converted = self.check(converted)
            except (LookupError, ValueError, OSError) as exc:
                message = str(exc).strip("'\"")
                named = message if self.key in message else f"option {self.key!r}: {message}"
                raise ValueError(named) from None
        return converted


#: Keys the server computes (the checkpoint in use and its hash): shown by GET, ignored on write.
DERIVED_OPTIONS = frozenset({"sd_checkpoint_hash"})

UnknownKeys = Literal["refuse", "keep"]
#: Keys of settings we do not have (an A1111 install's) are kept, within these bounds: a client cannot
#: grow config.json without limit.
MAX_UNKNOWN_KEYS = 2000
MAX_UNKNOWN_VALUE_CHARS = 65536


class OptionsStore:
    """The persisted options (``config.json``), validated on every change, written atomically.

    * Changes are all or nothing: every value is checked first; one bad value refuses the whole change
      (:class:`OptionsError` names each bad option and what it may hold) and nothing is stored.
    * A value equal to the current one is a no-op (nothing is checked or written), so a client may post
      back everything it read.
    * Unknown keys found in an existing file (say, from an A1111 install) are kept and written back
      untouched, so nothing a user had is lost; ``update(..., unknown="keep")`` accepts new ones (the
      API: clients post A1111 keys we do not have).
    * A stored value that is not valid (hand-edited, or a VAE file since removed) is reported in the log
      and ignored (the default is used); the file keeps it until the user saves that option.
    """

    def __init__(self, path: Path, specs: Iterable[OptionSpec] | None = None,
                 *, data_root: Path | None = None) -> None:
        self._path = path
        self._data_root = data_root if data_root is not None else path.parent
        self._lock = threading.RLock()
        self._specs: dict[str, OptionSpec] = {}
        self._values: dict[str, Any] = {}
        #: Stored values of known options that were refused at load: kept for the file, not used.
        self._ignored: dict[str, Any] = {}
        self._unreadable = False
        self._listeners: list[Callable[[str, Any], None]] = []
        if specs is None:  # the built-in options (their catalogue imports this module)
            from sdweb.option_catalog import BUILTIN_OPTIONS

            specs = BUILTIN_OPTIONS
        for spec in specs:
            self.add_spec(spec)
        self._load()

    @property
    def data_root(self) -> Path:
        return self._data_root

    # -- specs -----------------------------------------------------------------------------
    def add_spec(self, spec: OptionSpec) -> None:
        with self._lock:
            if spec.key in self._specs:
                raise ValueError(f"option {spec.key!r} is defined twice")
            self._specs[spec.key] = spec
            self._recheck(spec.key)

    def bind(self, key: str, *, check: Callable[[Any], Any] | None = None,
             dynamic_choices: Callable[[], Iterable[Any]] | None = None) -> None:
        """Give ``key`` its check or list of allowed values once what they depend on exists (the VAE
        folder, the checkpoints); the stored value is checked again (and ignored if it fails).
        """
        from dataclasses import replace

        with self._lock:
            spec = self._specs[key]
            self._specs[key] = replace(spec, check=check or spec.check,
                                       dynamic_choices=dynamic_choices or spec.dynamic_choices)
            self._recheck(key)

    def _recheck(self, key: str) -> None:
        spec = self._specs[key]
        raw = self._ignored.pop(key, self._values.pop(key, _MISSING))
        if raw is _MISSING:
            return
        try:
            self._values[key] = spec.validate(raw, data_root=self._data_root, allow_outside=True)
        except Exception as exc:  # noqa: BLE001 - a stored value never stops the server
            if not isinstance(exc, ValueError):
                logger.exception("checking the stored value of %s failed", key)
            self._ignored[key] = raw
            logger.warning("%s: ignoring the stored value of %s (%s); using the default %r until it is "
                           "changed in Settings", self._path.name, key, exc, spec.default)

    @property
    def specs(self) -> list[OptionSpec]:
        with self._lock:
            return list(self._specs.values())

    def ignored(self) -> dict[str, Any]:
        """Stored values that were refused (the default is used instead)."""
        with self._lock:
            return dict(self._ignored)

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

    def folder(self, key: str) -> Path | None:
        """The folder an output-folder option names (None when it is empty: use the default)."""
        from sdweb.safepath import folder_option

        value = self.get(key)
        if not value:
            return None
        return folder_option(str(value), self._data_root, what=f"option {key!r}", allow_outside=True)

    # -- writing ---------------------------------------------------------------------------
    def validate(self, changes: Mapping[str, Any], *, allow_outside: bool = False,
                 unknown: UnknownKeys = "refuse") -> dict[str, Any]:
        """The changed values, converted; raise :class:`OptionsError` naming every bad key.

        Values equal to the current ones are left out (not even checked). ``allow_outside``: folder
        options may be absolute paths outside the data folder (the local Settings tab, a launch flag).
        """
        with self._lock:
            current = self.as_dict()
            converted: dict[str, Any] = {}
            problems: dict[str, str] = {}
            for key, value in changes.items():
                if key in DERIVED_OPTIONS:
                    continue
                if key in current and _same(current[key], value):
                    continue
                spec = self._specs.get(key)
                if spec is None:
                    if unknown != "keep":
                        problems[key] = f"unknown option {key!r}"
                    elif len(json.dumps(value, default=str)) > MAX_UNKNOWN_VALUE_CHARS:
                        problems[key] = (f"option {key!r} is not one of ours and its value is over "
                                         f"{MAX_UNKNOWN_VALUE_CHARS:,} characters: not kept")
                    else:
                        converted[key] = value
                    continue
                try:
                    value = spec.validate(value, data_root=self._data_root, allow_outside=allow_outside)
                except ValueError as exc:
                    problems[key] = str(exc)
                    continue
                if not _same(current.get(key), value):
                    converted[key] = value
            added = [key for key in converted if key not in self._specs and key not in self._values]
            unknown_count = sum(1 for key in self._values if key not in self._specs)
            if added and unknown_count + len(added) > MAX_UNKNOWN_KEYS:
                problems[added[0]] = (f"{len(added)} settings that are not ours would make more than "
                                      f"{MAX_UNKNOWN_KEYS:,} such keys in {self._path.name}: not kept")
            if problems:
                raise OptionsError(problems)
            return converted

    def update(self, changes: Mapping[str, Any], *, allow_outside: bool = False,
               unknown: UnknownKeys = "refuse") -> dict[str, Any]:
        """Validate all changes first, then apply and persist them together (all or nothing).

        Returns what changed; nothing changed means nothing is written.
        """
        with self._lock:
            converted = self.validate(changes, allow_outside=allow_outside, unknown=unknown)
            if not converted:
                return {}
            before = (dict(self._values), dict(self._ignored))
            self._values.update(converted)
            for key in converted:
                self._ignored.pop(key, None)
            try:
                self._save()
            except BaseException:
                self._values, self._ignored = before
                raise
            listeners = list(self._listeners)
        for key, value in converted.items():
            if key not in self._specs:
                continue
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
            # Never fatal, never touched now: the first save keeps a copy beside it (config.json.bad).
            self._unreadable = True
            logger.error("could not read %s (%s); using the default settings. The file is left as it is "
                         "until settings are saved (then it is kept as %s)", self._path, exc,
                         self._path.with_suffix(".json.bad").name)
            return
        for key, value in data.items():
            if key in self._specs:
                self._values[key] = value
                self._recheck(key)
            else:
                self._values[key] = value  # kept for compatibility, not editable here

    def _save(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        if self._unreadable and self._path.exists():
            try:
                self._path.replace(self._path.with_suffix(".json.bad"))
            except OSError:
                logger.warning("could not keep a copy of the unreadable %s", self._path)
        self._unreadable = False
        stored = {**self._ignored, **self._values}
        fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".json", dir=self._path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(stored, handle, indent=4, sort_keys=True, default=str)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self._path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


_MISSING = object()


def _number_text(value: Any) -> Any:
    """``value``, or the number a numeric string spells ("2", " 0.5 "); anything else as it is."""
    if isinstance(value, str):
        text = value.strip()
        if not text or text.lower() in ("nan", "inf", "-inf", "+inf", "infinity", "-infinity"):
            raise TypeError
        return float(text)
    return value


def _same(current: Any, value: Any) -> bool:
    """Whether a posted value equals the current one (1 == 1.0; a tuple equals a list; a bool is not 1)."""
    if isinstance(current, bool) or isinstance(value, bool):
        return type(current) is type(value) and current == value
    if isinstance(current, (list, tuple)) and isinstance(value, (list, tuple)):
        return list(current) == list(value)
    try:
        return bool(current == value)
    except Exception:  # noqa: BLE001 - incomparable values are different
        return False

"""Textual-inversion embeddings in ``embeddings/``: loading, fitting them to a model, using them in prompts.

Owns:

* :class:`EmbeddingLibrary`: the files under the embeddings folder (recursive), loaded into
  :class:`Embedding` objects. Formats (A1111's): ``.pt`` with ``string_to_param`` ``{'*': (N, dim)}``
  (loaded with ``torch.load(weights_only=True)``: a pickle that wants to run code is refused),
  ``.safetensors`` with ``emb_params`` or SDXL's ``clip_l`` / ``clip_g`` pair, diffusers ``.bin``
  ``{token: tensor}``. The name is the file stem. The folder is rescanned when a file was added,
  removed or changed, so a new file works without pressing refresh.
* :meth:`EmbeddingLibrary.split_for`: which embeddings fit a model's text encoders (768 wide: SD1,
  1024: SD2, 768 + 1280: SDXL) and why the others do not ("dimension 1024 does not match this model's
  768").
* :class:`EmbeddingTextView`: a pipeline-like view (``tokenizer``, ``text_encoder``, ...) for
  :class:`sdweb.engine.encode.PromptEncoder`. Its tokenizer turns each whole-word occurrence of an
  embedding's name into that many placeholder token ids (so the name counts as N tokens for
  chunking, as in A1111); its text encoder replaces the placeholders' token embeddings with the
  embedding's vectors for the duration of one call (a forward hook on the token-embedding layer,
  removed in a ``finally``: the shared model is never changed) and feeds the encoder an ordinary
  token there, so CLIP's end-of-text pooling is unaffected.

Infotext: "TI hashes" is ``"name: 0123456789ab, ..."`` for the embeddings a job used: the first 12
hex of the sha256 of the whole file, as A1111 writes it.
"""

from __future__ import annotations

import logging
import pickle
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdweb.engine.models.hashes import HashCache, file_sha256

logger = logging.getLogger(__name__)

EMBEDDING_SUFFIXES = (".pt", ".safetensors", ".bin")
#: Key of the vectors of a single-encoder (SD1/SD2) embedding in :attr:`Embedding.vectors`.
SINGLE = "single"
#: SDXL's two encoders, in the pipeline's order (``text_encoder``, ``text_encoder_2``).
SDXL_KEYS = ("clip_l", "clip_g")
TI_HASH_LENGTH = 12
#: The token id fed to CLIP where an embedding vector goes (its embedding is replaced anyway; an
#: ordinary low id keeps the end-of-text pooling, which looks for EOS or the highest id, correct).
_SUBSTITUTE_TOKEN = 0


class EmbeddingError(ValueError):
    """An embedding file that cannot be used; the message says why."""


@dataclass(frozen=True)
class Embedding:
    """One textual-inversion embedding: ``vectors`` maps ``"single"`` or ``clip_l``/``clip_g`` to (N, dim)."""

    name: str
    path: Path
    vectors: Mapping[str, torch.Tensor]
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None

    @property
    def count(self) -> int:
        """How many tokens it stands for."""
        return int(next(iter(self.vectors.values())).shape[0])

    @property
    def widths(self) -> tuple[int, ...]:
        if SINGLE in self.vectors:
            return (int(self.vectors[SINGLE].shape[-1]),)
        return tuple(int(self.vectors[key].shape[-1]) for key in SDXL_KEYS)

    @property
    def shape(self) -> int:
        """A1111's ``shape``: the vector width (SDXL: both widths added)."""
        return sum(self.widths)

    def describe(self) -> dict[str, Any]:
        """The ``/sdapi/v1/embeddings`` item."""
        return {"step": self.step, "sd_checkpoint": self.sd_checkpoint,
                "sd_checkpoint_name": self.sd_checkpoint_name, "shape": self.shape, "vectors": self.count}

    def fits(self, widths: Sequence[int]) -> str | None:
        """None when it fits text encoders of ``widths``, else the reason it does not."""
        mine = self.widths
        if tuple(mine) == tuple(widths):
            return None
        theirs = "+".join(str(w) for w in widths)
        if SINGLE in self.vectors and len(widths) == 2:
            return (f"dimension {mine[0]} does not match this model's {theirs} "
                    "(an SDXL model needs an embedding with clip_l and clip_g vectors)")
        if SINGLE not in self.vectors and len(widths) == 1:
            return f"dimension {'+'.join(str(w) for w in mine)} (SDXL) does not match this model's {theirs}"
        return f"dimension {'+'.join(str(w) for w in mine)} does not match this model's {theirs}"


@dataclass(frozen=True)
class SkippedEmbedding:
    """A file that is not used with the current model, and why."""

    name: str
    path: Path
    reason: str
    embedding: Embedding | None = None  # None when the file could not be read at all

    def describe(self) -> dict[str, Any]:
        base = (self.embedding.describe() if self.embedding is not None
                else {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": 0,
                      "vectors": 0})
        return {**base, "reason": self.reason}


@dataclass
class _Scan:
    stamp: tuple[tuple[str, int, int], ...] = ()
    #: What each file version gave: (path, size, mtime) -> the embedding, or why it is unreadable.
    files: dict[tuple[str, int, int], Embedding | SkippedEmbedding] = field(default_factory=dict)
    embeddings: dict[str, Embedding] = field(default_factory=dict)
    unreadable: dict[str, SkippedEmbedding] = field(default_factory=dict)


class EmbeddingLibrary:
    """The embeddings under one folder. Thread-safe; files are (re)loaded when the folder changes."""

    def __init__(self, folder: Path, *, hashes: HashCache | None = None) -> None:
        self._folder = Path(folder)
        self._hashes = hashes
        self._lock = threading.Lock()
        self._scan = _Scan(stamp=(("<never scanned>", 0, 0),))

    @property
    def folder(self) -> Path:
        return self._folder

    def refresh(self, *, force: bool = True) -> None:
        """Rescan the folder (``force=False``: only when a file was added, removed or changed)."""
        files = self._list_files()
        stamp = tuple((str(path), stat.st_size, stat.st_mtime_ns) for path, stat in files)
        with self._lock:
            if not force and stamp == self._scan.stamp:
                return
            previous = self._scan
            # Unchanged files keep their loaded vectors (unless forced): one new file loads one file.
            kept = {} if force else {entry: item for entry, item in previous.files.items() if entry in stamp}
            scan = _Scan(stamp=stamp)
            for (path, _stat), entry in zip(files, stamp, strict=True):
                name = path.stem
                if name in scan.embeddings or name in scan.unreadable:
                    logger.warning("two embeddings are named %r: ignoring %s", name, path)
                    continue
                item = kept.get(entry)
                if item is None:
                    try:
                        item = load_embedding(path)
                    except EmbeddingError as exc:
                        logger.warning("embedding %s skipped: %s", path, exc)
                        item = SkippedEmbedding(name=name, path=path, reason=str(exc))
                scan.files[entry] = item
                if isinstance(item, Embedding):
                    scan.embeddings[name] = item
                else:
                    scan.unreadable[name] = item
            self._scan = scan
        logger.info("embeddings: %d loaded from %s, %d unreadable", len(scan.embeddings), self._folder,
                    len(scan.unreadable))

    def embeddings(self) -> dict[str, Embedding]:
        """Every readable embedding by name (rescanning first if the folder changed)."""
        self.refresh(force=False)
        with self._lock:
            return dict(self._scan.embeddings)

    def split_for(self, widths: Sequence[int] | None
                  ) -> tuple[dict[str, Embedding], dict[str, SkippedEmbedding]]:
        """``(usable, skipped)`` for text encoders of ``widths`` (None: no model loaded, all skipped)."""
        self.refresh(force=False)
        with self._lock:
            scan = self._scan
        usable: dict[str, Embedding] = {}
        skipped: dict[str, SkippedEmbedding] = dict(scan.unreadable)
        for name, embedding in scan.embeddings.items():
            reason = "no model is loaded to check it against" if widths is None else embedding.fits(widths)
            if reason is None:
                usable[name] = embedding
            else:
                skipped[name] = SkippedEmbedding(name=name, path=embedding.path, reason=reason,
                                                 embedding=embedding)
        return usable, skipped

    def listing(self, widths: Sequence[int] | None) -> dict[str, dict[str, dict[str, Any]]]:
        """``/sdapi/v1/embeddings``: ``{loaded: {name: item}, skipped: {name: item + reason}}``."""
        usable, skipped = self.split_for(widths)
        return {"loaded": {name: emb.describe() for name, emb in sorted(usable.items())},
                "skipped": {name: item.describe() for name, item in sorted(skipped.items())}}

    def hash(self, embedding: Embedding) -> str:
        """A1111's TI hash: the first 12 hex of the whole file's sha256 (cached when possible)."""
        path = embedding.path
        full = self._hashes.sha256(path) if self._hashes is not None else file_sha256(path)
        return full[:TI_HASH_LENGTH]

    def hashes_infotext(self, names: Iterable[str]) -> str | None:
        """The "TI hashes" value for the embeddings ``names`` (None when there are none)."""
        found = self.embeddings()
        parts = []
        for name in names:
            embedding = found.get(name)
            if embedding is None:
                continue
            try:
                parts.append(f"{name.replace(':', '').replace(',', '')}: {self.hash(embedding)}")
            except OSError as exc:
                logger.warning("cannot hash embedding %s: %s", embedding.path, exc)
        return ", ".join(parts) or None

    def _list_files(self) -> list[tuple[Path, Any]]:
        if not self._folder.is_dir():
            return []
        files = []
        for path in sorted(self._folder.rglob("*"), key=lambda p: str(p).lower()):
            if path.suffix.lower() in EMBEDDING_SUFFIXES and path.is_file():
                try:
                    files.append((path, path.stat()))
                except OSError:
                    continue
        return files


# ---------------------------------------------------------------------------------------------
# File formats
# ---------------------------------------------------------------------------------------------


def load_embedding(path: Path) -> Embedding:
    """Read one embedding file.

    Raises:
        EmbeddingError: unreadable, unsafe (a pickle wanting to run code) or not an embedding.
    """
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(str(path), device="cpu")
        else:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message suggests weights_only=False; we never do that, so say what is wrong instead.
        detail = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()
        raise EmbeddingError("refused: not a plain-tensor file; a pickle that needs more than tensors "
                             f"could run code ({detail[0][:120] if detail else 'unreadable'})") from exc
    except Exception as exc:  # torch and safetensors raise RuntimeError, EOFError... for bad files
        raise EmbeddingError(f"cannot be read: {type(exc).__name__}: {str(exc)[:200]}") from exc
    if not isinstance(data, Mapping):
        raise EmbeddingError(f"not an embedding: the file holds a {type(data).__name__}, not a dict")
    vectors = _vectors_of(data)
    for key, tensor in vectors.items():
        if tensor.ndim == 1:
            tensor = tensor.unsqueeze(0)
        if tensor.ndim != 2 or tensor.shape[0] == 0:
            raise EmbeddingError(f"not an embedding: {key} has shape {tuple(tensor.shape)}")
        vectors[key] = tensor.detach().to(torch.float32).contiguous()
    if len({tensor.shape[0] for tensor in vectors.values()}) > 1:
        raise EmbeddingError("clip_l and clip_g have different vector counts")
    step = data.get("step")
    return Embedding(
        name=path.stem, path=path, vectors=vectors,
        step=int(step) if isinstance(step, int | float) and not isinstance(step, bool) else None,
        sd_checkpoint=_text_or_none(data.get("sd_checkpoint")),
        sd_checkpoint_name=_text_or_none(data.get("sd_checkpoint_name")),
    )


def _vectors_of(data: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    if all(isinstance(data.get(key), torch.Tensor) for key in SDXL_KEYS):
        return {key: data[key] for key in SDXL_KEYS}
    params = data.get("string_to_param")
    if isinstance(params, Mapping):  # A1111 / original textual-inversion .pt
        tensors = [value for value in params.values() if isinstance(value, torch.Tensor)]
        if len(tensors) != 1:
            raise EmbeddingError(f"string_to_param holds {len(tensors)} tensors; expected 1")
        return {SINGLE: tensors[0]}
    if isinstance(data.get("emb_params"), torch.Tensor):  # A1111 .safetensors
        return {SINGLE: data["emb_params"]}
    tensors = [value for value in data.values() if isinstance(value, torch.Tensor)]
    if len(tensors) == 1 and len(data) == 1:  # diffusers .bin: {"<token>": tensor}
        return {SINGLE: tensors[0]}
    keys = ", ".join(sorted(str(key) for key in data)[:6])
    raise EmbeddingError(f"not a textual-inversion embedding (keys: {keys})")


def _text_or_none(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


# ---------------------------------------------------------------------------------------------
# Using embeddings in prompts
# ---------------------------------------------------------------------------------------------


def _is_clip(encoder: Any) -> bool:
    # Flux's text_encoder_2 is T5 (SD 3.x's T5 is text_encoder_3): embeddings are CLIP vectors only.
    return encoder is not None and "t5" not in str(getattr(encoder.config, "model_type", "")).lower()


def text_encoder_widths(pipe: Any) -> tuple[int, ...]:
    """The hidden widths of a pipeline's CLIP text encoders: (768,) SD1 and Flux (CLIP-L), (1024,) SD2,
    (768, 1280) SDXL and SD 3.x (CLIP-L, CLIP-G). T5 takes no embeddings (as in Forge).
    """
    encoders = [getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)]
    return tuple(int(encoder.config.hidden_size) for encoder in encoders if _is_clip(encoder))


def counting_tokenizer(pipe: Any, library: EmbeddingLibrary) -> Any:
    """``pipe``'s tokenizer, with the embeddings that fit it counted as their vectors (token counter)."""
    usable, _skipped = library.split_for(text_encoder_widths(pipe))
    return EmbeddingTextView(pipe, usable).tokenizer if usable else pipe.tokenizer


class EmbeddingTextView:
    """What :class:`~sdweb.engine.encode.PromptEncoder` reads of a pipeline, with embeddings usable.

    Build one per job; :attr:`used` then names the embeddings the encoded texts contained.
    """

    def __init__(self, pipe: Any, embeddings: Mapping[str, Embedding]) -> None:
        self._pipe = pipe
        tokenizer = pipe.tokenizer
        first_id = len(tokenizer)
        # Placeholder ids after the vocabulary: one per vector, shared by both SDXL encoders.
        self._ids: dict[str, list[int]] = {}
        next_id = first_id
        for name, embedding in embeddings.items():
            self._ids[name] = list(range(next_id, next_id + embedding.count))
            next_id += embedding.count
        self.used: list[str] = []
        pattern = None
        if embeddings:
            names = sorted(embeddings, key=len, reverse=True)  # longest first: "cat-v2" before "cat"
            pattern = re.compile(r"(?<![\w])(" + "|".join(re.escape(name) for name in names) + r")(?![\w])",
                                 re.IGNORECASE)
        lookup = {name.lower(): name for name in embeddings}
        keys = [SINGLE] if not _is_clip(getattr(pipe, "text_encoder_2", None)) else list(SDXL_KEYS)
        self.tokenizer = _EmbeddingTokenizer(tokenizer, pattern, lookup, self._ids, self.used)
        self.text_encoder = _EmbeddingTextEncoder(pipe.text_encoder, first_id,
                                                  self._vectors(embeddings, keys[0]))
        self.tokenizer_2 = None if len(keys) == 2 else getattr(pipe, "tokenizer_2", None)  # Flux: T5's
        self.text_encoder_2 = None if len(keys) == 2 else getattr(pipe, "text_encoder_2", None)
        if len(keys) == 2:
            self.tokenizer_2 = _EmbeddingTokenizer(pipe.tokenizer_2, pattern, lookup, self._ids, self.used)
            self.text_encoder_2 = _EmbeddingTextEncoder(pipe.text_encoder_2, first_id,
                                                        self._vectors(embeddings, keys[1]))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def _vectors(self, embeddings: Mapping[str, Embedding], key: str) -> dict[int, torch.Tensor]:
        out: dict[int, torch.Tensor] = {}
        for name, embedding in embeddings.items():
            for token_id, row in zip(self._ids[name], embedding.vectors[key], strict=True):
                out[token_id] = row
        return out


class _EmbeddingTokenizer:
    """A tokenizer whose ``__call__`` maps embedding names to placeholder ids; the rest delegates."""

    def __init__(self, tokenizer: Any, pattern: re.Pattern[str] | None, lookup: Mapping[str, str],
                 ids: Mapping[str, list[int]], used: list[str]) -> None:
        self._tokenizer = tokenizer
        self._pattern = pattern
        self._lookup = lookup
        self._ids = ids
        self._used = used

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)

    def __call__(self, texts: Any, **kwargs: Any) -> Any:
        if self._pattern is None:
            return self._tokenizer(texts, **kwargs)
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        if not any(self._pattern.search(text) for text in batch):
            return self._tokenizer(texts, **kwargs)
        kwargs = {**kwargs, "add_special_tokens": False}
        out = [self._ids_of(text, kwargs) for text in batch]
        return {"input_ids": out[0] if single else out}

    def _ids_of(self, text: str, kwargs: dict[str, Any]) -> list[int]:
        assert self._pattern is not None
        ids: list[int] = []
        position = 0
        for match in self._pattern.finditer(text):
            before = text[position:match.start()]
            if before.strip():
                ids.extend(self._tokenizer(before, **kwargs)["input_ids"])
            name = self._lookup[match.group(1).lower()]
            ids.extend(self._ids[name])
            if name not in self._used:
                self._used.append(name)
            position = match.end()
        rest = text[position:]
        if rest.strip():
            ids.extend(self._tokenizer(rest, **kwargs)["input_ids"])
        return ids


class _EmbeddingTextEncoder:
    """Calls a CLIP text encoder with embedding vectors in place of the placeholder ids."""

    def __init__(self, encoder: Any, first_id: int, vectors: Mapping[int, torch.Tensor]) -> None:
        self._encoder = encoder
        self._first_id = first_id
        self._vectors = vectors

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)

    def __call__(self, input_ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        mask = input_ids >= self._first_id
        if not bool(mask.any()):
            return self._encoder(input_ids, *args, **kwargs)
        rows = torch.stack([self._vectors[int(token)] for token in input_ids[mask].tolist()])
        safe_ids = input_ids.masked_fill(mask, _SUBSTITUTE_TOKEN)

        def replace(_module: Any, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
            output = output.clone()
            output[mask.to(output.device)] = rows.to(device=output.device, dtype=output.dtype)
            return output

        # A hook for this one call, removed in the finally: the shared model is left as it was.
        handle = self._encoder.get_input_embeddings().register_forward_hook(replace)
        try:
            return self._encoder(safe_ids, *args, **kwargs)
        finally:
            handle.remove()

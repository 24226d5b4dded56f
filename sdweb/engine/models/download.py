"""Fetching a checkpoint from the Hugging Face hub into the checkpoint folder: resumable and verified.

Owns the list of well-known checkpoints (:data:`KNOWN_MODELS`, with their published sha256), how a
user names a download (``sd15``, ``owner/repo``, ``owner/repo:file.safetensors``) and the download
itself (:func:`download_model`):

* the file is written to ``<dest>/<file>.incomplete`` and renamed into place only once complete and
  verified, so the checkpoint registry (which lists ``.safetensors``/``.ckpt`` only) never shows half
  a file;
* an interrupted download keeps its ``.incomplete`` file; the next call (or an automatic retry within
  the same call) asks the server for the rest with an HTTP ``Range`` request;
* the sha256 is checked against the known table, or else against the hub's own LFS sha256 (the
  ``X-Linked-Etag`` it sends for large files). A mismatch refuses the file and deletes the partial;
  a file with no sha256 to check against is refused before anything is downloaded;
* offline, the first request fails within ``connect_timeout`` seconds with a message saying so.

huggingface_hub does the hub-specific parts (URL layout, ``HF_ENDPOINT``, the auth token a user saved
with ``hf auth login``, metadata headers, error classification); the byte stream is read here so that
progress, resume and hashing happen in one pass. Pure python, no torch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import httpx2
from huggingface_hub import constants as hf_constants
from huggingface_hub import get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

logger = logging.getLogger(__name__)

#: Called with (bytes on disk so far, total bytes) while a file downloads.
DownloadProgress = Callable[[int, int], None]

INCOMPLETE_SUFFIX = ".incomplete"
CHECKPOINT_FILE_SUFFIXES = (".safetensors", ".ckpt")
CHUNK_SIZE = 1024 * 1024
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 60.0
DEFAULT_RETRIES = 3
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class DownloadError(RuntimeError):
    """A download that could not be done; the message says why and what to do."""


class ChecksumMismatchError(DownloadError):
    """The downloaded bytes are not the file that was asked for; the partial file was removed."""


@dataclass(frozen=True)
class KnownModel:
    """A well-known checkpoint: where it lives on the hub and its published sha256."""

    name: str
    label: str
    repo_id: str
    filename: str
    sha256: str
    size: int
    aliases: tuple[str, ...] = ()


KNOWN_MODELS: tuple[KnownModel, ...] = (
    KnownModel(
        name="sd15",
        label="Stable Diffusion 1.5 (EMA only, 4.3 GB)",
        repo_id="stable-diffusion-v1-5/stable-diffusion-v1-5",
        filename="v1-5-pruned-emaonly.safetensors",
        sha256="6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa",
        size=4_265_146_304,
        aliases=("sd1.5", "sd-1.5", "sd-v1-5", "v1-5-pruned-emaonly"),
    ),
    KnownModel(
        name="sdxl",
        label="Stable Diffusion XL base 1.0 (6.9 GB)",
        repo_id="stabilityai/stable-diffusion-xl-base-1.0",
        filename="sd_xl_base_1.0.safetensors",
        sha256="31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b",
        size=6_938_078_334,
        aliases=("sdxl-base", "sdxl1.0", "sd_xl_base_1.0"),
    ),
)


@dataclass(frozen=True)
class DownloadSource:
    """What to fetch: a file in a hub repository, with the sha256 it must have when one is known."""

    repo_id: str
    filename: str | None  # None: the repository's only top-level checkpoint, found by listing it
    revision: str = "main"
    sha256: str | None = None


def known_model(name: str) -> KnownModel | None:
    """The well-known checkpoint called ``name`` (its short name, an alias, its repo or file), if any."""
    wanted = name.strip().lower()
    for model in KNOWN_MODELS:
        names = {model.name, *model.aliases, model.repo_id.lower(), model.filename.lower()}
        if wanted in names:
            return model
    return None


def parse_model_spec(spec: str) -> DownloadSource:
    """Turn ``NAME``, ``OWNER/REPO``, ``OWNER/REPO:FILE`` or ``OWNER/REPO@REVISION:FILE`` into a source.

    Raises ValueError naming the accepted forms and the well-known names.
    """
    text = spec.strip()
    model = known_model(text)
    if model is not None:
        return DownloadSource(model.repo_id, model.filename, sha256=model.sha256)
    repo_part, _, filename = text.partition(":")
    repo_id, _, revision = repo_part.partition("@")
    unsafe_path = bool(filename) and not _is_safe_hub_path(filename)
    if not _REPO_ID.match(repo_id) or unsafe_path:
        known = ", ".join(m.name for m in KNOWN_MODELS)
        raise ValueError(f"cannot download {spec!r}: give a well-known name ({known}), a hub repository "
                         "'owner/name', or 'owner/name:file.safetensors'")
    filename = filename or None
    if filename is None:
        model = known_model(repo_id)
        filename = model.filename if model else None
    sha256 = None
    for model in KNOWN_MODELS:
        if model.repo_id.lower() == repo_id.lower() and model.filename == filename:
            sha256 = model.sha256
    return DownloadSource(repo_id, filename, revision or "main", sha256)


def download_model(
    name_or_repo: str,
    dest_dir: Path,
    *,
    progress: DownloadProgress | None = None,
    endpoint: str | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
) -> Path:
    """Download a checkpoint into ``dest_dir`` (``models/Stable-diffusion``) and return its path.

    ``name_or_repo`` is anything :func:`parse_model_spec` accepts. ``endpoint`` overrides ``HF_ENDPOINT``
    (itself the default hub's override).
    A connection dropped mid-file is resumed up to ``retries`` times within this call; after that the
    partial file stays and calling again resumes it. A file already in place with the right sha256 is
    returned without downloading. Raises :class:`DownloadError` (or :class:`ChecksumMismatchError`) with
    a message a person can act on; ValueError for a spec that names nothing.
    """
    source = parse_model_spec(name_or_repo)
    # HF_ENDPOINT is read per call (huggingface_hub reads it once at import) so a mirror set later works.
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or hf_constants.ENDPOINT).rstrip("/")
    timeout = httpx2.Timeout(read_timeout, connect=connect_timeout)
    headers = build_hf_headers()
    # 1. Which file, and its facts (size, sha256, commit) from a HEAD request
    filename = source.filename or _only_checkpoint_in_repo(source, endpoint, headers, timeout)
    url = hf_hub_url(source.repo_id, filename, revision=source.revision, endpoint=endpoint)
    with _hub_errors(source.repo_id, filename, endpoint):
        metadata = get_hf_file_metadata(url, timeout=connect_timeout, endpoint=endpoint)
    expected_sha256 = _expected_sha256(source, filename, metadata.etag)
    size = metadata.size
    if metadata.commit_hash:
        # Pin the bytes to one commit so a resume days later cannot splice two versions of the file.
        url = hf_hub_url(source.repo_id, filename, revision=metadata.commit_hash, endpoint=endpoint)

    # 2. Already here?
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / PurePosixPath(filename).name
    partial = target.with_name(target.name + INCOMPLETE_SUFFIX)
    if target.exists():
        if _file_sha256(target) == expected_sha256:
            logger.info("%s is already downloaded and verified", target)
            return target
        raise DownloadError(f"{target} already exists and is a different file (its sha256 is not "
                            f"{expected_sha256}); move or rename it, then download again")

    # 3. Stream into the partial file, resuming what is there
    logger.info("downloading %s/%s (%s bytes) to %s", source.repo_id, filename, size, target)
    state = _PartialFile.open(partial)
    if size is not None and state.done > size:
        logger.warning("%s is larger than the file on the hub; starting again", partial)
        state.restart()
    attempts_left = retries
    while size is None or state.done < size:
        try:
            finished = _fetch_rest(url, state, size, headers, timeout, progress)
        except (httpx2.TransportError, httpx2.StreamError) as exc:
            if attempts_left <= 0:
                raise DownloadError(
                    f"the download of {filename} stopped at {_megabytes(state.done)} of {_megabytes(size)} "
                    f"({type(exc).__name__}: {exc}); the partial file {partial.name} is kept: run the same "
                    "download again to resume it") from exc
            attempts_left -= 1
            logger.warning("connection lost at %d bytes (%s); resuming", state.done, exc)
            continue
        if finished:
            break

    # 4. Verify, then move into place
    actual = state.digest.hexdigest()
    if actual != expected_sha256:
        partial.unlink(missing_ok=True)
        raise ChecksumMismatchError(
            f"{filename} from {source.repo_id} failed verification: its sha256 is {actual}, expected "
            f"{expected_sha256}; the file was removed. Try again later; if it keeps failing, the file on the "
            "hub is not the one sdweb knows")
    os.replace(partial, target)
    logger.info("saved %s (sha256 %s)", target, actual)
    return target


@dataclass
class _PartialFile:
    """The ``.incomplete`` file: its length and the sha256 of its bytes so far, kept in step."""

    path: Path
    digest: hashlib._Hash
    done: int

    @classmethod
    def open(cls, path: Path) -> _PartialFile:
        digest = hashlib.sha256()
        done = _hash_existing(path, digest)
        if done:
            logger.info("resuming %s from %d bytes", path.name, done)
        return cls(path, digest, done)

    def restart(self) -> None:
        self.path.unlink(missing_ok=True)
        self.digest, self.done = hashlib.sha256(), 0


def _fetch_rest(
    url: str,
    state: _PartialFile,
    size: int | None,
    headers: dict[str, str],
    timeout: httpx2.Timeout,
    progress: DownloadProgress | None,
) -> bool:
    """Append the bytes after ``state.done`` to the partial file; True once the whole file is there.

    ``state`` is updated per chunk, so after a cut connection it describes exactly what is on disk.
    """
    request_headers = {**headers, "Accept-Encoding": "identity"}
    start = state.done
    if start:
        request_headers["Range"] = f"bytes={start}-"
    with get_session().stream("GET", url, headers=request_headers, timeout=timeout,
                              follow_redirects=True) as response:
        if response.status_code == 416 and size is None and start:
            return True  # nothing after what we have: the partial file is the whole file
        with _hub_errors(None, url, None):
            hf_raise_for_status(response)
        if start and response.status_code != 206:
            # The server ignored the Range request and sends the whole file: start over.
            logger.info("the server does not resume; downloading %s from the start", state.path.name)
            state.restart()
        total = size if size is not None else _length_from(response, state.done)
        with state.path.open("ab") as out:
            # Unbuffered, so what arrived before a cut connection is on disk for the resume.
            for chunk in response.iter_bytes():
                out.write(chunk)
                state.digest.update(chunk)
                state.done += len(chunk)
                if progress is not None:
                    progress(state.done, total or state.done)
    return size is None or state.done >= size


def _only_checkpoint_in_repo(source: DownloadSource, endpoint: str, headers: dict[str, str],
                             timeout: httpx2.Timeout) -> str:
    """The single checkpoint file at the top of a repository; an error listing them when there are more."""
    url = f"{endpoint}/api/models/{source.repo_id}/tree/{quote(source.revision, safe='')}"
    with _hub_errors(source.repo_id, None, endpoint):
        response = get_session().get(url, headers=headers, timeout=timeout)
        hf_raise_for_status(response)
    names = [entry["path"] for entry in response.json()
             if entry.get("type") == "file" and str(entry.get("path", "")).endswith(CHECKPOINT_FILE_SUFFIXES)]
    safetensors = [name for name in names if name.endswith(".safetensors")]
    candidates = safetensors or names
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise DownloadError(f"{source.repo_id} has no .safetensors or .ckpt file at its top level; name the "
                            f"file: {source.repo_id}:path/to/file.safetensors")
    raise DownloadError(f"{source.repo_id} has several checkpoints ({', '.join(sorted(candidates))}); "
                        f"choose one: {source.repo_id}:{sorted(candidates)[0]}")


def _expected_sha256(source: DownloadSource, filename: str, hub_etag: str | None) -> str:
    hub_sha256 = (hub_etag or "").strip('"').lower()
    hub_sha256 = hub_sha256 if _SHA256.match(hub_sha256) else ""
    if source.sha256:
        if hub_sha256 and hub_sha256 != source.sha256:
            raise ChecksumMismatchError(
                f"the hub now serves a different {filename} in {source.repo_id} (sha256 {hub_sha256}) "
                f"than the published release (sha256 {source.sha256}); nothing was downloaded")
        return source.sha256
    if hub_sha256:
        return hub_sha256
    raise DownloadError(f"the hub gives no sha256 for {source.repo_id}/{filename} (not a large file?), so it "
                        "cannot be verified; nothing was downloaded")


class _hub_errors:  # noqa: N801 - used as a ``with`` statement, reads like one
    """Translate network and hub errors into :class:`DownloadError` messages a person can act on."""

    def __init__(self, repo_id: str | None, filename: str | None, endpoint: str | None) -> None:
        self.repo_id, self.filename, self.endpoint = repo_id, filename, endpoint

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if exc is None or isinstance(exc, DownloadError):
            return False
        what = f"{self.repo_id}/{self.filename}" if self.repo_id and self.filename else (
            self.repo_id or self.filename or "the file")
        where = self.endpoint or hf_constants.ENDPOINT
        message: str | None = None
        if isinstance(exc, OfflineModeIsEnabled):
            message = "downloads are off because HF_HUB_OFFLINE is set; unset it to download models"
        elif isinstance(exc, (httpx2.ConnectError, httpx2.ConnectTimeout)):
            message = (f"cannot reach the Hugging Face hub at {where} ({exc}); check the internet connection "
                       "(or HF_ENDPOINT / proxy settings) and try again")
        elif isinstance(exc, httpx2.TimeoutException):
            message = f"the Hugging Face hub at {where} did not answer in time ({exc}); try again later"
        elif isinstance(exc, GatedRepoError):
            message = (f"{self.repo_id} is gated: accept its license on its hub page, log in with "
                       "`hf auth login`, then try again")
        elif isinstance(exc, RepositoryNotFoundError):
            message = (f"no repository {self.repo_id!r} on {where} "
                       "(or it is private: log in with `hf auth login`)")
        elif isinstance(exc, RevisionNotFoundError):
            message = f"{what}: that revision does not exist"
        elif isinstance(exc, EntryNotFoundError):
            message = f"no file {self.filename!r} in {self.repo_id} on {where}"
        elif isinstance(exc, HfHubHTTPError):
            status = exc.response.status_code if exc.response is not None else "?"
            message = f"the hub refused {what} (HTTP {status}): {str(exc).splitlines()[0]}"
        if message is None:
            return False
        raise DownloadError(message) from exc


def _hash_existing(path: Path, digest: hashlib._Hash) -> int:
    """Feed a partial file already on disk into ``digest``; return its length (0 when absent)."""
    if not path.exists():
        return 0
    done = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
            done += len(chunk)
    return done


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    _hash_existing(path, digest)
    return digest.hexdigest()


def _length_from(response: httpx2.Response, start: int) -> int | None:
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return start + int(length) if length and length.isdigit() else None


def _megabytes(count: int | None) -> str:
    return "?" if count is None else f"{count / 1e6:.1f} MB"


def _is_safe_hub_path(filename: str) -> bool:
    """A hub file path that cannot name anything outside the folder (no '..', leading '/', backslash, NUL)."""
    from sdweb.safepath import UnsafePathError, relative_parts

    try:
        relative_parts(filename, what="file", backslash_is_separator=False)
    except UnsafePathError:
        return False
    return True

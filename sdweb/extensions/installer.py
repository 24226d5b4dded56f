"""Installing, updating and removing extension folders, and installing their declared requirements.

Every change goes through a staging folder ``extensions/.tmp/`` on the same file system: a clone,
copy or unzip is checked (manifest, name, plugin API) there and moved into place with one rename only
when complete, so a failed install leaves nothing behind. All mutating calls are refused while
``changes_allowed`` is false (``--listen`` without ``--enable-insecure-extension-access``, A1111's
rule: anyone on the network could otherwise install code). Nothing runs by itself: requirements are
installed only when :meth:`ExtensionInstaller.install_requirements` is called (a button).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sdweb.extensions.git import CommitSummary, GitError
from sdweb.extensions.manager import ExtensionInfo, ExtensionManager
from sdweb.extensions.manifest import (
    MANIFEST_FILENAME,
    ExtensionManifest,
    ManifestError,
    check_api_compatible,
    check_name,
)
from sdweb.safepath import UnsafePathError, confine

logger = logging.getLogger(__name__)

STAGING_DIRNAME = ".tmp"
#: A zip bigger than this once extracted is refused (a zip bomb would fill the disk).
MAX_ZIP_BYTES = 512 * 1024 * 1024
MAX_ZIP_MEMBERS = 20_000
PIP_TIMEOUT_S = 1800.0

_SCP_LIKE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*@[A-Za-z0-9][A-Za-z0-9.-]*:(?!-)[^\s]+$")
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*(:\d+)?$")
_BRANCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")


class ExtensionChangeRefused(PermissionError):
    """A change to the installed extensions is not allowed in this server's configuration."""


class InstallError(ValueError):
    """An install, update or removal could not be done; the message says why and what to do."""


LAN_REFUSAL = (
    "Installing, updating and removing extensions is turned off because the server runs with --listen "
    "(reachable from other computers), and an extension is code that runs on this machine. Restart "
    "without --listen to manage extensions, or add --enable-insecure-extension-access if you trust "
    "everyone who can reach this server."
)


def check_git_url(url: str) -> str:
    """Return the URL git should clone, or raise InstallError saying which forms are accepted.

    Accepted: ``https://host/path``, ``ssh://[user@]host[:port]/path``, ``user@host:path``,
    ``file:///path`` and a path to an existing local folder (turned into a ``file://`` URL so that
    ``--depth 1`` applies). Refused: ``http://`` (no transport security), ``git://``, ``ext::``
    (runs a command) and anything that looks like a command-line option.
    """
    accepted = "use an https://, ssh://, user@host:path or file:// URL, or a local folder path"
    url = (url or "").strip()
    if not url:
        raise InstallError(f"no URL given: {accepted}")
    if url.startswith("-") or any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise InstallError(f"{url!r} is not a repository URL: {accepted}")
    lowered = url.lower()
    if lowered.startswith(("https://", "ssh://")):
        parts = urlsplit(url)
        host = parts.netloc.rsplit("@", 1)[-1]
        if not _HOST.match(host) or not parts.path.strip("/"):
            raise InstallError(f"{url!r} has no valid host and path: {accepted}")
        return url
    if lowered.startswith("file://"):
        if not urlsplit(url).path:
            raise InstallError(f"{url!r} has no path: {accepted}")
        return url
    if "://" in url or "::" in url:  # another transport, or git's "ext::" command transport
        scheme = url.split(":", 1)[0]
        raise InstallError(f"the {scheme!r} transport is not accepted ({url!r}): {accepted}")
    if _SCP_LIKE.match(url) and not Path(url).exists():
        return url
    local = Path(url).expanduser()
    if local.is_dir():
        return local.resolve().as_uri()
    raise InstallError(f"{url!r} is neither an accepted URL nor an existing folder: {accepted}")


def check_branch(branch: str | None) -> str | None:
    if branch is None or not branch.strip():
        return None
    branch = branch.strip()
    if not _BRANCH.match(branch) or ".." in branch or branch.endswith((".lock", "/")):
        raise InstallError(f"{branch!r} is not a valid branch or tag name")
    return branch


def _remove_tree(path: Path) -> None:
    """Delete a folder, including git's read-only object files (which block rmtree on Windows)."""

    def make_writable_and_retry(func: Callable[..., Any], target: str, _exc: Any) -> None:
        os.chmod(target, stat.S_IWRITE)
        func(target)

    if path.exists():
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=make_writable_and_retry)
        else:
            shutil.rmtree(path, onerror=make_writable_and_retry)


class ExtensionInstaller:
    """Changes what is in ``extensions/``. One instance, sharing the manager's git runner and rules.

    Changes to folders are serialized by a lock. A new or updated extension runs after a restart;
    an uninstalled one keeps running until then.
    """

    def __init__(self, manager: ExtensionManager, *, python: str = sys.executable) -> None:
        self._manager = manager
        self._git = manager.git
        self._python = python
        self._lock = threading.Lock()

    @property
    def changes_allowed(self) -> bool:
        return self._manager.changes_allowed

    # -- shared steps ---------------------------------------------------------------------------
    def _require_changes_allowed(self) -> None:
        if not self._manager.changes_allowed:
            raise ExtensionChangeRefused(LAN_REFUSAL)

    def _staging_dir(self) -> Path:
        root = self._manager.extensions_dir / STAGING_DIRNAME
        root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="install-", dir=root))

    def _folder_of(self, name: str) -> Path:
        try:
            check_name(name)  # an empty name or ".." would point at extensions/ itself or beyond
        except ManifestError:
            raise InstallError(f"no installed extension folder named {name!r}") from None
        folder = self._manager.extensions_dir / name
        if not folder.is_dir() or name.startswith((".", "_")):
            raise InstallError(f"no installed extension folder named {name!r}")
        return folder

    def _place(self, staged: Path) -> ExtensionInfo:
        """Check a complete staged extension and move it into ``extensions/<manifest name>``."""
        try:
            manifest = ExtensionManifest.read(staged)
            check_api_compatible(manifest.plugin_api)
        except ManifestError as exc:
            raise InstallError(f"not installed: {exc}") from None
        module_file, _ = manifest.module_path(staged)
        if not module_file.is_file():
            raise InstallError(f"not installed: the extension has no {module_file.name} to import")
        known = {info.name for info in self._manager.list()}
        target = self._manager.extensions_dir / manifest.name
        if manifest.name in known or target.exists() or self._manager.host.is_registered(manifest.name):
            raise InstallError(
                f"not installed: an extension named {manifest.name!r} is already installed; "
                "uninstall it first, or use its update button"
            )
        staged.rename(target)  # same file system: all or nothing
        logger.info("installed extension %s %s into %s", manifest.name, manifest.version, target)
        return self._manager.get(manifest.name)

    # -- install --------------------------------------------------------------------------------
    def install_from_git(self, url: str, *, branch: str | None = None) -> ExtensionInfo:
        """``git clone --depth 1 [--branch b] URL`` into staging, check it, then move it into place."""
        self._require_changes_allowed()
        clone_url = check_git_url(url)
        branch = check_branch(branch)
        with self._lock:
            staging = self._staging_dir()
            try:
                checkout = staging / "checkout"
                args = ["clone", "--depth", "1", "--no-recurse-submodules"]
                if branch:
                    args += ["--branch", branch]
                args += ["--", clone_url, str(checkout)]
                try:
                    self._git.run(args)
                except GitError as exc:
                    raise InstallError(f"could not clone {url}: {exc}") from None
                return self._place(checkout)
            finally:
                _remove_tree(staging)

    def install_from_folder(self, source: Path | str) -> ExtensionInfo:
        """Copy a local extension folder (with its ``.git``, if any) into ``extensions/``."""
        self._require_changes_allowed()
        source = Path(source).expanduser()
        if not source.is_dir():
            raise InstallError(f"{source} is not a folder")
        if not (source / MANIFEST_FILENAME).is_file():
            raise InstallError(f"{source} has no {MANIFEST_FILENAME}: it is not an sdweb extension folder")
        source = source.resolve()
        extensions_dir = self._manager.extensions_dir.resolve()
        if source == extensions_dir or extensions_dir in source.parents:
            raise InstallError(f"{source} is already inside the extensions folder")
        with self._lock:
            staging = self._staging_dir()
            try:
                copy = staging / "copy"
                # Links are copied as links: a link inside the folder must not pull in the world.
                shutil.copytree(source, copy, symlinks=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                return self._place(copy)
            finally:
                _remove_tree(staging)

    def install_from_zip(self, archive: Path | str) -> ExtensionInfo:
        """Extract a zip (safely: no absolute paths, ``..``, links or bombs) and install it.

        The manifest may be at the top of the zip or inside its single top folder (GitHub's
        "Download ZIP" layout).
        """
        self._require_changes_allowed()
        archive = Path(archive)
        with self._lock:
            staging = self._staging_dir()
            try:
                extracted = staging / "zip"
                extract_zip_safely(archive, extracted)
                root = extracted
                children = [child for child in extracted.iterdir() if child.name != "__MACOSX"]
                if not (root / MANIFEST_FILENAME).is_file() and len(children) == 1 and children[0].is_dir():
                    root = children[0]
                return self._place(root)
            finally:
                _remove_tree(staging)

    # -- update -----------------------------------------------------------------------------------
    def _require_clone(self, name: str) -> Path:
        folder = self._folder_of(name)
        if not (folder / ".git").exists():
            raise InstallError(f"{name!r} was not installed from git, so it cannot be updated from it")
        return folder

    def check_updates(self, name: str) -> list[CommitSummary]:
        """Fetch and list the commits the upstream branch has that this clone lacks (newest first).

        Fetching changes only git's own records, not the extension's files, so this is allowed even
        while changes are refused.
        """
        folder = self._require_clone(name)
        try:
            self._git.run(["fetch", "--quiet", "--no-recurse-submodules"], cwd=folder)
            return self._git.log(folder, "HEAD..@{upstream}")
        except GitError as exc:
            raise InstallError(f"could not check {name!r} for updates: {exc}") from None

    def update(self, name: str) -> ExtensionInfo:
        """Fetch and fast-forward to the upstream branch; refuses to merge or overwrite local changes."""
        self._require_changes_allowed()
        folder = self._require_clone(name)
        with self._lock:
            try:
                self._git.run(["fetch", "--quiet", "--no-recurse-submodules"], cwd=folder)
                self._git.run(["merge", "--ff-only", "@{upstream}"], cwd=folder)
            except GitError as exc:
                raise InstallError(
                    f"could not update {name!r}: {exc}. Only fast-forward updates are done; if you changed "
                    "the extension's files, undo or commit your changes and try again."
                ) from None
        info = self._manager.get(name)
        logger.info("updated extension %s to %s", name, (info.git_commit or "?")[:8])
        return info

    # -- uninstall --------------------------------------------------------------------------------
    def uninstall(self, name: str) -> None:
        """Remove ``extensions/<name>``. It keeps running until the server restarts."""
        self._require_changes_allowed()
        folder = self._folder_of(name)
        with self._lock:
            # Move out of the way first: a half-deleted folder must never be loaded at the next start.
            staging = self._staging_dir()
            try:
                folder.rename(staging / name)
            except OSError as exc:
                _remove_tree(staging)
                raise InstallError(f"could not remove {name!r}: {exc}") from None
            _remove_tree(staging)
        logger.info("uninstalled extension %s", name)

    # -- requirements -----------------------------------------------------------------------------
    def install_requirements(self, name: str) -> str:
        """Run ``python -m pip install <requirements>`` for an extension; return pip's last lines."""
        self._require_changes_allowed()
        folder = self._folder_of(name)
        try:
            manifest = ExtensionManifest.read(folder)
        except ManifestError as exc:
            raise InstallError(str(exc)) from None
        if not manifest.requirements:
            return f"{name} declares no Python requirements; nothing to install."
        command = [self._python, "-m", "pip", "install", "--disable-pip-version-check", "--",
                   *manifest.requirements]
        logger.info("installing requirements of %s: %s", name, " ".join(manifest.requirements))
        try:
            completed = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                       timeout=PIP_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise InstallError(f"pip did not finish within {PIP_TIMEOUT_S:.0f} s and was stopped") from None
        tail = "\n".join((completed.stdout + completed.stderr).strip().splitlines()[-10:])
        if completed.returncode != 0:
            raise InstallError(f"pip could not install the requirements of {name!r}:\n{tail}")
        return tail or "done"


def extract_zip_safely(archive: Path, destination: Path) -> None:
    """Extract ``archive`` into ``destination``, refusing any member that would land outside it.

    Refused: absolute paths, drive letters, ``..`` parts, symbolic links, more than
    :data:`MAX_ZIP_MEMBERS` entries or more than :data:`MAX_ZIP_BYTES` once extracted.
    """
    try:
        bundle = zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile) as exc:
        raise InstallError(f"{archive.name} is not a readable zip file: {exc}") from None
    with bundle:
        members = bundle.infolist()
        if len(members) > MAX_ZIP_MEMBERS:
            raise InstallError(
                f"{archive.name} has {len(members)} entries; at most {MAX_ZIP_MEMBERS} are allowed")
        if sum(member.file_size for member in members) > MAX_ZIP_BYTES:
            raise InstallError(f"{archive.name} would extract to more than {MAX_ZIP_BYTES // 2**20} MiB")
        destination.mkdir(parents=True, exist_ok=True)
        root = destination.resolve()
        for member in members:
            mode = member.external_attr >> 16
            try:
                if stat.S_ISLNK(mode):
                    raise UnsafePathError("is a link")
                target = confine(root, member.filename.rstrip("/\\") or member.filename, what="entry")
            except UnsafePathError:
                raise InstallError(
                    f"{archive.name} is refused: entry {member.filename!r} would be written outside the "
                    "extension folder (or is a link)") from None
            if member.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with bundle.open(member) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink)


__all__ = [
    "LAN_REFUSAL",
    "ExtensionChangeRefused",
    "ExtensionInstaller",
    "InstallError",
    "check_git_url",
    "extract_zip_safely",
]

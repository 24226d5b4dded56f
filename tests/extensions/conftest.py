"""Fixtures for the extension loader and installer tests: extension folders and real git repositories."""

from __future__ import annotations

import os
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from sdweb.extensions.manager import ExtensionManager, PluginHost

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.invalid",
    "GIT_COMMITTER_NAME": "Test Author",
    "GIT_COMMITTER_EMAIL": "author@example.invalid",
}


def write_extension(
    folder: Path,
    *,
    name: str | None = None,
    code: str = "",
    plugin_api: str = "1",
    version: str = "0.1.0",
    extra_manifest: str = "",
) -> Path:
    """Write ``folder/extension.toml`` and ``folder/__init__.py`` (``code`` is dedented)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "extension.toml").write_text(
        f'name = "{name or folder.name}"\nversion = "{version}"\ndescription = "test extension"\n'
        f'plugin_api = "{plugin_api}"\n{extra_manifest}',
        encoding="utf-8",
    )
    (folder / "__init__.py").write_text(
        "from sdweb.plugin_api import hookimpl\n" + textwrap.dedent(code), encoding="utf-8")
    return folder


def git(*args: str, cwd: Path) -> str:
    """Run real git for a test repository (argument list, no prompts, fixed identity)."""
    env = {**os.environ, **GIT_IDENTITY, "GIT_TERMINAL_PROMPT": "0"}
    completed = subprocess.run(["git", "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false", *args],
                               cwd=cwd, env=env, capture_output=True, text=True, check=True, timeout=60)
    return completed.stdout


@pytest.fixture
def write_ext() -> Callable[..., Path]:
    """:func:`write_extension`, as a fixture (test modules do not import conftest)."""
    return write_extension


@pytest.fixture
def run_git() -> Callable[..., str]:
    """:func:`git`, as a fixture."""
    return git


@pytest.fixture
def extensions_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "extensions"
    folder.mkdir()
    return folder


@pytest.fixture
def make_manager(extensions_dir: Path) -> Callable[..., ExtensionManager]:
    def build(**kwargs: object) -> ExtensionManager:
        kwargs.setdefault("entry_points", False)
        return ExtensionManager(extensions_dir, PluginHost(), **kwargs)  # type: ignore[arg-type]

    return build


@pytest.fixture
def remote_repo(tmp_path: Path) -> Callable[..., tuple[Path, Path]]:
    """Build ``(work tree, bare repository)`` holding one extension; push to the bare one with git."""

    def build(name: str = "gitext", *, plugin_api: str = "1", code: str = "") -> tuple[Path, Path]:
        work = tmp_path / "src" / name
        write_extension(work, name=name, plugin_api=plugin_api,
                        code=code or "@hookimpl\ndef extra_infotext(params):\n    return {'Git ext': 'v1'}\n")
        git("init", "-q", cwd=work)
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", "First version", cwd=work)
        bare = tmp_path / "remotes" / f"{name}.git"
        bare.parent.mkdir(parents=True, exist_ok=True)
        git("clone", "-q", "--bare", str(work), str(bare), cwd=tmp_path)
        git("remote", "add", "origin", str(bare), cwd=work)
        git("fetch", "-q", "origin", cwd=work)
        git("branch", "-q", "--set-upstream-to=origin/main", "main", cwd=work)
        return work, bare

    return build

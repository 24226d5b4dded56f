"""ExtensionInstaller with real git: install from file:// URLs, update, refusals, zip and folder installs."""

from __future__ import annotations

import os
import stat
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from sdweb.extensions.git import GitRunner, redact_url
from sdweb.extensions.installer import (
    ExtensionChangeRefused,
    ExtensionInstaller,
    InstallError,
    check_git_url,
)
from sdweb.extensions.manager import ExtensionManager, PluginHost
from sdweb.params import GenerationParams

RemoteFactory = Callable[..., tuple[Path, Path]]


def leftovers(extensions_dir: Path) -> list[str]:
    """Everything under extensions/ except the (empty) staging folder."""
    found = [str(path.relative_to(extensions_dir)) for path in extensions_dir.rglob("*")]
    return [path for path in found if path != ".tmp"]


@pytest.fixture
def manager(make_manager: Callable[..., ExtensionManager]) -> ExtensionManager:
    return make_manager()


@pytest.fixture
def installer(manager: ExtensionManager) -> ExtensionInstaller:
    return ExtensionInstaller(manager)


# ---------------------------------------------------------------------------------------------
# git install and update
# ---------------------------------------------------------------------------------------------


def test_install_from_a_bare_repository_over_file_url(
        installer: ExtensionInstaller, manager: ExtensionManager, extensions_dir: Path,
        remote_repo: RemoteFactory, run_git: Callable[..., str]) -> None:
    work, bare = remote_repo("gitext")

    info = installer.install_from_git(bare.as_uri())

    assert info.name == "gitext" and info.version == "0.1.0"
    assert info.git_commit == run_git("rev-parse", "HEAD", cwd=work).strip()
    assert info.git_remote == bare.as_uri() and info.branch == "main"
    assert leftovers(extensions_dir)[0] == "gitext" and not list((extensions_dir / ".tmp").iterdir())
    # A shallow clone: only the one commit came over.
    assert run_git("rev-list", "--count", "HEAD", cwd=extensions_dir / "gitext").strip() == "1"
    # What was installed loads at the next start.
    fresh = ExtensionManager(extensions_dir, PluginHost(), entry_points=False)
    fresh.load_all()
    assert fresh.host.collect("extra_infotext", params=GenerationParams()) == [("gitext", {"Git ext": "v1"})]


def test_install_a_branch(installer: ExtensionInstaller, remote_repo: RemoteFactory,
                         run_git: Callable[..., str]) -> None:
    work, bare = remote_repo("branchy")
    run_git("checkout", "-q", "-b", "dev", cwd=work)
    manifest = work / "extension.toml"
    manifest.write_text(manifest.read_text().replace('version = "0.1.0"', 'version = "0.2.0-dev"'))
    run_git("commit", "-q", "-am", "Dev version", cwd=work)
    run_git("push", "-q", "origin", "dev", cwd=work)

    info = installer.install_from_git(bare.as_uri(), branch="dev")

    assert info.version == "0.2.0-dev" and info.branch == "dev"


def test_check_updates_lists_new_commits_and_update_fast_forwards(
        installer: ExtensionInstaller, extensions_dir: Path, remote_repo: RemoteFactory,
        run_git: Callable[..., str]) -> None:
    work, bare = remote_repo("updatable")
    installer.install_from_git(bare.as_uri())
    assert installer.check_updates("updatable") == []

    (work / "__init__.py").write_text(
        "from sdweb.plugin_api import hookimpl\n@hookimpl\ndef extra_infotext(params):\n"
        "    return {'Git ext': 'v2'}\n")
    run_git("commit", "-q", "-am", "Say v2 in the infotext", cwd=work)
    (work / "README.md").write_text("docs\n")
    run_git("add", "README.md", cwd=work)
    run_git("commit", "-q", "-m", "Add a readme", cwd=work)
    run_git("push", "-q", "origin", "main", cwd=work)
    new_head = run_git("rev-parse", "HEAD", cwd=work).strip()

    commits = installer.check_updates("updatable")

    assert [commit.subject for commit in commits] == ["Add a readme", "Say v2 in the infotext"]
    assert commits[0].sha == new_head and commits[0].author == "Test Author"
    assert "Add a readme" in str(commits[0])
    # Checking does not change the installed files.
    assert "v2" not in (extensions_dir / "updatable" / "__init__.py").read_text()

    info = installer.update("updatable")

    assert info.git_commit == new_head
    assert "v2" in (extensions_dir / "updatable" / "__init__.py").read_text()
    assert installer.check_updates("updatable") == []


def test_update_refuses_to_overwrite_local_changes(
        installer: ExtensionInstaller, extensions_dir: Path, remote_repo: RemoteFactory,
        run_git: Callable[..., str]) -> None:
    work, bare = remote_repo("edited")
    installer.install_from_git(bare.as_uri())
    (extensions_dir / "edited" / "__init__.py").write_text("# my local edit\n")
    (work / "__init__.py").write_text("# upstream edit\n")
    run_git("commit", "-q", "-am", "Upstream change", cwd=work)
    run_git("push", "-q", "origin", "main", cwd=work)

    with pytest.raises(InstallError, match="Only fast-forward updates"):
        installer.update("edited")

    assert (extensions_dir / "edited" / "__init__.py").read_text() == "# my local edit\n"


def test_a_folder_that_is_not_a_clone_cannot_be_updated(
        installer: ExtensionInstaller, extensions_dir: Path, write_ext: Callable[..., Path]) -> None:
    write_ext(extensions_dir / "plain")

    with pytest.raises(InstallError, match="not installed from git"):
        installer.check_updates("plain")


# ---------------------------------------------------------------------------------------------
# failed installs leave nothing behind
# ---------------------------------------------------------------------------------------------


def test_a_failed_clone_leaves_nothing(installer: ExtensionInstaller, extensions_dir: Path,
                                       tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="could not clone"):
        installer.install_from_git((tmp_path / "no-such-repo.git").as_uri())

    assert leftovers(extensions_dir) == []


def test_a_clone_without_a_manifest_is_refused_and_removed(
        installer: ExtensionInstaller, extensions_dir: Path, remote_repo: RemoteFactory,
        run_git: Callable[..., str]) -> None:
    work, bare = remote_repo("nomanifest")
    run_git("rm", "-q", "extension.toml", cwd=work)
    run_git("commit", "-q", "-m", "Drop the manifest", cwd=work)
    run_git("push", "-q", "origin", "main", cwd=work)

    with pytest.raises(InstallError, match="no extension.toml"):
        installer.install_from_git(bare.as_uri())

    assert leftovers(extensions_dir) == []


def test_a_clone_for_another_plugin_api_is_refused_and_removed(
        installer: ExtensionInstaller, extensions_dir: Path, remote_repo: RemoteFactory) -> None:
    _, bare = remote_repo("future", plugin_api="2")

    with pytest.raises(InstallError, match="plugin API 2"):
        installer.install_from_git(bare.as_uri())

    assert leftovers(extensions_dir) == []


def test_a_name_clash_is_refused_and_the_installed_one_is_kept(
        installer: ExtensionInstaller, extensions_dir: Path, remote_repo: RemoteFactory) -> None:
    _, bare = remote_repo("twice")
    first = installer.install_from_git(bare.as_uri())

    with pytest.raises(InstallError, match="already installed"):
        installer.install_from_git(bare.as_uri())

    assert installer._manager.get("twice").git_commit == first.git_commit
    assert sorted(p for p in leftovers(extensions_dir) if "/" not in p) == ["twice"]


# ---------------------------------------------------------------------------------------------
# URL rules
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://github.com/someone/ext.git",
        "git://github.com/someone/ext.git",
        "ftp://example.com/ext.git",
        "ext::sh -c touch% /tmp/pwned",
        "ext::ssh",
        "--upload-pack=touch /tmp/pwned",
        "-oProxyCommand=touch",
        "ssh://-oProxyCommand=touch/x",
        "git@-oProxyCommand=x:path",
        "https://",
        "",
        "https://github.com/a/b\nhttps://evil",
        "not a url and not a folder",
    ],
)
def test_unaccepted_urls_are_refused_with_a_message(
        installer: ExtensionInstaller, extensions_dir: Path, url: str) -> None:
    with pytest.raises(InstallError, match="https://"):
        installer.install_from_git(url)

    assert leftovers(extensions_dir) == []


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/someone/sdweb-ext.git",
        "https://user@example.com:8443/group/ext",
        "ssh://git@example.com:2222/someone/ext.git",
        "git@github.com:someone/ext.git",
        "file:///srv/git/ext.git",
    ],
)
def test_accepted_url_forms(url: str) -> None:
    assert check_git_url(url) == url


def test_a_local_path_becomes_a_file_url(tmp_path: Path) -> None:
    assert check_git_url(str(tmp_path)) == tmp_path.resolve().as_uri()


@pytest.mark.parametrize("branch", ["--upload-pack=x", "../main", "a b", "-b"])
def test_bad_branch_names_are_refused(installer: ExtensionInstaller, remote_repo: RemoteFactory,
                                      branch: str) -> None:
    _, bare = remote_repo("branchcheck")
    with pytest.raises(InstallError, match="not a valid branch"):
        installer.install_from_git(bare.as_uri(), branch=branch)


def test_git_runs_without_prompts_and_only_with_accepted_protocols(tmp_path: Path) -> None:
    recorder = tmp_path / "fake-git"
    record = tmp_path / "env.txt"
    recorder.write_text(f'#!/bin/sh\nenv > "{record}"\necho "$@" >> "{record}"\n')
    recorder.chmod(recorder.stat().st_mode | stat.S_IEXEC)

    GitRunner(executable=str(recorder)).run(["status", "--short"])

    seen = record.read_text()
    assert "GIT_TERMINAL_PROMPT=0" in seen and "GIT_ALLOW_PROTOCOL=https:ssh:file" in seen
    assert seen.strip().endswith("status --short")


def test_a_git_command_that_hangs_is_stopped(tmp_path: Path) -> None:
    sleeper = tmp_path / "slow-git"
    sleeper.write_text("#!/bin/sh\nexec sleep 30\n")
    sleeper.chmod(sleeper.stat().st_mode | stat.S_IEXEC)

    with pytest.raises(Exception, match="did not finish within"):
        GitRunner(executable=str(sleeper), timeout_s=0.5).run(["fetch"])


@pytest.mark.parametrize(
    ("remote", "shown"),
    [
        ("https://user:ghp_secret@github.com/a/b.git", "https://user:***@github.com/a/b.git"),
        ("https://github.com/a/b.git", "https://github.com/a/b.git"),
        ("git@github.com:a/b.git", "git@github.com:a/b.git"),
    ],
)
def test_remote_urls_are_shown_without_passwords(remote: str, shown: str) -> None:
    assert redact_url(remote) == shown


def test_git_that_is_missing_is_reported() -> None:
    with pytest.raises(Exception, match="git is not installed"):
        GitRunner(executable="/nonexistent/git-binary").run(["status"])


# ---------------------------------------------------------------------------------------------
# --listen without --enable-insecure-extension-access
# ---------------------------------------------------------------------------------------------


def test_lan_mode_refuses_every_change_and_explains_why(
        make_manager: Callable[..., ExtensionManager], extensions_dir: Path, remote_repo: RemoteFactory,
        write_ext: Callable[..., Path], tmp_path: Path) -> None:
    _, bare = remote_repo("lanext")
    write_ext(extensions_dir / "present", extra_manifest='requirements = ["numpy"]\n')
    zipped = tmp_path / "x.zip"
    with zipfile.ZipFile(zipped, "w") as bundle:
        bundle.writestr("extension.toml", 'name = "z"\nversion = "1"\nplugin_api = "1"\n')
    installer = ExtensionInstaller(make_manager(changes_allowed=False))
    attempts = [
        lambda: installer.install_from_git(bare.as_uri()),
        lambda: installer.install_from_folder(extensions_dir / "present"),
        lambda: installer.install_from_zip(zipped),
        lambda: installer.update("present"),
        lambda: installer.uninstall("present"),
        lambda: installer.install_requirements("present"),
    ]

    for attempt in attempts:
        with pytest.raises(ExtensionChangeRefused) as refused:
            attempt()
        assert "--listen" in str(refused.value) and "--enable-insecure-extension-access" in str(refused.value)

    assert sorted(p for p in leftovers(extensions_dir) if "/" not in p) == ["present"]


# ---------------------------------------------------------------------------------------------
# local folder and zip
# ---------------------------------------------------------------------------------------------


def test_install_from_a_local_folder_copies_it(
        installer: ExtensionInstaller, extensions_dir: Path, tmp_path: Path,
        write_ext: Callable[..., Path]) -> None:
    source = write_ext(tmp_path / "elsewhere" / "copied-ext")

    info = installer.install_from_folder(source)

    assert info.name == "copied-ext" and (extensions_dir / "copied-ext" / "__init__.py").is_file()
    assert (source / "__init__.py").is_file()  # the original stays where it was


def make_zip(path: Path, entries: dict[str, str], *, link: tuple[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        for name, text in entries.items():
            bundle.writestr(name, text)
        if link is not None:
            info = zipfile.ZipInfo(link[0])
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            bundle.writestr(info, link[1])
    return path


GOOD_MANIFEST = 'name = "zipped"\nversion = "1.0"\nplugin_api = "1"\n'


def test_install_from_a_zip_with_a_top_folder(installer: ExtensionInstaller, extensions_dir: Path,
                                              tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "zipped-main.zip", {
        "zipped-main/extension.toml": GOOD_MANIFEST,
        "zipped-main/__init__.py": "from sdweb.plugin_api import hookimpl\n",
        "zipped-main/data/notes.txt": "hello",
    })

    info = installer.install_from_zip(archive)

    assert info.name == "zipped" and (extensions_dir / "zipped" / "data" / "notes.txt").read_text() == "hello"
    assert not list((extensions_dir / ".tmp").iterdir())


@pytest.mark.parametrize(
    ("entries", "link"),
    [
        ({"../escaped.py": "x"}, None),
        ({"ok/../../escaped.py": "x"}, None),
        ({"/tmp/absolute-escape.py": "x"}, None),
        ({"C:/windows-drive.py": "x"}, None),
        ({}, ("evil-link", "/etc")),
    ],
)
def test_zip_entries_that_escape_are_refused_and_nothing_is_written(
        installer: ExtensionInstaller, extensions_dir: Path, tmp_path: Path,
        entries: dict[str, str], link: tuple[str, str] | None) -> None:
    archive = make_zip(tmp_path / "evil.zip", {
        "extension.toml": GOOD_MANIFEST, "__init__.py": "", **entries}, link=link)

    with pytest.raises(InstallError, match="refused"):
        installer.install_from_zip(archive)

    assert leftovers(extensions_dir) == []
    assert not (tmp_path / "escaped.py").exists() and not (extensions_dir / "escaped.py").exists()


def test_a_file_that_is_not_a_zip_is_refused(installer: ExtensionInstaller, tmp_path: Path) -> None:
    fake = tmp_path / "fake.zip"
    fake.write_text("not a zip")
    with pytest.raises(InstallError, match="not a readable zip"):
        installer.install_from_zip(fake)


# ---------------------------------------------------------------------------------------------
# uninstall and requirements
# ---------------------------------------------------------------------------------------------


def test_uninstall_removes_the_folder_including_git_objects(
        installer: ExtensionInstaller, extensions_dir: Path, remote_repo: RemoteFactory) -> None:
    _, bare = remote_repo("goner")
    installer.install_from_git(bare.as_uri())

    installer.uninstall("goner")

    assert leftovers(extensions_dir) == []
    assert [info.name for info in installer._manager.list()] == []
    with pytest.raises(InstallError, match="no installed extension folder named 'goner'"):
        installer.uninstall("goner")


@pytest.mark.parametrize("name", ["..", ".tmp", "../outside", ""])
def test_uninstall_refuses_names_outside_the_extensions(
        installer: ExtensionInstaller, name: str) -> None:
    with pytest.raises(InstallError, match="no installed extension folder"):
        installer.uninstall(name)


@pytest.mark.skipif(sys.platform == "win32", reason="uses a shell script as a stand-in for python")
def test_requirements_are_installed_only_when_asked_and_with_pip(
        make_manager: Callable[..., ExtensionManager], extensions_dir: Path, tmp_path: Path,
        write_ext: Callable[..., Path]) -> None:
    calls = tmp_path / "pip-calls.txt"
    fake_python = tmp_path / "fake-python"
    fake_python.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\necho "Successfully installed"\n')
    fake_python.chmod(fake_python.stat().st_mode | stat.S_IEXEC)
    write_ext(extensions_dir / "needs-deps", extra_manifest='requirements = ["numpy>=1.26", "pillow"]\n')
    manager = make_manager()
    installer = ExtensionInstaller(manager, python=str(fake_python))

    (info,) = manager.load_all()
    assert info.requirements == ("numpy>=1.26", "pillow")
    assert not calls.exists()  # loading installs nothing

    output = installer.install_requirements("needs-deps")

    assert "Successfully installed" in output
    assert calls.read_text().split() == [
        "-m", "pip", "install", "--disable-pip-version-check", "--", "numpy>=1.26", "pillow"]
    assert os.access(fake_python, os.X_OK)

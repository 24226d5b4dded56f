"""Running the real ``git`` program for extension folders: one place for its environment and limits.

Every command is an argument list (no shell), has a timeout, never prompts (``GIT_TERMINAL_PROMPT=0``,
ssh in batch mode) and may only use the transports we accept (``GIT_ALLOW_PROTOCOL``), which also
covers redirects and submodules. Failures raise :class:`GitError` carrying git's own last words.
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: Transports git may use on our behalf; "ext" (runs a command) and plain "http"/"git" are not here.
ALLOWED_PROTOCOLS = "https:ssh:file"
DEFAULT_TIMEOUT_S = 300.0


class GitError(RuntimeError):
    """A git command failed, timed out, or git is not installed."""


@dataclass(frozen=True)
class CommitSummary:
    """One commit as the Extensions tab lists it."""

    sha: str
    author: str
    date: str  # ISO 8601, as git prints it
    subject: str

    @property
    def short_sha(self) -> str:
        return self.sha[:8]

    def __str__(self) -> str:
        return f"{self.short_sha} {self.date[:10]} {self.author}: {self.subject}"


@dataclass(frozen=True)
class GitFacts:
    """What the installed list shows about a clone; None where the folder is not a git clone."""

    commit: str | None = None
    remote: str | None = None
    branch: str | None = None


def redact_url(url: str) -> str:
    """``https://user:token@host/x`` -> ``https://user:***@host/x``: remotes are shown in the UI."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    userinfo, _, host_and_path = rest.partition("@")
    if ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host_and_path}"


class GitRunner:
    """Runs git with a fixed, safe environment. One instance is shared by the installer and manager."""

    def __init__(self, *, executable: str = "git", timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self._executable = executable
        self._timeout_s = timeout_s

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["GIT_TERMINAL_PROMPT"] = "0"
        env["GIT_ALLOW_PROTOCOL"] = ALLOWED_PROTOCOLS
        # A password prompt on the server's console would hang the request forever.
        if "GIT_SSH_COMMAND" not in env and "GIT_SSH" not in env:
            env["GIT_SSH_COMMAND"] = "ssh -o BatchMode=yes"
        return env

    def run(self, args: list[str], *, cwd: Path | None = None, timeout_s: float | None = None) -> str:
        """Run ``git <args>`` and return its stdout; raise GitError with git's stderr on failure."""
        command = [self._executable, *args]
        limit = self._timeout_s if timeout_s is None else timeout_s
        logger.debug("running %s in %s", command, cwd)
        try:
            completed = subprocess.run(
                command,
                cwd=cwd,
                env=self._environment(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                encoding="utf-8",
                errors="replace",
                timeout=limit,
                check=False,
            )
        except FileNotFoundError:
            raise GitError(
                f"git is not installed or not on PATH ({self._executable!r}); install git and restart"
            ) from None
        except subprocess.TimeoutExpired:
            raise GitError(f"git {args[0]} did not finish within {limit:.0f} s and was stopped") from None
        if completed.returncode != 0:
            detail = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
            raise GitError(f"git {args[0]} failed: " + (" / ".join(detail) or f"exit {completed.returncode}"))
        return completed.stdout

    def facts(self, folder: Path) -> GitFacts:
        """Commit, origin URL and branch of a clone; empty facts for a folder that is not its own clone."""
        # Without this check, a folder inside another repository (a checkout of sdweb) reports that one.
        if not (folder / ".git").exists():
            return GitFacts()
        try:
            commit = self.run(["rev-parse", "HEAD"], cwd=folder, timeout_s=15).strip() or None
        except GitError as exc:
            logger.debug("no commit for %s: %s", folder, exc)
            return GitFacts()
        try:
            branch = self.run(["rev-parse", "--abbrev-ref", "HEAD"], cwd=folder, timeout_s=15).strip()
        except GitError:
            branch = ""
        try:
            remote = self.run(["config", "--get", "remote.origin.url"], cwd=folder, timeout_s=15).strip()
        except GitError:  # exit 1 simply means "no origin"
            remote = ""
        detached = branch in ("", "HEAD")
        return GitFacts(commit=commit, remote=redact_url(remote) or None, branch=None if detached else branch)

    def log(self, folder: Path, revision_range: str) -> list[CommitSummary]:
        """Commits in ``revision_range`` (newest first)."""
        output = self.run(
            ["log", "--no-color", "--format=%H%x1f%an%x1f%aI%x1f%s", revision_range, "--"],
            cwd=folder,
            timeout_s=30,
        )
        commits = []
        for line in output.splitlines():
            parts = line.split("\x1f")
            if len(parts) == 4:
                commits.append(CommitSummary(sha=parts[0], author=parts[1], date=parts[2], subject=parts[3]))
        return commits

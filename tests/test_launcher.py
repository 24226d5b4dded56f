"""The shell launcher from a clean copy of the repository: first run installs and serves, second is quick.

Slow (it creates a virtual environment and installs torch and sdweb into it), so it is marked ``slow``;
the CI test command runs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from benchmarks.server import free_port

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _clean_copy(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def _start_and_wait(repo: Path, data: Path, port: int, timeout: float) -> tuple[float, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONHOME"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    env["COMMANDLINE_ARGS"] = f"--data-dir {data} --port {port} --skip-demo-model"
    started = time.monotonic()
    process = subprocess.Popen(["bash", "webui.sh"], cwd=repo, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        while time.monotonic() - started < timeout:
            if process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=3) as response:
                    if response.status == 200:
                        return time.monotonic() - started, ""
            except OSError:
                time.sleep(0.5)
    finally:
        process.terminate()
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    raise AssertionError(f"the launcher did not serve the page:\n{output[-3000:]}")


def test_launcher_installs_then_starts_quickly(tmp_path: Path) -> None:
    repo = _clean_copy(tmp_path / "sdweb")
    data = tmp_path / "data"
    first, _ = _start_and_wait(repo, data, free_port(), timeout=900)
    assert (repo / "venv" / ".sdweb-installed").exists()
    second, _ = _start_and_wait(repo, data, free_port(), timeout=120)
    assert second < 60, f"second start took {second:.0f} s: the installs were not skipped"
    assert second < first


def test_windows_launcher_mirrors_the_shell_one() -> None:
    raw = (ROOT / "launch.bat").read_bytes()
    bat = raw.decode()
    shell = (ROOT / "webui.sh").read_text()
    for needle in ("webui-user", "TORCH_COMMAND", "VENV_DIR", "COMMANDLINE_ARGS", ".sdweb-installed",
                   "pip install -q -e .", "webui.py"):
        assert needle in bat and needle in shell, needle
    assert raw.count(b"\r\n") == raw.count(b"\n"), "launch.bat must use CRLF line endings"

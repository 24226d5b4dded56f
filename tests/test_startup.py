"""Start-up: the page must not wait for torch, and the real server answers on its port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from benchmarks.server import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_building_the_app_does_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys, json\n"
        "from sdweb.cli import build_parser, settings_from_args, create_app\n"
        "from sdweb.services.factory import build_services\n"
        f"argv = ['--data-dir', {str(tmp_path)!r}, '--api']\n"
        "settings = settings_from_args(build_parser().parse_args(argv))\n"
        "services = build_services(settings)\n"
        "app = create_app(services)\n"
        "print(json.dumps(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_server_serves_the_page_and_says_where_to_put_a_checkpoint(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "webui.py"), "--data-dir", str(tmp_path), "--port", str(port), "--api",
         "--skip-demo-model"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 120
        page = ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    page = response.read().decode()
                    break
            except OSError:
                time.sleep(0.2)
        assert page, "the server did not answer"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/sdapi/v1/sd-models", timeout=10) as response:
            assert json.loads(response.read()) == []
        # the server refuses a second instance on the same port with a clear message
        second = subprocess.run([sys.executable, str(ROOT / "webui.py"), "--data-dir", str(tmp_path),
                                 "--port", str(port)], capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert second.returncode == 2
        assert f"port {port}" in second.stderr and "already in use" in second.stderr
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=20)
    assert f"http://127.0.0.1:{port}" in out

"""Time to a served page vs. the time ``import gradio`` alone takes, side by side in one run.

Issue target: the page is served no later than 3 s after what ``python -c "import gradio"`` takes on the
same machine. Each round runs both, alternating, in fresh processes; the median of each is printed.

    python benchmarks/startup.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the repository root, for benchmarks.server

from benchmarks.server import free_port  # noqa: E402


def time_import_gradio() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import gradio"], check=True)
    return time.perf_counter() - started


def time_first_page(data_dir: Path) -> float:
    """Seconds from process start to HTTP 200 on '/'."""
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "webui.py"), "--data-dir", str(data_dir), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = started + 120
        while time.perf_counter() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    if response.status == 200:
                        return time.perf_counter() - started
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the server did not answer within 120 s")
    finally:
        process.terminate()
        process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    imports: list[float] = []
    pages: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            imports.append(time_import_gradio())
            pages.append(time_first_page(Path(tmp)))
    gradio_s = statistics.median(imports)
    page_s = statistics.median(pages)
    print(f"import gradio alone : {gradio_s:6.2f} s (median of {args.rounds}: {imports})")
    print(f"sdweb first page    : {page_s:6.2f} s (median of {args.rounds}: {pages})")
    print(f"difference          : {page_s - gradio_s:+6.2f} s (target: <= +3.00 s)")
    print(f"ratio               : {page_s / gradio_s:6.2f}x")


if __name__ == "__main__":
    main()

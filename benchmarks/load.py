"""Load on a real server: requests per second and p50/p95 latency with 1 and with 5 concurrent clients.

Usage::

    python benchmarks/load.py                       # 1 then 5 clients x 40 mixed requests each
    python benchmarks/load.py --clients 1 8 --requests 20

The server is ``webui.py --nowebui`` in a process of its own on a temporary data folder with the bundled
demo model (``sdweb/data/demo``), 64x64, 1 step. Each client sends the same mix of requests one after
the other (:func:`plan`): txt2img and img2img that save their images, options reads and writes of a
harmless key, progress polls, png-info and an interrupt now and then. Requests per second counts every
request; the latencies are given per kind, since a generation waits in the one GPU queue behind the
others' and a progress poll does not. The first request of each kind (model load, first encode) is made
before the clock starts.

``tests/test_load.py`` runs the same harness as a soak test and checks what the answers say.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the repository root, for benchmarks.server

from benchmarks import server  # noqa: E402

GENERATION = {"steps": 1, "width": 64, "height": 64, "sampler_name": "Euler", "save_images": True,
              "cfg_scale": 5}
#: One client's sequence of request kinds, repeated to its length (3 generations in every 10 requests).
MIX = ("txt2img", "options-read", "progress", "img2img", "options-write", "png-info", "txt2img", "progress",
       "interrupt", "options-read")


@dataclass
class Record:
    """One request as a client saw it."""

    client: int
    index: int
    kind: str
    status: int
    sent: float
    latency: float
    seed: int | None = None
    body: dict[str, Any] = field(default_factory=dict)


def plan(count: int) -> list[str]:
    return [MIX[index % len(MIX)] for index in range(count)]


@contextlib.contextmanager
def running_server(data: Path, *, log: Path | None = None) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``webui.py --nowebui --threads 1`` on ``data`` (the demo model) until the block ends; yields (process,
    API URL)."""
    with server.running_server(data, args=("--nowebui", "--threads", "1"), log=log) as running:
        yield running


def rss_bytes(pid: int) -> int | None:
    """Resident memory of process ``pid`` (Linux ``/proc``); None elsewhere."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def png_b64(seed: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (seed * 37 % 256, seed * 91 % 256, 120)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def send(client: httpx.Client, url: str, kind: str, seed: int) -> tuple[int, dict[str, Any]]:
    """One request of ``kind``; returns (status, JSON body or {})."""
    if kind == "txt2img":
        answer = client.post(f"{url}/txt2img", json={**GENERATION, "prompt": f"a red circle {seed}",
                                                     "seed": seed})
    elif kind == "img2img":
        answer = client.post(f"{url}/img2img", json={**GENERATION, "prompt": f"a blue square {seed}",
                                                     "seed": seed, "init_images": [png_b64(seed)],
                                                     "denoising_strength": 0.5})
    elif kind == "options-read":
        answer = client.get(f"{url}/options")
    elif kind == "options-write":
        answer = client.post(f"{url}/options", json={"jpeg_quality": 80 + seed % 15})
    elif kind == "progress":
        answer = client.get(f"{url}/progress", params={"skip_current_image": "true"})
    elif kind == "png-info":
        answer = client.post(f"{url}/png-info", json={"image": png_b64(seed)})
    elif kind == "interrupt":
        answer = client.post(f"{url}/interrupt")
    else:
        raise ValueError(f"unknown request kind {kind!r}")
    try:
        body = answer.json() if kind in ("txt2img", "img2img") else {}
    except ValueError:
        body = {}
    return answer.status_code, body if isinstance(body, dict) else {}


def run_clients(url: str, clients: int, requests: int, *, seed_base: int = 0) -> tuple[list[Record], float]:
    """``clients`` threads, each sending ``requests`` requests of :func:`plan`; (records, wall seconds)."""
    records: list[Record] = []
    lock = threading.Lock()
    start_gate = threading.Barrier(clients)

    def client_loop(number: int) -> None:
        with httpx.Client(timeout=600) as client:
            start_gate.wait()
            for index, kind in enumerate(plan(requests)):
                seed = seed_base + number * 1000 + index
                sent = time.monotonic()
                try:
                    status, body = send(client, url, kind, seed)
                except httpx.HTTPError as exc:
                    status, body = 0, {"error": str(exc)}
                record = Record(number, index, kind, status, sent, time.monotonic() - sent,
                                seed if kind in ("txt2img", "img2img") else None, body)
                with lock:
                    records.append(record)

    threads = [threading.Thread(target=client_loop, args=(number,)) for number in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return records, time.monotonic() - started


def warm_up(url: str) -> None:
    """One request of each kind (model load, first encode, first save) before anything is measured."""
    with httpx.Client(timeout=600) as client:
        for kind in dict.fromkeys(MIX):
            status, _body = send(client, url, kind, 999_999)
            if status >= 500:
                raise RuntimeError(f"warm-up {kind} answered {status}")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def summary(records: list[Record], wall: float) -> dict[str, Any]:
    by_kind: dict[str, list[float]] = {}
    for record in records:
        by_kind.setdefault(record.kind, []).append(record.latency)
    everything = [record.latency for record in records]
    return {
        "requests": len(records),
        "seconds": wall,
        "rps": len(records) / wall if wall else float("nan"),
        "p50": statistics.median(everything) if everything else float("nan"),
        "p95": percentile(everything, 0.95),
        "errors": sum(1 for record in records if record.status >= 500 or record.status == 0),
        "by_kind": {kind: (statistics.median(values), percentile(values, 0.95), len(values))
                    for kind, values in sorted(by_kind.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--requests", type=int, default=40, help="requests per client")
    parser.add_argument("--json", action="store_true", help="print one JSON line per run as well")
    args = parser.parse_args()
    print(f"demo model 64x64, Euler, 1 step; {args.requests} mixed requests per client; "
          f"{os.cpu_count()} CPUs; server: webui.py --nowebui --threads 1")
    with tempfile.TemporaryDirectory(prefix="sdweb-load-") as temp, running_server(Path(temp)) as (_p, url):
        warm_up(url)
        for count in args.clients:
            records, wall = run_clients(url, count, args.requests, seed_base=count * 100_000)
            figures = summary(records, wall)
            print(f"{count} client(s): {figures['requests']} requests in {wall:.1f} s = "
                  f"{figures['rps']:.1f} req/s; latency p50 {figures['p50'] * 1000:.0f} ms, "
                  f"p95 {figures['p95'] * 1000:.0f} ms; 5xx/failed: {figures['errors']}")
            for kind, (p50, p95, n) in figures["by_kind"].items():
                print(f"    {kind:<14} n={n:<4} p50 {p50 * 1000:7.0f} ms   p95 {p95 * 1000:7.0f} ms")
            if args.json:
                print(json.dumps({"clients": count, **{k: v for k, v in figures.items() if k != "by_kind"}}))


if __name__ == "__main__":
    main()

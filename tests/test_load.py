"""Load and soak on a real server (``webui.py --nowebui``, the bundled demo model, 64x64, 1 step): 5
concurrent clients x 40 mixed requests (txt2img and img2img that save, options reads and writes of a
harmless key, progress polls, png-info, interrupts). No 5xx; every generation answered 200 has its files
and its history row; jobs run in the order they arrived; the server's memory after warm-up grows by at most
10%. The same harness is ``benchmarks/load.py``."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from benchmarks.load import rss_bytes, run_clients, running_server, warm_up

pytestmark = pytest.mark.slow

CLIENTS, REQUESTS = 5, 40


def _history(db: Path) -> dict[int, tuple[int, set[str]]]:
    """seed -> (row id, output paths) for every image in the history."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT id, seeds_json, output_paths_json FROM entries").fetchall()
    finally:
        conn.close()
    found: dict[int, tuple[int, set[str]]] = {}
    for row_id, seeds, paths in rows:
        for seed in json.loads(seeds):
            found[int(seed)] = (int(row_id), set(json.loads(paths)))
    return found


def test_five_clients_of_mixed_requests(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with running_server(data, log=tmp_path / "server.log") as (process, url):
        warm_up(url)
        run_clients(url, CLIENTS, 6, seed_base=500_000)  # every kind once per client thread, concurrently
        baseline = rss_bytes(process.pid)
        records, wall = run_clients(url, CLIENTS, REQUESTS)
        after = rss_bytes(process.pid)
    log = (tmp_path / "server.log").read_text(errors="replace")
    assert len(records) == CLIENTS * REQUESTS
    failed = [(r.kind, r.status, r.body.get("error")) for r in records if r.status != 200]
    assert failed == [], f"{failed[:5]}\n{log[-3000:]}"
    assert "Traceback" not in log, log[-3000:]

    history = _history(data / "history.db")
    files = {int(path.stem.split("-", 1)[1]): path
             for path in (data / "outputs").glob("*-images/*/*.png") if not path.name.startswith(".")}
    generations = [r for r in records if r.seed is not None]
    assert len(generations) == CLIENTS * REQUESTS * 3 // 10
    made = 0
    for record in generations:
        info = json.loads(record.body["info"])
        seeds = info["all_seeds"][: len(record.body["images"])]
        if not record.body["images"]:
            assert info.get("interrupted") or "nterrupt" in json.dumps(info), info  # stopped while queued
            continue
        made += 1
        assert seeds[0] == record.seed
        for seed in seeds:
            assert seed in files, f"{record.kind} seed {seed}: no file in outputs"
            assert seed in history, f"{record.kind} seed {seed}: no history row"
            assert str(files[seed]) in history[seed][1]
    assert made >= len(generations) // 2  # interrupts stop some, not most

    # FIFO: of two generations sent a second or more apart, the earlier one ran first (its row is older).
    ran = sorted((r.sent, history[r.seed][0]) for r in generations if r.seed in history)
    for index, (sent, row) in enumerate(ran):
        for later_sent, later_row in ran[index + 1:]:
            if later_sent - sent >= 1.0:
                assert row < later_row, f"a request sent {later_sent - sent:.1f} s later ran first"

    if baseline is not None and after is not None:
        assert after <= baseline * 1.10, f"RSS grew from {baseline >> 20} MB to {after >> 20} MB"
    assert wall < 300

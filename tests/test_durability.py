"""The durability contract with real processes: several uvicorn workers, and SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import httpx
import pytest

from consent_middleware.raw.layout import RawLayout

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "apps" / "recording_worker.py"
BURST = 400


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(url: str, server: subprocess.Popen[bytes]) -> None:
    for _ in range(600):  # bounded: about 30 s
        assert server.poll() is None, "the server exited early"
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError("the server did not start")


def count_events(raw: Path) -> int:
    glob = RawLayout.at(raw).events_glob()
    (row,) = duckdb.execute(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall()
    return int(row[0])


@pytest.mark.slow
def test_four_uvicorn_workers_lose_nothing_on_graceful_stop(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "CONSENT_RAW_DIR": str(tmp_path), "CONSENT_SECRET_KEY": "k" * 32}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "examples.shop_app:app", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "4", "--log-level", "warning"],
        cwd=ROOT, env=env,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(f"{base}/cart", server)
        lock = threading.Lock()
        ok = 0

        def browse(n: int) -> None:
            nonlocal ok
            # A new connection per request, so the kernel spreads them over the workers.
            with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)) as client:
                for i in range(n):
                    response = client.get(f"{base}/products/{1 + i % 40}", timeout=30.0)
                    if response.status_code == 200:
                        with lock:
                            ok += 1

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(browse, [BURST // 8] * 8))
        assert ok == BURST
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    # The readiness probes of /cart were recorded too; count only the burst's route.
    glob = RawLayout.at(tmp_path).events_glob()
    rows = duckdb.execute(
        f"SELECT path, count(*) FROM read_parquet('{glob}') GROUP BY path ORDER BY path"
    ).fetchall()
    counts = dict(rows)
    assert counts.pop("/products/{product_id}") == BURST
    assert set(counts) <= {"/cart"}
    assert count_events(tmp_path) == BURST + counts.get("/cart", 0)
    writers = {p.name.split("-")[2] for p in RawLayout.at(tmp_path).events.rglob("*.parquet")}
    assert len(writers) >= 2, "expected several worker processes to write segments"
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.slow
def test_sigkill_loses_at_most_the_last_flush_interval(tmp_path: Path) -> None:
    interval = 0.2
    worker = subprocess.Popen(
        [sys.executable, str(WORKER), str(tmp_path), str(interval), "1000000"],
        cwd=ROOT, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert worker.stdout is not None
    acked: dict[int, float] = {}
    first: float | None = None
    try:
        for raw_line in worker.stdout:
            i, at = raw_line.split()
            acked[int(i)] = float(at)
            first = first or float(at)
            # Kill mid-stream, after several flushes have happened.
            if len(acked) >= 500 and float(at) - first >= 8 * interval:
                break
    finally:
        worker.send_signal(signal.SIGKILL)
        killed_at = time.time()
        rest, _ = worker.communicate(timeout=60)
    for raw_line in rest.splitlines():  # acknowledgements printed before the kill landed
        i, at = raw_line.split()
        acked[int(i)] = float(at)
    assert worker.returncode == -signal.SIGKILL

    glob = RawLayout.at(tmp_path).events_glob()
    stored = {
        int(ua[2:])
        for (ua,) in duckdb.execute(f"SELECT user_agent FROM read_parquet('{glob}')").fetchall()
    }
    assert stored, "several flushes should have happened before the kill"
    assert stored <= set(acked) | {max(acked) + 1}  # at most the one not yet acknowledged
    lost = set(acked) - stored
    assert not lost or min(lost) > max(stored), "only the newest events may be lost"
    # What was lost had all been acknowledged within the last flush interval (plus the
    # time one flush takes, bounded here by a second interval).
    window_start = min(killed_at, max(acked.values())) - 2 * interval
    assert all(acked[i] >= window_start for i in lost), (len(lost), len(acked))

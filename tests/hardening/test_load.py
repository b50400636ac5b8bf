"""Load: the example shop under uvicorn with two workers and 64 connections (issue 7).

Runs ``benchmarks/load.py`` (the 60 s benchmark) in a short, count-bounded version and
checks what it promises: no 5xx, no connection errors, every response on a recorded route
is an event in RAW after a graceful stop, and the workers' memory does not grow.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from consent_middleware.raw.layout import RawLayout

ROOT = Path(__file__).resolve().parents[2]
REQUESTS = 3000
WARMUP = 1000
MAX_RSS_GROWTH = 0.10  # resident memory after the run within 10% of after warm-up


@pytest.mark.slow
def test_two_workers_under_64_connections_serve_and_record_everything(tmp_path: Path) -> None:
    raw, output = tmp_path / "raw", tmp_path / "load.json"
    subprocess.run(
        [sys.executable, "-m", "benchmarks.load", "--requests", str(REQUESTS),
         "--warmup", str(WARMUP), "--concurrency", "64", "--workers", "2",
         "--raw", str(raw), "--output", str(output)],
        cwd=ROOT, check=True, timeout=600,
    )  # fmt: skip
    result = json.loads(output.read_text(encoding="utf-8"))

    assert result["requests"] == REQUESTS
    assert result["connection_errors"] == 0, result["connection_error_kinds"]
    assert result["server_errors_5xx"] == 0, result["statuses"]
    assert sum(result["statuses"].values()) == REQUESTS + WARMUP
    assert result["server_exit_status"] == 0 and result["workers_survived"]

    # Counted here, independently of the benchmark: one event per response on a recorded
    # route, nothing lost at the graceful stop, nothing half-written left behind.
    glob = RawLayout.at(raw).events_glob()
    ((stored,),) = duckdb.execute(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall()
    assert stored == result["recorded_responses"] > REQUESTS // 2
    rows = duckdb.execute(f"SELECT DISTINCT path FROM read_parquet('{glob}')").fetchall()
    paths = {p for (p,) in rows}
    assert paths == {"/", "/cart", "/products/{product_id}", "/widgets/recommendations"}
    assert not list(raw.rglob("*.tmp"))
    writers = {p.name.split("-")[2] for p in RawLayout.at(raw).events.rglob("*.parquet")}
    assert len(writers) == 2, "both workers should have served and recorded"

    before, after = result["rss_kib_after_warmup"], result["rss_kib_after_run"]
    assert len(before) == 2 and before.keys() == after.keys()
    for pid, rss in after.items():
        assert rss <= before[pid] * (1 + MAX_RSS_GROWTH), (pid, before[pid], rss)

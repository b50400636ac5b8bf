"""Benchmark: ``anonymizer run`` on the DuckDB engine and on the Spark engine, same input.

    python -m benchmarks.spark_vs_duckdb                    # 10M events
    python -m benchmarks.spark_vs_duckdb --events 1000000 --spark-master 'local[2]'

A synthetic RAW store (``tests/synthetic.py``, 7 days) is generated once; each engine then
runs a cold, full pipeline (all ten tables, k=10) in its own subprocess. Wall time is the
child's; for Spark the JVM start-up is also reported apart (``session_seconds``). Peak
memory is the peak of the summed RSS of the child's whole process tree (for Spark: the
Python driver, the JVM and the Python UDF workers), sampled from /proc every 50 ms. The two
STATS folders are then compared table by table (``identical``). Results go to
``benchmarks/results/spark_vs_duckdb.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.pipeline import SITE, K, generate, machine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "spark_vs_duckdb.json"
ENGINES = ("duckdb", "spark")


# ----------------------------------------------------------------------------- child


def child(engine: str, raw: Path, stats: Path, master: str) -> None:
    """Run the pipeline with ``engine`` in this process; print the timings as JSON."""
    from anonymizer.pipeline import RunOptions, run

    session_seconds = 0.0
    if engine == "spark":
        from anonymizer.engines.spark import spark_session

        started = time.perf_counter()
        spark_session(master)
        session_seconds = time.perf_counter() - started
    started = time.perf_counter()
    options = RunOptions(k=K, site_hosts=(SITE,), engine=engine, spark_master=master)  # type: ignore[arg-type]
    report = run(raw, stats, options)
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "run_seconds": seconds,
                "session_seconds": session_seconds,
                "input_rows": report.input_rows,
                "partitions": report.partitions,
            }
        )
    )


# ----------------------------------------------------------------------------- harness


def _tree_rss_kb(root: int) -> int:
    """Summed VmRSS of ``root`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        pid, ppid, kb = int(entry.name), 0, 0
        for line in status.splitlines():
            if line.startswith("PPid:"):
                ppid = int(line.split()[1])
            elif line.startswith("VmRSS:"):
                kb = int(line.split()[1])
        children.setdefault(ppid, []).append(pid)
        rss[pid] = kb
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


def measure(engine: str, raw: Path, stats: Path, master: str, timeout: float) -> dict[str, Any]:
    """Run one engine in a subprocess; wall time, and peak RSS of its process tree."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.spark_vs_duckdb",
        "--child",
        engine,
        str(raw),
        str(stats),
        "--spark-master",
        master,
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _tree_rss_kb(process.pid))
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return {"error": f"did not finish within {timeout:.0f} s"}
    finally:
        stop.set()
        sampler.join()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        return {"error": err.strip().splitlines()[-1] if err.strip() else "failed"}
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["wall_seconds"] = wall
    result["peak_tree_rss_mb"] = round(peak / 1024, 1)
    result["events_per_second"] = result["input_rows"] / result["run_seconds"]
    return result


def identical(first: Path, second: Path) -> bool:
    """True when both STATS folders hold the same rows in every table."""
    import pyarrow.dataset as ds

    from anonymizer.tables import TABLES

    for name, table in TABLES.items():
        rows = []
        for stats in (first, second):
            folder = stats / name
            data = (
                ds.dataset(folder, partitioning="hive", schema=table.schema).to_table()
                if folder.is_dir()
                else table.schema.empty_table()
            )
            rows.append(sorted(map(repr, data.to_pylist())))
        if rows[0] != rows[1]:
            return False
    return True


def versions() -> dict[str, str]:
    """Engine versions (and Java's) behind the figures."""
    import duckdb
    import pyspark

    java = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
    return {
        "duckdb": duckdb.__version__,
        "pyspark": pyspark.__version__,
        "java": (java.stderr.splitlines() or [""])[0],
    }


def main() -> None:
    """Run the benchmark and write the JSON results."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--spark-master", default="local[*]")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=3, metavar=("ENGINE", "RAW", "STATS"))
    args = parser.parse_args()
    if args.child:
        engine, raw, stats = args.child
        child(engine, Path(raw), Path(stats), args.spark_master)
        return
    results: dict[str, Any] = {
        "machine": {**machine(), "nproc": os.cpu_count(), "load_average": os.getloadavg()},
        **versions(),
        "k": K,
        "events": args.events,
        "spark_master": args.spark_master,
    }
    with tempfile.TemporaryDirectory(prefix="bench-spark-") as tmp:
        raw = Path(tmp) / "raw"
        results["generate_seconds"] = generate(raw, args.events)
        for engine in ENGINES:
            stats = Path(tmp) / f"stats-{engine}"
            results[engine] = measure(engine, raw, stats, args.spark_master, args.timeout)
            print(engine, json.dumps(results[engine]), flush=True)
        if all("error" not in results[e] for e in ENGINES):
            results["identical"] = identical(Path(tmp) / "stats-duckdb", Path(tmp) / "stats-spark")
    results["load_average_after"] = os.getloadavg()
    existing: dict[str, Any] = {}
    if args.out.is_file():
        existing = json.loads(args.out.read_text(encoding="utf-8"))
    existing[str(args.events)] = results
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(existing, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Benchmark: ``anonymizer run`` against a bare DuckDB pass and a straightforward pandas job.

    python -m benchmarks.pipeline                      # 1M and 10M events
    python -m benchmarks.pipeline --sizes 1000000 3000000 --pandas-max 3000000
    python -m benchmarks.pipeline --runs 3             # each contender 3 times, best kept

For each size a synthetic RAW store is generated (``tests/synthetic.py``), then each
contender runs in its own subprocess, which reports its wall time and peak RSS (from
``resource.getrusage``): this pipeline (all ten tables), the floor (DuckDB reads RAW once
and computes pageviews and distinct visitors per date and path), and the same ten tables
written the way an analyst would in pandas. Two more time a *later* run alone (after a cold
run over a copy of RAW, 1,000 new events for the last day and 100 new ledger decisions): as
it is, and with the ledger cache deleted first (the whole ledger parsed again, as before the
cache). Results go to ``benchmarks/results/pipeline.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "pipeline.json"
K = 10
MAX_PV = 20
SITE = "shop.example.com"
LAST_DAY = datetime(2026, 1, 11, tzinfo=UTC)
"""The last of the seven days the generator writes (from 2026-01-05)."""
NOW = LAST_DAY + timedelta(hours=36)
"""The clock of the incremental contenders: the last days are not final yet."""


# ----------------------------------------------------------------------------- contenders


def run_pipeline(raw: Path, work: Path) -> dict[str, Any]:
    """This project's pipeline: all ten tables, published."""
    from anonymizer.pipeline import RunOptions, run

    stats = work / "stats"
    shutil.rmtree(stats, ignore_errors=True)
    shutil.rmtree(raw / "pipeline", ignore_errors=True)  # a cold, full run
    report = run(raw, stats, RunOptions(k=K, site_hosts=(SITE,), memory_limit="1GB", threads=2))
    return {"input_rows": report.input_rows, "partitions": report.partitions}


def _incremental(raw: Path, work: Path, *, keep_ledger_cache: bool) -> dict[str, Any]:
    """A later run, timed alone: after a cold run over a copy of RAW (segments linked, the
    ledger copied), 1,000 events arrive for the last day and 100 decisions are appended to
    the ledger. Without the ledger cache (deleted before the run, as if every run parsed
    the whole ledger again) it is the same run as before that cache existed."""
    sys.path.insert(0, str(ROOT / "tests"))
    from synthetic import crowd

    from anonymizer.ledger_cache import cache_dir
    from anonymizer.pipeline import RunOptions, run
    from consent_middleware.raw.segments import write_segment

    copy, stats = work / "raw", work / "stats"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.rmtree(stats, ignore_errors=True)
    shutil.copytree(raw / "events", copy / "events", copy_function=os.link)
    if (raw / "ledger").is_dir():
        shutil.copytree(raw / "ledger", copy / "ledger")
    options = RunOptions(k=K, site_hosts=(SITE,), memory_limit="1GB", threads=2, now=NOW)
    run(copy, stats, options)
    write_segment(copy, crowd(LAST_DAY + timedelta(hours=20), 1_000, "/new", prefix="late"))
    streams = sorted((copy / "ledger").glob("*.jsonl"))
    if streams:
        with streams[0].open("a", encoding="utf-8") as handle:
            for i in range(100):
                when = (LAST_DAY + timedelta(hours=20, seconds=i)).isoformat()
                line = {"ts": when, "action": "grant", "granted": ["statistics"], "refused": []}
                handle.write(json.dumps(line) + "\n")
    if not keep_ledger_cache:
        shutil.rmtree(cache_dir(copy), ignore_errors=True)
    started = time.perf_counter()
    report = run(copy, stats, options)
    seconds = time.perf_counter() - started
    return {
        "timed_seconds": seconds,
        "input_rows": report.input_rows,
        "consent_decisions": report.consent_decisions,
    }


def run_incremental(raw: Path, work: Path) -> dict[str, Any]:
    """A later run with a few new events and decisions (see :func:`_incremental`)."""
    return _incremental(raw, work, keep_ledger_cache=True)


def run_incremental_reparse(raw: Path, work: Path) -> dict[str, Any]:
    """The same later run, parsing the whole ledger again (no ledger cache)."""
    return _incremental(raw, work, keep_ledger_cache=False)


def run_duckdb(raw: Path, work: Path) -> dict[str, Any]:
    """The floor: one pass over RAW, pageviews and distinct visitors per (date, path)."""
    import duckdb

    con = duckdb.connect(config={"threads": 2, "memory_limit": "1GB"})
    rows = con.execute(
        "SELECT CAST(ts AS DATE) AS day, path, count(*) AS pageviews,"
        " count(DISTINCT coalesce(visitor_hash, aid)) AS visitors"
        f" FROM read_parquet('{raw}/events/*/*.parquet')"
        " WHERE method = 'GET' AND status BETWEEN 200 AND 299 GROUP BY day, path"
    ).fetchall()
    return {"rows_out": len(rows)}


def _fold(frame: pd.DataFrame, dims: list[str], aggs: dict[str, tuple[str, str]]) -> pd.DataFrame:
    """k-threshold with (other) folding, the pandas way."""
    sizes = frame.groupby(["date", *dims], dropna=False)["visitor"].transform("nunique")
    frame = frame.copy()
    for dim in dims:
        frame[dim] = frame[dim].astype(object).where(sizes >= K, "(other)")
    out = frame.groupby(["date", *dims], dropna=False).agg(visitors=("visitor", "nunique"), **aggs)
    return out[out["visitors"] >= K].reset_index()


def run_pandas(raw: Path, work: Path) -> dict[str, Any]:
    """The same ten tables as an analyst would write them with pandas."""
    from anonymizer.generalize import (
        channel_for,
        classify_referrer,
        classify_user_agent,
        is_asset_path,
    )

    df = pd.read_parquet(raw / "events").drop(columns=["date"], errors="ignore")
    text = ["referrer_host", "utm_source", "utm_medium", "utm_campaign", "language"]
    df[text] = df[text].astype(object).where(df[text].notna(), None)
    ua = {u: classify_user_agent(u) for u in df["user_agent"].unique()}
    df["browser"] = df["user_agent"].map(lambda u: ua[u][0])
    df["os"] = df["user_agent"].map(lambda u: ua[u][1])
    df["device_type"] = df["user_agent"].map(lambda u: ua[u][2])
    df = df[~df["user_agent"].map(lambda u: ua[u][3])]
    ref = {h: classify_referrer(h, (SITE,)) for h in df["referrer_host"].unique()}
    df["source"] = df["referrer_host"].map(lambda h: ref[h][0])
    df["channel"] = [
        channel_for(ref[h][1], s, m, c)
        for h, s, m, c in zip(
            df["referrer_host"], df["utm_source"], df["utm_medium"], df["utm_campaign"], strict=True
        )
    ]
    local = df["ts"].dt.tz_convert("UTC")
    df["date"] = local.dt.date
    df["hour"] = local.dt.hour
    df["visitor"] = df["visitor_hash"].fillna(df["aid"])
    df["page"] = df["path"]
    assets = {p: is_asset_path(p) for p in df["path"].unique()}
    requests = df
    pv = df[
        (df["method"] == "GET")
        & df["status"].between(200, 299)
        & ~df["path"].map(assets).astype(bool)
    ].sort_values(["date", "visitor", "ts"])
    gap = pv.groupby(["date", "visitor"])["ts"].diff().dt.total_seconds()
    pv = pv.assign(new_visit=~(gap <= 1800), seconds=gap.where(gap <= 1800, 0.0))
    nxt = pv.groupby(["date", "visitor"])["ts"].diff(-1).dt.total_seconds().abs()
    pv["bounce"] = pv["new_visit"] & ~(nxt <= 1800)
    visits = pv[pv["new_visit"]]

    out: dict[str, pd.DataFrame] = {}
    per = pv.groupby(["date", "visitor"]).agg(
        pageviews=("ts", "size"),
        visits=("new_visit", "sum"),
        bounces=("bounce", "sum"),
        seconds=("seconds", "sum"),
    )
    per["pageviews"] = per["pageviews"].clip(upper=MAX_PV)
    day = per.groupby("date").agg(
        pageviews=("pageviews", "sum"),
        visits=("visits", "sum"),
        visitors=("visits", "size"),
        bounces=("bounces", "sum"),
        seconds=("seconds", "sum"),
    )
    day["bounce_rate"] = day["bounces"] / day["visits"]
    day["avg_visit_seconds"] = day["seconds"] / day["visits"]
    out["traffic_daily"] = day.reset_index()
    big_days = set(day.index[day["visitors"] >= K])
    pv = pv[pv["date"].isin(big_days)]
    visits = visits[visits["date"].isin(big_days)]
    hits = pd.concat(
        [
            pv[["date", "page", "visitor"]].assign(views=1, entries=0),
            visits[["date", "page", "visitor"]].assign(views=0, entries=1),
        ]
    )
    pages = hits.groupby(["date", "page", "visitor"], as_index=False)[["views", "entries"]].sum()
    pages[["views", "entries"]] = pages[["views", "entries"]].clip(upper=MAX_PV)
    out["pages_daily"] = _fold(
        pages, ["page"], {"pageviews": ("views", "sum"), "entries": ("entries", "sum")}
    )
    src = visits.groupby(["date", "source", "channel", "visitor"]).size().clip(upper=MAX_PV)
    out["sources_daily"] = _fold(
        src.rename("visits").reset_index(), ["source", "channel"], {"visits": ("visits", "sum")}
    )
    utm = ["utm_source", "utm_medium", "utm_campaign"]
    camp = visits[visits[utm].notna().any(axis=1)]
    camp = camp.groupby(["date", *utm, "visitor"], dropna=False).size().clip(upper=MAX_PV)
    out["campaigns_daily"] = _fold(
        camp.rename("visits").reset_index(), utm, {"visits": ("visits", "sum")}
    )
    tech = ["device_type", "browser", "os"]
    t = pv.groupby(["date", *tech, "visitor"]).size().clip(upper=MAX_PV)
    out["technology_daily"] = _fold(
        t.rename("pageviews").reset_index(), tech, {"pageviews": ("pageviews", "sum")}
    )
    h = pv.groupby(["date", "hour", "visitor"]).size().clip(upper=MAX_PV)
    out["hourly_traffic"] = _fold(
        h.rename("pageviews").reset_index(), ["hour"], {"pageviews": ("pageviews", "sum")}
    )
    lang = pv[["date", "language", "visitor"]].drop_duplicates()
    out["languages_daily"] = _fold(lang, ["language"], {})
    req = requests[requests["date"].isin(big_days)].copy()
    req["status_class"] = (req["status"] // 100).astype(str) + "xx"
    req = req.sort_values("duration_ms")
    req = req[req.groupby(["date", "page", "status", "visitor"]).cumcount() < MAX_PV]
    out["performance_daily"] = _fold(
        req,
        ["page", "status_class"],
        {
            "requests": ("duration_ms", "size"),
            "p50_ms": ("duration_ms", lambda s: s.quantile(0.5)),
            "p95_ms": ("duration_ms", lambda s: s.quantile(0.95)),
        },
    )
    consented = df[df["aid"].notna() & df["purposes"].map(lambda p: "statistics" in list(p))]
    week = pd.to_datetime(consented["date"]).dt.to_period("W-SUN").dt.start_time
    act = pd.DataFrame({"visitor": consented["aid"], "week": week}).drop_duplicates()
    act["cohort"] = act.groupby("visitor")["week"].transform("min")
    act["week_offset"] = (act["week"] - act["cohort"]).dt.days // 7
    act = act.rename(columns={"cohort": "date"})
    out["retention_weekly"] = _fold(act, ["week_offset"], {})
    ledger = [json.loads(x) for f in (raw / "ledger").glob("*.jsonl") for x in f.open()]
    rows = [
        (r["ts"][:10], p, int(k == "granted"), int(k == "refused"))
        for r in ledger
        for k in ("granted", "refused")
        for p in r.get(k, [])
    ]
    consent = pd.DataFrame(rows, columns=["date", "purpose", "granted", "refused"])
    out["consent_daily"] = consent.groupby(["date", "purpose"], as_index=False).sum()
    work.mkdir(parents=True, exist_ok=True)
    for name, frame in out.items():
        frame.to_parquet(work / f"{name}.parquet")
    return {"tables": len(out), "rows_out": int(sum(len(f) for f in out.values()))}


CONTENDERS = {
    "pipeline": run_pipeline,
    "duckdb": run_duckdb,
    "pandas": run_pandas,
    "incremental": run_incremental,
    "incremental_reparse": run_incremental_reparse,
}


# ----------------------------------------------------------------------------- harness


def child(name: str, raw: Path, work: Path) -> None:
    """Run one contender in this process and print its measurements as JSON."""
    started = time.perf_counter()
    extra = CONTENDERS[name](raw, work)
    # A contender that prepares first times only what it measures.
    seconds = float(extra.pop("timed_seconds", time.perf_counter() - started))
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_kb / 1024, **extra}))


def measure(name: str, raw: Path, work: Path, events: int, timeout: float) -> dict[str, Any]:
    """Run ``name`` in a subprocess; wall time and peak memory are the child's own."""
    command = [sys.executable, "-m", "benchmarks.pipeline", "--child", name, str(raw), str(work)]
    try:
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if not name.startswith("incremental"):  # those time a later run over a few events
        result["events_per_second"] = events / result["seconds"]
    return result


def generate(raw: Path, events: int) -> float:
    """Write the synthetic RAW store (in a subprocess, so its memory is not counted)."""
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, 'tests');"
        "from synthetic import generate;"
        f"generate(Path({str(raw)!r}), {events}, days=7, ledger={events <= 2_000_000})"
    )
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    return time.perf_counter() - started


def machine() -> dict[str, Any]:
    """Where the figures come from."""
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        mem_kb = int(meminfo.read_text().split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu": model,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
    }


def main() -> None:
    """Run the benchmark and write the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--pandas-max", type=int, default=10_000_000)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument(
        "--runs", type=int, default=1, help="runs of each contender, alternating; the best is kept"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=3, metavar=("NAME", "RAW", "WORK"))
    args = parser.parse_args()
    if args.child:
        name, raw, work = args.child
        child(name, Path(raw), Path(work))
        return
    import duckdb

    results: dict[str, Any] = {
        "machine": machine(),
        "duckdb": duckdb.__version__,
        "k": K,
        "sizes": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        for events in args.sizes:
            raw = Path(tmp) / f"raw-{events}"
            size: dict[str, Any] = {"generate_seconds": generate(raw, events)}
            names = [n for n in CONTENDERS if n != "pandas" or events <= args.pandas_max]
            if "pandas" not in names:
                size["pandas"] = {"skipped": f"above --pandas-max {args.pandas_max}"}
            # Alternating runs, the fastest kept (others sharing the machine only ever slow a
            # run down); every run's time is recorded.
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
            for _ in range(max(1, args.runs)):
                for name in names:
                    work = Path(tmp) / f"work-{name}"
                    runs[name].append(measure(name, raw, work, events, args.timeout))
                    print(events, name, json.dumps(runs[name][-1]), flush=True)
            for name, measured in runs.items():
                timed = [m for m in measured if "seconds" in m]
                size[name] = min(timed, key=lambda m: float(m["seconds"])) if timed else measured[0]
                size[name]["all_seconds"] = [round(m["seconds"], 3) for m in timed]
            p, d, pd_ = (size.get(n, {}).get("seconds") for n in ("pipeline", "duckdb", "pandas"))
            if p and d:
                size["pipeline_vs_duckdb"] = round(p / d, 2)
            if p and pd_:
                size["pandas_vs_pipeline"] = round(pd_ / p, 2)
            inc, reparse = (
                size.get(n, {}).get("seconds") for n in ("incremental", "incremental_reparse")
            )
            if inc and reparse:
                size["incremental_reparse_vs_incremental"] = round(reparse / inc, 2)
            results["sizes"][str(events)] = size
            shutil.rmtree(raw, ignore_errors=True)
    secs = {n: s.get("pipeline", {}).get("seconds") for n, s in results["sizes"].items()}
    if len(secs) >= 2 and all(secs.values()):
        (n0, t0), (n1, t1) = sorted(((int(n), t) for n, t in secs.items()))[:: len(secs) - 1]
        results["scaling"] = {"events_ratio": n1 / n0, "time_ratio": round(t1 / t0, 2)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

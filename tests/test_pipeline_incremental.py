"""Incremental, idempotent runs and day finality."""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from synthetic import crowd, generate

import anonymizer
from anonymizer.pipeline import PipelineError, RunOptions
from consent_middleware.raw.segments import write_segment

DAY1 = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)


def snapshot(stats: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and modification time."""
    return {
        str(p.relative_to(stats)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(stats.rglob("*"))
        if p.is_file()
    }


def visitors(stats: Path, day: str) -> int:
    con = anonymizer.connect(stats)
    result = con.execute(f"SELECT visitors FROM traffic_daily WHERE date = '{day}'").fetchall()
    return int(result[0][0])


def test_second_run_changes_nothing(tmp_path: Path) -> None:
    raw, stats = tmp_path / "raw", tmp_path / "stats"
    write_segment(raw, crowd(DAY1, 12) + crowd(DAY2, 12, prefix="w"))
    options = RunOptions(now=DAY2 + timedelta(hours=1))
    anonymizer.run(raw, stats, options)
    before = snapshot(stats)
    report = anonymizer.run(raw, stats, RunOptions(now=DAY2 + timedelta(hours=2)))
    assert report.new_segments == 0 and not report.changed
    assert snapshot(stats) == before


def test_new_segment_republishes_only_its_day(tmp_path: Path) -> None:
    raw, stats = tmp_path / "raw", tmp_path / "stats"
    write_segment(raw, crowd(DAY1, 12) + crowd(DAY2, 12, prefix="w"))
    anonymizer.run(raw, stats, RunOptions(now=DAY2 + timedelta(hours=1)))
    before = snapshot(stats)
    write_segment(raw, crowd(DAY2 + timedelta(hours=1), 5, prefix="late"))
    report = anonymizer.run(raw, stats, RunOptions(now=DAY2 + timedelta(hours=3)))
    assert report.days_published == [DAY2.date()]
    after = snapshot(stats)
    day1 = [k for k in before if "date=2026-03-02" in k]
    assert day1 and all(after[k] == before[k] for k in day1)  # bytes and mtime untouched
    assert (
        after["traffic_daily/date=2026-03-03/part-0.parquet"]
        != before["traffic_daily/date=2026-03-03/part-0.parquet"]
    )
    # The whole day is recomputed from all its segments: distinct visitors are not summed.
    assert visitors(stats, "2026-03-03") == 17


def test_final_days_are_never_republished(tmp_path: Path) -> None:
    raw, stats = tmp_path / "raw", tmp_path / "stats"
    write_segment(raw, crowd(DAY1, 12))
    first = anonymizer.run(raw, stats, RunOptions(now=DAY1 + timedelta(hours=1)))
    assert first.days_made_final == []
    # Two days after the day's end it becomes final.
    done = anonymizer.run(raw, stats, RunOptions(now=DAY1 + timedelta(days=3)))
    assert done.days_made_final == [DAY1.date()]
    before = snapshot(stats)
    write_segment(raw, crowd(DAY1 + timedelta(hours=2), 30, prefix="late"))
    late = anonymizer.run(raw, stats, RunOptions(now=DAY1 + timedelta(days=4)))
    assert late.late_days_skipped == [DAY1.date()] and late.late_events_skipped == 30
    assert late.days_published == []
    assert visitors(stats, "2026-03-02") == 12
    changed = {k for k in snapshot(stats) if snapshot(stats)[k] != before.get(k)}
    assert changed == {"manifest.json"}  # only the run history records the skipped data


def test_days_already_past_their_grace_period_are_published_once(tmp_path: Path) -> None:
    raw, stats = tmp_path / "raw", tmp_path / "stats"
    write_segment(raw, crowd(DAY1, 12))
    report = anonymizer.run(raw, stats, RunOptions(now=DAY1 + timedelta(days=30)))
    assert report.days_published == [DAY1.date()] == report.days_made_final


def test_new_tombstone_reaches_days_not_yet_final(tmp_path: Path) -> None:
    raw, stats = tmp_path / "raw", tmp_path / "stats"
    events = crowd(DAY1, 13, statistics=True)
    events[0]["aid"] = "erase-me"
    write_segment(raw, events)
    anonymizer.run(raw, stats, RunOptions(now=DAY1 + timedelta(hours=1)))
    assert visitors(stats, "2026-03-02") == 13
    (raw / "tombstones").mkdir()
    digest = hashlib.sha256(b"erase-me").hexdigest()
    (raw / "tombstones" / "a.json").write_text(json.dumps({"aid_sha256": digest}))
    anonymizer.run(raw, stats, RunOptions(now=DAY1 + timedelta(hours=2)))
    assert visitors(stats, "2026-03-02") == 12


def test_a_second_stats_folder_gets_everything(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_segment(raw, crowd(DAY1, 12))
    anonymizer.run(raw, tmp_path / "one", RunOptions(now=DAY1 + timedelta(hours=1)))
    other = anonymizer.run(raw, tmp_path / "two", RunOptions(now=DAY1 + timedelta(hours=1)))
    assert other.days_published == [DAY1.date()]
    assert visitors(tmp_path / "two", "2026-03-02") == 12


def test_two_runs_on_one_raw_store_do_not_overlap(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_segment(raw, crowd(DAY1, 12))
    (raw / "pipeline").mkdir()
    with open(raw / "pipeline" / "run.lock", "a+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(PipelineError, match="another `anonymizer run`"):
            anonymizer.run(raw, tmp_path / "stats")
    assert anonymizer.run(raw, tmp_path / "stats").days_published == [DAY1.date()]


def test_the_same_raw_gives_byte_identical_files(tmp_path: Path) -> None:
    generate(tmp_path / "raw", 30_000, days=2)
    options = RunOptions(now=datetime(2026, 2, 1, tzinfo=UTC), site_hosts=("shop.example.com",))
    anonymizer.run(tmp_path / "raw", tmp_path / "a", options)
    anonymizer.run(tmp_path / "raw", tmp_path / "b", options)
    a = {k: v[0] for k, v in snapshot(tmp_path / "a").items()}
    b = {k: v[0] for k, v in snapshot(tmp_path / "b").items()}
    assert len(a) > 20 and a == b


def test_runs_split_at_a_local_midnight_keep_every_event_in_a_zone_whose_rules_changed(
    tmp_path: Path,
) -> None:
    """Batch bounds and each event's local date come from the same tz database.

    For America/Vancouver in November 2026, Python's tz database and the one DuckDB bundles
    disagree by an hour. Two runs split the events at a local midnight; with the two
    databases mixed, the events of the hour they disagree on were left out of both runs.
    """
    from synthetic import event

    from anonymizer.engines.offsets import offset_spans

    raw, stats = tmp_path / "raw", tmp_path / "stats"
    start = datetime(2026, 11, 10, 12, tzinfo=UTC)
    slots = [start + timedelta(minutes=10 * i) for i in range(3 * 24 * 6)]
    events = [
        event(ts + timedelta(seconds=v), f"v{v}-{ts:%d%H}") for ts in slots for v in range(12)
    ]
    # The first run gets everything before 2026-11-11 08:30 UTC: local midnight by one
    # database (08:00 UTC), 01:30 of the next day by the other.
    cut = datetime(2026, 11, 11, 8, 30, tzinfo=UTC)
    options = RunOptions(timezone="America/Vancouver", final_after_days=365, now=cut)
    write_segment(raw, [e for e in events if e["ts"] < cut])
    anonymizer.run(raw, stats, options)
    write_segment(raw, [e for e in events if e["ts"] >= cut])
    anonymizer.run(raw, stats, dataclasses.replace(options, now=slots[-1]))
    con = anonymizer.connect(stats)
    ((published,),) = con.execute("SELECT SUM(pageviews) FROM traffic_daily").fetchall()
    assert published == len(events)
    # Every event on the local day of Python's tz database.
    zone_days = {e["ts"].astimezone(ZoneInfo("America/Vancouver")).date() for e in events}
    days = {d for (d,) in con.execute("SELECT date FROM traffic_daily").fetchall()}
    assert days == zone_days
    assert len(offset_spans("America/Vancouver", start, slots[-1])) == 1  # no DST switch here

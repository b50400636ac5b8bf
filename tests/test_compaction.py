"""Compaction of raw segments: what it merges, crash safety at every step, the pipeline's
view of merged segments, concurrency with a run, and ``consent-admin compact``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from synthetic import crowd, events_table

import anonymizer
from anonymizer.pipeline import RunOptions
from consent_middleware.admin import cli
from consent_middleware.erasure import purge_lock, purge_raw
from consent_middleware.raw.compaction import (
    FAULT_ENV,
    adopted_stamps,
    compact_raw,
    read_records,
    recover_compactions,
    segment_readers_lock,
)
from consent_middleware.raw.layout import RawLayout
from consent_middleware.raw.schema import RAW_EVENT_SCHEMA
from consent_middleware.raw.segments import list_segments, write_segment
from consent_middleware.tombstones import digest, write_tombstone

START = date(2026, 3, 2)
LATER = datetime.now(UTC) + timedelta(hours=2)
"""A clock at which every segment just written is older than the default minimum age."""


def write_small_segments(raw: Path, events: int, per_segment: int, days: int = 3) -> int:
    """Synthetic events as many small segments (as the recorder's flushes make them)."""
    table, _, _ = events_table(events, start=START, days=days, seed=3)
    for offset in range(0, table.num_rows, per_segment):
        write_segment(raw, table.slice(offset, per_segment), prefix="flush")
    return int(table.num_rows)


def rows(raw: Path) -> Counter[tuple[Any, ...]]:
    """The multiset of events every reader sees (through ``list_segments``)."""
    counted: Counter[tuple[Any, ...]] = Counter()
    for segment in list_segments(raw):
        for row in pq.read_table(segment).to_pylist():
            counted[tuple(tuple(v) if isinstance(v, list) else v for v in row.values())] += 1
    return counted


def on_disk(raw: Path) -> list[Path]:
    return sorted(RawLayout.at(raw).events.rglob("*"))


def snapshot(stats: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(stats)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(stats.rglob("*"))
        if p.is_file()
    }


# ----------------------------------------------------------------------------- merging


def test_merges_each_partition_into_few_sorted_segments(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    total = write_small_segments(raw, 6_000, 200)
    before, listed = rows(raw), list_segments(raw)
    size = sum(p.stat().st_size for p in listed)

    report = compact_raw(raw, target_rows=1_500, now=LATER)

    after = list_segments(raw)
    assert rows(raw) == before and sum(before.values()) == total
    assert report.partitions == [f"date={START + timedelta(days=d)}" for d in range(3)]
    assert (report.segments_before, report.segments_after) == (len(listed), len(after))
    assert report.merged_sources == len(listed) and report.rows == total
    assert report.bytes_before == size
    assert report.bytes_after == sum(p.stat().st_size for p in after)
    assert set(on_disk(raw)) == set(after) | {p.parent for p in after}  # nothing left over
    for segment in after:
        table = pq.read_table(segment)
        assert table.schema.remove_metadata() == RAW_EVENT_SCHEMA
        assert table.num_rows <= 1_500
        ts = table["ts"].to_pylist()
        assert ts == sorted(ts)
        assert pq.read_metadata(segment).row_group(0).column(0).compression == "ZSTD"
    # As few files as the target allows: each partition holds ~2,000 rows in 200-row pieces.
    per_partition = Counter(p.parent.name for p in after)
    assert all(n == 2 for n in per_partition.values())
    assert all(r.completed_at is not None for r in read_records(raw))
    assert read_records(raw, pending_only=True) == []


def test_leaves_young_segments_and_single_ones_alone(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    day = datetime(2026, 3, 2, 10, tzinfo=UTC)
    old = [write_segment(raw, crowd(day + timedelta(hours=h), 3))[0] for h in range(3)]
    lone = write_segment(raw, crowd(day + timedelta(days=1), 3))[0]
    young = write_segment(raw, crowd(day + timedelta(hours=5), 3))[0]
    past = time.time() - 7200
    for path in [*old, lone]:
        os.utime(path, (past, past))

    report = compact_raw(raw)  # default minimum age: one hour

    assert report.partitions == ["date=2026-03-02"] and report.merged_sources == 3
    assert lone.exists() and young.exists() and not any(p.exists() for p in old)
    assert len(list_segments(raw)) == 3
    again = compact_raw(raw)  # the merged file is young now: nothing to do
    assert again.partitions == [] and again.merged_files == 0


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_small_segments(raw, 1_000, 100, days=1)
    files = on_disk(raw)
    report = compact_raw(raw, now=LATER, dry_run=True)
    assert report.merged_sources == 10 and report.segments_after == 1
    assert report.bytes_after is None
    assert on_disk(raw) == files and not RawLayout.at(raw).compactions.exists()


def test_damaged_segment_is_left_for_quarantine(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_small_segments(raw, 600, 200, days=1)
    bad = RawLayout.at(raw).events_for(START) / "broken.parquet"
    bad.write_bytes(b"PAR1 not really")
    compact_raw(raw, now=LATER)
    assert bad.exists() and len(list_segments(raw)) == 2
    # Sound metadata, damaged data: found while merging, left alone, the rest merged.
    write_small_segments(raw, 600, 200, days=1)
    good = next(p for p in list_segments(raw) if p.name.startswith("flush"))
    damaged = good.with_name("damaged.parquet")
    data = bytearray(good.read_bytes())
    data[8:200] = bytes(192)  # the first column's pages; the footer is intact
    damaged.write_bytes(bytes(data))
    report = compact_raw(raw, now=LATER)
    assert report.unreadable == [str(damaged.relative_to(raw))] and damaged.exists()
    assert report.merged_sources == 4 and report.segments_after == 3  # merged, bad, damaged


def test_expired_records_are_pruned(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_small_segments(raw, 600, 200, days=1)
    compact_raw(raw, now=LATER)
    assert len(read_records(raw)) == 1
    assert compact_raw(raw, now=LATER + timedelta(days=3)).records_pruned == 0
    assert compact_raw(raw, now=LATER + timedelta(days=15)).records_pruned == 1
    assert read_records(raw) == []


# ----------------------------------------------------------------------------- crashes

CHILD = "import sys; from consent_middleware.raw.compaction import compact_raw; " + (
    "compact_raw(sys.argv[1], min_age_s=0, target_rows=int(sys.argv[2]))"
)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["record", "merged", "source-1", "sources", "completed"])
def test_killed_compaction_loses_and_doubles_nothing(tmp_path: Path, point: str) -> None:
    raw = tmp_path / "raw"
    write_small_segments(raw, 3_000, 250, days=2)
    before = rows(raw)
    kill_at(raw, point)

    assert rows(raw) == before  # every reader sees each event exactly once
    report = compact_raw(raw, min_age_s=0, target_rows=1_000)
    rolled = {"record": (0, 1), "completed": (0, 0)}.get(point, (1, 0))
    assert (report.rolled_forward, report.rolled_back) == rolled
    assert rows(raw) == before
    listed = list_segments(raw)
    assert set(on_disk(raw)) == set(listed) | {p.parent for p in listed}
    assert len(listed) == 4  # ~1,500 rows a day, in 250-row pieces: 1,000 + ~500
    assert all(r.completed_at is not None for r in read_records(raw))
    assert read_records(raw, pending_only=True) == []
    assert not list(RawLayout.at(raw).compactions.glob("*.tmp"))


def kill_at(raw: Path, point: str, target_rows: int = 1_000) -> None:
    """Run compaction in a child process that kills itself with SIGKILL at ``point``."""
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(raw), str(target_rows)],
        env={**os.environ, FAULT_ENV: point},
        capture_output=True,
        text=True,
        check=False,
    )
    assert child.returncode == -9, child.stderr


@pytest.mark.slow
def test_recovery_alone_under_the_purge_lock(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_small_segments(raw, 1_000, 250, days=1)
    before = rows(raw)
    kill_at(raw, "source-1")
    assert len(on_disk(raw)) > len(list_segments(raw)) + 1  # sources hidden, not yet gone
    with purge_lock(raw):
        report = recover_compactions(raw)
    assert (report.rolled_forward, report.rolled_back) == (1, 0)
    listed = list_segments(raw)
    assert rows(raw) == before and set(on_disk(raw)) == set(listed) | {listed[0].parent}


@pytest.mark.slow
def test_erased_rows_leave_hidden_sources_too(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    aid_index = RAW_EVENT_SCHEMA.names.index("aid")
    day = datetime(2026, 11, 20, 9, tzinfo=UTC)
    for hour in range(3):
        events = crowd(day + timedelta(hours=hour), 4, prefix=f"h{hour}-")
        events[0]["aid"] = "aid-erased"
        write_segment(raw, events)
    kill_at(raw, "merged")  # committed; the three sources are still on disk, hidden
    write_tombstone(raw, digest("aid-erased"), request_id="r1", receipt_sha256=None)
    purge_raw(raw, now=day + timedelta(days=1))
    # Purge finished the killed merge first (deleting the hidden sources), then rewrote the
    # merged file: no reader sees the erased rows, and no file on disk holds them.
    assert all(row[aid_index] is None for row in rows(raw)) and sum(rows(raw).values()) == 9
    left = [
        row
        for f in RawLayout.at(raw).events.rglob("*.parquet")
        for row in pq.read_table(f).to_pylist()
    ]
    assert len(left) == 9 and all(row["aid"] is None for row in left)


def test_compaction_waits_for_a_running_purge(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_small_segments(raw, 600, 200, days=1)
    order: list[str] = []
    with purge_lock(raw):
        worker = threading.Thread(
            target=lambda: order.append(str(compact_raw(raw, now=LATER).merged_files))
        )
        worker.start()
        worker.join(timeout=0.2)
        order.append("purge done")
    worker.join()
    assert order == ["purge done", "1"]


# ----------------------------------------------------------------------------- pipeline


def test_pipeline_adopts_merged_segments(tmp_path: Path) -> None:
    raw, stats = tmp_path / "raw", tmp_path / "stats"
    write_small_segments(raw, 5_000, 250, days=5)
    now = datetime.combine(START + timedelta(days=4), datetime.min.time(), UTC) + timedelta(hours=2)
    first = anonymizer.run(raw, stats, RunOptions(now=now))
    assert first.days_made_final  # some days are final: no late events may appear for them
    before = snapshot(stats)

    compact_raw(raw, target_rows=700, now=LATER)
    report = anonymizer.run(raw, stats, RunOptions(now=now + timedelta(hours=1)))
    assert report.new_segments == 0 and report.input_rows == 0
    assert report.late_events_skipped == 0 and report.late_days_skipped == []
    assert report.days_published == [] and not report.changed
    assert snapshot(stats) == before

    # Merged again (a chain): the merged segments of the first compaction are sources now.
    compact_raw(raw, target_rows=10_000, now=LATER + timedelta(days=1))
    report = anonymizer.run(raw, stats, RunOptions(now=now + timedelta(hours=2)))
    assert report.new_segments == 0 and not report.changed and snapshot(stats) == before


@pytest.mark.slow
def test_pipeline_between_commit_and_cleanup(tmp_path: Path) -> None:
    raw, stats = tmp_path / "raw", tmp_path / "stats"
    write_small_segments(raw, 2_000, 250, days=2)
    options = RunOptions(now=LATER)
    anonymizer.run(raw, stats, options)
    before = snapshot(stats)
    kill_at(raw, "merged")  # merged files in place, sources still on disk
    for minutes in (1, 2):
        report = anonymizer.run(raw, stats, RunOptions(now=LATER + timedelta(minutes=minutes)))
        assert report.new_segments == 0 and not report.changed and snapshot(stats) == before
        assert compact_raw(raw, min_age_s=0).rolled_forward == (1 if minutes == 1 else 0)


def test_unseen_source_republishes_its_days(tmp_path: Path) -> None:
    raw, stats, reference = tmp_path / "raw", tmp_path / "stats", tmp_path / "reference"
    write_small_segments(raw, 3_000, 250, days=3)
    now = datetime.combine(START + timedelta(days=2), datetime.min.time(), UTC) + timedelta(hours=6)
    anonymizer.run(raw, stats, RunOptions(now=now))
    write_segment(
        raw,
        crowd(
            datetime.combine(START + timedelta(days=2), datetime.min.time(), UTC)
            + timedelta(hours=3),
            15,
            prefix="late",
        ),
    )
    shutil.copytree(raw, tmp_path / "copy")

    compact_raw(raw, now=LATER)
    options = RunOptions(now=now + timedelta(hours=1))
    report = anonymizer.run(raw, stats, options)
    assert report.new_segments == 1  # the one merged segment holding the unseen source
    assert START + timedelta(days=2) in report.days_published
    assert report.late_events_skipped == 0

    anonymizer.run(tmp_path / "copy", reference, options)  # the same input, never compacted
    query = "SELECT * FROM traffic_daily ORDER BY ALL"
    got = anonymizer.connect(stats).execute(query).fetchall()
    assert got == anonymizer.connect(reference).execute(query).fetchall()


def test_pipeline_run_holds_its_segments_while_compaction_waits(tmp_path: Path) -> None:
    raw, stats = tmp_path / "raw", tmp_path / "stats"
    write_small_segments(raw, 4_000, 250, days=4)
    listed = list_segments(raw)
    shutil.copytree(raw, tmp_path / "copy")
    results: list[object] = []
    waited: list[bool] = []

    def compact() -> None:
        results.append(compact_raw(raw, now=LATER))

    def progress(step: str, done: int, total: int) -> None:
        if waited:
            return
        # The run has listed the segments; compaction starts now, in another thread.
        worker = threading.Thread(target=compact)
        worker.start()
        threads.append(worker)
        folder = RawLayout.at(raw).compactions
        for _ in range(4000):  # until its first merged file is in place (bounded)
            if any(r.completed_at is None and (raw / r.merged).exists() for r in read_records(raw)):
                break
            time.sleep(0.005)
        # Committed, but its sources are still there: it waits for the run to finish.
        waited.append(folder.is_dir() and all(p.exists() for p in listed))

    threads: list[threading.Thread] = []
    options = RunOptions(now=LATER, batch_events=1_000)
    report = anonymizer.run(raw, stats, options, progress=progress)
    for worker in threads:
        worker.join()
    assert waited == [True] and len(results) == 1
    assert not any(p.exists() for p in listed)  # compaction finished after the run

    reference = anonymizer.run(tmp_path / "copy", tmp_path / "reference", options)
    assert report.input_rows == reference.input_rows == 4_000
    again = anonymizer.run(raw, stats, RunOptions(now=LATER + timedelta(minutes=1)))
    assert again.new_segments == 0 and not again.changed


def test_readers_share_the_lock_and_compaction_excludes_them(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    order: list[str] = []
    with segment_readers_lock(raw, exclusive=False), segment_readers_lock(raw, exclusive=False):
        # Two readers at once; a writer in another thread waits for both.
        def writer() -> None:
            with segment_readers_lock(raw, exclusive=True):
                order.append("writer")

        worker = threading.Thread(target=writer)
        worker.start()
        worker.join(timeout=0.2)
        order.append("readers done")
    worker.join()
    assert order == ["readers done", "writer"]


def test_adoption_needs_matching_stamps(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_small_segments(raw, 600, 200, days=1)
    seen = {
        str(p.relative_to(raw)): [p.stat().st_size, p.stat().st_mtime_ns]
        for p in list_segments(raw)
    }
    compact_raw(raw, now=LATER)
    (merged,) = list_segments(raw)
    name = str(merged.relative_to(raw))
    assert adopted_stamps(raw, seen) == {name: [merged.stat().st_size, merged.stat().st_mtime_ns]}
    changed = dict(seen)
    first = next(iter(changed))
    changed[first] = [changed[first][0] + 1, changed[first][1]]
    assert adopted_stamps(raw, changed) == {}
    del changed[first]
    assert adopted_stamps(raw, changed) == {}


# ----------------------------------------------------------------------------- CLI


def test_cli_compact(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_small_segments(raw, 1_000, 100, days=1)
    past = time.time() - 600
    for path in list_segments(raw):
        os.utime(path, (past, past))
    runner = CliRunner()
    young = runner.invoke(cli, ["compact", "--raw", str(raw), "--min-age", "1h", "--json"])
    assert young.exit_code == 0 and json.loads(young.output)["merged_files"] == 0
    dry = runner.invoke(cli, ["compact", "--raw", str(raw), "--min-age", "5m", "--dry-run"])
    assert dry.exit_code == 0 and dry.output.startswith("would merge 10 segment(s) into 1")
    assert len(list_segments(raw)) == 10
    done = runner.invoke(
        cli, ["compact", "--raw", str(raw), "--min-age", "300", "--target-rows", "500", "--json"]
    )
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert (report["segments_before"], report["segments_after"], report["rows"]) == (10, 2, 1000)
    assert len(list_segments(raw)) == 2
    bad = runner.invoke(cli, ["compact", "--raw", str(raw), "--min-age", "soon"])
    assert bad.exit_code == 2 and "--min-age" in bad.output


def test_schema_of_merged_table_is_the_contract(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    for hour in range(3):
        write_segment(raw, crowd(datetime(2026, 3, 2, hour, tzinfo=UTC), 2, utm_source="x"))
    compact_raw(raw, now=LATER)
    (merged,) = list_segments(raw)
    table = pq.read_table(merged)
    assert table.schema.remove_metadata() == RAW_EVENT_SCHEMA
    assert table.column("utm_source").to_pylist() == ["x"] * 6
    assert pa.compute.all(pa.compute.equal(table["source"], "middleware")).as_py()

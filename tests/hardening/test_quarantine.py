"""Damaged RAW segments: quarantined by name, never read, never a crash.

Each case adds one extra segment to day 2 of a healthy three-day RAW store and damages it.
``anonymizer run`` must succeed, name the file and the reason, move it under
``RAW/quarantine/<reason>/``, and publish exactly what a store without that file publishes:
not one row of a bad file reaches STATS.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import anonymizer
from anonymizer.cli import anonymizer_cli
from anonymizer.pipeline import RunOptions
from anonymizer.quarantine import check_segment
from consent_middleware.raw.layout import RawLayout
from consent_middleware.raw.schema import RAW_EVENT_SCHEMA
from consent_middleware.raw.segments import events_to_table, list_segments, write_segment
from hardening.pipeline_support import DAY0, day_events, snapshot, write_days

DAY1 = DAY0 + timedelta(days=1)
Snapshot = dict[str, list[tuple[Any, ...]]]


def healthy_store(raw: Path) -> Path:
    """Three good days plus a good extra segment on day 2 (returned, to be damaged)."""
    write_days(raw, 3)
    (extra,) = write_segment(raw, day_events(DAY1, tag="x"))
    return extra


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    """STATS of the three good days alone."""
    base = tmp_path_factory.mktemp("reference")
    write_days(base / "raw", 3)
    anonymizer.run(base / "raw", base / "stats")
    return snapshot(base / "stats")


def _footer_start(data: bytes) -> int:
    return len(data) - 8 - int.from_bytes(data[-8:-4], "little")


def empty(path: Path) -> None:
    path.write_bytes(b"")


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def not_parquet(path: Path) -> None:
    path.write_text("ts,method,path\n2026-03-03T01:00:00Z,GET,/\n" * 40)


def foreign_parquet(path: Path) -> None:
    pq.write_table(pa.table({"user": ["a", "b"], "amount": [1, 2]}), path)


def wrong_type(path: Path) -> None:
    table = pq.read_table(path)
    pq.write_table(table.set_column(0, "ts", pc.cast(table["ts"], pa.string())), path)


def missing_column(path: Path) -> None:
    pq.write_table(pq.read_table(path).drop_columns(["visitor_hash"]), path)


def null_required(path: Path) -> None:
    table = pq.read_table(path)
    schema = table.schema.set(1, pa.field("method", pa.string(), nullable=True))
    methods = pa.array([None, *table["method"].to_pylist()[1:]], pa.string())
    pq.write_table(table.cast(schema).set_column(1, schema.field(1), methods), path)


def rows_of_another_day(path: Path) -> None:
    table = events_to_table(day_events(DAY1 + timedelta(days=5), tag="x"))
    pq.write_table(table, path)


def footer_scrambled(path: Path) -> None:
    data = bytearray(path.read_bytes())
    start = _footer_start(bytes(data))
    data[start : start + 24] = b"\xff" * 24
    path.write_bytes(bytes(data))


def pages_zeroed(path: Path) -> None:
    data = bytearray(path.read_bytes())
    start = _footer_start(bytes(data))
    data[4:start] = bytes(start - 4)
    path.write_bytes(bytes(data))


def linked_elsewhere(path: Path) -> None:
    outside = path.parents[3] / "elsewhere.parquet"
    os.replace(path, outside)  # a valid segment, outside RAW
    path.symlink_to(outside)


DAMAGE: list[tuple[Callable[[Path], None], str]] = [
    (empty, "empty"),
    (cut_in_half, "truncated"),
    (not_parquet, "not-parquet"),
    (foreign_parquet, "schema"),
    (wrong_type, "schema"),
    (missing_column, "schema"),
    (null_required, "invalid-rows"),
    (rows_of_another_day, "misplaced"),
    (footer_scrambled, "unreadable"),
    (pages_zeroed, "unreadable"),
    (linked_elsewhere, "link"),
]


@pytest.mark.parametrize(("damage", "reason"), DAMAGE, ids=[d.__name__ for d, _ in DAMAGE])
def test_damaged_segment_is_quarantined(
    tmp_path: Path, reference: Snapshot, damage: Callable[[Path], None], reason: str
) -> None:
    raw, stats = tmp_path / "raw", tmp_path / "stats"
    bad = healthy_store(raw)
    damage(bad)
    name = str(bad.relative_to(raw))

    result = CliRunner().invoke(anonymizer_cli, ["run", "--raw", str(raw), "--stats", str(stats)])

    assert result.exit_code == 0, result.output
    assert "quarantined 1 damaged segment(s)" in result.output
    assert f"{name} -> quarantine/{reason}/date={DAY1.isoformat()}/{bad.name} ({reason}:" in (
        result.output
    )
    moved = RawLayout.at(raw).quarantine / reason / f"date={DAY1.isoformat()}" / bad.name
    assert moved.is_symlink() or moved.is_file()
    assert not bad.exists() and not bad.is_symlink()
    note = json.loads(moved.with_name(bad.name + ".json").read_text())
    assert note["segment"] == name and note["reason"] == reason and note["detail"]
    assert snapshot(stats) == reference
    # STATS names no RAW file; the second run has nothing new to quarantine.
    assert "quarantine" not in (stats / "manifest.json").read_text()
    again = CliRunner().invoke(anonymizer_cli, ["run", "--raw", str(raw), "--stats", str(stats)])
    assert again.exit_code == 0 and "quarantined" not in again.output


@pytest.mark.parametrize("seed", range(8))
def test_random_byte_flips_never_publish_a_partial_read(tmp_path: Path, seed: int) -> None:
    raw, stats = tmp_path / "raw", tmp_path / "stats"
    bad = healthy_store(raw)
    rng = random.Random(seed)
    data = bytearray(bad.read_bytes())
    for _ in range(rng.randint(1, 8)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    bad.write_bytes(bytes(data))
    survived = check_segment(bad) is None
    decoded = pq.read_table(bad, schema=RAW_EVENT_SCHEMA) if survived else None

    report = anonymizer.run(raw, stats)

    if not survived:
        assert [q.segment for q in report.quarantined] == [str(bad.relative_to(raw))]
        expected_raw = tmp_path / "expected-raw"
        write_days(expected_raw, 3)
    else:
        # Flips that leave a whole, well-formed file (say, one letter of a user agent) are
        # data, read in full: STATS is what a clean copy of those rows gives.
        assert report.quarantined == []
        expected_raw = tmp_path / "expected-raw"
        write_days(expected_raw, 3)
        assert decoded is not None
        write_segment(expected_raw, decoded)
    anonymizer.run(expected_raw, tmp_path / "expected-stats")
    assert snapshot(stats) == snapshot(tmp_path / "expected-stats")


def test_segment_damaged_after_it_was_checked(tmp_path: Path) -> None:
    """Bit rot that keeps size and mtime: the engine fails on it, the run quarantines it,
    starts its steps over and publishes the affected days again without it."""
    raw, stats = tmp_path / "raw", tmp_path / "stats"
    now = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)  # day 2 is not final yet
    bad = healthy_store(raw)
    first = anonymizer.run(raw, stats, RunOptions(now=now))
    assert first.quarantined == [] and first.new_segments == 4
    before = bad.stat()
    pages_zeroed(bad)
    os.utime(bad, ns=(before.st_atime_ns, before.st_mtime_ns))
    write_segment(raw, day_events(DAY1, visitors=3, tag="late"))

    report = anonymizer.run(raw, stats, RunOptions(now=now))

    assert [(q.segment, q.reason) for q in report.quarantined] == [
        (str(bad.relative_to(raw)), "unreadable")
    ]
    expected_raw, expected_stats = tmp_path / "expected-raw", tmp_path / "expected-stats"
    write_days(expected_raw, 3)
    write_segment(expected_raw, day_events(DAY1, visitors=3, tag="late"))
    anonymizer.run(expected_raw, expected_stats, RunOptions(now=now))
    assert snapshot(stats) == snapshot(expected_stats)
    assert not list(stats.rglob(".*"))


def test_only_bad_segments_leave_and_counts_stay_honest(tmp_path: Path) -> None:
    raw, stats = tmp_path / "raw", tmp_path / "stats"
    bad = healthy_store(raw)
    cut_in_half(bad)
    (worse,) = write_segment(raw, day_events(DAY0, tag="w"))
    empty(worse)
    report = anonymizer.run(raw, stats)
    assert sorted(q.reason for q in report.quarantined) == ["empty", "truncated"]
    assert report.new_segments == 3 and len(list_segments(raw)) == 3
    assert report.input_rows == 3 * 24

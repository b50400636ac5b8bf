"""The consent ledger is parsed once: each run reads only what the ledger gained, exactly once."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synthetic import crowd

import anonymizer
from anonymizer import ledger_cache
from anonymizer.ledger_cache import MERGE_ANYWAY_AT, MERGE_AT, cache_dir
from anonymizer.pipeline import DECISION_ACTIONS, RunOptions
from consent_middleware.raw.segments import write_segment

DAY1 = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
NOW = DAY2 + timedelta(hours=12)  # neither day is final yet


def decisions(day: datetime, count: int, *, first: int = 0) -> str:
    """``count`` grants of statistics on ``day``, one line each (newline-terminated)."""
    return "".join(
        json.dumps(
            {
                "ts": (day + timedelta(seconds=first + i)).isoformat(),
                "receipt_id": f"r{first + i}",
                "action": "grant",
                "source": "banner",
                "granted": ["statistics"],
                "refused": ["marketing"],
            }
        )
        + "\n"
        for i in range(count)
    )


def setup(tmp_path: Path, text: str) -> tuple[Path, Path, Path]:
    raw, stats = tmp_path / "raw", tmp_path / "stats"
    write_segment(raw, crowd(DAY1, 12) + crowd(DAY2, 12, prefix="w"))
    ledger = raw / "ledger" / "2026-03-02T000000-host-1.jsonl"
    ledger.parent.mkdir(parents=True)
    ledger.write_text(text)
    return raw, stats, ledger


def run(raw: Path, stats: Path, **options: object) -> None:
    anonymizer.run(raw, stats, RunOptions(now=NOW, **options))  # type: ignore[arg-type]


def granted(stats: Path) -> dict[str, int]:
    """Statistics grants per day in consent_daily."""
    con = anonymizer.connect(stats)
    try:
        found = con.execute(
            "SELECT CAST(date AS VARCHAR), granted FROM consent_daily"
            " WHERE purpose = 'statistics' ORDER BY 1"
        ).fetchall()
    finally:
        con.close()
    return {day: int(n) for day, n in found}


def chunks(raw: Path) -> list[Path]:
    return sorted(cache_dir(raw).glob("*.parquet"))


def append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)


def test_a_run_parses_only_what_the_ledger_gained(tmp_path: Path) -> None:
    raw, stats, ledger = setup(tmp_path, decisions(DAY1, 30))
    run(raw, stats)
    assert granted(stats) == {"2026-03-02": 30}
    [first] = chunks(raw)
    before = first.stat().st_mtime_ns
    append(ledger, decisions(DAY2, 20, first=30))
    run(raw, stats)
    assert granted(stats) == {"2026-03-02": 30, "2026-03-03": 20}
    # The first chunk was kept as it was; the second holds exactly the appended bytes.
    assert first.exists() and first.stat().st_mtime_ns == before
    second = [c for c in chunks(raw) if c != first]
    size = ledger.stat().st_size
    assert len(second) == 1 and f".{len(decisions(DAY1, 30))}-{size}." in second[0].name
    run(raw, stats)  # nothing new: nothing parsed, nothing published
    assert len(chunks(raw)) == 2 and granted(stats)["2026-03-03"] == 20


def test_a_line_being_written_waits_for_the_next_run(tmp_path: Path) -> None:
    whole = decisions(DAY1, 12)
    raw, stats, ledger = setup(tmp_path, whole + '{"ts": "2026-03-02T05:00:00+00:00", "act')
    run(raw, stats)
    assert granted(stats) == {"2026-03-02": 12}
    # The writer finishes the line, then writes another one without its newline yet: a
    # whole record, counted now; its newline arriving later adds nothing.
    append(ledger, 'ion": "grant", "granted": ["statistics"]}\n')
    append(ledger, decisions(DAY1, 1, first=100).rstrip("\n"))
    run(raw, stats)
    assert granted(stats) == {"2026-03-02": 14}
    append(ledger, "\n" + decisions(DAY1, 2, first=200))
    run(raw, stats)
    assert granted(stats) == {"2026-03-02": 16}


def test_garbage_and_other_actions_are_skipped_in_every_tail(tmp_path: Path) -> None:
    raw, stats, ledger = setup(tmp_path, decisions(DAY1, 10))
    run(raw, stats)
    noise = ["not json", "[1, 2]", json.dumps({"action": "erase", "ts": DAY1.isoformat()})]
    append(ledger, "\n".join(noise) + "\n" + decisions(DAY1, 3, first=50))
    run(raw, stats)
    assert granted(stats) == {"2026-03-02": 13}


def test_a_rewritten_stream_is_parsed_again(tmp_path: Path) -> None:
    raw, stats, ledger = setup(tmp_path, decisions(DAY1, 10))
    run(raw, stats)
    # Same name, other bytes (longer, so only the digest can tell).
    ledger.write_text(decisions(DAY1, 25, first=1000))
    run(raw, stats)
    assert granted(stats) == {"2026-03-02": 25}
    assert len(chunks(raw)) == 1


def test_a_damaged_chunk_is_parsed_again(tmp_path: Path) -> None:
    raw, stats, ledger = setup(tmp_path, decisions(DAY1, 10))
    run(raw, stats)
    [chunk] = chunks(raw)
    chunk.write_bytes(b"PAR1 torn")
    append(ledger, decisions(DAY1, 5, first=10))
    run(raw, stats)
    assert granted(stats) == {"2026-03-02": 15}


def test_small_chunks_are_merged_once_every_stats_folder_counted_them(tmp_path: Path) -> None:
    raw, stats, ledger = setup(tmp_path, decisions(DAY1, 10))
    other = tmp_path / "stats-other"
    run(raw, stats)
    run(raw, other, k=5)
    total = 10
    for n in range(MERGE_AT + 2):
        append(ledger, decisions(DAY1, 1, first=100 + n))
        total += 1
        run(raw, stats)
    # `other` has counted only the first chunk: nothing after it may be merged away.
    assert len(chunks(raw)) == MERGE_AT + 3
    assert granted(stats) == {"2026-03-02": total}
    run(raw, other, k=5)  # now both have counted everything: merged into one chunk
    assert granted(other) == {"2026-03-02": total}
    assert len(chunks(raw)) == 1
    append(ledger, decisions(DAY1, 2, first=500))
    run(raw, stats)
    run(raw, other, k=5)
    assert granted(stats) == granted(other) == {"2026-03-02": total + 2}


def test_a_removed_stream_leaves_no_chunk(tmp_path: Path) -> None:
    raw, stats, ledger = setup(tmp_path, decisions(DAY1, 10))
    run(raw, stats)
    ledger.unlink()
    run(raw, stats)
    assert chunks(raw) == []


def test_a_stats_folder_no_longer_run_does_not_hold_merges_back(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    ledger = raw / "ledger" / "s.jsonl"
    ledger.parent.mkdir(parents=True)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    stale = {"s.jsonl": 0}  # the offsets of a STATS folder that ran before any decision
    counted: dict[str, int] = {}  # those of the folder run after every append
    for n in range(MERGE_ANYWAY_AT):
        append(ledger, decisions(DAY1, 1, first=n))
        counted = ledger_cache.update(raw, [ledger], counted, DECISION_ACTIONS, con).offsets
        ledger_cache.merge(raw, {"s.jsonl"}, stale, con)
        assert len(chunks(raw)) == (n + 1 if n + 1 < MERGE_ANYWAY_AT else 1)
    # The stale folder's next run finds every decision, once, among the new chunks.
    found = ledger_cache.update(raw, [ledger], stale, DECISION_ACTIONS, con)
    assert sum(pq.read_metadata(c).num_rows for c in found.new) == MERGE_ANYWAY_AT


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.one_of(st.just(""), st.text(max_size=40).map(lambda t: t.replace("\n", " "))),
        max_size=25,
    ),
    st.lists(st.integers(min_value=0, max_value=4000), max_size=6),
)
def test_appends_cut_anywhere_count_every_decision_once(
    tmp_path_factory: pytest.TempPathFactory, lines: list[str], cuts: list[int]
) -> None:
    """Whatever the ledger holds and wherever the reads fall (mid-line included), the
    chunks hold each decision exactly once when the writer is done. ``""`` is a decision,
    anything else a foreign line."""
    raw = tmp_path_factory.mktemp("raw")
    text = "".join(
        decisions(DAY1, 1, first=i) if line == "" else line + "\n" for i, line in enumerate(lines)
    ).encode()
    ledger = raw / "ledger" / "s.jsonl"
    ledger.parent.mkdir(parents=True)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    counted: dict[str, int] = {}
    for cut in [*sorted(c for c in cuts if c < len(text)), len(text)]:
        ledger.write_bytes(text[:cut])  # the writer has appended up to ``cut``
        found = ledger_cache.update(raw, [ledger], counted, DECISION_ACTIONS, con)
        counted = found.offsets
    assert sum(pq.read_metadata(c).num_rows for c in found.chunks) == lines.count("")
    assert counted["s.jsonl"] == len(text)

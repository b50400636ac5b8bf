"""Purge applies erasure tombstones: every trace of the erased visitor leaves RAW, nothing else
does, and a purge killed at any point and run again ends in the same state."""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rights_support import Site, all_events, scan_bytes

from consent_middleware.erasure import purge_raw
from consent_middleware.raw.layout import RawLayout
from consent_middleware.raw.segments import list_segments, write_segment
from consent_middleware.receipt_links import add_link, all_links
from consent_middleware.request_log import load_requests
from consent_middleware.rights import erase

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 11, 20, 10, tzinfo=UTC)


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _event(n: int, aid: str | None, vh: str | None, day: int = 0) -> dict[str, Any]:
    """One event; ``path`` is unique (``/e/<n>``) so rows can be compared one by one."""
    return {
        "ts": T0 + timedelta(days=day, seconds=n),
        "method": "GET",
        "status": 200,
        "path": f"/e/{n}",
        "user_agent": "UA",
        "visitor_hash": vh,
        "aid": aid,
        "purposes": ["necessary", "statistics"] if aid else ["necessary"],
        "source": "middleware",
    }


def _build(raw: Path) -> set[str]:
    """Five segments over two days: the erased visitor E (aid ``aid-E``, and id-less rows
    of the same browser ``vh-E``), kept visitors K and N, and K2, another consenting
    browser behind the same address and user agent as E. Returns the paths that must stay."""
    n = iter(range(1000))
    segments = [
        [_event(next(n), None, "vh-E") for _ in range(3)],  # E before consenting
        [*(_event(next(n), "aid-E", "vh-E") for _ in range(4)), _event(next(n), "aid-K", "vh-K")],
        [_event(next(n), "aid-K", "vh-K", day=1) for _ in range(5)],
        [_event(next(n), "aid-E", "vh-E2", day=1) for _ in range(2)],  # deleted entirely
        [
            _event(next(n), None, "vh-E2", day=1),
            _event(next(n), None, "vh-N", day=1),
            _event(next(n), "aid-K2", "vh-E2", day=1),  # someone else: kept
            _event(next(n), None, None, day=1),
        ],
    ]
    for events in segments:
        write_segment(raw, events, prefix="mw", compression="none")
    erased = {"aid-E"}
    linked = {"vh-E", "vh-E2"}
    return {
        e["path"]
        for events in segments
        for e in events
        if e["aid"] not in erased and not (e["aid"] is None and e["visitor_hash"] in linked)
    }


def _paths(raw: Path) -> list[str]:
    return sorted(e["path"] for e in all_events(raw))


def test_purge_removes_only_the_erased_visitors_rows(tmp_path: Path) -> None:
    keep = _build(tmp_path)
    request = erase(tmp_path, "receipt-E", aids=["aid-E"], channel="post")
    assert [r.status for r in load_requests(tmp_path)] == ["open"]

    report = purge_raw(tmp_path)
    assert _paths(tmp_path) == sorted(keep)
    assert report.erased_events == 3 + 4 + 2 + 1
    assert len(report.rewritten_segments) == 4
    assert report.completed_requests == [request.request_id]
    done = load_requests(tmp_path)[0]
    assert done.status == "completed" and done.completed and done.removed_events == 10
    assert scan_bytes(tmp_path, "aid-E") == []
    # The two segments that held only the erased browser's rows are gone.
    assert len(list_segments(tmp_path)) == 3

    again = purge_raw(tmp_path)  # idempotent
    assert again.erased_events == 0 and again.rewritten_segments == []
    assert _paths(tmp_path) == sorted(keep)


def test_dry_run_reports_and_changes_nothing(tmp_path: Path) -> None:
    _build(tmp_path)
    erase(tmp_path, "receipt-E", aids=["aid-E"])
    before = {p: p.read_bytes() for p in list_segments(tmp_path)}
    report = purge_raw(tmp_path, dry_run=True)
    assert report.erased_events == 10 and len(report.rewritten_segments) == 4
    assert {p: p.read_bytes() for p in list_segments(tmp_path)} == before
    assert [r.status for r in load_requests(tmp_path)] == ["open"]


KILL = """
import os, signal, sys
from consent_middleware.erasure import purge_raw
stage, target = sys.argv[2], int(sys.argv[3])
seen = 0
def hook(name, path):
    global seen
    if name == stage:
        seen += 1
        if seen == target:
            os.kill(os.getpid(), signal.SIGKILL)
purge_raw(sys.argv[1], hook=hook)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stage", "target"),
    [("staged", 1), ("replaced", 1), ("staged", 2), ("replaced", 2), ("deleted", 1)],
)
def test_purge_killed_midway_then_rerun_is_consistent(
    tmp_path: Path, stage: str, target: int
) -> None:
    keep = _build(tmp_path)
    every = set(_paths(tmp_path))
    erase(tmp_path, "receipt-E", aids=["aid-E"])
    killed = subprocess.run(
        [sys.executable, "-c", KILL, str(tmp_path), stage, str(target)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr.decode()
    # Killed: RAW is readable, nothing that should stay was lost, the rest is a subset.
    glob = RawLayout.at(tmp_path).events_glob()
    count = duckdb.execute(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall()[0][0]
    middle = set(_paths(tmp_path))
    assert count == len(middle) and keep <= middle <= every
    assert [r.status for r in load_requests(tmp_path)] == ["open"]

    purge_raw(tmp_path)
    assert _paths(tmp_path) == sorted(keep)
    assert not list(tmp_path.rglob("*.tmp"))
    assert [r.status for r in load_requests(tmp_path)] == ["completed"]
    assert scan_bytes(tmp_path, "aid-E") == []


def test_purge_while_the_app_writes_keeps_every_new_event(tmp_path: Path) -> None:
    _build(tmp_path)
    erase(tmp_path, "receipt-E", aids=["aid-E"])
    written: list[int] = []

    def writer() -> None:
        for i in range(40):  # a bounded stream of new segments during the purge
            write_segment(tmp_path, [_event(2000 + i, f"aid-new-{i}", f"vh-{i}")], prefix="mw")
            written.append(i)

    thread = threading.Thread(target=writer)
    thread.start()
    purge_raw(tmp_path)
    thread.join()
    paths = set(_paths(tmp_path))
    assert {f"/e/{2000 + i}" for i in written} <= paths and len(written) == 40
    assert not any(e["aid"] == "aid-E" for e in all_events(tmp_path))


def test_links_of_erased_ids_go_once_their_day_is_over(tmp_path: Path) -> None:
    _build(tmp_path)
    add_link(tmp_path, "receipt-E", "aid-E", now=T0)
    add_link(tmp_path, "receipt-K", "aid-K", now=T0)
    erase(tmp_path, "receipt-E", channel="post")  # found through the link alone
    report = purge_raw(tmp_path, now=T0 + timedelta(days=1, hours=2), retention_days=30)
    assert report.removed_links == 1
    assert [r["aid_sha256"] for r in all_links(tmp_path)] == [_sha("aid-K")]
    assert not any(e["aid"] == "aid-E" for e in all_events(tmp_path))


def test_quarantined_segments_are_cleaned_or_reported(tmp_path: Path) -> None:
    keep = _build(tmp_path)
    erase(tmp_path, "receipt-E", aids=["aid-E"])
    # A damaged segment moved aside by the anonymizer, and one that still reads whole.
    folder = RawLayout.at(tmp_path).quarantine / "truncated" / "date=2026-11-20"
    folder.mkdir(parents=True)
    (folder / "broken.parquet").write_bytes(b"PAR1 not really")
    (folder / "broken.parquet.json").write_text('{"reason": "truncated"}')
    readable = RawLayout.at(tmp_path).quarantine / "late-timestamp" / "date=2026-11-20"
    readable.mkdir(parents=True)
    (moved,) = write_segment(
        tmp_path, [_event(900, "aid-E", "vh-Q"), _event(901, None, "vh-Q"), _event(902, "k", None)]
    )
    moved.rename(readable / moved.name)

    report = purge_raw(tmp_path)
    assert report.unchecked_files == ["quarantine/truncated/date=2026-11-20/broken.parquet"]
    assert _paths(tmp_path) == sorted(keep)  # RAW's segments are cleaned as usual
    left = pq.read_table(readable / moved.name).to_pylist()
    assert [row["path"] for row in left] == ["/e/902"]
    assert [r.status for r in load_requests(tmp_path)] == ["completed"]


def test_after_erasure_and_purge_nothing_of_the_visitor_is_left(tmp_path: Path) -> None:
    site = Site(tmp_path)
    erased = site.visitor("Browser-E", pages=4)
    others = [site.visitor(f"Browser-{i}", pages=3, host=f"198.51.100.{i}") for i in range(3)]
    state = erased.get("/").json()
    aid, receipt = state["aid"], state["receipt_id"]
    site.flush()
    before = Counter(e["aid"] for e in all_events(tmp_path))
    assert before[aid] == 5 and scan_bytes(tmp_path, aid)  # the scan does see plain values

    response = erased.delete("/privacy/data", headers={"origin": "http://testserver"})
    assert response.status_code == 202
    site.flush()
    purge_raw(tmp_path)

    assert scan_bytes(tmp_path, aid) == []
    # Its digest stays in the tombstone (and in today's receipt links until the day is over).
    assert {Path(p).parts[0] for p in scan_bytes(tmp_path, _sha(aid))} == {"tombstones", "links"}
    events = all_events(tmp_path)
    assert not any(receipt in str(e) for e in events)
    after = Counter(e["aid"] for e in events)
    for client in others:
        other = client.get("/").json()["aid"]  # not flushed: not counted below
        assert after[other] == before[other] == 3
    # Only ledger records (the proof of consent and of the erasure) name the receipt.
    assert {Path(p).parts[0] for p in scan_bytes(tmp_path, receipt)} == {"ledger"}
    # The erased browser's page before it consented (no aid, same visitor_hash) is gone too.
    assert not any(e["user_agent"] == "Browser-E" for e in events)
    purge_raw(tmp_path, now=datetime.now(UTC) + timedelta(days=1, hours=2))
    assert scan_bytes(tmp_path, _sha(aid)) == [f"tombstones/{_sha(aid)}.json"]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(
        st.tuples(st.sampled_from([None, "a1", "a2", "a3"]), st.sampled_from([None, "v1", "v2"])),
        min_size=1,
        max_size=30,
    ),
    cuts=st.lists(st.integers(0, 30), max_size=4),
    erased=st.sets(st.sampled_from(["a1", "a2", "a3"]), min_size=1),
)
def test_purge_matches_the_rule_on_any_layout(
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[tuple[str | None, str | None]],
    cuts: list[int],
    erased: set[str],
) -> None:
    raw = tmp_path_factory.mktemp("raw")
    events = [_event(i, aid, vh) for i, (aid, vh) in enumerate(rows)]
    bounds = sorted({0, len(events), *(c for c in cuts if c < len(events))})
    for start, end in itertools.pairwise(bounds):
        write_segment(raw, events[start:end], prefix="mw")
    for aid in sorted(erased):
        erase(raw, f"r-{aid}", aids=[aid])
    linked = {vh for aid, vh in rows if aid in erased and vh is not None}
    expected = sorted(
        e["path"]
        for e in events
        if e["aid"] not in erased and not (e["aid"] is None and e["visitor_hash"] in linked)
    )
    report = purge_raw(raw)
    assert _paths(raw) == expected
    assert report.erased_events == len(events) - len(expected)

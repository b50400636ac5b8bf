"""Pipeline steps 1-7, each on hand-made RAW events, checked through the published tables."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synthetic import GOOGLEBOT, crowd, event

import anonymizer
from anonymizer.pipeline import RunOptions
from consent_middleware.raw.segments import write_segment

T0 = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)  # a Monday, 12:00 in Tokyo
LATER = datetime(2026, 6, 1, tzinfo=UTC)  # every day of the data is final by then


def publish(tmp_path: Path, events: list[dict[str, Any]], **options: Any) -> Path:
    """Write ``events`` to a fresh RAW, run the pipeline, return the STATS folder."""
    raw, stats = tmp_path / "raw", tmp_path / "stats"
    write_segment(raw, events)
    anonymizer.run(raw, stats, RunOptions(now=LATER, **options))
    return stats


def rows(stats: Path, sql: str) -> list[tuple[Any, ...]]:
    con = anonymizer.connect(stats)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_tombstone_removes_the_erased_visitor_from_every_table(tmp_path: Path) -> None:
    events = crowd(T0, 12, "/a", statistics=True)
    for i, e in enumerate(events):
        e["aid"] = f"aid-{i}"
    raw = tmp_path / "raw"
    (raw / "tombstones").mkdir(parents=True)
    digest = hashlib.sha256(b"aid-0").hexdigest()
    record = {"aid_sha256": digest, "ts": "2026-03-03T00:00:00Z", "request_id": "x"}
    (raw / "tombstones" / "t.json").write_text(json.dumps(record))
    # The erased visitor's pageview before consent (same browser, no aid) goes too.
    events.append(event(T0 - timedelta(minutes=5), events[0]["visitor_hash"], "/b"))  # type: ignore[arg-type]
    stats = publish(tmp_path, events)
    assert rows(stats, "SELECT pageviews, visitors FROM traffic_daily") == [(11, 11)]
    assert rows(stats, "SELECT page, visitors FROM pages_daily") == [("/a", 11)]
    assert rows(stats, "SELECT week_offset, visitors FROM retention_weekly") == [(0, 11)]


def test_retention_counts_only_visitors_who_granted_statistics(tmp_path: Path) -> None:
    consented = crowd(T0, 12, prefix="c", statistics=True)
    refused = crowd(T0, 15, prefix="r")
    for i, e in enumerate(consented + refused):
        e["aid"] = f"aid-{i}"  # an aid without the statistics purpose must not count
    week2 = [dict(e, ts=e["ts"] + timedelta(days=7)) for e in consented[:10]]  # type: ignore[operator]
    stats = publish(tmp_path, consented + refused + week2)
    assert rows(stats, "SELECT cohort_week, week_offset, visitors FROM retention_weekly") == [
        (date(2026, 3, 2), 0, 12),
        (date(2026, 3, 2), 1, 10),
    ]
    # Daily tables use every visitor (the daily hash).
    assert rows(stats, "SELECT visitors FROM traffic_daily WHERE date = '2026-03-02'") == [(27,)]


def test_generalise_local_time_bots_and_referrers(tmp_path: Path) -> None:
    late = T0.replace(hour=16)  # 01:00 the next day in Tokyo
    events = crowd(late, 12, "/a", referrer_host="www.google.co.jp")
    events += crowd(late, 12, "/a", prefix="bot", user_agent=GOOGLEBOT)
    stats = publish(tmp_path, events, timezone="Asia/Tokyo")
    assert rows(stats, "SELECT date, pageviews, visitors FROM traffic_daily") == [
        (date(2026, 3, 3), 12, 12)
    ]
    assert rows(stats, "SELECT hour FROM hourly_traffic") == [(1,)]
    assert rows(stats, "SELECT source, channel, visits FROM sources_daily") == [
        ("Google", "search", 12)
    ]
    assert rows(stats, "SELECT device_type, browser, os FROM technology_daily") == [
        ("desktop", "Chrome", "Windows")
    ]


def test_imported_paths_are_scrubbed_again_and_assets_are_not_pages(tmp_path: Path) -> None:
    events = crowd(T0, 12, "/orders/12345", source="combined")
    events += crowd(T0, 12, "/static/app.js", prefix="s")
    stats = publish(tmp_path, events)
    assert rows(stats, "SELECT page, pageviews FROM pages_daily") == [("/orders/{id}", 12)]
    perf = rows(stats, "SELECT page, requests FROM performance_daily ORDER BY page")
    assert perf == [("/orders/{id}", 12), ("/static/app.js", 12)]


def test_sessions_end_after_thirty_minutes(tmp_path: Path) -> None:
    events = []
    for i in range(10):
        visitor = f"s{i:031d}"
        events += [
            event(T0, visitor, "/a"),
            event(T0 + timedelta(minutes=10), visitor, "/b"),
            event(T0 + timedelta(minutes=50), visitor, "/c"),  # a new visit, a bounce
        ]
    stats = publish(tmp_path, events)
    assert rows(stats, "SELECT visits, bounce_rate, avg_visit_seconds FROM traffic_daily") == [
        (20, 0.5, 300.0)
    ]
    entries = rows(stats, "SELECT page, entries FROM pages_daily ORDER BY page")
    assert entries == [("/a", 10), ("/b", 0), ("/c", 10)]


def test_contributions_are_bounded_per_visitor_day_and_row(tmp_path: Path) -> None:
    events = crowd(T0, 11, "/a")
    events += [event(T0 + timedelta(minutes=i), "heavy" + "0" * 27, "/a") for i in range(100)]
    stats = publish(tmp_path, events, max_pageviews=20)
    assert rows(stats, "SELECT pageviews, visitors FROM pages_daily") == [(31, 12)]
    assert rows(stats, "SELECT pageviews FROM traffic_daily") == [(31,)]
    assert rows(stats, "SELECT requests FROM performance_daily") == [(31,)]


def _percentile(values: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (PERCENTILE_CONT), rounded like STATS."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (position - low), 1)


def test_response_time_percentiles_per_cell_and_in_the_folded_row(tmp_path: Path) -> None:
    kept = [float(d) for d in (5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 1000)]
    events = [
        event(T0 + timedelta(seconds=i), f"k{i:030d}", "/kept", duration_ms=d)
        for i, d in enumerate(kept)
    ]
    # Rare pages fold into (other): its percentiles come from the folded requests themselves.
    rare = [float(d) for d in (2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377)]
    events += [
        event(T0 + timedelta(seconds=i), f"r{i:030d}", f"/rare-{i % 6}", duration_ms=d)
        for i, d in enumerate(rare)
    ]
    events.append(event(T0, "e" + "0" * 29, "/kept", status=404, duration_ms=9.0))
    stats = publish(tmp_path, events)
    assert rows(
        stats,
        "SELECT page, status_class, requests, p50_ms, p95_ms FROM performance_daily"
        " ORDER BY page, status_class",
    ) == [
        ("(other)", "(other)", 13, _percentile([*rare, 9.0], 0.5), _percentile([*rare, 9.0], 0.95)),
        ("/kept", "2xx", 13, _percentile(kept, 0.5), _percentile(kept, 0.95)),
    ]


def test_rare_values_fold_into_other_and_small_other_rows_are_dropped(tmp_path: Path) -> None:
    events = crowd(T0, 12, "/popular")
    # Six rare pages with two visitors each: 12 distinct visitors together, (other) is shown.
    for p in range(6):
        events += crowd(T0, 2, f"/rare-{p}", prefix=f"r{p}-")
    stats = publish(tmp_path, events)
    assert rows(stats, "SELECT page, visitors FROM pages_daily ORDER BY page") == [
        ("(other)", 12),
        ("/popular", 12),
    ]
    # The same two visitors on many rare pages: folded, but fewer than k distinct -> dropped.
    events = crowd(T0, 12, "/popular")
    for p in range(6):
        events += crowd(T0, 2, f"/rare-{p}", prefix="same-")
    stats = publish(tmp_path / "second", events)
    assert rows(stats, "SELECT page FROM pages_daily") == [("/popular",)]
    assert rows(stats, "SELECT count(*) FROM hourly_traffic WHERE hour IS NULL") == [(0,)]


def test_small_days_publish_totals_but_no_breakdowns(tmp_path: Path) -> None:
    stats = publish(tmp_path, crowd(T0, 12) + crowd(T0 + timedelta(days=1), 3, prefix="w"))
    assert rows(stats, "SELECT date, visitors FROM traffic_daily ORDER BY date") == [
        (date(2026, 3, 2), 12),
        (date(2026, 3, 3), 3),
    ]
    for table in ("pages_daily", "languages_daily", "technology_daily", "hourly_traffic"):
        assert rows(stats, f"SELECT DISTINCT date FROM {table}") == [(date(2026, 3, 2),)]


def test_consent_daily_counts_decisions_and_skips_torn_lines(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    (raw / "ledger").mkdir(parents=True)
    lines = [
        json.dumps(
            {
                "ts": f"2026-03-02T0{i % 9}:00:00Z",
                "receipt_id": f"r{i}",
                "action": "grant" if i < 12 else "withdraw",
                "source": "banner",
                "granted": ["necessary", "statistics"] if i < 12 else ["necessary"],
                "refused": [] if i < 12 else ["statistics"],
            }
        )
        for i in range(14)
    ]
    lines += [
        "not json",
        "[1, 2]",
        json.dumps({"action": "erase", "ts": "2026-03-02T00:00:00Z", "granted": ["x"]}),
        json.dumps({"action": "grant", "ts": "yesterday", "granted": ["statistics"]}),
    ]
    (raw / "ledger" / "a.jsonl").write_text("\n".join(lines) + '\n{"ts": "2026-03-02T0')
    stats = publish(tmp_path, crowd(T0, 12))
    # statistics: 12 granted + 2 refused = 14 decisions; necessary: 14 decisions.
    assert rows(stats, "SELECT purpose, granted, refused FROM consent_daily ORDER BY 1") == [
        ("necessary", 14, 0),
        ("statistics", 12, 2),
    ]


@pytest.mark.parametrize("k", [2, 5, 10])
def test_every_dimension_row_reaches_k(tmp_path: Path, k: int) -> None:
    events = []
    for p in range(8):
        events += crowd(T0 + timedelta(hours=p), p * 2 + 1, f"/p{p}", prefix=f"p{p}-")
    stats = publish(tmp_path, events, k=k)
    assert all(v >= k for (v,) in rows(stats, "SELECT visitors FROM pages_daily"))
    assert all(v >= k for (v,) in rows(stats, "SELECT visitors FROM hourly_traffic"))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.one_of(st.text(max_size=80), st.binary(max_size=80).map(repr)), max_size=20))
def test_garbage_ledger_lines_never_break_a_run(tmp_path: Path, lines: list[str]) -> None:
    root = tmp_path / f"run-{abs(hash(tuple(lines)))}"
    (root / "raw" / "ledger").mkdir(parents=True)
    good = {"ts": "2026-03-02T01:00:00Z", "action": "grant", "granted": ["statistics"]}
    text = "\n".join([json.dumps(good)] * 10 + [x.replace("\n", " ") for x in lines])
    (root / "raw" / "ledger" / "x.jsonl").write_text(text, encoding="utf-8", errors="replace")
    stats = publish(root, crowd(T0, 12))
    assert rows(stats, "SELECT purpose, granted FROM consent_daily") == [("statistics", 10)]


@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "Pacific/Pago_Pago", "Asia/Kathmandu"])
def test_a_local_day_gets_every_event_from_the_utc_partitions_it_spans(
    tmp_path: Path, zone: str
) -> None:
    # UTC+14, UTC-11 and UTC+5:45: the local day of 2026-03-10 straddles two UTC dates.
    # Events in its first and last minute sit in different UTC partitions; both count.
    from zoneinfo import ZoneInfo

    local = ZoneInfo(zone)
    first = datetime(2026, 3, 10, 0, 0, 30, tzinfo=local).astimezone(UTC)
    last = datetime(2026, 3, 10, 23, 59, 0, tzinfo=local).astimezone(UTC)
    assert first.date() != last.date()
    events = crowd(first, 12, "/early") + crowd(last, 12, "/late", prefix="w")
    raw, stats = tmp_path / "raw", tmp_path / "stats"
    for group in (events[:12], events[12:]):  # one segment per UTC date, as the recorder does
        write_segment(raw, group)
    anonymizer.run(raw, stats, RunOptions(now=LATER, timezone=zone, k=10))
    assert rows(stats, "SELECT date, pageviews, visitors FROM traffic_daily") == [
        (date(2026, 3, 10), 24, 24)
    ]
    assert rows(stats, "SELECT page, pageviews FROM pages_daily ORDER BY page") == [
        ("/early", 12),
        ("/late", 12),
    ]


def test_campaign_tags_decide_the_channel_and_ties_break_by_page(tmp_path: Path) -> None:
    """Tags override the referrer's channel (email, social, else campaign); a visit's entry,
    source, channel and tags are its first pageview's, and pageviews at the same instant are
    ordered by page, source, channel, then tags (the ids sort as the names do)."""
    google = {"referrer_host": "www.google.com"}
    events = crowd(T0, 12, "/news", prefix="e", utm_source="news", utm_medium="Email", **google)
    events += crowd(T0, 12, "/", prefix="s", **google)
    events += crowd(T0, 12, "/offer", prefix="c", utm_medium="cpc")
    tied = T0 + timedelta(hours=2)
    for i in range(12):
        visitor = f"t{i:030d}"
        events.append(event(tied, visitor, "/b", utm_source="zz"))
        events.append(event(tied, visitor, "/a"))
        # Same page and source: "campaign" sorts before "direct", then "aa" before "bb".
        visitor = f"u{i:030d}"
        events.append(event(tied, visitor, "/c"))
        events.append(event(tied, visitor, "/c", utm_source="bb"))
        events.append(event(tied, visitor, "/c", utm_source="aa"))
    stats = publish(tmp_path, events)
    assert rows(stats, "SELECT source, channel, visits FROM sources_daily ORDER BY 1, 2") == [
        ("(direct)", "campaign", 24),
        ("(direct)", "direct", 12),
        ("Google", "email", 12),
        ("Google", "search", 12),
    ]
    campaigns = "SELECT utm_source, utm_medium, utm_campaign, visits FROM campaigns_daily"
    assert rows(stats, campaigns + " ORDER BY 1, 2") == [
        ("aa", None, None, 12),
        ("news", "Email", None, 12),
        (None, "cpc", None, 12),
    ]
    assert rows(stats, "SELECT page, entries FROM pages_daily WHERE page IN ('/a', '/b')") == [
        ("/a", 12),
        ("/b", 0),
    ]

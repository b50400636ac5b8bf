"""Local dates and hours from zone offsets (``anonymizer.engines.offsets``), against zoneinfo."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import duckdb
import pytest

from anonymizer.engines.offsets import offset_clock, offset_spans
from anonymizer.engines.views import utc_bounds

ZONES = [
    "UTC",
    "Asia/Tokyo",
    "Europe/Berlin",
    "America/New_York",
    "America/Vancouver",
    "America/Havana",
    "Asia/Beirut",  # DST ends at midnight: a local midnight happens twice
    "Australia/Lord_Howe",  # 30-minute DST
    "Asia/Kathmandu",  # +5:45
    "Pacific/Chatham",  # +12:45 / +13:45
    "Pacific/Kiritimati",  # +14
    "Pacific/Pago_Pago",  # -11
    "Africa/Monrovia",  # -0:44:30 until 1972
]
FIRST_DAYS = [date(1971, 1, 1), date(2024, 9, 20), date(2026, 3, 25), date(2026, 10, 22)]


@pytest.mark.parametrize("zone", ZONES)
def test_local_date_and_hour_match_zoneinfo_at_every_instant_of_a_batch(zone: str) -> None:
    rng = random.Random(zone)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for first in FIRST_DAYS:
        start, end = utc_bounds([first + timedelta(days=i) for i in range(9)], zone)
        day, hour = offset_clock(zone, start, end)("ts")
        micros = int((end - start) / timedelta(microseconds=1))
        instants = [start + timedelta(microseconds=rng.randrange(micros)) for _ in range(500)]
        for since, _ in offset_spans(zone, start, end)[1:]:  # each change, and either side
            instants += [
                since - timedelta(microseconds=1),
                since,
                since + timedelta(microseconds=1),
            ]
        instants += [start, end - timedelta(microseconds=1)]
        rows = con.execute(
            f"SELECT ts, {day}, {hour} FROM (SELECT unnest(?::TIMESTAMPTZ[]) AS ts)", [instants]
        ).fetchall()
        local = ZoneInfo(zone)
        wrong = [
            (ts, d, h)
            for ts, d, h in rows
            if (d, h) != (ts.astimezone(local).date(), ts.astimezone(local).hour)
        ]
        assert not wrong, wrong[:3]


def test_years_of_offset_changes_take_a_few_comparisons_and_stay_exact() -> None:
    start, end = datetime(1975, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC)
    spans = offset_spans("Europe/Berlin", start, end)
    assert len(spans) > 90  # two changes a year since 1980
    day, hour = offset_clock("Europe/Berlin", start, end)("ts")
    assert day.count("CASE") == len(spans) - 1 and "WHEN" in day
    rng = random.Random(1)
    seconds = int((end - start).total_seconds())
    instants = [start + timedelta(seconds=rng.randrange(seconds)) for _ in range(5000)]
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT ts, {day}, {hour} FROM (SELECT unnest(?::TIMESTAMPTZ[]) AS ts)", [instants]
    ).fetchall()
    berlin = ZoneInfo("Europe/Berlin")
    assert all(
        (d, h) == (ts.astimezone(berlin).date(), ts.astimezone(berlin).hour) for ts, d, h in rows
    )

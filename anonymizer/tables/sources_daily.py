"""``sources_daily``: visits per referrer source and channel (from each visit's entry)."""

from __future__ import annotations

import pyarrow as pa

from anonymizer.tables.base import CHANNEL_NAMES, SOURCE_NAMES, TableDef

SOURCES_DAILY = TableDef(
    name="sources_daily",
    columns=(
        ("date", pa.date32()),
        ("source", pa.string()),
        ("channel", pa.string()),
        ("visits", pa.int64()),
        ("visitors", pa.int64()),
    ),
    partition="date",
    dimensions=("source", "channel"),
    source="""
        SELECT date, source_id, channel_id, visitor,
               LEAST(COUNT(*), {max_pageviews}) AS visits
        FROM visits GROUP BY date, source_id, channel_id, visitor
    """,
    names=(SOURCE_NAMES, CHANNEL_NAMES),
    measures=(("visits", "SUM(visits)"), ("visitors", "COUNT(DISTINCT visitor)")),
)
"""A visit's source and channel are those of its first pageview."""

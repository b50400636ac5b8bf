"""``hourly_traffic``: pageviews and visitors per local hour."""

from __future__ import annotations

import pyarrow as pa

from anonymizer.tables.base import TableDef

HOURLY_TRAFFIC = TableDef(
    name="hourly_traffic",
    columns=(
        ("date", pa.date32()),
        ("hour", pa.int32()),
        ("pageviews", pa.int64()),
        ("visitors", pa.int64()),
    ),
    partition="date",
    dimensions=("hour",),
    numeric_dimensions=frozenset({"hour"}),
    source="""
        SELECT date, hour, visitor, LEAST(COUNT(*), {max_pageviews}) AS pageviews
        FROM pageviews GROUP BY date, hour, visitor
    """,
    measures=(("pageviews", "SUM(pageviews)"), ("visitors", "COUNT(DISTINCT visitor)")),
)
"""Hours below k are folded into one row with a NULL hour."""

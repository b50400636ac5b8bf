"""``campaigns_daily``: visits that arrived with ``utm_*`` parameters."""

from __future__ import annotations

import pyarrow as pa

from anonymizer.tables.base import UTM_NAMES, TableDef

CAMPAIGNS_DAILY = TableDef(
    name="campaigns_daily",
    columns=(
        ("date", pa.date32()),
        ("utm_source", pa.string()),
        ("utm_medium", pa.string()),
        ("utm_campaign", pa.string()),
        ("visits", pa.int64()),
        ("visitors", pa.int64()),
    ),
    partition="date",
    dimensions=("utm_source", "utm_medium", "utm_campaign"),
    source="""
        SELECT date, utm_id, visitor, LEAST(COUNT(*), {max_pageviews}) AS visits
        FROM visits WHERE utm_id IS NOT NULL GROUP BY date, utm_id, visitor
    """,
    names=(UTM_NAMES,),
    measures=(("visits", "SUM(visits)"), ("visitors", "COUNT(DISTINCT visitor)")),
)
"""Only visits whose entry carried at least one of source, medium, campaign."""

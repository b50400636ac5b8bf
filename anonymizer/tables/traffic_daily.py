"""``traffic_daily``: a day's totals, published even when small (design section 7)."""

from __future__ import annotations

import pyarrow as pa

from anonymizer.tables.base import TableDef

TRAFFIC_DAILY = TableDef(
    name="traffic_daily",
    columns=(
        ("date", pa.date32()),
        ("pageviews", pa.int64()),
        ("visits", pa.int64()),
        ("visitors", pa.int64()),
        ("bounce_rate", pa.float64()),
        ("avg_visit_seconds", pa.float64()),
    ),
    partition="date",
    dimensions=(),
    source="""
        SELECT date, visitor,
               LEAST(COUNT(*), {max_pageviews}) AS pageviews,
               SUM(new_visit) AS visits,
               SUM(bounce) AS bounces,
               SUM(visit_seconds) AS seconds
        FROM visit_pageviews GROUP BY date, visitor
    """,
    measures=(
        ("pageviews", "SUM(pageviews)"),
        ("visits", "SUM(visits)"),
        ("visitors", "COUNT(*)"),
        ("bounce_rate", "ROUND(CAST(SUM(bounces) AS DOUBLE) / SUM(visits), 4)"),
        ("avg_visit_seconds", "ROUND(CAST(SUM(seconds) AS DOUBLE) / SUM(visits), 1)"),
    ),
    thresholded=False,
    gated=False,
)
"""One row per day: pageviews (bounded per visitor), visits, visitors, bounce rate (share of
visits with one pageview) and average visit length (first to last pageview)."""

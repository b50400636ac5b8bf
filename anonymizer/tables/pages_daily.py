"""``pages_daily``: pageviews, visitors and entries per page and day."""

from __future__ import annotations

import pyarrow as pa

from anonymizer.tables.base import TableDef

PAGES_DAILY = TableDef(
    name="pages_daily",
    columns=(
        ("date", pa.date32()),
        ("page", pa.string()),
        ("pageviews", pa.int64()),
        ("visitors", pa.int64()),
        ("entries", pa.int64()),
    ),
    partition="date",
    dimensions=("page",),
    source="""
        SELECT date, page, visitor,
               LEAST(SUM(views), {max_pageviews}) AS pageviews,
               LEAST(SUM(entries), {max_pageviews}) AS entries
        FROM (
            SELECT date, page, visitor, 1 AS views, 0 AS entries FROM pageviews
            UNION ALL
            SELECT date, entry_page AS page, visitor, 0 AS views, 1 AS entries FROM visits
        ) AS hits
        GROUP BY date, page, visitor
    """,
    measures=(
        ("pageviews", "SUM(pageviews)"),
        ("visitors", "COUNT(DISTINCT visitor)"),
        ("entries", "SUM(entries)"),
    ),
)
"""Entries count the visits that started on the page."""

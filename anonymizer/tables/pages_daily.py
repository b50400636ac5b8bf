"""``pages_daily``: pageviews, visitors and entries per page and day."""

from __future__ import annotations

import pyarrow as pa

from anonymizer.tables.base import PAGE_NAMES, TableDef

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
    # A visit's entry page is the page of its first pageview (``new_visit = 1``): one
    # grouping of ``visit_pageviews`` counts both views and entries.
    source="""
        SELECT date, page_id, visitor,
               LEAST(COUNT(*), {max_pageviews}) AS pageviews,
               LEAST(SUM(new_visit), {max_pageviews}) AS entries
        FROM visit_pageviews
        GROUP BY date, page_id, visitor
    """,
    names=(PAGE_NAMES,),
    measures=(
        ("pageviews", "SUM(pageviews)"),
        ("visitors", "COUNT(DISTINCT visitor)"),
        ("entries", "SUM(entries)"),
    ),
)
"""Entries count the visits that started on the page."""

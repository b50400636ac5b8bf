"""``performance_daily``: request counts and response-time percentiles per page and status."""

from __future__ import annotations

import pyarrow as pa

from anonymizer.tables.base import PAGE_NAMES, STATUS_NAMES, TableDef

PERFORMANCE_DAILY = TableDef(
    name="performance_daily",
    columns=(
        ("date", pa.date32()),
        ("page", pa.string()),
        ("status_class", pa.string()),
        ("requests", pa.int64()),
        ("p50_ms", pa.float64()),
        ("p95_ms", pa.float64()),
    ),
    partition="date",
    dimensions=("page", "status_class"),
    # Each visitor contributes at most {max_pageviews} requests per cell. Only a visitor-day
    # with more requests than that in total can exceed the bound in a cell: only its
    # requests are ranked (found by a cheap count per visitor-day; a window or a count per
    # visitor and cell over every request would cost more than the rest of the table).
    source="""
        WITH classed AS (
            SELECT date, page_id, visitor, duration_ms,
                   CAST(FLOOR(status / 100) AS INTEGER) AS status_digit
            FROM requests
        ),
        heavy AS (
            SELECT date, visitor FROM requests
            GROUP BY date, visitor HAVING COUNT(*) > {max_pageviews}
        ),
        light AS (
            SELECT c.date, c.page_id, c.status_digit, c.visitor, c.duration_ms
            FROM classed AS c LEFT JOIN heavy AS h
              ON c.date = h.date AND c.visitor = h.visitor
            WHERE h.visitor IS NULL
        ),
        capped AS (
            SELECT date, page_id, status_digit, visitor, duration_ms FROM (
                SELECT c.*, ROW_NUMBER() OVER (
                    PARTITION BY c.date, c.page_id, c.status_digit, c.visitor
                    ORDER BY c.duration_ms
                ) AS n
                FROM classed AS c JOIN heavy AS h
                  ON c.date = h.date AND c.visitor = h.visitor
            ) AS ranked WHERE n <= {max_pageviews}
        )
        SELECT * FROM light UNION ALL SELECT * FROM capped
    """,
    names=(PAGE_NAMES, STATUS_NAMES),
    measures=(
        ("requests", "COUNT(*)"),
        ("p50_ms", "ROUND(PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY duration_ms), 1)"),
        ("p95_ms", "ROUND(PERCENTILE_CONT(0.95) WITHIN GROUP (ORDER BY duration_ms), 1)"),
    ),
    grain="event",
)
"""Every non-bot request counts (assets and errors too); thresholded on distinct visitors."""

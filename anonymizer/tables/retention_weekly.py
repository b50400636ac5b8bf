"""``retention_weekly``: weekly cohorts of consented visitors (statistics granted only).

The only cross-day table: it follows the anonymous id, which exists only while the
visitor granted ``statistics``. A cohort is the week a visitor was first seen in RAW.
"""

from __future__ import annotations

import pyarrow as pa

from anonymizer.tables.base import TableDef

MAX_WEEK_OFFSET = 12
"""Weeks followed after the cohort week; a cohort is final once all of them are."""

RETENTION_WEEKLY = TableDef(
    name="retention_weekly",
    columns=(("cohort_week", pa.date32()), ("week_offset", pa.int32()), ("visitors", pa.int64())),
    partition="cohort_week",
    dimensions=("week_offset",),
    numeric_dimensions=frozenset({"week_offset"}),
    source=f"""
        SELECT DISTINCT f.cohort_week, a.week_index - f.first_index AS week_offset, a.visitor
        FROM retention_activity AS a
        JOIN (
            SELECT visitor, MIN(week_index) AS first_index, MIN(week_start) AS cohort_week
            FROM retention_activity GROUP BY visitor
        ) AS f ON f.visitor = a.visitor
        WHERE a.week_index - f.first_index <= {MAX_WEEK_OFFSET}
    """,
    measures=(("visitors", "COUNT(DISTINCT visitor)"),),
    gated=False,
)
"""week_offset 0 is the cohort itself; offsets below k fold into a NULL row."""

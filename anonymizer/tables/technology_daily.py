"""``technology_daily``: device type, browser family and OS family (bots excluded)."""

from __future__ import annotations

import pyarrow as pa

from anonymizer.tables.base import TECH_NAMES, TableDef

TECHNOLOGY_DAILY = TableDef(
    name="technology_daily",
    columns=(
        ("date", pa.date32()),
        ("device_type", pa.string()),
        ("browser", pa.string()),
        ("os", pa.string()),
        ("visitors", pa.int64()),
        ("pageviews", pa.int64()),
    ),
    partition="date",
    dimensions=("device_type", "browser", "os"),
    source="""
        SELECT date, tech_id, visitor, LEAST(COUNT(*), {max_pageviews}) AS pageviews
        FROM pageviews GROUP BY date, tech_id, visitor
    """,
    names=(TECH_NAMES,),
    measures=(("visitors", "COUNT(DISTINCT visitor)"), ("pageviews", "SUM(pageviews)")),
)
"""A (device, browser, OS) combination below k is folded as a whole."""

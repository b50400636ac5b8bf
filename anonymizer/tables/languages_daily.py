"""``languages_daily``: visitors per primary browser language (``ja``, ``en`` …)."""

from __future__ import annotations

import pyarrow as pa

from anonymizer.tables.base import TableDef

LANGUAGES_DAILY = TableDef(
    name="languages_daily",
    columns=(("date", pa.date32()), ("language", pa.string()), ("visitors", pa.int64())),
    partition="date",
    dimensions=("language",),
    source="SELECT DISTINCT date, language, visitor FROM pageviews",
    measures=(("visitors", "COUNT(DISTINCT visitor)"),),
)
"""A NULL language means the browser sent no usable Accept-Language."""

"""Contribution bounds, the k-threshold and ``(other)`` folding, as portable SQL.

Every published table goes through :func:`table_sql`. The rule (design section 7): no row
shows a dimension value supported by fewer than ``k`` distinct visitors. Cells below ``k``
are not dropped silently but folded, per partition, into one ``(other)`` row (NULL for a
numeric dimension) — and that row is itself published only when the *distinct* visitors of
the folded set reach ``k`` (a sum of per-cell counts would count a visitor twice).

Contribution bounds live in each table's source (``LEAST(count, {max_pageviews})`` per
visitor and cell): a visitor counts at most ``max_pageviews`` pageviews, visits, entries or
requests per day per row.
"""

from __future__ import annotations

from anonymizer.tables.base import TableDef

OTHER = "(other)"
"""The value shown in place of every folded dimension value."""

DEFAULT_K = 10
DEFAULT_MAX_PAGEVIEWS = 20


def _threshold(table: TableDef) -> str:
    """Aggregate counting the distinct units of a published row."""
    return "COUNT(*)" if table.grain == "decision" else "COUNT(DISTINCT visitor)"


def table_sql(table: TableDef, *, k: int, max_pageviews: int) -> str:
    """The final query of ``table``: bounded, aggregated, thresholded and folded.

    Output columns are exactly ``table.column_names``, ordered by partition and dimensions
    so that unchanged input yields byte-identical files.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    source = table.source_sql(max_pageviews=max_pageviews)
    keys = (table.partition, *table.dimensions)
    measures = dict(table.measures)
    # Positional ORDER BY: the output columns, never a same-named source column.
    names = table.column_names
    order = ", ".join(f"{names.index(key) + 1} NULLS LAST" for key in keys)
    gate = (
        f"WHERE {table.partition} IN (SELECT date FROM daily_visitors WHERE visitors >= {k})"
        if table.gated
        else ""
    )
    if not table.thresholded:
        select = ", ".join(measures.get(c, c) + f" AS {c}" for c in table.column_names)
        group = ", ".join(keys)
        return f"SELECT {select} FROM ({source}) AS src {gate} GROUP BY {group} ORDER BY {order}"
    folded = []
    for dim in table.dimensions:
        other = "NULL" if dim in table.numeric_dimensions else f"'{OTHER}'"
        folded.append(f"CASE WHEN group_size >= {k} THEN {dim} ELSE {other} END AS f_{dim}")
    # Folded dimensions get an ``f_`` prefix so they never clash with the source's columns.
    outputs = {dim: f"f_{dim}" for dim in table.dimensions} | measures
    select = ", ".join(outputs.get(c, c) + f" AS {c}" for c in table.column_names)
    group = ", ".join((table.partition, *(f"f_{dim}" for dim in table.dimensions)))
    # Group sizes by GROUP BY and a null-safe join: cheaper than a window, and portable
    # (IS NOT DISTINCT FROM is Spark's <=>).
    key_list = ", ".join(keys)
    on = " AND ".join(f"src.{key} IS NOT DISTINCT FROM sizes.{key}" for key in keys)
    return (
        f"WITH src AS (SELECT * FROM ({source}) AS s {gate}), "
        f"sizes AS (SELECT {key_list}, {_threshold(table)} AS group_size FROM src"
        f" GROUP BY {key_list}), "
        f"sized AS (SELECT src.*, sizes.group_size FROM src JOIN sizes ON {on}), "
        f"folded AS (SELECT sized.*, {', '.join(folded)} FROM sized) "
        f"SELECT {select} FROM folded GROUP BY {group} "
        f"HAVING {_threshold(table)} >= {k} ORDER BY {order}"
    )

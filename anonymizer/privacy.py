"""Contribution bounds, the k-threshold and ``(other)`` folding, as portable SQL.

Every published table goes through :func:`table_sql`. The rule (design section 7): no row
shows a dimension value supported by fewer than ``k`` distinct visitors. Cells below ``k``
are not dropped silently but folded, per partition, into one ``(other)`` row (NULL for a
numeric dimension) — and that row is itself published only when the *distinct* visitors of
the folded set reach ``k`` (a sum of per-cell counts would count a visitor twice).

Contribution bounds live in each table's source (``LEAST(count, {max_pageviews})`` per
visitor and cell): a visitor counts at most ``max_pageviews`` pageviews, visits, entries or
requests per day per row.

With differential privacy (:mod:`anonymizer.dp`), :func:`bounded_sql` replaces
:func:`table_sql`: the same sources, bounded per visitor-day in rows and per row in counts,
aggregated without any threshold (the noisy threshold is applied to the noisy counts).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

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
    # The columns cells are grouped by: named dimensions by their id (see ``Names``).
    named = {column for lookup in table.names for column in lookup.columns}
    ids = tuple(lookup.id_column for lookup in table.names)
    group_keys = (table.partition, *(d for d in table.dimensions if d not in named), *ids)
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
        if table.names:
            raise ValueError(f"{table.name}: an unthresholded table cannot name ids")
        select = ", ".join(measures.get(c, c) + f" AS {c}" for c in table.column_names)
        group = ", ".join(keys)
        return f"SELECT {select} FROM ({source}) AS src {gate} GROUP BY {group} ORDER BY {order}"
    # Every cell's size and measures in one aggregation. A cell of at least k visitors is
    # published as it is, unless all its dimension values equal the ``(other)`` values:
    # then it merges with the folded row, as it would by folding every cell first. Only the
    # source rows of the remaining cells (small ones, usually few) are aggregated again,
    # per partition, into the ``(other)`` row. Same rows as folding every row, at one
    # aggregation over the source instead of two and a join.
    others = {
        dim: "NULL" if dim in table.numeric_dimensions else f"'{OTHER}'" for dim in table.dimensions
    }
    key_list = ", ".join(group_keys)
    # A visitor-grain source has one row per visitor and cell: per cell, the distinct
    # count is a plain count, without a hash table of visitors per cell.
    distinct = "COUNT(DISTINCT visitor)"
    per_cell = "COUNT(visitor)" if table.grain == "visitor" else distinct
    cell_size = _threshold(table).replace(distinct, per_cell)
    # Output rounding stays in the outermost SELECT, where the Spark transpiler expects it
    # (:mod:`anonymizer.engines.sql` rounds those columns like DuckDB after the query).
    rounded = {name: _split_round(expr) for name, expr in table.measures}
    # Measure name -> (aggregate, cell column, its value): one cell column per measure,
    # except percentiles of one column, which share one.
    cells = {
        name: (rounded[name][0].replace(distinct, per_cell), f"m_{name}", f"m_{name}")
        for name in measures
    }
    cells.update(_shared_percentiles({name: inner for name, (inner, _) in rounded.items()}))
    aggregates = dict.fromkeys((expr, column) for expr, column, _ in cells.values())
    cell_measures = "".join(f", {expr} AS {column}" for expr, column in aggregates)
    kept = ", ".join((cells[c][2] if c in measures else c) + f" AS {c}" for c in names)
    folded = ", ".join(
        others.get(c, rounded[c][0] if c in measures else c) + f" AS {c}" for c in names
    )
    final = ", ".join(
        (f"ROUND({c}, {rounded[c][1]})" if c in rounded and rounded[c][1] else c) + f" AS {c}"
        for c in names
    )
    merges = (
        " AND ".join(f"{dim} IS NOT DISTINCT FROM {other}" for dim, other in others.items())
        or "FALSE"
    )
    # Null-safe join (IS NOT DISTINCT FROM is Spark's <=>); ``fold`` has one row per cell.
    on = " AND ".join(f"src.{key} IS NOT DISTINCT FROM fold.{key}" for key in group_keys)
    return (
        f"WITH src AS (SELECT * FROM ({source}) AS s {gate}), "
        f"grouped AS (SELECT {key_list}, {cell_size} AS group_size{cell_measures}"
        f" FROM src GROUP BY {key_list}), "
        f"cells AS ({_with_names(table, 'grouped')}), "
        f"fold AS (SELECT {key_list} FROM cells WHERE group_size < {k} OR ({merges})), "
        f"small AS (SELECT src.* FROM src JOIN fold ON {on}), "
        f"published AS (SELECT {kept} FROM cells WHERE group_size >= {k} AND NOT ({merges})"
        f" UNION ALL SELECT {folded} FROM small GROUP BY {table.partition}"
        f" HAVING {_threshold(table)} >= {k}) "
        f"SELECT {final} FROM published ORDER BY {order}"
    )


def _with_names(table: TableDef, relation: str) -> str:
    """``relation``'s rows with the names of ``table``'s id columns (:attr:`TableDef.names`)
    added from their lookups; a null or unknown id gets null names."""
    if not table.names:
        return f"SELECT * FROM {relation}"
    columns = []
    joins = []
    for i, lookup in enumerate(table.names):
        alias = f"n{i}"
        columns += [f"{alias}.{column}" for column in lookup.columns]
        joins.append(
            f" LEFT JOIN {lookup.lookup} AS {alias}"
            f" ON {alias}.{lookup.id_column} = r.{lookup.id_column}"
        )
    return f"SELECT r.*, {', '.join(columns)} FROM {relation} AS r{''.join(joins)}"


_PERCENTILE = re.compile(r"PERCENTILE_CONT\(([0-9.]+)\) WITHIN GROUP \(ORDER BY (\w+)\)")


def _shared_percentiles(measures: dict[str, str]) -> dict[str, tuple[str, str, str]]:
    """Measures that are percentiles of one column, as one aggregate and an element each:
    ``{name: (aggregate, cell column, its element)}``.

    ``PERCENTILE_CONT(q) WITHIN GROUP (ORDER BY x)`` keeps every value of ``x`` in a cell and
    sorts them; two such measures keep and sort them twice. ``PERCENTILE_CONT([q1, q2])``
    does it once and returns a list (15% of ``performance_daily``, measured); DuckDB's
    lists count from 1, and the Spark transpiler shifts the positions to its own.
    """
    by_column: dict[str, list[tuple[str, str]]] = {}
    for name, expr in measures.items():
        match = _PERCENTILE.fullmatch(expr.strip())
        if match is not None:
            by_column.setdefault(match.group(2), []).append((name, match.group(1)))
    shared: dict[str, tuple[str, str, str]] = {}
    for column, found in by_column.items():
        if len(found) < 2:
            continue
        fractions = ", ".join(q for _, q in found)
        aggregate = f"PERCENTILE_CONT([{fractions}]) WITHIN GROUP (ORDER BY {column})"
        for position, (name, _) in enumerate(found, start=1):
            shared[name] = (aggregate, f"m_pct_{column}", f"m_pct_{column}[{position}]")
    return shared


def _split_round(expr: str) -> tuple[str, str | None]:
    """``ROUND(inner, d)`` as ``(inner, d)``; any other expression as ``(expr, None)``."""
    match = re.fullmatch(r"ROUND\((.*), (\d+)\)", expr.strip(), flags=re.DOTALL)
    if match is None:
        return expr, None
    inner = match.group(1)
    depth = 0
    for char in inner:  # ROUND(a, 1) + ROUND(b, 2) is no single ROUND
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            return expr, None
    return (inner, match.group(2)) if depth == 0 else (expr, None)


def bounded_sql(
    table: TableDef,
    *,
    sums: Sequence[tuple[str, str]],
    max_pageviews: int,
    max_rows: int,
) -> str:
    """Bounded, *un-thresholded* aggregates of ``table`` for differential privacy.

    Contribution bounding per visitor and partition (a visitor-day), before aggregating:

    - each visitor's source rows are first reduced to one row per cell (partition and
      dimension values), every sum clamped to ``[0, max_pageviews]`` there;
    - each visitor then keeps at most ``max_rows`` cells, chosen by a hash of visitor and
      cell (pseudo-random per visitor, so no value is favoured systematically; the choice
      depends on that visitor's rows only, which is what bounds the sensitivity).

    Output columns: partition, dimensions, ``dp_visitors`` (visitors kept in the cell, each
    counted once) and one column per ``(name, expression)`` of ``sums`` (the expression is
    evaluated on source rows and summed per visitor and cell; ``'1'`` counts rows). No k,
    no gate and no ``(other)`` row: the noisy threshold of :mod:`anonymizer.dp` decides.
    """
    if max_rows < 1 or max_pageviews < 1:
        raise ValueError("contribution bounds must be at least 1")
    if table.grain == "decision":
        raise ValueError(f"{table.name} has no visitor to bound")
    source = _with_names(table, f"({table.source_sql(max_pageviews=max_pageviews)})")
    cell = ", ".join((table.partition, *table.dimensions))
    bounded = ", ".join(
        f"LEAST(GREATEST(COALESCE(SUM({expr}), 0), 0), {int(max_pageviews)}) AS {name}"
        for name, expr in sums
    )
    per_cell = f"SELECT {cell}, visitor{', ' + bounded if bounded else ''} FROM ({source}) AS s"
    # Hash ties (practically never) are broken by the cell itself: fully deterministic.
    order = ", ".join(("hash(visitor, " + ", ".join(table.dimensions) + ")", *table.dimensions))
    if not table.dimensions:
        order = "visitor"
    totals = "".join(f", CAST(SUM({name}) AS BIGINT) AS {name}" for name, _ in sums)
    positions = ", ".join(f"{i + 1} NULLS LAST" for i in range(1 + len(table.dimensions)))
    return (
        f"WITH per_cell AS ({per_cell} GROUP BY {cell}, visitor), "
        f"ranked AS (SELECT per_cell.*, ROW_NUMBER() OVER ("
        f"PARTITION BY {table.partition}, visitor ORDER BY {order}) AS dp_rank FROM per_cell) "
        f"SELECT {cell}, COUNT(*) AS dp_visitors{totals} FROM ranked "
        f"WHERE dp_rank <= {int(max_rows)} GROUP BY {cell} ORDER BY {positions}"
    )

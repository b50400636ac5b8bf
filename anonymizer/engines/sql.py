"""DuckDB SQL to Spark SQL: sqlglot plus four small, documented rewrites.

Every query the pipeline runs is written once, in DuckDB's dialect (:mod:`anonymizer.tables`,
:mod:`anonymizer.privacy`, :mod:`anonymizer.engines.views`). :func:`to_spark` transpiles it
with ``sqlglot.transpile(sql, read="duckdb", write="spark")`` after rewriting the constructs
whose sqlglot translation would change the result:

``hash(x)``
    DuckDB's is 64 bits; sqlglot keeps ``HASH``, which is Spark's 32-bit Murmur3, and with
    millions of visitors 32 bits collide and merge visitors. Rewritten to ``xxhash64(x)``.
    The values differ between engines, but a visitor key is never published: only counted.
``epoch(ts)``
    Seconds with microseconds as a DOUBLE; sqlglot writes ``UNIX_TIMESTAMP``, which drops
    the fraction. Rewritten to ``CAST(unix_micros(ts) AS DOUBLE) / 1000000``, the same
    division DuckDB does, so visit gaps and durations are bit-identical.
``PERCENTILE_CONT(q) WITHIN GROUP (ORDER BY x)``
    sqlglot writes ``PERCENTILE_APPROX`` (approximate); rewritten to Spark's exact
    ``percentile(x, q)`` (linear interpolation, as DuckDB's). With a list ``[q1, q2]`` both
    return a list; sqlglot shifts DuckDB's 1-based positions (``p[1]``) to Spark's ``p[0]``.
``ROUND(x, d)`` on an output column
    Spark rounds the *decimal rendering* of a double half-up (1.15 gives 1.2), DuckDB the
    exact binary value half away from zero (1.15 is 1.149999... and gives 1.1). A top-level
    ``ROUND(expr, d) AS name`` loses its ROUND and :func:`round_like_duckdb` is applied to
    column ``name`` of the (small, aggregated) result instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

import sqlglot
from sqlglot import exp


@dataclass(frozen=True, slots=True)
class SparkQuery:
    """A transpiled query and the output columns still to be rounded (name -> digits)."""

    sql: str
    rounding: dict[str, int] = field(default_factory=dict)


def _rewrite(node: exp.Expr) -> exp.Expr:
    if isinstance(node, exp.Anonymous) and str(node.this).lower() == "hash":
        return exp.Anonymous(this="xxhash64", expressions=node.expressions)
    if isinstance(node, exp.TimeToUnix):
        micros = exp.Anonymous(this="unix_micros", expressions=[node.this])
        seconds = exp.Div(
            this=exp.Cast(this=micros, to=exp.DataType.build("DOUBLE")),
            expression=exp.Literal.number(1_000_000),
        )
        return exp.Paren(this=seconds)
    if isinstance(node, exp.WithinGroup) and isinstance(node.this, exp.PercentileCont):
        ordered = node.expression.expressions
        if len(ordered) != 1:
            raise ValueError(f"PERCENTILE_CONT needs one ORDER BY column: {node.sql('duckdb')}")
        column = ordered[0].this
        return exp.Anonymous(this="percentile", expressions=[column, node.this.this])
    return node


def _strip_output_rounding(tree: exp.Expr) -> dict[str, int]:
    """Remove ``ROUND(expr, d)`` from the outermost SELECT's aliased outputs."""
    select = tree if isinstance(tree, exp.Select) else None
    if select is None:
        return {}
    rounding: dict[str, int] = {}
    for projection in select.expressions:
        if not isinstance(projection, exp.Alias) or not isinstance(projection.this, exp.Round):
            continue
        digits = projection.this.args.get("decimals")
        if not isinstance(digits, exp.Literal) or digits.is_string:
            continue
        rounding[projection.alias] = int(digits.this)
        projection.set("this", projection.this.this)
    return rounding


def to_spark(sql: str) -> SparkQuery:
    """Transpile one DuckDB query to Spark SQL (see the module docstring for the rewrites)."""
    tree = sqlglot.parse_one(sql, read="duckdb")
    rounding = _strip_output_rounding(tree)
    tree = tree.transform(_rewrite)
    return SparkQuery(tree.sql(dialect="spark"), rounding)


def round_like_duckdb(value: float | None, digits: int) -> float | None:
    """``ROUND(value, digits)`` as DuckDB computes it on a DOUBLE: the exact binary value,
    ties away from zero. ``None``, NaN and infinities pass through."""
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return value
    quantum = Decimal(1).scaleb(-digits)
    return float(Decimal(value).quantize(quantum, rounding=ROUND_HALF_UP))

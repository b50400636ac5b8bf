"""The numbers of the marketing report: SQL over the published tables, nothing else.

Every figure comes from :func:`anonymizer.connect` (the same sandboxed views an analyst
queries), so the report can never show more than STATS publishes. Sums over several days
of a ``visitors`` column count *daily* unique visitors (a person seen on three days counts
three times): STATS holds no identifier that could de-duplicate them, by design.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal

import duckdb

from anonymizer.reporting.period import Period, resolve_period
from anonymizer.store import StatsNotFoundError, connect, read_manifest

OTHER = "(other)"
"""The row that rare values are folded into (design section 7)."""

ColumnKind = Literal["text", "date", "int", "float", "rate", "seconds", "change", "points"]
"""How a column is formatted: ``rate`` is a share in [0, 1], ``change`` a relative change,
``points`` a difference of two rates, ``seconds`` a duration."""


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a report table: its CSV header and how its values are formatted."""

    key: str
    kind: ColumnKind


@dataclass(frozen=True, slots=True)
class ReportTable:
    """One table of the report, shown in the HTML page and written as ``<name>.csv``."""

    name: str
    columns: tuple[Column, ...]
    rows: tuple[tuple[Any, ...], ...]

    def values(self, key: str) -> list[Any]:
        """Every value of the column ``key``, in row order."""
        index = [c.key for c in self.columns].index(key)
        return [row[index] for row in self.rows]


@dataclass(frozen=True, slots=True)
class ReportData:
    """Everything the report shows, for one period and the previous one."""

    stats_dir: Path
    period: Period
    previous: Period
    published_first: date | None
    published_last: date | None
    days_with_data: int
    previous_days_with_data: int
    k: int | None = None
    """The pipeline's k-threshold (from the manifest), for the privacy note."""
    timezone: str | None = None
    """The time zone of the published dates and hours (from the manifest)."""
    tables: dict[str, ReportTable] = field(default_factory=dict)

    def table(self, name: str) -> ReportTable:
        """The table called ``name``."""
        return self.tables[name]


def change(current: float | None, previous: float | None) -> float | None:
    """Relative change from ``previous`` to ``current``; None when there is no base."""
    if current is None or previous is None or previous == 0:
        return None
    return round((current - previous) / previous, 4)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 4)


def _is_other(values: Sequence[Any]) -> bool:
    return any(v == OTHER or v is None for v in values)


def _fetch(
    con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any]
) -> list[tuple[Any, ...]]:
    return con.execute(sql, list(params)).fetchall()


def _published_range(con: duckdb.DuckDBPyConnection) -> tuple[date | None, date | None]:
    first, last = con.execute(
        "SELECT MIN(date), MAX(date) FROM ("
        "SELECT date FROM traffic_daily UNION ALL SELECT date FROM consent_daily)"
    ).fetchall()[0]
    return first, last


def _days_with_data(con: duckdb.DuckDBPyConnection, period: Period) -> int:
    sql = "SELECT COUNT(*) FROM traffic_daily WHERE date BETWEEN ? AND ?"
    return int(_fetch(con, sql, [period.start, period.end])[0][0])


def _totals(con: duckdb.DuckDBPyConnection, period: Period) -> dict[str, float | None]:
    pageviews, visits, visitors, bounces, seconds, days = _fetch(
        con,
        "SELECT SUM(pageviews), SUM(visits), SUM(visitors), SUM(bounce_rate * visits), "
        "SUM(avg_visit_seconds * visits), COUNT(*) FROM traffic_daily "
        "WHERE date BETWEEN ? AND ?",
        [period.start, period.end],
    )[0]
    granted, refused = _fetch(
        con,
        "SELECT SUM(granted), SUM(refused) FROM consent_daily "
        "WHERE purpose = 'statistics' AND date BETWEEN ? AND ?",
        [period.start, period.end],
    )[0]
    consent_rate = _ratio(granted, (granted or 0) + (refused or 0))
    return {
        "pageviews": pageviews,
        "visits": visits,
        "visitors": visitors,
        "avg_daily_visitors": round(visitors / days, 1) if visitors is not None else None,
        "pages_per_visit": _ratio(pageviews, visits),
        "bounce_rate": _ratio(bounces, visits),
        "avg_visit_seconds": round(seconds / visits, 1) if seconds is not None and visits else None,
        "statistics_consent_rate": consent_rate,
    }


SUMMARY_KINDS: dict[str, ColumnKind] = {
    "pageviews": "int",
    "visits": "int",
    "visitors": "int",
    "avg_daily_visitors": "float",
    "pages_per_visit": "float",
    "bounce_rate": "rate",
    "avg_visit_seconds": "seconds",
    "statistics_consent_rate": "rate",
}
"""The headline figures, in display order, with how each is formatted."""


def _summary(con: duckdb.DuckDBPyConnection, period: Period) -> ReportTable:
    current, previous = _totals(con, period), _totals(con, period.previous())
    rows = []
    for metric, kind in SUMMARY_KINDS.items():
        cur, prev = current[metric], previous[metric]
        diff = round(cur - prev, 4) if cur is not None and prev is not None else None
        rows.append((metric, kind, cur, prev, diff, change(cur, prev)))
    columns = (
        Column("metric", "text"),
        Column("kind", "text"),
        Column("current", "float"),
        Column("previous", "float"),
        Column("difference", "float"),
        Column("change", "change"),
    )
    return ReportTable("summary", columns, tuple(rows))


def _traffic(con: duckdb.DuckDBPyConnection, period: Period) -> ReportTable:
    rows = _fetch(
        con,
        "SELECT date, pageviews, visits, visitors, bounce_rate, avg_visit_seconds "
        "FROM traffic_daily WHERE date BETWEEN ? AND ? ORDER BY date",
        [period.start, period.end],
    )
    columns = (
        Column("date", "date"),
        Column("pageviews", "int"),
        Column("visits", "int"),
        Column("visitors", "int"),
        Column("bounce_rate", "rate"),
        Column("avg_visit_seconds", "seconds"),
    )
    return ReportTable("traffic", columns, tuple(rows))


def _breakdown(
    con: duckdb.DuckDBPyConnection,
    period: Period,
    *,
    name: str,
    table: str,
    dims: Sequence[str],
    measures: Sequence[str],
    compare: str | None = None,
    share: str | None = None,
) -> ReportTable:
    """Sums of ``measures`` per value of ``dims`` over the period, largest first, folded
    ``(other)`` rows last; optionally each row's share of ``share`` and the previous period's
    ``compare`` with its relative change."""
    keys = ", ".join(dims)
    sums = ", ".join(f"SUM({m}) AS {m}" for m in measures)
    rows = _fetch(
        con,
        f"SELECT {keys}, {sums} FROM {table} WHERE date BETWEEN ? AND ? GROUP BY {keys}",
        [period.start, period.end],
    )
    previous: dict[tuple[Any, ...], Any] = {}
    if compare is not None:
        prev = period.previous()
        for row in _fetch(
            con,
            f"SELECT {keys}, SUM({compare}) FROM {table} WHERE date BETWEEN ? AND ? "
            f"GROUP BY {keys}",
            [prev.start, prev.end],
        ):
            previous[tuple(row[: len(dims)])] = row[-1]
    n = len(dims)
    position = {m: n + i for i, m in enumerate(measures)}
    total = sum(r[position[share]] or 0 for r in rows) if share is not None else 0
    # Largest first; the folded row is not a value of its own, so it always goes last.
    rows.sort(key=lambda r: (_is_other(r[:n]), -(r[n] or 0), str(r[:n])))
    out = []
    for row in rows:
        extra: list[Any] = []
        if share is not None:
            extra.append(_ratio(row[position[share]], total))
        if compare is not None:
            before = previous.get(tuple(row[:n]))
            extra += [before, change(row[position[compare]], before)]
        out.append((*row, *extra))
    columns = [Column(d, "text") for d in dims]
    columns += [Column(m, "int") for m in measures]
    if share is not None:
        columns.append(Column("share", "rate"))
    if compare is not None:
        columns += [Column(f"previous_{compare}", "int"), Column("change", "change")]
    return ReportTable(name, tuple(columns), tuple(out))


def _consent(con: duckdb.DuckDBPyConnection, period: Period) -> ReportTable:
    def rates(p: Period) -> dict[str, tuple[int, int, float | None]]:
        rows = _fetch(
            con,
            "SELECT purpose, SUM(granted), SUM(refused) FROM consent_daily "
            "WHERE date BETWEEN ? AND ? GROUP BY purpose",
            [p.start, p.end],
        )
        return {r[0]: (r[1], r[2], _ratio(r[1], r[1] + r[2])) for r in rows}

    current, previous = rates(period), rates(period.previous())
    out = []
    for purpose in sorted(current, key=lambda p: (p == OTHER, p)):
        granted, refused, rate = current[purpose]
        before = previous.get(purpose, (0, 0, None))[2]
        points = round(rate - before, 4) if rate is not None and before is not None else None
        out.append((purpose, granted, refused, rate, before, points))
    columns = (
        Column("purpose", "text"),
        Column("granted", "int"),
        Column("refused", "int"),
        Column("rate", "rate"),
        Column("previous_rate", "rate"),
        Column("change", "points"),
    )
    return ReportTable("consent", columns, tuple(out))


def _hourly(con: duckdb.DuckDBPyConnection, period: Period) -> ReportTable:
    rows = _fetch(
        con,
        "SELECT hour, SUM(pageviews), SUM(visitors) FROM hourly_traffic "
        "WHERE date BETWEEN ? AND ? GROUP BY hour ORDER BY hour NULLS LAST",
        [period.start, period.end],
    )
    columns = (Column("hour", "int"), Column("pageviews", "int"), Column("visitors", "int"))
    return ReportTable("hourly", columns, tuple(rows))


def load(stats_dir: str | Path, start: date | None = None, end: date | None = None) -> ReportData:
    """Query everything the report shows from the published tables in ``stats_dir``."""
    root = Path(stats_dir)
    if not root.is_dir():
        raise StatsNotFoundError(
            f"STATS folder {root} does not exist: run `anonymizer run --raw RAW --stats {root}` "
            "first"
        )
    con = connect(root)
    manifest = read_manifest(root)
    try:
        first, last = _published_range(con)
        period = resolve_period(start, end, first, last)
        prev = period.previous()
        tables = [
            _summary(con, period),
            _traffic(con, period),
            _hourly(con, period),
            _breakdown(
                con,
                period,
                name="pages",
                table="pages_daily",
                dims=["page"],
                measures=["pageviews", "visitors", "entries"],
                compare="pageviews",
            ),
            _breakdown(
                con,
                period,
                name="channels",
                table="sources_daily",
                dims=["channel"],
                measures=["visits", "visitors"],
                compare="visits",
                share="visits",
            ),
            _breakdown(
                con,
                period,
                name="sources",
                table="sources_daily",
                dims=["source", "channel"],
                measures=["visits", "visitors"],
                compare="visits",
            ),
            _breakdown(
                con,
                period,
                name="campaigns",
                table="campaigns_daily",
                dims=["utm_source", "utm_medium", "utm_campaign"],
                measures=["visits", "visitors"],
                compare="visits",
            ),
            *(
                _breakdown(
                    con,
                    period,
                    name=name,
                    table="technology_daily",
                    dims=[dim],
                    measures=["visitors", "pageviews"],
                    share="visitors",
                )
                for name, dim in (("devices", "device_type"), ("browsers", "browser"), ("os", "os"))
            ),
            _consent(con, period),
        ]
        return ReportData(
            stats_dir=root,
            period=period,
            previous=prev,
            published_first=first,
            published_last=last,
            days_with_data=_days_with_data(con, period),
            previous_days_with_data=_days_with_data(con, prev),
            k=int(manifest["k"]) if "k" in manifest else None,
            timezone=str(manifest["timezone"]) if "timezone" in manifest else None,
            tables={t.name: t for t in tables},
        )
    finally:
        con.close()

"""The DuckDB engine: RAW segments in, one Arrow table per published table out.

Steps 1-4 of the pipeline (erase, consent filter, generalise, sessionise) build the
intermediate views from the engine-neutral SQL of :mod:`anonymizer.engines.views`; steps
5-7 are the portable table SQL of :mod:`anonymizer.tables` wrapped by
:mod:`anonymizer.privacy`. Only the small lookup tables (one row per distinct user agent,
referrer host or imported path) are computed in Python; every per-event step is SQL.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from anonymizer.engines import views
from anonymizer.engines.offsets import offset_clock
from anonymizer.engines.views import Clock, utc_bounds
from anonymizer.engines.views import sql_string as _sql_string
from anonymizer.generalize import classify_referrers, classify_user_agents
from anonymizer.privacy import table_sql
from anonymizer.quarantine import partition_day
from anonymizer.tables.base import TableDef

__all__ = ["DayBatch", "DuckDBEngine", "utc_bounds"]


@dataclass(frozen=True, slots=True)
class DayBatch:
    """What loading a batch of local days found."""

    rows_per_day: dict[date, int]
    """Raw events of each local day (before any filter)."""
    policy_versions: tuple[str, ...]
    """Policy versions seen in those events."""


def _file_list(files: Sequence[Path]) -> str:
    return "[" + ", ".join(_sql_string(str(f)) for f in files) + "]"


def _parquet_scan(files: Sequence[Path]) -> str:
    return f"read_parquet({_file_list(files)}, union_by_name = true)"


_SUMMARY_SETS = ("d", "policy_version", "user_agent", "referrer_host", "path")


def _summary_sql(clock: Clock) -> str:
    """One scan of ``raw`` for what :mod:`anonymizer.engines.views` asks in five queries
    (:func:`~anonymizer.engines.views.day_counts_sql`, ``POLICY_VERSIONS_SQL``,
    ``DISTINCT_USER_AGENTS_SQL``, ``DISTINCT_REFERRERS_SQL``, ``DISTINCT_PATHS_SQL``): the
    Parquet files are read and filtered once instead of five times. A ``g_<column>`` flag
    of 0 marks the rows of the grouping set of that column."""
    flags = ", ".join(f"GROUPING({c}) AS g_{c}" for c in _SUMMARY_SETS)
    sets = ", ".join(f"({c})" for c in _SUMMARY_SETS)
    return (
        f"SELECT {', '.join(_SUMMARY_SETS)}, COUNT(*) AS n,"
        f" bool_and(source = {_sql_string(views.MIDDLEWARE_SOURCE)}) AS recorded, {flags}"
        f" FROM (SELECT {clock('ts')[0]} AS d, * FROM raw)"
        f" AS r GROUP BY GROUPING SETS ({sets})"
    )


def _grouped(summary: pa.Table, column: str) -> pa.Table:
    """The rows of ``column``'s grouping set in a :func:`_summary_sql` result."""
    return summary.filter(pc.equal(summary[f"g_{column}"], 0))


class DuckDBEngine:
    """One in-process DuckDB database holding the intermediate views of one batch of days.

    ``memory_limit`` bounds DuckDB's buffer (it spills to ``temp_directory`` beyond it);
    ``threads`` defaults to the machine's cores.
    """

    def __init__(
        self,
        *,
        timezone: str = "UTC",
        site_hosts: Collection[str] = (),
        memory_limit: str = "1GB",
        threads: int | None = None,
        temp_directory: Path | None = None,
    ) -> None:
        self.timezone = timezone
        self.site_hosts = tuple(site_hosts)
        config: dict[str, str | bool | int | float | list[str]] = {
            "memory_limit": memory_limit,
            "threads": threads or os.cpu_count() or 1,
            # Every final query orders by its unique keys, so files stay byte-identical
            # without paying for insertion order everywhere else.
            "preserve_insertion_order": False,
        }
        if temp_directory is not None:
            config["temp_directory"] = str(temp_directory)
        self.con = duckdb.connect(":memory:", config=config)
        self._ledger = views.LedgerSelection()
        self.con.execute(f"SET TimeZone = {_sql_string('UTC')}")

    def close(self) -> None:
        """Release the database."""
        self.con.close()

    # ------------------------------------------------------------------ helpers

    def _register(self, name: str, table: pa.Table) -> None:
        self.con.register(name, table)

    def register_erased(self, aid_hashes: Collection[str]) -> None:
        """Step 1 input: SHA-256 hex digests of erased anonymous ids."""
        # Through DuckDB, not an Arrow table built from the list: pyarrow would import pandas.
        self.con.execute(
            "CREATE OR REPLACE TEMP TABLE erased AS"
            " SELECT CAST(unnest(?) AS VARCHAR) AS aid_sha256",
            [sorted(aid_hashes)],
        )
        self._has_erased = bool(aid_hashes)

    # ------------------------------------------------------------------ daily batch

    def local_days(self, files: Sequence[Path]) -> dict[date, int]:
        """Local days (and their event counts) that ``files`` hold events for."""
        if not files:
            return {}
        scan = _parquet_scan(files)
        rows = self.con.execute(views.day_counts_sql(scan, self._segments_clock(files)))
        return {d: n for d, n in rows.fetchall()}

    def _clock_between(self, low: datetime | None, high: datetime | None) -> Clock:
        """A clock exact from ``low`` to ``high`` (now when there is nothing to date)."""
        if low is None or high is None:
            now = datetime.now(UTC)
            return offset_clock(self.timezone, now, now)
        return offset_clock(self.timezone, low, high)

    def _segments_clock(self, files: Sequence[Path]) -> Clock:
        """A clock exact for every event of the segment ``files``, without a scan: a
        checked segment only holds events of the UTC date its ``date=`` folder names."""
        days = [d for d in map(partition_day, files) if d is not None]
        if not days or len(days) < len(files):
            scan = _parquet_scan(files)
            return self._clock_between(
                *self.con.execute(f"SELECT min(ts), max(ts) FROM {scan}").fetchall()[0]
            )
        start = datetime.combine(min(days), time(), UTC)
        end = datetime.combine(max(days) + timedelta(days=1), time(), UTC)
        return offset_clock(self.timezone, start, end)

    def load_days(self, files: Sequence[Path], days: Collection[date]) -> DayBatch:
        """Steps 1-4 for the local ``days``, reading the segment ``files`` that cover them.

        Leaves the views ``pageviews``, ``visit_pageviews``, ``visits``, ``requests`` and
        ``daily_visitors``.
        """
        start, end = utc_bounds(days, self.timezone)
        # Local dates by the same tz rules (zoneinfo) as the batch's bounds.
        self._clock = offset_clock(self.timezone, start, end)
        # A view, not a table: each step below reads only the Parquet columns it needs.
        raw = views.raw_sql(_parquet_scan(files), days, start, end, self._clock)
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW raw AS {raw}")
        summary = self.con.sql(_summary_sql(self._clock)).to_arrow_table()
        counts = _grouped(summary, "d").select(["d", "n"]).to_pylist()
        versions = _grouped(summary, "policy_version").column("policy_version").to_pylist()
        self._load_lookups(summary)
        self._build_views()
        return DayBatch(
            {row["d"]: int(row["n"]) for row in counts},
            tuple(sorted(v for v in versions if v is not None)),
        )

    def _load_lookups(self, summary: pa.Table) -> None:
        """Step 3 lookups: classify each distinct user agent, referrer and imported path once."""
        uas = _grouped(summary, "user_agent").column("user_agent").to_pylist()
        self._register("ua_map", classify_user_agents(uas))
        hosts = _grouped(summary, "referrer_host").column("referrer_host").to_pylist()
        self._register("ref_map", classify_referrers(hosts, site_hosts=self.site_hosts))
        paths = _grouped(summary, "path").select(["path", "recorded"]).to_pylist()
        self._register("path_map", views.path_map([(r["path"], r["recorded"]) for r in paths]))
        # Its own scan: cheaper than a sixth grouping set (few events carry tags).
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE utm_map AS {views.DISTINCT_UTMS_SQL}")

    def _build_views(self) -> None:
        """Steps 1-4 in SQL: erase, drop identifiers, generalise, sessionise."""
        has_erased = getattr(self, "_has_erased", False)
        for name, lookup in views.LOOKUP_IDS:
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {lookup}")
        base = views.base_sql(self._clock, has_erased)
        # A table: with ids instead of names it is narrow, and RAW is read once for both
        # ``requests`` and ``pageviews``.
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE base AS {base}")
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE requests AS {views.REQUESTS_SQL}")
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE status_names AS {views.STATUS_NAMES_SQL}")
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW pageviews AS {views.PAGEVIEWS_SQL}")
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE visit_pageviews AS {views.visit_pageviews_sql()}"
        )
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW visits AS {views.VISITS_SQL}")
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE daily_visitors AS {views.DAILY_VISITORS_SQL}"
        )

    # ------------------------------------------------------------------ other inputs

    def load_ledger(self, chunks: Sequence[Path]) -> None:
        """The consent decisions to read: the ledger ``chunks`` (Parquet files of ``ts``,
        ``granted``, ``refused``, see :mod:`anonymizer.ledger_cache`). Read only by
        :meth:`consent_days` and :meth:`select_consent`, each for what it needs."""
        self._ledger.reset(chunks)

    def _load_decisions(self, chunks: Sequence[Path], start: datetime, end: datetime) -> None:
        """``ledger_decisions``: one row per purpose named by a decision of ``chunks`` made
        from ``start`` to before ``end``, dated by local day."""
        if not chunks:
            self.con.execute(
                "CREATE OR REPLACE TEMP TABLE ledger_decisions (date DATE, purpose VARCHAR,"
                " granted BIGINT, refused BIGINT)"
            )
            return
        scan = f"read_parquet({_file_list(chunks)})"
        records = views.ledger_range_sql(scan, start, end)
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW ledger_records AS {records}")
        decisions = views.ledger_decisions_sql("ledger_records", self._clock_between(start, end))
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE ledger_decisions AS {decisions}")
        self.con.execute("DROP VIEW ledger_records")

    def consent_days(self, files: Sequence[Path]) -> dict[date, int]:
        """Local days named by the decisions in the chunks ``files`` (and how many purpose
        rows each)."""
        if not files:
            return {}
        scan = f"read_parquet({_file_list(files)})"
        low, high = self.con.execute(f"SELECT min(ts), max(ts) FROM {scan}").fetchall()[0]
        if low is None or high is None:
            return {}
        self._load_decisions(files, low, high + timedelta(microseconds=1))
        # Every decision of these chunks: when they are all the chunks (a first run, say),
        # select_consent has nothing more to read.
        self._ledger.loaded_whole(files)
        rows = self.con.execute(views.DECISION_DAYS_SQL).fetchall()
        return {d: int(n) for d, n in rows}

    def select_consent(self, days: Collection[date]) -> dict[date, int]:
        """The ``consent_decisions`` view: every decision of the local ``days`` in the
        chunks given to :meth:`load_ledger`; returns decisions rows per day."""
        load = self._ledger.to_load(days, self.timezone)
        if load is not None:
            self._load_decisions(*load)
        decisions = views.consent_decisions_sql(days)
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW consent_decisions AS {decisions}")
        rows = self.con.execute(views.ROWS_PER_DAY_SQL).fetchall()
        return {d: int(n) for d, n in rows}

    def load_retention(self, files: Sequence[Path]) -> int:
        """The ``retention_activity`` view from every consented event in ``files``.

        Step 2: only events recorded with ``statistics`` granted and an anonymous id.
        Returns the number of such events.
        """
        if not files:
            self.con.execute(
                "CREATE OR REPLACE TEMP TABLE retention_activity AS SELECT"
                " CAST(NULL AS UBIGINT) AS visitor, CAST(NULL AS DATE) AS week_start,"
                " CAST(NULL AS BIGINT) AS week_index WHERE FALSE"
            )
            return 0
        # A view read twice: for the user agents (and the count), then for the activity.
        # The daily batch's ``raw`` view is left alone.
        scan = _parquet_scan(files)
        consented = views.consented_sql(scan, self._segments_clock(files))
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW consented AS {consented}")
        agents = self.con.execute(views.CONSENTED_USER_AGENTS_SQL).fetchall()
        self._register("ua_map", classify_user_agents([agent for agent, _ in agents]))
        activity = views.retention_activity_sql(getattr(self, "_has_erased", False))
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE retention_activity AS {activity}")
        self.con.execute("DROP VIEW consented")
        return sum(int(events) for _, events in agents)

    # ------------------------------------------------------------------ tables

    def run_table(self, table: TableDef, *, k: int, max_pageviews: int) -> pa.Table:
        """Steps 5-7 for one table over the loaded views, cast to its published schema."""
        result = self.con.sql(table_sql(table, k=k, max_pageviews=max_pageviews)).to_arrow_table()
        return result.rename_columns(list(table.column_names)).cast(table.schema)

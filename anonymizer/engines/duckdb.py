"""The DuckDB engine: RAW segments in, one Arrow table per published table out.

Steps 1-4 of the pipeline (erase, consent filter, generalise, sessionise) build the
intermediate views here; steps 5-7 are the portable table SQL of :mod:`anonymizer.tables`
wrapped by :mod:`anonymizer.privacy`. Only the small lookup tables (one row per distinct user
agent, referrer host or imported path) are computed in Python; every per-event step is SQL.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import pyarrow as pa

from anonymizer.generalize import (
    CHANNEL_SQL,
    classify_referrers,
    classify_user_agents,
    is_asset_path,
)
from anonymizer.privacy import table_sql
from anonymizer.tables.base import TableDef
from consent_middleware.scrub import scrub_path

SESSION_GAP_SECONDS = 30 * 60
"""A visit ends after 30 minutes without a pageview (design section 7)."""

_RAW_COLUMNS = (
    "ts",
    "method",
    "status",
    "duration_ms",
    "path",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "referrer_host",
    "user_agent",
    "language",
    "visitor_hash",
    "aid",
    "policy_version",
    "source",
)
"""RAW columns the daily tables need (``purposes`` only matters for retention)."""

MIDDLEWARE_SOURCE = "middleware"
"""Events recorded by the middleware carry route templates; only imported paths are rescrubbed."""


@dataclass(frozen=True, slots=True)
class DayBatch:
    """What loading a batch of local days found."""

    rows_per_day: dict[date, int]
    """Raw events of each local day (before any filter)."""
    policy_versions: tuple[str, ...]
    """Policy versions seen in those events."""


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _file_list(files: Sequence[Path]) -> str:
    return "[" + ", ".join(_sql_string(str(f)) for f in files) + "]"


def utc_bounds(days: Collection[date], timezone: str) -> tuple[datetime, datetime]:
    """The UTC instants from the first local midnight to the end of the last local day."""
    zone = ZoneInfo(timezone)
    start = datetime.combine(min(days), time(), zone)
    end = datetime.combine(max(days) + timedelta(days=1), time(), zone)
    return start.astimezone(ZoneInfo("UTC")), end.astimezone(ZoneInfo("UTC"))


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
        self.con.execute(f"SET TimeZone = {_sql_string('UTC')}")

    def close(self) -> None:
        """Release the database."""
        self.con.close()

    # ------------------------------------------------------------------ helpers

    def _local(self, column: str) -> str:
        """SQL for ``column`` (UTC) as a local timestamp in the run's time zone."""
        return f"timezone({_sql_string(self.timezone)}, {column})"

    def _register(self, name: str, table: pa.Table) -> None:
        self.con.register(name, table)

    def register_erased(self, aid_hashes: Collection[str]) -> None:
        """Step 1 input: SHA-256 hex digests of erased anonymous ids."""
        table = pa.table({"aid_sha256": pa.array(sorted(aid_hashes), pa.string())})
        self._register("erased", table)
        self._has_erased = bool(aid_hashes)

    def _erased_filter(self, alias: str = "r", source: str = "raw") -> str:
        """Step 1: drop erased ids' events, and the same day's events of their browser."""
        if not getattr(self, "_has_erased", False):
            return "TRUE"
        return (
            f"({alias}.aid IS NULL OR sha256({alias}.aid) NOT IN (SELECT aid_sha256 FROM erased))"
            f" AND ({alias}.visitor_hash IS NULL OR {alias}.visitor_hash NOT IN ("
            f"SELECT visitor_hash FROM {source} WHERE visitor_hash IS NOT NULL AND aid IS NOT NULL"
            " AND sha256(aid) IN (SELECT aid_sha256 FROM erased)))"
        )

    # ------------------------------------------------------------------ daily batch

    def local_days(self, files: Sequence[Path]) -> dict[date, int]:
        """Local days (and their event counts) that ``files`` hold events for."""
        if not files:
            return {}
        rows = self.con.execute(
            f"SELECT CAST({self._local('ts')} AS DATE) AS d, COUNT(*) "
            f"FROM read_parquet({_file_list(files)}, union_by_name = true) GROUP BY d"
        ).fetchall()
        return {d: n for d, n in rows}

    def load_days(self, files: Sequence[Path], days: Collection[date]) -> DayBatch:
        """Steps 1-4 for the local ``days``, reading the segment ``files`` that cover them.

        Leaves the views ``pageviews``, ``visits``, ``requests`` and ``daily_visitors``.
        """
        start, end = utc_bounds(days, self.timezone)
        day_list = ", ".join(f"DATE '{d.isoformat()}'" for d in sorted(days))
        local = self._local("ts")
        # A view, not a table: each step below reads only the Parquet columns it needs.
        self.con.execute(
            f"CREATE OR REPLACE TEMP VIEW raw AS SELECT {', '.join(_RAW_COLUMNS)} FROM ("
            f" SELECT *, CAST({local} AS DATE) AS local_date"
            f" FROM read_parquet({_file_list(files)}, union_by_name = true)"
            f" WHERE ts >= TIMESTAMPTZ '{start.isoformat()}'"
            f" AND ts < TIMESTAMPTZ '{end.isoformat()}'"
            f") WHERE local_date IN ({day_list})"
        )
        counts = self.con.execute(
            f"SELECT CAST({local} AS DATE) AS d, COUNT(*) FROM raw GROUP BY d"
        ).fetchall()
        versions = self.con.execute(
            "SELECT DISTINCT policy_version FROM raw WHERE policy_version IS NOT NULL"
        ).fetchall()
        self._load_lookups()
        self._build_views()
        return DayBatch({d: int(n) for d, n in counts}, tuple(sorted(v for (v,) in versions)))

    def _load_lookups(self) -> None:
        """Step 3 lookups: classify each distinct user agent, referrer and imported path once."""
        uas = self.con.sql("SELECT DISTINCT user_agent FROM raw").to_arrow_table()
        self._register("ua_map", classify_user_agents(uas.column(0).to_pylist()))
        hosts = self.con.sql("SELECT DISTINCT referrer_host FROM raw").to_arrow_table()
        refs = classify_referrers(hosts.column(0).to_pylist(), site_hosts=self.site_hosts)
        self._register("ref_map", refs)
        paths = self.con.execute(
            "SELECT path, bool_and(source = ?) AS recorded FROM raw GROUP BY path",
            [MIDDLEWARE_SOURCE],
        ).fetchall()
        self._register("path_map", _path_map(paths, scrub_path, is_asset_path))

    def _build_views(self) -> None:
        """Steps 1-4 in SQL: erase, drop identifiers, generalise, sessionise."""
        local = self._local("r.ts")
        self.con.execute(
            "CREATE OR REPLACE TEMP TABLE base AS SELECT"
            f" CAST({local} AS DATE) AS date, CAST(hour({local}) AS INTEGER) AS hour,"
            " epoch(r.ts) AS ts_s, r.method, r.status, r.duration_ms,"
            " p.page, p.is_asset, hash(COALESCE(r.visitor_hash, r.aid)) AS visitor,"
            " u.browser, u.os, u.device_type, r.language,"
            " f.source, f.channel, r.utm_source, r.utm_medium, r.utm_campaign"
            " FROM raw AS r"
            " LEFT JOIN ua_map AS u ON u.user_agent = r.user_agent"
            " LEFT JOIN ref_map AS f ON f.referrer_host IS NOT DISTINCT FROM r.referrer_host"
            " JOIN path_map AS p ON p.path = r.path"
            # Bots never count; a missing user agent is a bot (every browser sends one).
            " WHERE NOT COALESCE(u.is_bot, TRUE)"
            " AND COALESCE(r.visitor_hash, r.aid) IS NOT NULL"
            f" AND {self._erased_filter()}"
        )
        self.con.execute(
            "CREATE OR REPLACE TEMP VIEW requests AS"
            " SELECT date, visitor, page, status, duration_ms FROM base"
        )
        # Step 4 in one sorted pass: the gaps to the previous and next pageview of the same
        # visitor and day say where visits start, which pageviews are bounces, and how long
        # visits last. The full ORDER BY makes entry attributes deterministic on equal times.
        order = "ts_s, page, source, channel, utm_source, utm_medium, utm_campaign"
        gap = SESSION_GAP_SECONDS
        self.con.execute(
            "CREATE OR REPLACE TEMP TABLE pageviews AS"
            " WITH pv AS (SELECT date, hour, ts_s, visitor, page, browser, os, device_type,"
            f"  language, source, {CHANNEL_SQL} AS channel, utm_source, utm_medium, utm_campaign"
            "  FROM base WHERE method = 'GET' AND status BETWEEN 200 AND 299 AND NOT is_asset),"
            " gaps AS (SELECT pv.*, ts_s - LAG(ts_s) OVER win AS gap_before,"
            "  LEAD(ts_s) OVER win - ts_s AS gap_after FROM pv"
            f"  WINDOW win AS (PARTITION BY date, visitor ORDER BY {order}))"
            " SELECT date, hour, ts_s, visitor, page, browser, os, device_type, language,"
            " source, channel, utm_source, utm_medium, utm_campaign,"
            f" CASE WHEN gap_before <= {gap} THEN 0 ELSE 1 END AS new_visit,"
            f" CASE WHEN gap_before <= {gap} THEN gap_before ELSE 0 END AS visit_seconds,"
            f" CASE WHEN gap_before <= {gap} OR gap_after <= {gap} THEN 0 ELSE 1 END AS bounce"
            " FROM gaps"
        )
        self.con.execute(
            "CREATE OR REPLACE TEMP VIEW visits AS SELECT date, visitor,"
            " ts_s AS visit_start_s, page AS entry_page, source, channel,"
            " utm_source, utm_medium, utm_campaign, bounce FROM pageviews WHERE new_visit = 1"
        )
        self.con.execute(
            "CREATE OR REPLACE TEMP TABLE daily_visitors AS"
            " SELECT date, COUNT(DISTINCT visitor) AS visitors FROM pageviews GROUP BY date"
        )

    # ------------------------------------------------------------------ other inputs

    def load_ledger(self, files: Sequence[Path], actions: Collection[str]) -> None:
        """Every consent decision in the ledger ``files``: one row per purpose named.

        A crash may tear a file's last line and a ledger may hold foreign lines: unparsable
        lines, unknown actions and unreadable times are skipped, never fatal.
        """
        if not files:
            self.con.execute(
                "CREATE OR REPLACE TEMP TABLE ledger_decisions (file VARCHAR, date DATE,"
                " purpose VARCHAR, granted BIGINT, refused BIGINT)"
            )
            return
        action_list = ", ".join(_sql_string(a) for a in sorted(actions))
        local = self._local("TRY_CAST(ts AS TIMESTAMPTZ)")
        self.con.execute(
            "CREATE OR REPLACE TEMP TABLE ledger_decisions AS"
            " WITH records AS (SELECT filename AS file, CAST("
            f" {local} AS DATE) AS date, granted, refused"
            f" FROM read_json({_file_list(files)}, format = 'newline_delimited',"
            "  ignore_errors = true, filename = true, columns = {ts: 'VARCHAR',"
            "  action: 'VARCHAR', granted: 'VARCHAR[]', refused: 'VARCHAR[]'})"
            f" WHERE action IN ({action_list}) AND TRY_CAST(ts AS TIMESTAMPTZ) IS NOT NULL)"
            " SELECT file, date, unnest(granted) AS purpose, 1 AS granted, 0 AS refused"
            " FROM records WHERE granted IS NOT NULL"
            " UNION ALL SELECT file, date, unnest(refused), 0, 1"
            " FROM records WHERE refused IS NOT NULL"
        )

    def consent_days(self, files: Sequence[Path]) -> dict[date, int]:
        """Local days named by decisions in ``files`` (and how many purpose rows each)."""
        if not files:
            return {}
        rows = self.con.execute(
            "SELECT date, COUNT(*) FROM ledger_decisions"
            f" WHERE file IN ({', '.join(_sql_string(str(f)) for f in files)}) GROUP BY date"
        ).fetchall()
        return {d: int(n) for d, n in rows}

    def select_consent(self, days: Collection[date]) -> dict[date, int]:
        """The ``consent_decisions`` view over ``days``; returns decisions rows per day."""
        day_list = ", ".join(f"DATE '{d.isoformat()}'" for d in sorted(days)) or "NULL"
        self.con.execute(
            "CREATE OR REPLACE TEMP VIEW consent_decisions AS SELECT date, purpose, granted,"
            f" refused FROM ledger_decisions WHERE date IN ({day_list})"
        )
        rows = self.con.execute(
            "SELECT date, COUNT(*) FROM consent_decisions GROUP BY date"
        ).fetchall()
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
        # One scan, reduced at once to (id, local day, user agent): a few rows per visitor.
        # The daily batch's ``raw`` view is left alone.
        self.con.execute(
            "CREATE OR REPLACE TEMP TABLE consented AS SELECT aid,"
            f" CAST({self._local('ts')} AS DATE) AS day, user_agent,"
            " CAST(NULL AS VARCHAR) AS visitor_hash, COUNT(*) AS events"
            f" FROM read_parquet({_file_list(files)}, union_by_name = true)"
            " WHERE aid IS NOT NULL AND list_contains(purposes, 'statistics')"
            " GROUP BY aid, day, user_agent"
        )
        uas = self.con.sql("SELECT DISTINCT user_agent FROM consented").to_arrow_table()
        self._register("ua_map", classify_user_agents(uas.column(0).to_pylist()))
        self.con.execute(
            "CREATE OR REPLACE TEMP TABLE retention_activity AS"
            " SELECT DISTINCT hash(r.aid) AS visitor,"
            " CAST(date_trunc('week', r.day) AS DATE) AS week_start,"
            # Monday-based week number: 1970-01-01 was a Thursday.
            " CAST(floor((date_diff('day', DATE '1970-01-01', r.day) + 3) / 7) AS BIGINT)"
            " AS week_index"
            " FROM consented AS r LEFT JOIN ua_map AS u ON u.user_agent = r.user_agent"
            f" WHERE NOT COALESCE(u.is_bot, TRUE) AND {self._erased_filter('r', 'consented')}"
        )
        count = self.con.execute("SELECT COALESCE(SUM(events), 0) FROM consented").fetchall()
        self.con.execute("DROP TABLE consented")
        return int(count[0][0])

    # ------------------------------------------------------------------ tables

    def run_table(self, table: TableDef, *, k: int, max_pageviews: int) -> pa.Table:
        """Steps 5-7 for one table over the loaded views, cast to its published schema."""
        result = self.con.sql(table_sql(table, k=k, max_pageviews=max_pageviews)).to_arrow_table()
        return result.rename_columns(list(table.column_names)).cast(table.schema)


def _path_map(
    paths: Sequence[tuple[str, bool]],
    scrub: Callable[[str], str],
    is_asset: Callable[[str], bool],
) -> pa.Table:
    """Page name and asset flag per distinct raw path; imported paths are scrubbed again."""
    raw = [p for p, _ in paths]
    pages = [p if recorded else scrub(p) for p, recorded in paths]
    return pa.table(
        {
            "path": pa.array(raw, pa.string()),
            "page": pa.array(pages, pa.string()),
            "is_asset": pa.array([is_asset(p) for p in raw], pa.bool_()),
        }
    )

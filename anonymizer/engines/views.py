"""The SQL of pipeline steps 1-4, written once and run by every engine.

Each function returns one ``SELECT`` in DuckDB's dialect over named relations: the DuckDB
engine runs it as it is, the Spark engine transpiles it (:mod:`anonymizer.engines.sql`).
Only the scans of RAW files differ per engine, so they come in as relation text (``scan``):
DuckDB passes ``read_parquet([...])``/``read_json(...)``, Spark the name of a view over
``spark.read``. The SQL sticks to constructs that transpile; the few that do not are
rewritten by the documented transforms of :mod:`anonymizer.engines.sql`.

The views these queries build are listed in :mod:`anonymizer.tables.base`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pyarrow as pa

from anonymizer.generalize import CHANNEL_SQL, is_asset_path
from consent_middleware.scrub import scrub_path

SESSION_GAP_SECONDS = 30 * 60
"""A visit ends after 30 minutes without a pageview (design section 7)."""

RAW_COLUMNS = (
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

LEDGER_COLUMNS = ("ts", "action", "granted", "refused")
"""Fields read from each ledger line (ts and action as text, granted/refused as text lists)."""


def sql_string(value: str) -> str:
    """``value`` as a SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def local_time(column: str, timezone: str) -> str:
    """SQL for ``column`` (a UTC instant) as a local timestamp in ``timezone``.

    ``AT TIME ZONE`` rather than DuckDB's ``timezone()``: the same function in DuckDB, and
    it transpiles to Spark's ``from_utc_timestamp`` (with the session time zone UTC).
    """
    return f"({column} AT TIME ZONE {sql_string(timezone)})"


Clock = Callable[[str], tuple[str, str]]
"""SQL for the local DATE and the local hour (INTEGER) of a TIMESTAMPTZ expression: the one
way every query here dates an event (:func:`zone_clock`, or the DuckDB engine's
:func:`anonymizer.engines.offsets.offset_clock`)."""


def zone_clock(timezone: str) -> Clock:
    """The :data:`Clock` of the engine's own time zone rules (``AT TIME ZONE``)."""

    def clock(column: str) -> tuple[str, str]:
        local = local_time(column, timezone)
        return f"CAST({local} AS DATE)", f"CAST(hour({local}) AS INTEGER)"

    return clock


def _date_list(days: Collection[date]) -> str:
    return ", ".join(f"DATE '{d.isoformat()}'" for d in sorted(days)) or "NULL"


def day_counts_sql(relation: str, clock: Clock) -> str:
    """Local date and event count per day of ``relation`` (which has a ``ts`` column)."""
    return f"SELECT {clock('ts')[0]} AS d, COUNT(*) AS n FROM {relation} GROUP BY d"


def raw_sql(
    scan: str,
    days: Collection[date],
    start: datetime,
    end: datetime,
    clock: Clock,
) -> str:
    """The ``raw`` view: the events of the local ``days`` (``start``/``end``: their UTC bounds;
    the range test lets Parquet readers skip row groups before the local-date test).

    When ``days`` are consecutive (a batch usually is), the range from the first local
    midnight to the last is exactly those days, and no event's local date is computed.
    """
    ordered = sorted(days)
    if ordered and (ordered[-1] - ordered[0]).days == len(ordered) - 1:
        return (
            f"SELECT {', '.join(RAW_COLUMNS)} FROM {scan}"
            f" WHERE ts >= TIMESTAMPTZ '{start.isoformat()}'"
            f" AND ts < TIMESTAMPTZ '{end.isoformat()}'"
        )
    return (
        f"SELECT {', '.join(RAW_COLUMNS)} FROM ("
        f" SELECT *, {clock('ts')[0]} AS local_date"
        f" FROM {scan}"
        f" WHERE ts >= TIMESTAMPTZ '{start.isoformat()}'"
        f" AND ts < TIMESTAMPTZ '{end.isoformat()}'"
        f") AS batch WHERE local_date IN ({_date_list(days)})"
    )


POLICY_VERSIONS_SQL = "SELECT DISTINCT policy_version FROM raw WHERE policy_version IS NOT NULL"
DISTINCT_USER_AGENTS_SQL = "SELECT DISTINCT user_agent FROM raw"
DISTINCT_REFERRERS_SQL = "SELECT DISTINCT referrer_host FROM raw"
DISTINCT_PATHS_SQL = (
    "SELECT path, bool_and(source = "
    + sql_string(MIDDLEWARE_SOURCE)
    + ") AS recorded FROM raw GROUP BY path"
)
"""Each distinct raw path, and whether every event with it came from the middleware."""
DISTINCT_UTMS_SQL = (
    "SELECT DISTINCT utm_source, utm_medium, utm_campaign FROM raw"
    " WHERE utm_source IS NOT NULL OR utm_medium IS NOT NULL OR utm_campaign IS NOT NULL"
)
"""Each distinct combination of campaign tags, at least one set (the ``utm_map`` lookup)."""


def erased_filter(has_erased: bool, alias: str = "r", source: str = "raw") -> str:
    """Step 1: drop erased ids' events, and the same day's events of their browser.

    Reads the ``erased`` relation (``aid_sha256``: hex SHA-256 of each erased id).
    """
    if not has_erased:
        return "TRUE"
    return (
        f"({alias}.aid IS NULL OR sha256({alias}.aid) NOT IN (SELECT aid_sha256 FROM erased))"
        f" AND ({alias}.visitor_hash IS NULL OR {alias}.visitor_hash NOT IN ("
        f"SELECT visitor_hash FROM {source} WHERE visitor_hash IS NOT NULL AND aid IS NOT NULL"
        " AND sha256(aid) IN (SELECT aid_sha256 FROM erased)))"
    )


LOOKUP_IDS = (
    (
        "ua_ids",
        "SELECT user_agent, is_bot, CAST(dense_rank() OVER"
        " (ORDER BY device_type, browser, os) AS INTEGER) AS tech_id FROM ua_map",
    ),
    (
        "tech_names",
        "SELECT DISTINCT CAST(dense_rank() OVER (ORDER BY device_type, browser, os) AS INTEGER)"
        " AS tech_id, device_type, browser, os FROM ua_map",
    ),
    (
        "utm_channels",
        # A tagged visit's channel comes from its tags alone (``utm_map`` holds tagged
        # combinations, so CHANNEL_SQL's ELSE is never reached): once per combination.
        f"SELECT utm_source, utm_medium, utm_campaign, {CHANNEL_SQL} AS channel FROM"
        " (SELECT *, CAST(NULL AS VARCHAR) AS channel FROM utm_map) AS u",
    ),
    (
        "channel_names",
        "SELECT channel, CAST(dense_rank() OVER (ORDER BY channel) AS INTEGER) AS channel_id"
        " FROM (SELECT channel FROM ref_map UNION SELECT channel FROM utm_channels) AS c",
    ),
    (
        "ref_ids",
        "SELECT m.referrer_host, c.channel_id,"
        " CAST(dense_rank() OVER (ORDER BY m.source) AS INTEGER) AS source_id"
        " FROM ref_map AS m LEFT JOIN channel_names AS c ON c.channel = m.channel",
    ),
    (
        "source_names",
        "SELECT DISTINCT CAST(dense_rank() OVER (ORDER BY source) AS INTEGER) AS source_id,"
        " source FROM ref_map",
    ),
    (
        "utm_ids",
        "SELECT u.utm_source, u.utm_medium, u.utm_campaign, c.channel_id,"
        " CAST(dense_rank() OVER (ORDER BY u.utm_source, u.utm_medium, u.utm_campaign)"
        " AS INTEGER) AS utm_id"
        " FROM utm_channels AS u LEFT JOIN channel_names AS c ON c.channel = u.channel",
    ),
    (
        "page_ids",
        "SELECT path, is_asset,"
        " CAST(dense_rank() OVER (ORDER BY page) AS INTEGER) AS page_id FROM path_map",
    ),
    (
        "page_names",
        "SELECT DISTINCT CAST(dense_rank() OVER (ORDER BY page) AS INTEGER) AS page_id, page"
        " FROM path_map",
    ),
)
"""The lookups with integer ids (name, query), built after ``ua_map``, ``ref_map``,
``utm_map`` and ``path_map``: ``base`` carries ids for the page, the user agent's (device
type, browser, OS), the referrer's source, the channel and the campaign tags, and the
``*_names`` lookups (``channel_names`` and ``utm_ids`` for the last two) name them (see
:class:`anonymizer.tables.base.Names`).

Ids are dense ranks in the order of the names, so ordering by an id orders as by its name
(the sessionisation's tie-breaks rely on it), and equal names share an id. An untagged
event has no campaign id: a null id sorts where the all-null tags did, first or last with
the engine's null order either way. Sorting and grouping a few integers per event instead of
strings more than halves the cost of the sessionisation window and of the tables grouped
by them."""


def base_sql(clock: Clock, has_erased: bool) -> str:
    """Steps 1-3 per event: erase, drop identifiers, generalise (the lookups of
    :data:`LOOKUP_IDS` give per-distinct-value ids; tables name their cells)."""
    day, hour = clock("r.ts")
    return (
        "SELECT"
        f" {day} AS date, {hour} AS hour,"
        " epoch(r.ts) AS ts_s, r.method, r.status, r.duration_ms,"
        " p.page_id, p.is_asset, hash(COALESCE(r.visitor_hash, r.aid)) AS visitor,"
        " u.tech_id, r.language, f.source_id,"
        # Campaign tags decide the channel when there are any (CHANNEL_SQL).
        " COALESCE(t.channel_id, f.channel_id) AS channel_id, t.utm_id"
        " FROM raw AS r"
        " LEFT JOIN ua_ids AS u ON u.user_agent = r.user_agent"
        " LEFT JOIN ref_ids AS f ON f.referrer_host IS NOT DISTINCT FROM r.referrer_host"
        " LEFT JOIN utm_ids AS t ON t.utm_source IS NOT DISTINCT FROM r.utm_source"
        " AND t.utm_medium IS NOT DISTINCT FROM r.utm_medium"
        " AND t.utm_campaign IS NOT DISTINCT FROM r.utm_campaign"
        " JOIN page_ids AS p ON p.path = r.path"
        # Bots never count; a missing user agent is a bot (every browser sends one).
        " WHERE NOT COALESCE(u.is_bot, TRUE)"
        " AND COALESCE(r.visitor_hash, r.aid) IS NOT NULL"
        f" AND {erased_filter(has_erased)}"
    )


REQUESTS_SQL = "SELECT date, visitor, page_id, status, duration_ms FROM base"
STATUS_NAMES_SQL = (
    "SELECT status_digit, CONCAT(CAST(status_digit AS VARCHAR), 'xx') AS status_class FROM"
    " (SELECT DISTINCT CAST(FLOOR(status / 100) AS INTEGER) AS status_digit FROM requests)"
    " AS digits"
)
"""Each status class of the batch's requests, named: the tables group by the digit."""


PAGEVIEWS_SQL = (
    "SELECT date, hour, ts_s, visitor, page_id, tech_id, language, source_id, channel_id,"
    " utm_id FROM base WHERE method = 'GET' AND status BETWEEN 200 AND 299 AND NOT is_asset"
)
"""The ``pageviews`` view: successful page GETs (no assets) with their attributes."""


def visit_pageviews_sql() -> str:
    """Step 4 in one sorted pass over ``pageviews``: the ``visit_pageviews`` table.

    The gaps to the previous and next pageview of the same visitor and day say where visits
    start, which pageviews are bounces, and how long visits last. The full ORDER BY makes
    entry attributes deterministic on equal times (ids order as their names do). Only what
    visits need goes through the sort: the tables of hours, devices and languages read
    ``pageviews``.
    """
    order = "ts_s, page_id, source_id, channel_id, utm_id"
    gap = SESSION_GAP_SECONDS
    return (
        "WITH gaps AS (SELECT date, ts_s, visitor, page_id, source_id, channel_id, utm_id,"
        "  ts_s - LAG(ts_s) OVER win AS gap_before,"
        # Parenthesised: Spark's parser reads ``win - ts_s`` as one hyphenated name.
        "  (LEAD(ts_s) OVER win) - ts_s AS gap_after FROM pageviews"
        f"  WINDOW win AS (PARTITION BY date, visitor ORDER BY {order}))"
        " SELECT date, ts_s, visitor, page_id, source_id, channel_id, utm_id,"
        f" CASE WHEN gap_before <= {gap} THEN 0 ELSE 1 END AS new_visit,"
        f" CASE WHEN gap_before <= {gap} THEN gap_before ELSE 0 END AS visit_seconds,"
        f" CASE WHEN gap_before <= {gap} OR gap_after <= {gap} THEN 0 ELSE 1 END AS bounce"
        " FROM gaps"
    )


VISITS_SQL = (
    "SELECT date, visitor,"
    " ts_s AS visit_start_s, page_id AS entry_page_id, source_id, channel_id, utm_id, bounce"
    " FROM visit_pageviews WHERE new_visit = 1"
)
DAILY_VISITORS_SQL = "SELECT date, COUNT(DISTINCT visitor) AS visitors FROM pageviews GROUP BY date"


def ledger_records_sql(scan: str, actions: Collection[str]) -> str:
    """The decisions among the ledger lines of ``scan`` (columns :data:`LEDGER_COLUMNS`) as
    (ts, granted, refused); unreadable times and other actions skipped."""
    action_list = ", ".join(sql_string(a) for a in sorted(actions))
    return (
        "SELECT TRY_CAST(ts AS TIMESTAMPTZ) AS ts, granted, refused"
        f" FROM {scan}"
        f" WHERE action IN ({action_list}) AND TRY_CAST(ts AS TIMESTAMPTZ) IS NOT NULL"
    )


def ledger_decisions_sql(records: str, clock: Clock) -> str:
    """One row per purpose named by a decision in ``records`` (``ts``, ``granted``,
    ``refused``: :func:`ledger_records_sql`, as cached by :mod:`anonymizer.ledger_cache`),
    dated by ``clock``."""
    return (
        f"WITH records AS (SELECT {clock('ts')[0]} AS date, granted, refused FROM {records})"
        " SELECT date, unnest(granted) AS purpose, 1 AS granted, 0 AS refused"
        " FROM records WHERE granted IS NOT NULL"
        " UNION ALL SELECT date, unnest(refused), 0, 1"
        " FROM records WHERE refused IS NOT NULL"
    )


def ledger_range_sql(scan: str, start: datetime, end: datetime) -> str:
    """The cached decisions of ``scan`` made from ``start`` to before ``end`` (the range
    test lets Parquet readers skip the row groups of other days)."""
    return (
        f"SELECT ts, granted, refused FROM {scan}"
        f" WHERE ts >= TIMESTAMPTZ '{start.isoformat()}' AND ts < TIMESTAMPTZ '{end.isoformat()}'"
    )


class LedgerSelection:
    """Which ledger chunks an engine reads, and which of them its ``ledger_decisions``
    already holds whole (what :meth:`to_load` spares it from reading again)."""

    def __init__(self) -> None:
        self.chunks: list[Path] = []
        self.whole: list[Path] = []

    def reset(self, chunks: Sequence[Path]) -> None:
        """The chunks of this run; nothing loaded yet."""
        self.chunks = list(chunks)
        self.whole = []

    def loaded_whole(self, chunks: Sequence[Path]) -> None:
        """``ledger_decisions`` now holds every decision of ``chunks``."""
        self.whole = list(chunks)

    def to_load(
        self, days: Collection[date], timezone: str
    ) -> tuple[list[Path], datetime, datetime] | None:
        """What ``ledger_decisions`` must hold for the consent of the local ``days``: the
        chunks' decisions within the days' UTC bounds (none without days), or None when
        the chunks loaded whole are all of them."""
        if not days:
            self.whole = []
            now = datetime.now(UTC)
            return [], now, now
        if self.chunks == self.whole:
            return None
        self.whole = []
        start, end = utc_bounds(days, timezone)
        return list(self.chunks), start, end


DECISION_DAYS_SQL = "SELECT date, COUNT(*) FROM ledger_decisions GROUP BY date"
"""Decision rows per local day in ``ledger_decisions``."""


def consent_decisions_sql(days: Collection[date]) -> str:
    """The ``consent_decisions`` view: decision rows of the local ``days``."""
    return (
        "SELECT date, purpose, granted, refused FROM ledger_decisions"
        f" WHERE date IN ({_date_list(days)})"
    )


ROWS_PER_DAY_SQL = "SELECT date, COUNT(*) FROM consent_decisions GROUP BY date"


def consented_sql(scan: str, clock: Clock) -> str:
    """Step 2 for retention: events recorded with ``statistics`` granted and an anonymous
    id, as (id, local day, user agent).

    Not reduced to distinct rows: grouping millions of (id, day, user agent) by a long
    string costs more than reading the few columns twice (for the user agents, then for the
    activity), and the activity is distinct anyway.
    """
    return (
        "SELECT aid,"
        f" {clock('ts')[0]} AS day, user_agent,"
        " CAST(NULL AS VARCHAR) AS visitor_hash"
        f" FROM {scan}"
        " WHERE aid IS NOT NULL AND list_contains(purposes, 'statistics')"
    )


DISTINCT_CONSENTED_USER_AGENTS_SQL = "SELECT DISTINCT user_agent FROM consented"
CONSENTED_EVENTS_SQL = "SELECT COUNT(*) FROM consented"
CONSENTED_USER_AGENTS_SQL = "SELECT user_agent, COUNT(*) AS events FROM consented GROUP BY 1"
"""The distinct user agents of ``consented`` and the events of each: both of the queries
above in one pass."""


def retention_activity_sql(has_erased: bool) -> str:
    """The ``retention_activity`` view: (visitor, week) pairs of non-bot consented events."""
    return (
        "SELECT DISTINCT hash(r.aid) AS visitor,"
        " CAST(date_trunc('week', r.day) AS DATE) AS week_start,"
        # Monday-based week number: 1970-01-01 was a Thursday.
        " CAST(floor((date_diff('day', DATE '1970-01-01', r.day) + 3) / 7) AS BIGINT)"
        " AS week_index"
        " FROM consented AS r LEFT JOIN ua_map AS u ON u.user_agent = r.user_agent"
        f" WHERE NOT COALESCE(u.is_bot, TRUE) AND {erased_filter(has_erased, 'r', 'consented')}"
    )


def utc_bounds(days: Collection[date], timezone: str) -> tuple[datetime, datetime]:
    """The UTC instants from the first local midnight to the end of the last local day."""
    zone = ZoneInfo(timezone)
    start = datetime.combine(min(days), time(), zone)
    end = datetime.combine(max(days) + timedelta(days=1), time(), zone)
    return start.astimezone(ZoneInfo("UTC")), end.astimezone(ZoneInfo("UTC"))


def page_of(path: str, recorded: bool) -> tuple[str, bool]:
    """Step 3 for one distinct raw path: its page name and whether it is an asset.

    Paths recorded by the middleware are route templates already; imported paths are
    scrubbed again.
    """
    return (path if recorded else scrub_path(path)), is_asset_path(path)


def path_map(paths: Sequence[tuple[str, bool]]) -> pa.Table:
    """The ``path_map`` lookup from (path, recorded) pairs (:data:`DISTINCT_PATHS_SQL`)."""
    pages = [page_of(p, recorded) for p, recorded in paths]
    return pa.table(
        {
            "path": pa.array([p for p, _ in paths], pa.string()),
            "page": pa.array([page for page, _ in pages], pa.string()),
            "is_asset": pa.array([asset for _, asset in pages], pa.bool_()),
        }
    )

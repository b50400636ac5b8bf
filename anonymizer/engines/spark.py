"""The Spark engine: the same RAW layout in, the same Arrow tables out, on Apache Spark.

Nothing here restates a table or a step: every query is the DuckDB SQL of
:mod:`anonymizer.engines.views`, :mod:`anonymizer.tables` and :mod:`anonymizer.privacy`,
transpiled by :func:`anonymizer.engines.sql.to_spark`. What is Spark's own is the reading
of RAW files (``spark.read``), the per-distinct-value lookups (vectorised pandas UDFs over
the distinct user agents, referrer hosts and paths, calling the very classifiers of
:mod:`anonymizer.generalize` with their per-process cache) and caching of the
intermediate tables that DuckDB materialises.

Times: the session time zone is UTC and local dates and hours come from
``from_utc_timestamp(ts, zone)`` (what ``AT TIME ZONE`` transpiles to), exactly as DuckDB's
``ts AT TIME ZONE zone``. One SparkSession per process is shared; each engine works in its
own ``newSession()`` so that temporary views never clash.

Requires the ``spark`` extra: ``pip install 'consent-anonymizer[spark]'``. On a cluster the
``consent-anonymizer`` package must be installed on the workers too (the UDFs import it).
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql.functions import col
from pyspark.sql.pandas.functions import pandas_udf as _pandas_udf
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.types import BooleanType, StringType, StructField, StructType

from anonymizer.engines import views
from anonymizer.engines.duckdb import DayBatch
from anonymizer.engines.sql import round_like_duckdb, to_spark
from anonymizer.generalize import classify_referrer, classify_user_agent
from anonymizer.privacy import table_sql
from anonymizer.tables.base import TableDef
from consent_middleware.raw.schema import RAW_EVENT_SCHEMA

DEFAULT_MASTER = "local[*]"

_UA_TYPE = StructType(
    [
        StructField("browser", StringType()),
        StructField("os", StringType()),
        StructField("device_type", StringType()),
        StructField("is_bot", BooleanType()),
    ]
)
_REF_TYPE = StructType([StructField("source", StringType()), StructField("channel", StringType())])
_PATH_TYPE = StructType([StructField("page", StringType()), StructField("is_asset", BooleanType())])
_RAW_SCHEMA = from_arrow_schema(RAW_EVENT_SCHEMA)

_session_lock = threading.Lock()


def spark_session(
    master: str | None = None,
    *,
    shuffle_partitions: int | None = None,
    conf: Mapping[str, str] | None = None,
) -> SparkSession:
    """The process's SparkSession, created on first use (later calls reuse it, whatever
    their arguments: Spark allows one context per process).

    ``master`` defaults to ``local[*]``; a local master gets few shuffle partitions (8, or
    ``shuffle_partitions``) and 2 GB of driver memory; the web UI and progress bars are off
    and, once started, Spark logs only errors (the JVM's start-up banner still shows).
    """
    with _session_lock:
        active = SparkSession.getActiveSession()
        if active is not None:
            return active
        url = master or DEFAULT_MASTER
        builder = (
            SparkSession.builder.master(url)
            .appName("anonymizer")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        )
        if url.startswith("local"):
            builder = builder.config("spark.sql.shuffle.partitions", str(shuffle_partitions or 8))
            builder = builder.config("spark.driver.memory", "2g")
        elif shuffle_partitions:
            builder = builder.config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        for key, value in (conf or {}).items():
            builder = builder.config(key, value)
        # The UDF workers must run this interpreter (it has the anonymizer installed).
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        session = builder.getOrCreate()
        session.sparkContext.setLogLevel("ERROR")
        return session


# ----------------------------------------------------------------------------- lookups

PANDAS_WARNING = r"PySpark does not yet fully support pandas >= 3\.0\.0"
"""PySpark 4 warns about pandas 3 whenever a pandas UDF is made; the UDFs here only take
Series of strings and return DataFrames of strings and booleans, which pandas 3 handles."""


# Also when PySpark converts results to Arrow: one filter for this message from PySpark only.
warnings.filterwarnings("ignore", message=PANDAS_WARNING, category=FutureWarning, module="pyspark")


def pandas_udf(
    return_type: StructType,
) -> Callable[[Callable[..., pd.DataFrame]], Callable[..., Column]]:
    """``pyspark.sql.functions.pandas_udf`` (Series in, struct out) without the pandas-3
    warning."""

    def wrap(function: Callable[..., pd.DataFrame]) -> Callable[..., Column]:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=PANDAS_WARNING, category=FutureWarning)
            udf: Callable[..., Column] = _pandas_udf(function, return_type)  # type: ignore[call-overload]
        return udf

    return wrap


def _texts(values: pd.Series) -> list[str | None]:
    """A string Series as Python values, nulls (None, NaN or NA by pandas version) as None."""
    return [None if pd.isna(v) else str(v) for v in values.tolist()]


@pandas_udf(_UA_TYPE)
def _classify_user_agents(agents: pd.Series) -> pd.DataFrame:
    """Browser, OS, device type and bot flag of each distinct user agent (cached parse)."""
    rows = [classify_user_agent(ua) for ua in _texts(agents)]
    return pd.DataFrame(rows, columns=["browser", "os", "device_type", "is_bot"])


@pandas_udf(_PATH_TYPE)
def _pages(paths: pd.Series, recorded: pd.Series) -> pd.DataFrame:
    """Page name and asset flag of each distinct raw path (:func:`views.page_of`)."""
    # A NULL ``recorded`` (no source) means imported, as in DuckDB; NA/NaN are not True.
    flags = [r is True or (not pd.isna(r) and bool(r)) for r in recorded.tolist()]
    rows = [views.page_of(str(p), r) for p, r in zip(_texts(paths), flags, strict=True)]
    return pd.DataFrame(rows, columns=["page", "is_asset"])


def _referrer_udf(site_hosts: tuple[str, ...]) -> Callable[..., Column]:
    @pandas_udf(_REF_TYPE)
    def classify(hosts: pd.Series) -> pd.DataFrame:
        rows = [classify_referrer(h, site_hosts) for h in _texts(hosts)]
        return pd.DataFrame(rows, columns=["source", "channel"])

    return classify


# ----------------------------------------------------------------------------- engine


class SparkEngine:
    """The pipeline's engine on Spark; same methods and results as
    :class:`~anonymizer.engines.duckdb.DuckDBEngine`.

    ``master`` is a Spark master URL (``local[*]`` by default, ``spark://host:7077``,
    ``yarn`` ...), used only when this process has no SparkSession yet; ``session`` passes
    one explicitly.
    """

    def __init__(
        self,
        *,
        timezone: str = "UTC",
        site_hosts: Collection[str] = (),
        master: str | None = None,
        shuffle_partitions: int | None = None,
        session: SparkSession | None = None,
    ) -> None:
        self.timezone = timezone
        self._clock = views.zone_clock(timezone)  # Java's tz rules, through from_utc_timestamp
        self.site_hosts = tuple(site_hosts)
        root = session or spark_session(master, shuffle_partitions=shuffle_partitions)
        # Own temporary views and SQL settings; the SparkContext (and its cache) is shared.
        self.spark = root.newSession()
        self.spark.conf.set("spark.sql.session.timeZone", "UTC")
        if shuffle_partitions:
            self.spark.conf.set("spark.sql.shuffle.partitions", str(shuffle_partitions))
        self._cached: dict[str, DataFrame] = {}
        self._has_erased = False
        self._ledger = views.LedgerSelection()

    def close(self) -> None:
        """Drop this engine's cached tables (the shared session stays up for reuse)."""
        for frame in self._cached.values():
            frame.unpersist()
        self._cached.clear()

    # ------------------------------------------------------------------ helpers

    def _sql(self, sql: str) -> DataFrame:
        query = to_spark(sql)
        if query.rounding:
            raise ValueError("ROUND on an output column is only handled by run_table")
        return self.spark.sql(query.sql)

    def _view(self, name: str, frame: DataFrame, *, cache: bool = False) -> DataFrame:
        """Register ``frame`` as view ``name``; ``cache`` keeps it (DuckDB's TEMP TABLE)."""
        old = self._cached.pop(name, None)
        if old is not None:
            old.unpersist()
        if cache:
            frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
            self._cached[name] = frame
        frame.createOrReplaceTempView(name)
        return frame

    def _rows(self, sql: str) -> list[tuple[object, ...]]:
        return [tuple(row) for row in self._sql(sql).collect()]

    def _parquet(self, files: Sequence[Path]) -> DataFrame:
        # The RAW contract as the schema: no schema-inference job, and a column missing from
        # an older segment reads as NULL (DuckDB's union_by_name). Explicit file paths: no
        # partition column from the date=... folders.
        return self.spark.read.schema(_RAW_SCHEMA).parquet(*map(str, files))

    def register_erased(self, aid_hashes: Collection[str]) -> None:
        """Step 1 input: SHA-256 hex digests of erased anonymous ids."""
        rows = [(h,) for h in sorted(aid_hashes)]
        self._view("erased", self.spark.createDataFrame(rows, "aid_sha256 string"), cache=True)
        self._has_erased = bool(aid_hashes)

    # ------------------------------------------------------------------ daily batch

    def local_days(self, files: Sequence[Path]) -> dict[date, int]:
        """Local days (and their event counts) that ``files`` hold events for."""
        if not files:
            return {}
        self._view("segments", self._parquet(files))
        return _day_counts(self._rows(views.day_counts_sql("segments", self._clock)))

    def load_days(self, files: Sequence[Path], days: Collection[date]) -> DayBatch:
        """Steps 1-4 for the local ``days``, reading the segment ``files`` that cover them.

        Leaves the views ``pageviews``, ``visit_pageviews``, ``visits``, ``requests`` and
        ``daily_visitors``.
        """
        start, end = views.utc_bounds(days, self.timezone)
        self._view("segments", self._parquet(files))
        raw = self._sql(views.raw_sql("segments", days, start, end, self._clock))
        self._view("raw", raw, cache=True)
        counts = _day_counts(self._rows(views.day_counts_sql("raw", self._clock)))
        versions = sorted(str(v) for (v,) in self._rows(views.POLICY_VERSIONS_SQL))
        self._load_lookups()
        self._build_views()
        return DayBatch(counts, tuple(versions))

    def _load_lookups(self) -> None:
        """Step 3 lookups, one UDF call per distinct user agent, referrer host and path."""
        agents = self._sql(views.DISTINCT_USER_AGENTS_SQL)
        self._view("ua_map", _user_agent_map(agents), cache=True)
        hosts = self._sql(views.DISTINCT_REFERRERS_SQL)
        classify = _referrer_udf(self.site_hosts)
        refs = hosts.select(
            col("referrer_host"),
            classify(col("referrer_host")).alias("c"),
        ).select("referrer_host", "c.source", "c.channel")
        self._view("ref_map", refs, cache=True)
        paths = self._sql(views.DISTINCT_PATHS_SQL)
        pages = paths.select(col("path"), _pages(col("path"), col("recorded")).alias("p")).select(
            "path", "p.page", "p.is_asset"
        )
        self._view("path_map", pages, cache=True)
        self._view("utm_map", self._sql(views.DISTINCT_UTMS_SQL), cache=True)

    def _build_views(self) -> None:
        """Steps 1-4, the same SQL as DuckDB's; its TEMP TABLEs are cached here."""
        for name, lookup in views.LOOKUP_IDS:
            self._view(name, self._sql(lookup), cache=True)
        base = self._sql(views.base_sql(self._clock, self._has_erased))
        self._view("base", base, cache=True).count()
        # ``base`` holds everything later steps read: the batch's raw rows can go.
        self._cached.pop("raw").unpersist()
        self._view("requests", self._sql(views.REQUESTS_SQL))
        self._view("status_names", self._sql(views.STATUS_NAMES_SQL), cache=True)
        self._view("pageviews", self._sql(views.PAGEVIEWS_SQL))
        self._view("visit_pageviews", self._sql(views.visit_pageviews_sql()), cache=True)
        self._view("visits", self._sql(views.VISITS_SQL))
        self._view("daily_visitors", self._sql(views.DAILY_VISITORS_SQL), cache=True)

    # ------------------------------------------------------------------ other inputs

    def load_ledger(self, chunks: Sequence[Path]) -> None:
        """The consent decisions to read: the ledger ``chunks`` (see
        :mod:`anonymizer.ledger_cache`), read by :meth:`consent_days` and
        :meth:`select_consent`, each for what it needs."""
        self._ledger.reset(chunks)

    def _load_decisions(self, chunks: Sequence[Path], start: datetime, end: datetime) -> None:
        """``ledger_decisions``: one row per purpose named by a decision of ``chunks`` made
        from ``start`` to before ``end``, dated by local day."""
        if not chunks:
            empty = self.spark.createDataFrame(
                [], "date date, purpose string, granted bigint, refused bigint"
            )
            self._view("ledger_decisions", empty)
            return
        self._view("ledger_chunks", self.spark.read.parquet(*[str(f) for f in chunks]))
        self._view("ledger_records", self._sql(views.ledger_range_sql("ledger_chunks", start, end)))
        decisions = self._sql(views.ledger_decisions_sql("ledger_records", self._clock))
        self._view("ledger_decisions", decisions, cache=True)

    def consent_days(self, files: Sequence[Path]) -> dict[date, int]:
        """Local days named by the decisions in the chunks ``files`` (and how many purpose
        rows each)."""
        if not files:
            return {}
        chunks = self.spark.read.parquet(*[str(f) for f in files])
        # As integers: Spark hands timestamps to Python in the machine's local time.
        row = chunks.selectExpr("unix_micros(min(ts))", "unix_micros(max(ts))").first()
        low, high = (None, None) if row is None else tuple(row)
        if low is None or high is None:
            return {}
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        start = epoch + timedelta(microseconds=int(low))
        self._load_decisions(files, start, epoch + timedelta(microseconds=int(high) + 1))
        # Every decision of these chunks: when they are all the chunks (a first run, say),
        # select_consent has nothing more to read.
        self._ledger.loaded_whole(files)
        return _day_counts(self._rows(views.DECISION_DAYS_SQL))

    def select_consent(self, days: Collection[date]) -> dict[date, int]:
        """The ``consent_decisions`` view: every decision of the local ``days`` in the
        chunks given to :meth:`load_ledger`; returns decisions rows per day."""
        load = self._ledger.to_load(days, self.timezone)
        if load is not None:
            self._load_decisions(*load)
        self._view("consent_decisions", self._sql(views.consent_decisions_sql(days)))
        return _day_counts(self._rows(views.ROWS_PER_DAY_SQL))

    def load_retention(self, files: Sequence[Path]) -> int:
        """The ``retention_activity`` view from every consented event in ``files``.

        Step 2: only events recorded with ``statistics`` granted and an anonymous id.
        Returns the number of such events.
        """
        if not files:
            empty = self.spark.createDataFrame(
                [], "visitor bigint, week_start date, week_index bigint"
            )
            self._view("retention_activity", empty)
            return 0
        self._view("retention_segments", self._parquet(files))
        consented = self._sql(views.consented_sql("retention_segments", self._clock))
        self._view("consented", consented, cache=True)
        agents = self._sql(views.DISTINCT_CONSENTED_USER_AGENTS_SQL)
        self._view("ua_map", _user_agent_map(agents), cache=True)
        activity = self._sql(views.retention_activity_sql(self._has_erased))
        self._view("retention_activity", activity, cache=True)
        ((count,),) = self._rows(views.CONSENTED_EVENTS_SQL)
        return int(str(count))

    # ------------------------------------------------------------------ tables

    def query(self, sql: str) -> pa.Table:
        """Run one DuckDB-dialect query over the loaded views (transpiled), as Arrow."""
        query = to_spark(sql)
        result = self.spark.sql(query.sql).toArrow()
        for name, digits in query.rounding.items():
            index = result.schema.get_field_index(name)
            values = [round_like_duckdb(v, digits) for v in result.column(index).to_pylist()]
            result = result.set_column(index, name, pa.array(values, pa.float64()))
        return result

    def run_table(self, table: TableDef, *, k: int, max_pageviews: int) -> pa.Table:
        """Steps 5-7 for one table over the loaded views, cast to its published schema."""
        result = self.query(table_sql(table, k=k, max_pageviews=max_pageviews))
        return result.rename_columns(list(table.column_names)).cast(table.schema)


def _user_agent_map(agents: DataFrame) -> DataFrame:
    """``ua_map`` (:data:`anonymizer.generalize.USER_AGENT_SCHEMA`) from distinct agents."""
    classified = _classify_user_agents(col("user_agent"))
    return agents.select(col("user_agent"), classified.alias("c")).select(
        "user_agent", "c.browser", "c.os", "c.device_type", "c.is_bot"
    )


def _day_counts(rows: Iterable[tuple[object, ...]]) -> dict[date, int]:
    counts: dict[date, int] = {}
    for day, count in rows:
        if isinstance(day, date):
            counts[day] = int(str(count))
    return counts

"""The Spark engine publishes exactly what the DuckDB engine publishes.

The Spark tests share one local SparkSession (``local[2]``, 4 shuffle partitions) for the
whole module: starting a JVM costs more than the queries. The transpiler's rewrites are
unit-tested without Spark.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from synthetic import crowd, generate

from anonymizer.cli import anonymizer_cli
from anonymizer.engines import SPARK_INSTALL_HINT
from anonymizer.engines.sql import round_like_duckdb, to_spark
from anonymizer.privacy import table_sql
from anonymizer.tables import TABLES
from consent_middleware.raw.layout import RawLayout
from consent_middleware.raw.segments import write_segment

PANDAS_3 = "ignore:PySpark does not yet fully support pandas:FutureWarning"
"""PySpark 4.0 warns about pandas 3 when it converts to Arrow; nothing here depends on it."""

# --------------------------------------------------------------------------- transpiling


def test_hash_epoch_and_percentile_are_rewritten() -> None:
    query = to_spark(
        "SELECT hash(v) AS h, epoch(ts) AS s,"
        " PERCENTILE_CONT(0.95) WITHIN GROUP (ORDER BY d) AS p FROM t GROUP BY v, ts"
    )
    assert query.sql == (
        "SELECT XXHASH64(v) AS h, (CAST(UNIX_MICROS(ts) AS DOUBLE) / 1000000) AS s,"
        " PERCENTILE(d, 0.95) AS p FROM t GROUP BY v, ts"
    )


def test_output_rounding_moves_out_of_the_query() -> None:
    query = to_spark(table_sql(TABLES["traffic_daily"], k=10, max_pageviews=20))
    assert query.rounding == {"bounce_rate": 4, "avg_visit_seconds": 1}
    assert "ROUND" not in query.sql.upper()
    # Every table transpiles; only the two tables with ROUND outputs defer rounding.
    deferred = {
        name
        for name, table in TABLES.items()
        if to_spark(table_sql(table, k=10, max_pageviews=20)).rounding
    }
    assert deferred == {"traffic_daily", "performance_daily"}


def test_local_time_becomes_from_utc_timestamp() -> None:
    from anonymizer.engines.views import day_counts_sql, zone_clock

    sql = to_spark(day_counts_sql("raw", zone_clock("Asia/Tokyo"))).sql
    assert "CAST((FROM_UTC_TIMESTAMP(ts, 'Asia/Tokyo')) AS DATE) AS d" in sql


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.floats(min_value=-1e9, max_value=1e9, allow_nan=False),
        # Decimal ties such as 1.15, 20.05, 0.0125: where Spark's and DuckDB's ROUND differ.
        st.integers(min_value=-(10**7), max_value=10**7).map(lambda n: n / 1000 + 0.0005),
        st.integers(min_value=0, max_value=10**6).map(lambda n: n / 100 + 0.05),
    ),
    st.sampled_from([0, 1, 2, 4]),
)
def test_round_like_duckdb_matches_duckdb(value: float, digits: int) -> None:
    expected = duckdb.execute(f"SELECT round({value!r}::DOUBLE, {digits})").fetchall()[0][0]
    assert round_like_duckdb(value, digits) == expected


def test_round_like_duckdb_passes_special_values() -> None:
    assert round_like_duckdb(None, 1) is None
    assert math.isnan(round_like_duckdb(math.nan, 1) or 0.0)
    assert round_like_duckdb(math.inf, 2) == math.inf


def test_missing_pyspark_gives_an_install_hint(tmp_path: Path) -> None:
    # A None entry in sys.modules makes ``import pyspark`` fail as if it were not installed.
    script = (
        "import sys; sys.modules['pyspark'] = None\n"
        "from anonymizer.cli import main\n"
        "sys.argv = ['anonymizer', 'run', '--raw', sys.argv[1], '--stats', sys.argv[2],"
        " '--engine', 'spark']\n"
        "main()\n"
    )
    raw = tmp_path / "raw"
    write_segment(raw, crowd(datetime(2026, 3, 2, 3, tzinfo=UTC), 3))
    done = subprocess.run(
        [sys.executable, "-c", script, str(raw), str(tmp_path / "stats")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and SPARK_INSTALL_HINT in lines[0]
    assert not (tmp_path / "stats").exists()


# --------------------------------------------------------------------------- Spark vs DuckDB


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    """The process's SparkSession, small and local, shared by every Spark test here."""
    pytest.importorskip("pyspark")
    from anonymizer.engines.spark import spark_session

    session = spark_session("local[2]", shuffle_partitions=4)
    yield session


def published_rows(stats: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every published table as sorted rows (partition column included)."""
    tables: dict[str, list[tuple[Any, ...]]] = {}
    for name, table in TABLES.items():
        folder = stats / name
        if not folder.is_dir():
            tables[name] = []
            continue
        data = ds.dataset(folder, partitioning="hive", schema=table.schema).to_table()
        rows = [tuple(r[c] for c in table.column_names) for r in data.to_pylist()]
        tables[name] = sorted(rows, key=repr)
    return tables


def erase(raw: Path, aids: list[str]) -> None:
    """Tombstones for ``aids`` (the contract: SHA-256 of the id, never the id)."""
    folder = RawLayout.at(raw).tombstones
    folder.mkdir(parents=True, exist_ok=True)
    for i, aid in enumerate(aids):
        record = {
            "aid_sha256": hashlib.sha256(aid.encode()).hexdigest(),
            "ts": "2026-01-06T00:00:00+00:00",
            "request_id": f"erase-{i}",
        }
        (folder / f"erase-{i}.json").write_text(json.dumps(record), encoding="utf-8")


def cli_run(raw: Path, stats: Path, *extra: str) -> str:
    """``anonymizer run`` in New York time; days stay open (never final) whatever today is,
    so a later run may republish them."""
    result = CliRunner().invoke(
        anonymizer_cli,
        [
            "run",
            "--raw",
            str(raw),
            "--stats",
            str(stats),
            "--k",
            "5",
            "--timezone",
            "America/New_York",
            "--site-host",
            "shop.example.com",
            "--final-after-days",
            "100000",
            *extra,
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return result.output


SPARK = ("--engine", "spark", "--spark-master", "local[2]")


def marketing_grants(rows: dict[str, list[tuple[Any, ...]]], day: date) -> int:
    """``consent_daily``'s marketing grants on ``day`` (0 when no row is published)."""
    return sum(row[2] for row in rows["consent_daily"] if row[:2] == (day, "marketing"))


@pytest.mark.slow
@pytest.mark.filterwarnings(PANDAS_3)
def test_spark_and_duckdb_publish_identical_tables(spark: Any, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    # Three days across New York's switch to daylight saving time (2026-03-08 02:00 local):
    # consent mix, bots, campaigns, referrers, assets, errors, a ledger.
    generate(raw, 20_000, start=date(2026, 3, 7), days=3, seed=11)
    # Erasures: ten consented ids (their events and their browsers' other events go).
    aids = pq.read_table(next(RawLayout.at(raw).events.rglob("*.parquet")), columns=["aid"])
    erase(raw, sorted({a for a in aids.column(0).to_pylist() if a})[:10])
    # Imported log lines: their paths are scrubbed again (a pandas UDF on Spark).
    imported = datetime(2026, 3, 8, 17, tzinfo=UTC)
    write_segment(raw, crowd(imported, 6, "/orders/98765", prefix="imp", source="combined"))

    cli_run(raw, tmp_path / "duck")
    assert "day(s) published" in cli_run(raw, tmp_path / "spark", *SPARK)
    duck = published_rows(tmp_path / "duck")
    assert duck == published_rows(tmp_path / "spark")

    # The comparison is not vacuous: every table has rows, rare pages were folded, local
    # days and hours follow the zone (02:00-03:00 did not exist on 2026-03-08).
    assert all(duck[name] for name in TABLES)
    assert any(row[1] == "(other)" for row in duck["pages_daily"])
    pages = {row[1] for row in duck["pages_daily"]}
    assert "/orders/{id}" in pages and "/orders/98765" not in pages
    hours = {(row[0], row[1]) for row in duck["hourly_traffic"]}
    assert (date(2026, 3, 7), 2) in hours and (date(2026, 3, 8), 2) not in hours
    assert {row[0] for row in duck["traffic_daily"]} == {
        date(2026, 3, 6) + timedelta(days=d) for d in range(4)
    }

    # Incremental: a new segment republishes its day only, identically on both engines;
    # decisions appended to the ledger (parsed once, read by both) count on that day.
    late = datetime(2026, 3, 9, 15, tzinfo=UTC)
    write_segment(raw, crowd(late, 7, "/late", prefix="z"))
    before = marketing_grants(duck, date(2026, 3, 9))
    stream = sorted(RawLayout.at(raw).ledger.glob("*.jsonl"))[0]
    with stream.open("a", encoding="utf-8") as handle:
        for i in range(12):
            when = (late + timedelta(minutes=i)).isoformat()
            handle.write(json.dumps({"ts": when, "action": "grant", "granted": ["marketing"]}))
            handle.write("\n")
    assert "1 day(s) published (2026-03-09" in cli_run(raw, tmp_path / "duck")
    assert "1 day(s) published (2026-03-09" in cli_run(raw, tmp_path / "spark", *SPARK)
    duck = published_rows(tmp_path / "duck")
    assert duck == published_rows(tmp_path / "spark")
    assert any(row[1] == "/late" for row in duck["pages_daily"])
    assert marketing_grants(duck, date(2026, 3, 9)) == before + 12

    # And the erasure did change the figures.
    (raw / "tombstones").rename(tmp_path / "tombstones-aside")
    cli_run(raw, tmp_path / "unerased")
    assert published_rows(tmp_path / "unerased")["traffic_daily"] != duck["traffic_daily"]

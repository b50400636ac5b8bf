"""The STATS store: atomic partitions, metadata, manifest, notice and the sandboxed connection."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from synthetic import crowd

import anonymizer
from anonymizer.pipeline import RunOptions
from anonymizer.store import StatsNotFoundError, publish_partition
from anonymizer.tables import TABLES
from consent_middleware.raw.segments import write_segment

T0 = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)


@pytest.fixture
def stats(tmp_path: Path) -> Path:
    raw, out = tmp_path / "raw", tmp_path / "stats"
    write_segment(raw, crowd(T0, 12, "/a") + crowd(T0, 12, "/b", prefix="b"))
    anonymizer.run(raw, out, RunOptions(k=10, timezone="Asia/Tokyo"))
    return out


def test_layout_metadata_and_manifest(stats: Path) -> None:
    part = stats / "pages_daily" / "date=2026-03-02" / "part-0.parquet"
    meta = {k.decode(): v.decode() for k, v in pq.read_schema(part).metadata.items()}
    assert meta["anon.k"] == "10" and meta["anon.timezone"] == "Asia/Tokyo"
    assert json.loads(meta["anon.policy_versions"]) == ["2026-01"]
    assert meta["anon.epsilon"] == "null" and meta["anon.input_rows"] == "24"
    assert {"anon.pipeline_version", "anon.generated_at"} <= set(meta)
    assert pq.read_schema(part).names == ["page", "pageviews", "visitors", "entries"]
    manifest = json.loads((stats / "manifest.json").read_text())
    assert set(manifest["tables"]) == set(TABLES)
    assert manifest["tables"]["pages_daily"]["rows"] == 2
    assert manifest["tables"]["pages_daily"]["first"] == "2026-03-02"
    assert manifest["final_days"] == ["2026-03-02"]
    assert manifest["runs"][0]["input_rows"] == 24
    assert "info[@]smaregi.jp" in (stats / "notice.en.md").read_text()
    assert "苦情相談窓口" in (stats / "notice.ja.md").read_text()
    assert not list(stats.rglob("*.tmp")) and not list(stats.rglob(".*"))


def test_publish_leaves_identical_content_untouched(stats: Path, tmp_path: Path) -> None:
    table = TABLES["languages_daily"]
    rows = pa.table(
        {"date": [date(2026, 1, 1)], "language": ["ja"], "visitors": [12]}, schema=table.schema
    )
    meta = {"anon.k": "10", "anon.generated_at": "a"}
    assert publish_partition(tmp_path, table, date(2026, 1, 1), rows, meta) == "written"
    again = {"anon.k": "10", "anon.generated_at": "b"}
    assert publish_partition(tmp_path, table, date(2026, 1, 1), rows, again) == "unchanged"
    changed = rows.set_column(2, "visitors", pa.array([13]))
    assert publish_partition(tmp_path, table, date(2026, 1, 1), changed, again) == "written"
    assert publish_partition(tmp_path, table, date(2026, 1, 1), rows.slice(0, 0), meta) == "removed"


def test_connect_has_every_table_as_a_view_and_pandas(stats: Path) -> None:
    con = anonymizer.connect(stats)
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
    assert set(TABLES) <= views
    for name, table in TABLES.items():
        assert tuple(con.sql(f"SELECT * FROM {name}").columns) == table.column_names
    frame = con.sql("SELECT page, visitors FROM pages_daily ORDER BY page").df()
    assert frame["visitors"].tolist() == [12, 12]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_parquet('{raw}/events/*/*.parquet')",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_parquet('{stats}/pages_daily/*/*.parquet')",
        "ATTACH '{stats}/x.db'",
        "COPY pages_daily TO '{stats}/copy.csv'",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "SELECT * FROM glob('{raw}/*')",
    ],
)
def test_connection_cannot_touch_files(stats: Path, sql: str) -> None:
    con = anonymizer.connect(stats)
    with pytest.raises(duckdb.Error):
        con.execute(sql.format(raw=stats.parent / "raw", stats=stats)).fetchall()
    assert not (stats / "copy.csv").exists()


def test_empty_stats_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StatsNotFoundError, match="anonymizer run"):
        anonymizer.connect(tmp_path)
    with pytest.raises(StatsNotFoundError, match=str(tmp_path)):
        anonymizer.tables(tmp_path)

"""The analyst sandbox: ``anonymizer query`` and ``anonymizer.connect()`` read STATS only.

Every way DuckDB offers to reach a file, a URL, another database or an extension is tried,
through the CLI and through the Python connection, against RAW, STATS itself and the rest of
the file system; each is refused with a clear message and leaves no file behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from click.testing import CliRunner

import anonymizer
from anonymizer.cli import anonymizer_cli
from anonymizer.sandbox import is_refusal
from anonymizer.tables import TABLES
from consent_middleware.raw.segments import list_segments, write_segment

T0 = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)


def visitors(count: int, path: str) -> list[dict[str, object]]:
    """``count`` distinct browsers with one pageview each."""
    return [
        {
            "ts": T0 + timedelta(seconds=i),
            "method": "GET",
            "status": 200,
            "path": path,
            "user_agent": CHROME,
            "language": "ja",
            "visitor_hash": f"{path}-{i:030d}",
            "purposes": ["necessary"],
            "policy_version": "2026-01",
            "source": "middleware",
        }
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("sandbox")
    raw, stats = base / "raw", base / "stats"
    write_segment(raw, visitors(12, "/a") + visitors(11, "/b"))
    anonymizer.run(raw, stats)
    return raw, stats


@pytest.fixture
def in_scratch_dir(tmp_path: Path) -> Iterator[Path]:
    """Work in a folder whose ``.tmp/`` holds a file: DuckDB's default temp directory is
    ``./.tmp`` and is readable even with external access off unless the sandbox clears it."""
    (tmp_path / ".tmp").mkdir()
    (tmp_path / ".tmp" / "secret.csv").write_text("secret\n42\n")
    before = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(before)


# {raw_file}: a RAW segment; {raw}, {stats}: the stores; {out}: a path nothing may create.
ATTACKS = [
    "SELECT * FROM read_parquet('{raw_file}')",
    "SELECT * FROM read_parquet('{raw}/events/*/*.parquet')",
    "SELECT * FROM '{raw_file}'",
    "SELECT * FROM parquet_metadata('{raw_file}')",
    "SELECT * FROM parquet_schema('{raw_file}')",
    "SELECT * FROM read_parquet('{stats}/pages_daily/*/*.parquet')",
    "SELECT * FROM read_json('{stats}/manifest.json')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_csv_auto('/etc/hostname')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_blob('{raw_file}')",
    "SELECT * FROM sniff_csv('/etc/passwd')",
    "SELECT * FROM glob('{raw}/*')",
    "SELECT * FROM read_csv('.tmp/secret.csv')",
    "SELECT * FROM read_parquet('https://example.com/x.parquet')",
    "ATTACH '{out}' AS other",
    "ATTACH '{raw}/pipeline/x.duckdb'",
    "COPY pages_daily TO '{out}'",
    "COPY (SELECT 1) TO '.tmp/out.csv'",
    "CREATE TEMP TABLE copied (x INTEGER); COPY copied FROM '/etc/hostname'",
    "EXPORT DATABASE '{out}'",
    "IMPORT DATABASE '{stats}'",
    "INSTALL httpfs",
    "FORCE INSTALL httpfs",
    "LOAD httpfs",
    "LOAD '{raw_file}'",
    "CREATE SECRET leak (TYPE s3, KEY_ID 'a', SECRET 'b')",
    "CREATE PERSISTENT SECRET leak (TYPE http)",
    "SET enable_external_access = true",
    "RESET enable_external_access",
    "SET lock_configuration = false",
    "SET allowed_directories = ['/']",
    "SET allowed_paths = ['{raw_file}']",
    "SET temp_directory = '{out}'",
    "SET autoload_known_extensions = true",
    "PRAGMA enable_profiling",
    "SET profiling_output = '{out}'",
]


def render(sql: str, raw: Path, stats: Path, out: Path) -> str:
    raw_file = list_segments(raw)[0]
    return sql.format(raw=raw, stats=stats, raw_file=raw_file, out=out)


@pytest.mark.parametrize("sql", ATTACKS)
def test_connect_refuses(
    stores: tuple[Path, Path], in_scratch_dir: Path, sql: str, tmp_path: Path
) -> None:
    raw, stats = stores
    out = tmp_path / "out.csv"
    con = anonymizer.connect(stats)
    try:
        with pytest.raises(duckdb.Error) as caught:
            con.execute(render(sql, raw, stats, out)).fetchall()
        assert is_refusal(caught.value), caught.value
        # The connection still answers questions over the published tables afterwards.
        assert con.execute("SELECT SUM(visitors) FROM pages_daily").fetchall() == [(23,)]
    finally:
        con.close()
    assert not out.exists() and not (in_scratch_dir / ".tmp" / "out.csv").exists()


@pytest.mark.parametrize("sql", ATTACKS)
def test_cli_refuses_with_one_line(
    stores: tuple[Path, Path], in_scratch_dir: Path, sql: str, tmp_path: Path
) -> None:
    raw, stats = stores
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(
        anonymizer_cli, ["query", "--stats", str(stats), render(sql, raw, stats, out)]
    )
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "Error: query failed: refused by the analyst sandbox"
    )
    assert "Traceback" not in result.output
    assert not out.exists() and not (in_scratch_dir / ".tmp" / "out.csv").exists()


def test_published_tables_stay_readable(stores: tuple[Path, Path]) -> None:
    _, stats = stores
    con = anonymizer.connect(stats)
    try:
        for name, table in TABLES.items():
            assert tuple(con.sql(f"SELECT * FROM {name}").columns) == table.column_names
        pages = con.execute("SELECT page, visitors FROM pages_daily ORDER BY page").fetchall()
        assert pages == [("/a", 12), ("/b", 11)]
        settings = dict(
            con.execute(
                "SELECT name, value FROM duckdb_settings() WHERE name IN"
                " ('enable_external_access', 'lock_configuration', 'temp_directory')"
            ).fetchall()
        )
        assert settings == {
            "enable_external_access": "false",
            "lock_configuration": "true",
            "temp_directory": "",
        }
    finally:
        con.close()
    result = CliRunner().invoke(
        anonymizer_cli,
        [
            "query",
            "--stats",
            str(stats),
            "SELECT SUM(pageviews) FROM pages_daily",
            "--format",
            "csv",
        ],
    )
    assert result.exit_code == 0 and result.output.splitlines()[-1] == "23"


def test_python_side_doors_are_closed(stores: tuple[Path, Path], tmp_path: Path) -> None:
    raw, stats = stores
    raw_file = str(list_segments(raw)[0])
    out = tmp_path / "out.parquet"
    secrets = pd.DataFrame({"aid": ["someone"]})  # read below by name, from SQL
    assert secrets.shape == (1, 1)
    con = anonymizer.connect(stats)
    try:
        attempts = [
            lambda: con.read_parquet(raw_file).fetchall(),
            lambda: con.read_csv("/etc/passwd").fetchall(),
            lambda: con.sql("SELECT * FROM pages_daily").write_parquet(str(out)),
            lambda: con.sql("SELECT * FROM pages_daily").write_csv(str(out)),
            lambda: con.cursor().execute("SET enable_external_access = true"),
        ]
        for attempt in attempts:
            with pytest.raises(duckdb.Error):
                attempt()
        # Replacement scans would let SQL read any DataFrame in the caller's scope; an
        # unlocked connection does find ``secrets`` here.
        with pytest.raises(duckdb.Error):
            con.execute("SELECT * FROM secrets").fetchall()
        with duckdb.connect() as unlocked:
            assert unlocked.execute("SELECT * FROM secrets").fetchall() == [("someone",)]
    finally:
        con.close()
    assert not out.exists()


def test_links_planted_in_stats_are_not_followed(tmp_path: Path) -> None:
    raw, stats = tmp_path / "raw", tmp_path / "stats"
    write_segment(raw, visitors(12, "/a"))
    anonymizer.run(raw, stats)
    planted = stats / "pages_daily" / "date=2030-01-01"
    planted.mkdir()
    (planted / "part-0.parquet").symlink_to(list_segments(raw)[0])
    linked_table = stats / "languages_daily" / "date=2030-01-02"
    linked_table.symlink_to(raw / "events" / list_segments(raw)[0].parent.name)
    odd = stats / "traffic_daily" / "date=not-a-date"
    odd.mkdir()
    (odd / "part-0.parquet").write_bytes(b"PAR1 anything PAR1")
    con = anonymizer.connect(stats)
    try:
        assert con.execute("SELECT DISTINCT date FROM pages_daily").fetchall() == [(T0.date(),)]
        assert con.execute("SELECT COUNT(*) FROM languages_daily").fetchall() == [(1,)]
        assert con.execute("SELECT COUNT(*) FROM traffic_daily").fetchall() == [(1,)]
    finally:
        con.close()

"""``examples/analyst.sql``: every statement runs through ``anonymizer query`` on the STATS
of a real pipeline run and returns rows."""

from __future__ import annotations

import csv
import io
from datetime import date
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner
from synthetic import generate

from anonymizer.cli import anonymizer_cli
from anonymizer.tables import TABLES

WALKTHROUGH = Path(__file__).resolve().parents[1] / "examples" / "analyst.sql"


def statements() -> list[str]:
    """The statements of the walkthrough, split by DuckDB's own parser."""
    text = WALKTHROUGH.read_text(encoding="utf-8")
    return [s.query.strip() for s in duckdb.connect(":memory:").extract_statements(text)]


@pytest.fixture(scope="module")
def stats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five weeks of synthetic traffic and consent decisions through the real pipeline."""
    root = tmp_path_factory.mktemp("analyst")
    generate(root / "raw", 30_000, start=date(2026, 1, 5), days=35)
    result = CliRunner().invoke(
        anonymizer_cli,
        ["run", "--raw", str(root / "raw"), "--stats", str(root / "stats")],
    )
    assert result.exit_code == 0, result.output
    return root / "stats"


def test_the_walkthrough_has_about_ten_commented_queries() -> None:
    queries = statements()
    assert 10 <= len(queries) <= 20
    text = WALKTHROUGH.read_text(encoding="utf-8")
    for number in range(1, len(queries) + 1):
        assert f"-- {number}. " in text  # every query is introduced by a numbered comment
    used = {name for name in TABLES if any(name in q for q in queries)}
    assert used == set(TABLES)  # every published table is shown at least once


@pytest.mark.parametrize("index", range(len(statements())))
def test_every_query_runs_and_returns_rows(stats: Path, index: int) -> None:
    sql = statements()[index]
    # Each statement keeps its leading comment, so "--" ends the options first.
    args = ["query", "--stats", str(stats), "--format", "csv", "--", sql]
    result = CliRunner().invoke(anonymizer_cli, args)
    assert result.exit_code == 0, f"{sql}\n{result.output}"
    rows = list(csv.reader(io.StringIO(result.output)))
    assert len(rows) >= 2, f"no rows from:\n{sql}"  # a header and at least one row

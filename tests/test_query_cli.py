"""The ``anonymizer`` command line, through click's runner."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from synthetic import crowd

from anonymizer.cli import anonymizer_cli
from consent_middleware.raw.segments import write_segment

T0 = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)


@pytest.fixture
def published(tmp_path: Path) -> tuple[Path, Path]:
    raw, stats = tmp_path / "raw", tmp_path / "stats"
    write_segment(raw, crowd(T0, 12, "/a") + crowd(T0, 11, "/b", prefix="b"))
    result = CliRunner().invoke(
        anonymizer_cli,
        ["run", "--raw", str(raw), "--stats", str(stats), "--timezone", "Asia/Tokyo"],
    )
    assert result.exit_code == 0, result.output
    assert "1 day(s) published (2026-03-02 .. 2026-03-02)" in result.output
    return raw, stats


def test_every_command_has_help_with_an_example() -> None:
    runner = CliRunner()
    assert "Example" in runner.invoke(anonymizer_cli, ["--help"]).output
    for name in anonymizer_cli.commands:
        result = runner.invoke(anonymizer_cli, [name, "--help"])
        assert result.exit_code == 0
        assert "Example" in result.output and f"anonymizer {name}" in result.output


def test_query_formats(published: tuple[Path, Path]) -> None:
    _, stats = published
    sql = "SELECT page, visitors FROM pages_daily ORDER BY page"
    runner = CliRunner()
    out = runner.invoke(anonymizer_cli, ["query", "--stats", str(stats), sql, "--format", "json"])
    assert json.loads(out.output) == [
        {"page": "/a", "visitors": 12},
        {"page": "/b", "visitors": 11},
    ]
    out = runner.invoke(anonymizer_cli, ["query", "--stats", str(stats), sql, "--format", "csv"])
    assert out.output.splitlines() == ["page,visitors", "/a,12", "/b,11"]
    out = runner.invoke(anonymizer_cli, ["query", "--stats", str(stats), sql])
    assert "/a" in out.output and "visitors" in out.output
    dated = "SELECT date FROM traffic_daily"
    out = runner.invoke(anonymizer_cli, ["query", "--stats", str(stats), dated, "--format", "csv"])
    assert out.output.splitlines() == ["date", "2026-03-02"]


def test_query_cannot_read_raw(published: tuple[Path, Path]) -> None:
    raw, stats = published
    sql = f"SELECT * FROM read_parquet('{raw}/events/*/*.parquet')"
    result = CliRunner().invoke(anonymizer_cli, ["query", "--stats", str(stats), sql])
    assert result.exit_code == 1 and "query failed" in result.output


def test_tables_and_notice(published: tuple[Path, Path]) -> None:
    _, stats = published
    runner = CliRunner()
    out = runner.invoke(anonymizer_cli, ["tables", "--stats", str(stats)]).output
    assert "pages_daily: 2 rows, 1 partition(s), 2026-03-02 .. 2026-03-02" in out
    assert "retention_weekly: 0 rows" in out
    en = runner.invoke(anonymizer_cli, ["notice", "--stats", str(stats)]).output
    assert "Article 43(3)" in en and "Asia/Tokyo" in en and "info[@]smaregi.jp" in en
    ja = runner.invoke(anonymizer_cli, ["notice", "--stats", str(stats), "--lang", "ja"]).output
    assert "匿名加工情報" in ja


def test_run_twice_reports_nothing_new(published: tuple[Path, Path]) -> None:
    raw, stats = published
    again = CliRunner().invoke(
        anonymizer_cli,
        ["run", "--raw", str(raw), "--stats", str(stats), "--timezone", "Asia/Tokyo"],
    )
    assert again.exit_code == 0
    assert again.output.startswith("0 new segment(s), 0 events read; 0 day(s) published")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--k", "1"], "--k must be at least 2"),
        (["--timezone", "Mars/Olympus"], "unknown time zone 'Mars/Olympus'"),
        (["--final-after-days", "-1"], "--final-after-days"),
        (["--max-pageviews-per-visitor", "0"], "--max-pageviews-per-visitor"),
        (["--stats", "{raw}/stats"], "overlap"),
        (["--timezone", "UTC"], "was published with --timezone Asia/Tokyo"),
    ],
)
def test_invalid_run_options_are_one_actionable_line(
    published: tuple[Path, Path], args: list[str], message: str
) -> None:
    raw, stats = published
    args = [a.format(raw=raw) for a in args]
    base = ["run", "--raw", str(raw)]
    if "--stats" not in args:
        base += ["--stats", str(stats)]
    if "--timezone" not in args:
        base += ["--timezone", "Asia/Tokyo"]
    result = CliRunner().invoke(anonymizer_cli, base + args)
    assert result.exit_code == 1
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_commands_on_empty_stats_say_what_to_do(tmp_path: Path) -> None:
    runner = CliRunner()
    for args in (["tables"], ["notice"], ["query", "SELECT 1"]):
        result = runner.invoke(anonymizer_cli, [args[0], "--stats", str(tmp_path), *args[1:]])
        assert result.exit_code == 1 and "anonymizer run" in result.output


def test_import_log_then_run(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    line = (
        '192.0.2.{i} - - [02/Mar/2026:10:00:{s:02d} +0000] "GET /items/{n}?utm_source=x HTTP/1.1" '
        '200 512 "https://www.google.com/search?q=a" "Mozilla/5.0 (Windows NT 10.0; Win64; x64) '
        'AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"'
    )
    text = "\n".join(line.format(i=i, s=i, n=1000 + i) for i in range(12)) + "\ngarbage line\n"
    log.write_text(text)
    raw, stats = tmp_path / "raw", tmp_path / "stats"
    runner = CliRunner()
    imported = runner.invoke(
        anonymizer_cli, ["import-log", "--raw", str(raw), "--format", "combined", str(log)]
    )
    assert imported.exit_code == 0, imported.output
    assert "12 imported, 1 rejected" in imported.output and ":13:" in imported.output
    assert (
        runner.invoke(anonymizer_cli, ["run", "--raw", str(raw), "--stats", str(stats)]).exit_code
        == 0
    )
    sql = "SELECT page, visitors FROM pages_daily"
    out = runner.invoke(anonymizer_cli, ["query", "--stats", str(stats), sql, "--format", "csv"])
    assert out.output.splitlines() == ["page,visitors", "/items/{id},12"]
    missing = runner.invoke(
        anonymizer_cli,
        ["import-log", "--raw", str(raw), "--format", "combined", str(tmp_path / "nope.log")],
    )
    assert missing.exit_code == 1 and "nope.log" in missing.output

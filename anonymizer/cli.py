"""The ``anonymizer`` command line: thin wrappers over the Python API.

Errors a user can act on are one line on stderr with exit status 1 (or 2 for bad usage).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any, Literal

import click
import duckdb
import pyarrow as pa
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

import anonymizer
from anonymizer.importers import LOG_FORMATS, ImportLogError
from anonymizer.notice import Contact
from anonymizer.pipeline import PipelineError, RunOptions
from anonymizer.sandbox import explain
from anonymizer.store import StatsNotFoundError

STATS_OPTION = click.option(
    "--stats",
    "stats_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="STATS folder (published statistics).",
)


def _fail(message: str) -> None:
    raise click.ClickException(message)


@click.group(
    help="Turn access records into anonymous statistics and query them.\n\n"
    "Example:\n\n  anonymizer run --raw ./raw --stats ./stats --timezone Asia/Tokyo"
)
@click.version_option(package_name="consent-anonymizer")
def anonymizer_cli() -> None:
    """The ``anonymizer`` command group."""


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    if not enabled:
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("pipeline", total=None)

        def update(step: str, done: int, total: int) -> None:
            bar.update(task, description=step, completed=done, total=total)

        yield update


@anonymizer_cli.command(
    "run",
    help="Run the pipeline: RAW events into published tables in STATS (incremental).\n\n"
    "Example:\n\n  anonymizer run --raw ./raw --stats ./stats --k 10 --timezone Asia/Tokyo "
    "--site-host shop.example.com",
)
@click.option(
    "--raw",
    "raw_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="RAW folder (events, ledger, tombstones).",
)
@STATS_OPTION
@click.option("--k", default=10, show_default=True, help="Minimum distinct visitors per row.")
@click.option("--timezone", default="UTC", show_default=True, help="IANA zone for dates/hours.")
@click.option("--site-host", multiple=True, help="The site's own host (internal referrers).")
@click.option(
    "--final-after-days",
    default=2,
    show_default=True,
    help="Days after a day ends before it is final (never re-published).",
)
@click.option(
    "--max-pageviews-per-visitor",
    default=20,
    show_default=True,
    help="Contribution bound: pageviews one visitor adds to a row per day.",
)
@click.option("--memory-limit", default="1GB", show_default=True, help="DuckDB memory limit.")
@click.option("--threads", type=int, default=None, help="DuckDB threads (default: all cores).")
@click.option(
    "--engine",
    type=click.Choice(["duckdb", "spark"]),
    default="duckdb",
    show_default=True,
    help="duckdb (one machine) or spark (pip install 'consent-anonymizer[spark]').",
)
@click.option(
    "--spark-master",
    default=None,
    help="Spark master URL for --engine spark (default: local[*]), e.g. spark://host:7077.",
)
@click.option(
    "--epsilon",
    type=float,
    default=None,
    help="Differential privacy: epsilon per day and run (noise from OpenDP). Off by default.",
)
@click.option(
    "--delta",
    type=float,
    default=None,
    help="Differential privacy: delta per day and run [default: 1e-06].",
)
@click.option(
    "--budget",
    type=float,
    default=1.0,
    show_default=True,
    help="Differential privacy: epsilon all releases of one day may spend together.",
)
@click.option(
    "--max-rows-per-visitor",
    default=5,
    show_default=True,
    help="Differential privacy: rows of each table one visitor contributes to per day.",
)
@click.option("--contact-office", default=None, help="Contact point named in the notice.")
@click.option("--contact-email", default=None, help="Contact e-mail in the notice.")
@click.option("--contact-address", default=None, help="Contact postal address in the notice.")
def run_command(
    raw_dir: Path,
    stats_dir: Path,
    k: int,
    timezone: str,
    site_host: tuple[str, ...],
    final_after_days: int,
    max_pageviews_per_visitor: int,
    memory_limit: str,
    threads: int | None,
    engine: Literal["duckdb", "spark"],
    spark_master: str | None,
    epsilon: float | None,
    delta: float | None,
    budget: float,
    max_rows_per_visitor: int,
    contact_office: str | None,
    contact_email: str | None,
    contact_address: str | None,
) -> None:
    """``anonymizer run``."""
    base = Contact()
    contact = Contact(
        office=contact_office or base.office,
        office_ja=contact_office or base.office_ja,
        email=contact_email or base.email,
        address=contact_address or base.address,
        address_ja=contact_address or base.address_ja,
        phone=base.phone if not (contact_office or contact_email or contact_address) else "",
    )
    options = RunOptions(
        k=k,
        timezone=timezone,
        site_hosts=site_host,
        final_after_days=final_after_days,
        max_pageviews=max_pageviews_per_visitor,
        memory_limit=memory_limit,
        threads=threads,
        engine=engine,
        spark_master=spark_master,
        contact=contact,
        epsilon=epsilon,
        delta=delta,
        budget_per_day=budget,
        max_rows_per_visitor=max_rows_per_visitor,
    )
    try:
        with _progress(sys.stderr.isatty()) as progress:
            report = anonymizer.run(raw_dir, stats_dir, options, progress=progress)
    except PipelineError as exc:
        _fail(str(exc))
        return
    days = report.days_published
    span = f" ({days[0]} .. {days[-1]})" if days else ""
    parts = report.partitions
    click.echo(
        f"{report.new_segments} new segment(s), {report.input_rows} events read; "
        f"{len(days)} day(s) published{span}; partitions: {parts.get('written', 0)} written, "
        f"{parts.get('unchanged', 0)} unchanged, {parts.get('removed', 0)} removed"
    )
    if report.consent_decisions or report.retention_events:
        click.echo(
            f"consent decisions: {report.consent_decisions}; "
            f"consented events for retention: {report.retention_events}"
        )
    if report.days_made_final:
        click.echo("now final: " + ", ".join(d.isoformat() for d in report.days_made_final))
    if report.late_events_skipped:
        late = ", ".join(d.isoformat() for d in report.late_days_skipped)
        click.echo(
            f"skipped {report.late_events_skipped} late event(s) for final day(s) {late}: "
            "final days are never re-published"
        )
    if report.quarantined:
        click.echo(
            f"quarantined {len(report.quarantined)} damaged segment(s) (not used; see "
            f"{raw_dir / 'quarantine'}):"
        )
        for entry in report.quarantined:
            click.echo(f"  {entry.describe()}")
    if epsilon is not None and days:
        click.echo(
            f"differential privacy: epsilon {epsilon:g} spent on each of {len(days)} day(s) "
            f"(budget {budget:g} per day; ledger in STATS/_dp/budget.jsonl)"
        )
    click.echo(f"STATS: {stats_dir}")


@anonymizer_cli.command(
    "import-log",
    help="Import web server access logs into RAW (IP used for the daily hash only).\n\n"
    "Example:\n\n  anonymizer import-log --raw ./raw --format combined access.log access.log.1.gz",
)
@click.option(
    "--raw",
    "raw_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="RAW folder to write events into.",
)
@click.option("--format", "fmt", required=True, type=click.Choice(LOG_FORMATS), help="Log format.")
@click.option("--site-host", default="unknown", help="Host the log belongs to (hash input).")
@click.option(
    "--force",
    is_flag=True,
    help="Import every line, even lines an earlier import already took (RAW/imports/).",
)
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def import_log_command(
    raw_dir: Path, fmt: Any, site_host: str, force: bool, files: tuple[Path, ...]
) -> None:
    """``anonymizer import-log``."""
    try:
        report = anonymizer.import_log(raw_dir, list(files), fmt, site_host=site_host, force=force)
    except ImportLogError as exc:
        _fail(str(exc))
        return
    click.echo(report.summary())


def _value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date) else value


def _render(result: pa.Table, fmt: str) -> str:
    rows = result.to_pylist()
    if fmt == "json":
        return json.dumps([{k: _value(v) for k, v in r.items()} for r in rows], ensure_ascii=False)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(result.column_names)
        writer.writerows([["" if v is None else _value(v) for v in r.values()] for r in rows])
        return out.getvalue().rstrip("\n")
    table = Table(*result.column_names)
    for r in rows:
        table.add_row(*("NULL" if v is None else str(_value(v)) for v in r.values()))
    buffer = io.StringIO()
    Console(file=buffer, width=200, force_terminal=sys.stdout.isatty()).print(table)
    return buffer.getvalue().rstrip("\n")


@anonymizer_cli.command(
    "query",
    help="Run SQL over the published tables (each table is a view by its name).\n\n"
    'Example:\n\n  anonymizer query --stats ./stats "SELECT page, SUM(pageviews) AS pv '
    'FROM pages_daily GROUP BY page ORDER BY pv DESC LIMIT 10" --format csv',
)
@STATS_OPTION
@click.argument("sql")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)
def query_command(stats_dir: Path, sql: str, fmt: str) -> None:
    """``anonymizer query``."""
    try:
        result = anonymizer.query(stats_dir, sql)
    except StatsNotFoundError as exc:
        _fail(str(exc))
        return
    except duckdb.Error as exc:
        _fail(explain(exc))
        return
    click.echo(_render(result, fmt))


@anonymizer_cli.command(
    "tables",
    help="List the published tables: columns, row counts and date range.\n\n"
    "Example:\n\n  anonymizer tables --stats ./stats",
)
@STATS_OPTION
def tables_command(stats_dir: Path) -> None:
    """``anonymizer tables``."""
    try:
        summaries = anonymizer.tables(stats_dir)
    except StatsNotFoundError as exc:
        _fail(str(exc))
        return
    for s in summaries:
        span = f"{s.first} .. {s.last}" if s.first else "no data"
        click.echo(f"{s.name}: {s.rows} rows, {s.partitions} partition(s), {span}")
        click.echo("  " + ", ".join(f"{n} {t}" for n, t in s.columns))


@anonymizer_cli.command(
    "notice",
    help="Print the public notice on the anonymized data (APPI Art. 43(3)).\n\n"
    "Example:\n\n  anonymizer notice --stats ./stats --lang ja",
)
@STATS_OPTION
@click.option("--lang", type=click.Choice(["en", "ja"]), default="en", show_default=True)
def notice_command(stats_dir: Path, lang: Any) -> None:
    """``anonymizer notice``."""
    try:
        click.echo(anonymizer.notice(stats_dir, lang))
    except StatsNotFoundError as exc:
        _fail(str(exc))


@anonymizer_cli.command(
    "report",
    help="Write the marketing report: one self-contained HTML page (charts embedded, no "
    "external requests) and every table as CSV in <out-stem>_files/ beside it. The period "
    "defaults to the last 28 days with data; it is compared with the period of equal "
    "length before it.\n\n"
    "Example:\n\n  anonymizer report --stats ./stats --out report.html "
    "--from 2026-03-01 --to 2026-03-31 --lang ja",
)
@STATS_OPTION
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="HTML file to write.",
)
@click.option(
    "--from", "start", type=click.DateTime(["%Y-%m-%d"]), metavar="DATE", help="First day."
)
@click.option("--to", "end", type=click.DateTime(["%Y-%m-%d"]), metavar="DATE", help="Last day.")
@click.option(
    "--lang",
    type=click.Choice(["en", "ja"]),
    default="en",
    show_default=True,
    help="Language of the report.",
)
def report_command(stats_dir: Path, out: Path, start: Any, end: Any, lang: Any) -> None:
    """``anonymizer report``."""
    # matplotlib is loaded only for reports
    from anonymizer.reporting import PeriodError, ReportOutputError

    try:
        result = anonymizer.report(
            stats_dir,
            out,
            start=start.date() if start else None,
            end=end.date() if end else None,
            lang=lang,
        )
    except (StatsNotFoundError, PeriodError, ReportOutputError) as exc:
        _fail(str(exc))
        return
    period = result.period
    click.echo(
        f"report {result.html} ({result.bytes:,} bytes) for {period.start} .. {period.end} "
        f"({result.days_with_data} day(s) with data), compared with {result.previous.start} "
        f".. {result.previous.end}; CSV files in {result.csv_dir}"
    )


def main() -> None:
    """Entry point of the ``anonymizer`` script."""
    anonymizer_cli()

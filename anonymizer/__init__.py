"""Access-analytics anonymizer: RAW events in, non-identifying statistics out.

Python API (every CLI command is a thin wrapper over one of these):

- :func:`run` — the pipeline (``anonymizer run``)
- :func:`import_log` — web server logs into RAW (``anonymizer import-log``)
- :func:`connect` — a locked-down DuckDB connection with every published table as a view
- :func:`query` — one SQL statement over STATS, as an Arrow table
- :func:`tables` — what is published (``anonymizer tables``)
- :func:`notice` — the public notice (``anonymizer notice``)
- :func:`report` — the marketing report, HTML plus CSVs (``anonymizer report``)
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pyarrow as pa

from anonymizer.notice import Language, PrivacyStatement, notice_filename, render_notice
from anonymizer.pipeline import PipelineError, RunOptions, RunReport, run
from anonymizer.store import StatsNotFoundError, TableSummary, connect, read_manifest, summarize
from anonymizer.tables import TABLES

if TYPE_CHECKING:
    from anonymizer.importers import ImportReport, LogFormat
    from anonymizer.reporting import ReportResult


def import_log(
    raw_dir: str | Path,
    files: Sequence[str | Path],
    fmt: LogFormat,
    *,
    site_host: str = "unknown",
    progress: bool | None = None,
    processes: int = 0,
    force: bool = False,
) -> ImportReport:
    """Parse web server access logs into RAW; see :func:`anonymizer.importers.import_log`
    (``processes=N`` parses in N worker processes instead of threads, same result; lines
    imported before are skipped unless ``force``)."""
    # Imported on use: the parsers are only needed by this command.
    from anonymizer.importers import import_log as _import_log

    return _import_log(
        raw_dir,
        files,
        fmt,
        site_host=site_host,
        progress=progress,
        processes=processes,
        force=force,
    )


def report(
    stats_dir: str | Path,
    out: str | Path,
    *,
    start: date | None = None,
    end: date | None = None,
    lang: Literal["en", "ja"] = "en",
) -> ReportResult:
    """Write the marketing report for ``stats_dir`` to ``out`` (HTML) with its CSVs beside it;
    see :func:`anonymizer.reporting.build_report`."""
    # Imported on use: matplotlib is only needed by this command.
    from anonymizer.reporting import build_report

    return build_report(stats_dir, out, start=start, end=end, lang=lang)


def query(stats_dir: str | Path, sql: str) -> pa.Table:
    """Run ``sql`` over the published tables of ``stats_dir`` (read-only, sandboxed)."""
    con = connect(stats_dir)
    try:
        result = con.sql(sql)
        # A statement without a result (empty SQL, CREATE ...) is an empty table.
        return result.to_arrow_table() if result is not None else pa.table({})
    finally:
        con.close()


def tables(stats_dir: str | Path) -> list[TableSummary]:
    """Every published table: columns, row count, partitions and date range."""
    root = Path(stats_dir)
    summaries = [summarize(root, t) for t in TABLES.values()]
    if not any(s.partitions for s in summaries):
        raise StatsNotFoundError(
            f"no published statistics in {root}: run `anonymizer run --raw RAW --stats {root}` "
            "first"
        )
    return summaries


def notice(stats_dir: str | Path, lang: Language = "en") -> str:
    """The public notice for the statistics in ``stats_dir``, in English or Japanese: the
    text the last run wrote there (with its contact point), else rendered from the manifest."""
    written = Path(stats_dir) / notice_filename(lang)
    if written.is_file():
        return written.read_text(encoding="utf-8")
    manifest = read_manifest(Path(stats_dir))
    if not manifest:
        raise StatsNotFoundError(
            f"no manifest.json in {stats_dir}: run `anonymizer run --raw RAW --stats "
            f"{stats_dir}` first"
        )
    return render_notice(
        lang,
        k=int(manifest["k"]),
        timezone=str(manifest["timezone"]),
        privacy=PrivacyStatement.from_manifest(manifest),
    )


__all__ = [
    "ImportReport",
    "PipelineError",
    "RunOptions",
    "RunReport",
    "StatsNotFoundError",
    "TableSummary",
    "connect",
    "import_log",
    "notice",
    "query",
    "report",
    "run",
    "tables",
]

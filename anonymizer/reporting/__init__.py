"""The marketing report: published statistics as one self-contained HTML page plus CSVs.

``anonymizer report --stats DIR --out report.html`` (or :func:`anonymizer.report`) writes
``report.html`` and, beside it, a folder ``report_files/`` with one CSV per table shown
(``summary.csv``, ``traffic.csv``, ``pages.csv``, ...). The page needs nothing else: charts
are embedded and it makes no network request when opened.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from anonymizer.reporting.charts import render_charts
from anonymizer.reporting.data import ReportData, ReportTable, load
from anonymizer.reporting.html import render_html
from anonymizer.reporting.period import Period, PeriodError
from anonymizer.reporting.texts import Lang
from consent_middleware.raw.segments import replace_atomically

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""A spreadsheet runs a text cell starting with one of these as a formula."""


@dataclass(frozen=True, slots=True)
class ReportResult:
    """What :func:`build_report` wrote."""

    html: Path
    csv_dir: Path
    csv_files: tuple[Path, ...]
    period: Period
    previous: Period
    days_with_data: int
    bytes: int
    """Size of the HTML file."""
    seconds: float
    """Time taken to query, draw and write everything."""


class ReportOutputError(ValueError):
    """The report cannot be written where asked (e.g. its CSV folder is a symbolic link)."""


def csv_dir_for(out: Path) -> Path:
    """Where the CSV files of the report ``out`` go: ``<stem>_files`` beside it."""
    return out.with_name(out.stem + "_files")


def _csv_cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, date):
        return value.isoformat()
    # Campaign names and paths are typed by anyone: never let a spreadsheet run them.
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def to_csv(table: ReportTable) -> str:
    """``table`` as CSV text (RFC 4180: CRLF line ends, so a CR or LF inside a value is
    quoted): a header of column keys, then every row with unformatted values."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([c.key for c in table.columns])
    writer.writerows([[_csv_cell(v) for v in row] for row in table.rows])
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> None:
    # Hidden temporary name, then os.replace: a reader never sees half a file.
    replace_atomically(
        path, lambda handle: handle.write(data), tmp=path.with_name("." + path.name + ".tmp")
    )


def build_report(
    stats_dir: str | Path,
    out: str | Path,
    *,
    start: date | None = None,
    end: date | None = None,
    lang: Lang = "en",
) -> ReportResult:
    """Write the marketing report for ``stats_dir`` to ``out`` and its CSVs beside it.

    ``start``/``end`` bound the period (inclusive local dates); by default the last 28 days
    with published data. Raises :class:`~anonymizer.store.StatsNotFoundError` when
    ``stats_dir`` holds no published table and :class:`PeriodError` for an empty range.
    """
    began = time.perf_counter()
    if lang not in ("en", "ja"):
        raise ValueError(f"unknown report language {lang!r}: use 'en' or 'ja'")
    data: ReportData = load(stats_dir, start, end)
    charts = render_charts(data, lang)
    html_path = Path(out)
    folder = csv_dir_for(html_path)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        # Writing through a planted link would put the CSVs wherever it points.
        raise ReportOutputError(
            f"{folder} must be a plain folder (it is a link or a file): remove it"
        )
    folder.mkdir(parents=True, exist_ok=True)
    csv_files = []
    for table in data.tables.values():
        path = folder / f"{table.name}.csv"
        # With a byte order mark: spreadsheet programs then read Japanese text correctly.
        _write(path, to_csv(table).encode("utf-8-sig"))
        csv_files.append(path)
    page = render_html(data, charts, folder.name, lang, datetime.now(UTC))
    _write(html_path, page.encode("utf-8"))
    return ReportResult(
        html=html_path,
        csv_dir=folder,
        csv_files=tuple(csv_files),
        period=data.period,
        previous=data.previous,
        days_with_data=data.days_with_data,
        bytes=html_path.stat().st_size,
        seconds=round(time.perf_counter() - began, 3),
    )


__all__ = [
    "Lang",
    "Period",
    "PeriodError",
    "ReportOutputError",
    "ReportResult",
    "build_report",
    "csv_dir_for",
]

"""``import_log``: web server access logs into RAW, a block of lines at a time, in bounded
batches, with every line accounted for (imported, rejected with its number, or blank)."""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Final, Literal, NamedTuple, get_args

import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from anonymizer.importers.combined import parse_combined
from anonymizer.importers.common import parse_common
from anonymizer.importers.events import EventBuilder
from anonymizer.importers.fields import (
    REASON_BINARY,
    REASON_FIELD,
    REASON_TOO_LONG,
    has_control_chars,
    rows_with_bytes,
)
from anonymizer.importers.lines import (
    MAX_LINE_BYTES,
    CorruptStream,
    block_lines,
    check_readable,
    open_log,
    read_blocks,
)
from anonymizer.importers.nginx_json import parse_nginx_json_batch
from anonymizer.importers.report import MAX_LISTED_REJECTS, ImportLogError, ImportReport, Reject
from consent_middleware.raw.schema import RAW_EVENT_SCHEMA
from consent_middleware.raw.segments import write_segment

LogFormat = Literal["combined", "common", "nginx-json"]

LOG_FORMATS: Final[tuple[str, ...]] = get_args(LogFormat)
"""Accepted values of ``fmt`` (and of ``anonymizer import-log --format``)."""

BatchParser = Callable[[pa.Array], tuple[pa.Table, pa.Array]]
"""Lines (null: skip) to a parsed-line table and a reject reason per line (null: accepted)."""

PARSERS: Final[dict[str, BatchParser]] = {
    "combined": parse_combined,
    "common": parse_common,
    "nginx-json": parse_nginx_json_batch,
}

BATCH_ROWS: Final = 200_000
"""Events per segment write (about 60 MB in memory): bounds memory whatever the size of
the log, and keeps segments few and large (each write splits by UTC day)."""

WORKERS: Final = min(4, os.cpu_count() or 1)
"""Threads parsing chunks: most of the work is in Arrow kernels, outside the GIL."""

REASON_CORRUPT: Final = "corrupt or truncated compressed data (rest of file skipped)"


def import_log(
    raw_dir: str | Path,
    files: Sequence[str | Path],
    fmt: LogFormat,
    *,
    site_host: str = "unknown",
    progress: bool | None = None,
    batch_rows: int = BATCH_ROWS,
) -> ImportReport:
    """Parse access logs into raw events in RAW (``events/date=.../import-<fmt>-*.parquet``).

    Each accepted line becomes one event of the raw-event contract: the IP is used only to
    compute the day's ``visitor_hash`` (keyed on IP, user agent and ``site_host``, or the
    host the log records) and is never written; the query string is reduced to ``utm_*``;
    the referrer to its host. Files may be gzip-compressed (recognised by content, not
    name). Malformed lines are counted in the report with their line numbers and never
    reach RAW. ``progress`` shows a bar on stderr (default: when stderr is a terminal).

    Raises :class:`ImportLogError` for an unknown format or a missing or unreadable file,
    before anything is written.
    """
    if fmt not in PARSERS:
        raise ImportLogError(f"unknown log format {fmt!r}: use one of {', '.join(LOG_FORMATS)}")
    if not files:
        raise ImportLogError("no log files given: pass at least one file to import")
    paths = [Path(f) for f in files]
    for path in paths:
        check_readable(path)
    if progress is None:
        progress = sys.stderr.isatty()
    if has_control_chars(site_host):
        raise ImportLogError(f"site host {site_host!r} holds control characters; fix --site-host")
    report = ImportReport()
    builder = EventBuilder(raw_dir, source=fmt, site_host=site_host.lower())
    parse = PARSERS[fmt]
    pending: list[pa.Table] = []
    started = time.perf_counter()

    def write(force: bool) -> None:
        rows = sum(t.num_rows for t in pending)
        if rows and (force or rows >= batch_rows):
            table = pa.concat_tables(pending)
            pending.clear()
            report.segments.extend(write_segment(raw_dir, table, prefix=f"import-{fmt}"))

    def finish(result: _ChunkResult) -> None:
        _record(result, report)
        if result.events.num_rows:
            pending.append(result.events)
            write(force=False)

    # Chunks are parsed on worker threads (Arrow kernels release the GIL) while this thread
    # reads ahead and writes segments; results are taken strictly in file order, so line
    # numbers, the first rejects and the segments come out as a sequential run would.
    with _progress_bar(progress) as bar, ThreadPoolExecutor(WORKERS) as pool:
        for path in paths:
            size = path.stat().st_size
            task = None if bar is None else bar.add_task(path.name, total=size)
            in_flight: deque[Future[_ChunkResult]] = deque()
            for chunk in _file_chunks(path):
                in_flight.append(pool.submit(_import_chunk, chunk, parse, builder))
                if len(in_flight) > 2 * WORKERS:
                    finish(in_flight.popleft().result())
                if bar is not None and task is not None:
                    bar.update(task, completed=chunk.position)
            while in_flight:
                finish(in_flight.popleft().result())
            report.files.append(str(path))
            if bar is not None and task is not None:
                bar.update(task, completed=size)
        write(force=True)
    report.seconds = time.perf_counter() - started
    return report


class _Chunk(NamedTuple):
    file: str
    first_line: int  # line number of the block's first line
    block: bytes | None  # whole lines (see read_blocks); None: one over-long line
    lines: int  # how many lines the block holds
    position: int  # bytes of the file on disk consumed so far
    corrupt: bool = False  # the compressed data broke here: the block is the damaged line


class _ChunkResult(NamedTuple):
    chunk: _Chunk
    events: pa.Table
    reasons: pa.Array  # per line: why it was rejected, or null
    blank: int
    imported: int


def _file_chunks(path: Path) -> Iterator[_Chunk]:
    """The chunks of one file; damaged compressed data ends the file with a corrupt chunk."""
    name = str(path)
    number = 1
    position = 0
    try:
        with open_log(path) as (stream, tell):
            try:
                for block in read_blocks(stream):
                    position = tell()
                    count = 1 if block is None else block.count(b"\n") + 1
                    yield _Chunk(name, number, block, count, position)
                    number += count
            except CorruptStream:
                yield _Chunk(name, number, None, 1, position, corrupt=True)
    except OSError as exc:
        raise ImportLogError(
            f"reading log file {name!r} failed near line {number}: {exc}; check the file "
            "and the disk, then import it again (lines before it may already be in RAW)",
            path=path,
        ) from exc


def _import_chunk(chunk: _Chunk, parse: BatchParser, builder: EventBuilder) -> _ChunkResult:
    """Parse, check and reduce one chunk of lines (runs on a worker thread)."""
    if chunk.corrupt:
        reasons = pa.array([REASON_CORRUPT], pa.string())
        return _ChunkResult(chunk, RAW_EVENT_SCHEMA.empty_table(), reasons, 0, 0)
    lines = block_lines(chunk.block)
    if pc.any(pc.ends_with(lines, "\r")).as_py():  # CRLF line endings
        lines = pc.utf8_rtrim(lines, characters="\r")
    too_long = pc.fill_null(pc.greater(pc.binary_length(lines), MAX_LINE_BYTES), True)
    blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(lines), ""), False)
    binary = pa.array(rows_with_bytes(lines, control=True), pa.bool_())
    skip = pc.or_(pc.or_(too_long, blank), binary)
    parsed, reasons = parse(pc.if_else(skip, pa.scalar(None, pa.string()), lines))
    reasons = pc.coalesce(
        pc.if_else(too_long, REASON_TOO_LONG, pc.if_else(binary, REASON_BINARY, None)), reasons
    )
    accepted = pc.and_(pc.is_null(reasons), pc.invert(blank))
    target_ok = builder.targets_ok(pc.if_else(accepted, parsed["target"], None))
    reasons = pc.if_else(pc.and_(accepted, pc.invert(target_ok)), REASON_FIELD, reasons)
    accepted = pc.and_(accepted, target_ok)
    events = builder.build(parsed.filter(accepted))
    blank_count = pc.sum(blank).as_py() or 0
    return _ChunkResult(chunk, events, reasons, blank_count, events.num_rows)


def _record(result: _ChunkResult, report: ImportReport) -> None:
    """Add one chunk's counts and first rejects to the report (in file order)."""
    chunk, _, reasons, blank, imported = result
    report.lines += chunk.lines
    report.blank += blank
    report.imported += imported
    rejected = pc.is_valid(reasons)
    if not pc.any(rejected).as_py():
        return
    for entry in pc.value_counts(reasons.filter(rejected)).to_pylist():
        report.by_reason[entry["values"]] += entry["counts"]
        report.rejected += entry["counts"]
    room = MAX_LISTED_REJECTS - len(report.rejects)
    if room > 0:
        where = pc.indices_nonzero(rejected).slice(0, room)
        for index, reason in zip(where.to_pylist(), reasons.take(where).to_pylist(), strict=True):
            report.rejects.append(Reject(chunk.file, chunk.first_line + index, reason))


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Progress | None]:
    if not enabled:
        yield None
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    with bar:
        yield bar

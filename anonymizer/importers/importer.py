"""``import_log``: web server access logs into RAW, a block of lines at a time, in bounded
batches, with every line accounted for (imported, rejected with its number, or blank)."""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
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
    null_where,
    rows_with_bytes,
)
from anonymizer.importers.history import (
    FileImport,
    PrefixChanged,
    Resume,
    import_lock,
    load_records,
    recover_unfinished,
)
from anonymizer.importers.lines import (
    MAX_LINE_BYTES,
    BufferPool,
    CorruptStream,
    block_lines,
    check_readable,
    open_log,
    read_blocks,
)
from anonymizer.importers.nginx_json import parse_nginx_json_batch
from anonymizer.importers.report import (
    MAX_LISTED_REJECTS,
    ImportLogError,
    ImportReport,
    Reject,
)
from anonymizer.journal import fault_point
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
    processes: int = 0,
    force: bool = False,
) -> ImportReport:
    """Parse access logs into raw events in RAW (``events/date=.../import-<fmt>-*.parquet``).

    Each accepted line becomes one event of the raw-event contract: the IP is used only to
    compute the day's ``visitor_hash`` (keyed on IP, user agent and ``site_host``, or the
    host the log records) and is never written; the query string is reduced to ``utm_*``;
    the referrer to its host. Files may be gzip-compressed (recognised by content, not
    name). Malformed lines are counted in the report with their line numbers and never
    reach RAW. ``progress`` shows a bar on stderr (default: when stderr is a terminal).
    ``processes`` > 0 parses in that many worker processes instead of threads of this
    process: the same result, the per-distinct Python work (scrubbing, hashing) no longer
    shares one GIL, but blocks and events are copied between processes (about 50% more CPU
    in all), which pays only on otherwise idle cores.

    Lines imported before are not imported again (see :mod:`.history`): a file, or its
    gzip-rotated copy, whose start was imported by an earlier import is read from where
    that import ended (line numbers stay the file's own); ``force`` imports every line
    anyway. Imports into one RAW folder run one at a time; one killed midway is undone
    by the next before it starts.

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
    pending: list[pa.Table] = []
    started = time.perf_counter()
    current: list[FileImport] = []  # the file being imported: its segments carry its id
    writes: deque[Future[None]] = deque()  # segment writes handed to the writer thread
    pool = BufferPool()  # read buffers, used again once their block is parsed

    def write(force: bool) -> None:
        # Full batches of ``batch_rows`` events (one chunk may hold several); at the end,
        # whatever is left. The rest of a chunk waits for the next batch.
        rows = sum(t.num_rows for t in pending)
        if rows and (rows >= batch_rows or force):
            table = pa.concat_tables(pending)
            pending.clear()
            start = 0
            while rows - start >= batch_rows or (force and start < rows):
                batch = table.slice(start, batch_rows)
                writes.append(writer.submit(write_batch, batch, current[-1]))
                start += batch.num_rows
            if start < rows:
                pending.append(table.slice(start))
        # Writes finish in order; a failed one raises here. At most two wait (memory). At
        # the end of a file, every segment is on disk before its import is recorded finished.
        while writes and (force or writes[0].done() or len(writes) > 2):
            writes.popleft().result()

    def write_batch(batch: pa.Table, file_import: FileImport) -> None:
        file_import.start()
        for segment in write_segment(raw_dir, batch, prefix=file_import.prefix):
            report.segments.append(segment)
            fault_point(f"import-segment-{len(report.segments)}")

    def finish(result: _ChunkResult, file_lines: int) -> None:
        # Numbered here, in file order: the workers count the lines of their chunks.
        _record(result, report, result.chunk.skipped + file_lines + 1)
        if result.events.num_rows:
            pending.append(result.events)
            write(force=False)

    # Chunks are parsed by workers (threads, or processes for large inputs) while this thread
    # reads ahead and a writer thread writes segments (Parquet encoding and fsync release
    # the GIL); results are taken strictly in file order, so line numbers, the first rejects
    # and the segments come out as a sequential run would.
    # The lock makes imports into one RAW take turns; holding it, any unfinished import
    # on record was killed, and is undone before anything is read. It is taken after the
    # worker processes fork, so they never hold it after this process is gone.
    with (
        _workers(raw_dir, fmt, site_host, processes, pool) as submit,
        ThreadPoolExecutor(1) as writer,
        import_lock(raw_dir),
        _progress_bar(progress) as bar,
    ):
        report.recovered = [record.file for record in recover_unfinished(raw_dir)]
        known = [] if force else load_records(raw_dir)
        ahead = max(processes, WORKERS) + 1  # chunks queued: each holds 4 MiB of lines
        for path in paths:
            size = path.stat().st_size
            task = None if bar is None else bar.add_task(path.name, total=size)
            file_import = FileImport(raw_dir, path, fmt, site_host, known)
            current.append(file_import)
            before = (report.lines, report.imported, report.rejected, report.blank)
            try:
                in_flight: deque[Future[_ChunkResult]] = deque()
                for chunk in _file_chunks(path, file_import.resume, pool):
                    in_flight.append(submit(chunk))
                    if len(in_flight) > ahead:
                        finish(in_flight.popleft().result(), report.lines - before[0])
                    if bar is not None and task is not None:
                        bar.update(task, completed=chunk.position)
                while in_flight:
                    finish(in_flight.popleft().result(), report.lines - before[0])
                write(force=True)  # a segment holds the lines of one file's import only
            except BaseException:
                for unfinished in writes:  # nothing may be written after the undo
                    if not unfinished.cancel():
                        unfinished.exception()  # waits for it to end
                writes.clear()
                file_import.abandon()
                raise
            fault_point("import-before-finish")
            counts = (report.lines, report.imported, report.rejected, report.blank)
            record = file_import.finish(*(a - b for a, b in zip(counts, before, strict=True)))
            if record is not None:
                known.append(record)  # the same file twice in one import: read once
            skipped = file_import.already_imported(counts[0] - before[0], counts[1] - before[1])
            if skipped is not None:
                report.already_imported += skipped.lines
                report.skipped.append(skipped)
            report.files.append(str(path))
            if bar is not None and task is not None:
                bar.update(task, completed=size)
    report.seconds = time.perf_counter() - started
    return report


class _Chunk(NamedTuple):
    file: str
    skipped: int  # lines of the file an earlier import read (see history.Resume)
    block: bytes | memoryview | None  # whole lines (see read_blocks); None: an over-long line
    position: int  # bytes of the file on disk consumed so far
    corrupt: bool = False  # the compressed data broke here: the block is the damaged line


class _ChunkResult(NamedTuple):
    chunk: _Chunk
    lines: int  # how many lines the block holds
    events: pa.Table
    reasons: pa.Array  # per line: why it was rejected, or null
    blank: int
    imported: int


_worker: tuple[BatchParser, EventBuilder] | None = None
"""The parser and event builder of this process's import (see :func:`_workers`)."""


def _start_worker(raw_dir: str | Path, fmt: str, site_host: str) -> None:
    """Set up a worker process to import chunks of one import."""
    global _worker
    _worker = (PARSERS[fmt], EventBuilder(raw_dir, source=fmt, site_host=site_host.lower()))


def _work(chunk: _Chunk) -> _ChunkResult:
    """Import one chunk in a worker process; the block is not sent back (not needed)."""
    assert _worker is not None, "_start_worker was not called"
    result = _import_chunk(chunk, *_worker)
    return result._replace(chunk=chunk._replace(block=None))


Submit = Callable[[_Chunk], "Future[_ChunkResult]"]


@contextmanager
def _workers(
    raw_dir: str | Path, fmt: str, site_host: str, processes: int, pool: BufferPool
) -> Iterator[Submit]:
    """A function that hands a chunk to a worker: threads sharing one builder, or
    ``processes`` processes with one builder each. Blocks go back to ``pool`` once parsed.

    Processes are forked (a fork server or spawn would re-run the caller's main module) all
    at once, before the pool starts its own thread and before the progress bar starts its
    thread (see :func:`import_log`); Arrow resets its thread pools in a forked child. Where
    fork does not exist (Windows), threads do the work.
    Each process has its own caches, and all of them share the day salts on disk, so
    every process computes the same ``visitor_hash`` for the same visitor.
    """
    if processes <= 0 or "fork" not in multiprocessing.get_all_start_methods():
        parse = PARSERS[fmt]
        builder = EventBuilder(raw_dir, source=fmt, site_host=site_host.lower())
        with ThreadPoolExecutor(WORKERS) as threads:
            yield lambda chunk: threads.submit(_import_chunk, chunk, parse, builder, pool.give_back)
        return
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(
        processes,
        mp_context=context,
        initializer=_start_worker,
        initargs=(str(raw_dir), fmt, site_host),
    ) as processes_pool:
        processes_pool.submit(int).result()  # fork them all now, before any thread starts
        yield lambda chunk: processes_pool.submit(_work, _picklable(chunk, pool))


def _picklable(chunk: _Chunk, pool: BufferPool) -> _Chunk:
    """``chunk`` with its block as bytes (a view of a read buffer cannot be pickled); the
    buffer goes back to ``pool`` at once."""
    if chunk.block is None or isinstance(chunk.block, bytes):
        return chunk
    block = bytes(chunk.block)
    pool.give_back(chunk.block)
    return chunk._replace(block=block)


def _file_chunks(path: Path, resume: Resume, pool: BufferPool) -> Iterator[_Chunk]:
    """The chunks of one file after what ``resume`` finds already imported; damaged
    compressed data ends the file with a corrupt chunk. Every byte read is hashed."""
    name = str(path)
    skipped = 0
    position = 0
    try:
        while True:
            with open_log(path) as (stream, tell):
                if not resume.skip(stream):
                    continue  # read past the match: skip it in a fresh stream
                skipped = resume.skipped_lines
                position = tell()
                try:
                    for block in read_blocks(stream, resume.digest.update, pool):
                        position = tell()
                        yield _Chunk(name, skipped, block, position)
                except CorruptStream:
                    yield _Chunk(name, skipped, None, position, corrupt=True)
                return
    except PrefixChanged as exc:
        raise ImportLogError(
            f"log file {name!r} changed while it was being read; import it again",
            path=path,
        ) from exc
    except OSError as exc:
        raise ImportLogError(
            f"reading log file {name!r} failed after byte {position}: {exc}; check the file "
            "and the disk, then import it again (the lines read from it were not kept)",
            path=path,
        ) from exc


def _import_chunk(
    chunk: _Chunk,
    parse: BatchParser,
    builder: EventBuilder,
    release: Callable[[bytes | memoryview | None], None] | None = None,
) -> _ChunkResult:
    """Parse, check and reduce one chunk of lines (runs on a worker); ``release`` is
    given the block as soon as its lines are copied out of it."""
    if chunk.corrupt:
        reasons = pa.array([REASON_CORRUPT], pa.string())
        return _ChunkResult(chunk, 1, RAW_EVENT_SCHEMA.empty_table(), reasons, 0, 0)
    lines = block_lines(chunk.block)
    if release is not None:
        release(chunk.block)
        chunk = chunk._replace(block=None)  # its buffer holds another block from now on
    if pc.any(pc.ends_with(lines, "\r")).as_py():  # CRLF line endings
        lines = pc.utf8_rtrim(lines, characters="\r")
    length = pc.binary_length(lines)
    too_long = pc.fill_null(pc.greater(length, MAX_LINE_BYTES), True)
    # Empty or all (Unicode) whitespace: the same as trimming to "", without a copy.
    blank = pc.fill_null(pc.or_(pc.equal(length, 0), pc.utf8_is_space(lines)), False)
    binary = pa.array(rows_with_bytes(lines, control=True), pa.bool_())
    skip = pc.or_(pc.or_(too_long, blank), binary)
    parsed, reasons = parse(null_where(lines, skip))
    reasons = pc.coalesce(
        pc.if_else(too_long, REASON_TOO_LONG, pc.if_else(binary, REASON_BINARY, None)), reasons
    )
    accepted = pc.and_(pc.is_null(reasons), pc.invert(blank))
    every = pc.all(accepted).as_py()  # the usual chunk: no copies to leave lines out
    target_ok = builder.targets_ok(
        parsed["target"] if every else null_where(parsed["target"], pc.invert(accepted))
    )
    reasons = pc.if_else(pc.and_(accepted, pc.invert(target_ok)), REASON_FIELD, reasons)
    accepted = pc.and_(accepted, target_ok)
    events = builder.build(
        parsed if every and pc.all(target_ok).as_py() else parsed.filter(accepted)
    )
    blank_count = pc.sum(blank).as_py() or 0
    return _ChunkResult(chunk, len(lines), events, reasons, blank_count, events.num_rows)


def _record(result: _ChunkResult, report: ImportReport, first_line: int) -> None:
    """Add one chunk's counts and first rejects (its first line is number ``first_line``)
    to the report, in file order."""
    chunk, lines, _, reasons, blank, imported = result
    report.lines += lines
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
            report.rejects.append(Reject(chunk.file, first_line + index, reason))


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

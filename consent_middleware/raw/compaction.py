"""Compaction: many small raw segments of a UTC date merged into a few large ones.

The recorder writes one small immutable segment per flush and process, so a busy site piles
up tens of thousands of files a day, and every reader opens each of them. ``compact_raw``
merges, per ``events/date=...`` partition, the segments older than ``min_age_s`` (the newest
are left alone: live writers never race it) into segments of up to ``target_rows`` rows,
sorted by ``ts``.

Protocol (each merged file, crash-safe at every step):

(a) a pending *record* ``compactions/<merged name>.json`` names the sources (path, size,
    mtime, rows) and the merged file's final path; it is written atomically;
(b) the merged file is written under a ``.tmp`` name (never listed) and renamed into place:
    from then on :func:`~consent_middleware.raw.segments.list_segments` lists the merged file
    and hides the sources (``superseded_sources``), so nothing is ever counted twice;
(c) the sources are deleted, holding :func:`segment_readers_lock` exclusively, so a pipeline
    run (which holds it shared) never loses a file it has listed;
(d) a completed record ``compactions/done/<merged name>.json`` replaces the pending one; it
    is kept ``keep_records_s`` (default 14 days) so that the pipeline adopts the merged file
    as already processed (:func:`adopted_stamps`) instead of publishing its days again (a
    pipeline that has not run for longer republishes the non-final days of merged files and
    counts their rows on final days as late), then pruned.

A crash leaves either a record whose merged file never appeared (the next compaction rolls
it back: removes the record and the temporary file; the sources were never touched) or one
whose merged file exists (rolled forward: the leftover sources are deleted). Compaction and
``consent-admin purge`` both rewrite segments: compaction holds the purge lock.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from consent_middleware.erasure import purge_lock
from consent_middleware.raw.layout import IMPORT_LOCK as IMPORT_LOCK  # re-exported
from consent_middleware.raw.layout import TEMP_SUFFIX, RawLayout
from consent_middleware.raw.locks import file_lock, import_lock
from consent_middleware.raw.schema import RAW_EVENT_SCHEMA
from consent_middleware.raw.segments import (
    _segment_name,
    list_segments,
    replace_atomically,
)

FAULT_ENV: Final = "CONSENT_COMPACTION_FAULT"
"""Fault injection for the crash tests: when this names a point compaction reaches
(``record``, ``merged``, ``source-1``, ``sources``, ``completed``), the process kills itself
there with SIGKILL, as a crash would."""

DEFAULT_KEEP_RECORDS_S: Final = 14 * 86400.0
"""How long a completed record is kept: a pipeline that runs at least this often adopts
every merged segment as already processed (a later one republishes the non-final days)."""

RECORD_VERSION: Final = 1

ROW_GROUP_ROWS: Final = 131_072
"""Rows per Parquet row group of a merged segment (readers scan row groups in parallel)."""


def fault_point(name: str) -> None:
    """A named point where the crash tests may kill compaction (no effect otherwise)."""
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def segment_readers_lock(raw_dir: str | Path, *, exclusive: bool) -> Iterator[None]:
    """Readers that must not lose a listed segment hold this shared (``anonymizer run``);
    compaction holds it exclusively only while it deletes sources. Blocking; the OS releases
    it if the process dies."""
    with file_lock(Path(raw_dir) / "pipeline" / "segments.lock", exclusive=exclusive):
        yield


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Source:
    """One segment merged away: its path relative to RAW and its stamp when merged."""

    path: str
    size: int
    mtime_ns: int
    rows: int

    @property
    def stamp(self) -> list[int]:
        """``[size, mtime_ns]``, the stamp the pipeline state keeps of each segment."""
        return [self.size, self.mtime_ns]


@dataclass(frozen=True, slots=True)
class CompactionRecord:
    """What one merged segment replaces (``RAW/compactions/<merged name>.json``)."""

    merged: str
    """The merged segment's path relative to RAW (``events/date=.../compact-....parquet``)."""
    sources: tuple[Source, ...]
    created_at: float
    completed_at: float | None = None
    """Set once the sources are deleted (epoch seconds); None while the merge may be undone."""
    merged_stamp: tuple[int, int] | None = None
    """The merged file's ``[size, mtime_ns]`` when completed."""

    def as_json(self) -> str:
        """The record file's text."""
        data = {
            "version": RECORD_VERSION,
            "merged": self.merged,
            "sources": [asdict(s) for s in self.sources],
            "created_at": self.created_at,
            "completed_at": self.completed_at,
            "merged_stamp": list(self.merged_stamp) if self.merged_stamp else None,
        }
        return json.dumps(data, indent=1, sort_keys=True) + "\n"

    @classmethod
    def parse(cls, text: str) -> CompactionRecord:
        """A record from its file's text (raises ``ValueError``/``KeyError`` if malformed)."""
        data = json.loads(text)
        stamp = data.get("merged_stamp")
        return cls(
            merged=str(data["merged"]),
            sources=tuple(
                Source(str(s["path"]), int(s["size"]), int(s["mtime_ns"]), int(s["rows"]))
                for s in data["sources"]
            ),
            created_at=float(data["created_at"]),
            completed_at=None if data.get("completed_at") is None else float(data["completed_at"]),
            merged_stamp=(int(stamp[0]), int(stamp[1])) if stamp else None,
        )


def _pending_path(raw_dir: Path, merged: str) -> Path:
    return RawLayout.at(raw_dir).compactions / f"{Path(merged).name}.json"


def _done_path(raw_dir: Path, merged: str) -> Path:
    return RawLayout.at(raw_dir).compactions / "done" / f"{Path(merged).name}.json"


def _load(path: Path) -> CompactionRecord | None:
    try:
        return CompactionRecord.parse(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None  # written atomically: only a foreign or vanished file gets here


def read_records(
    raw_dir: str | Path, *, pending_only: bool = False, skip: Collection[str] = ()
) -> list[CompactionRecord]:
    """Compaction records, oldest first: pending ones (``compactions/*.json``: the merge may
    still need rolling forward or back) and, unless ``pending_only``, completed ones
    (``compactions/done/*.json``; a completed record wins over a pending one left by a
    crash). Records whose merged file's name is in ``skip`` are not even read (a day's
    record may name tens of thousands of sources)."""
    folder = RawLayout.at(raw_dir).compactions
    files: dict[str, Path] = {}
    for sub in ("",) if pending_only else ("", "done"):
        place = folder / sub if sub else folder
        for path in sorted(place.glob("*.json")) if place.is_dir() else ():
            merged_name = path.name.removesuffix(".json")
            if merged_name not in skip:
                files[merged_name] = path
    records = [r for r in map(_load, files.values()) if r is not None]
    return sorted(records, key=lambda r: (r.created_at, r.merged))


def superseded_sources(raw_dir: str | Path, listed: Sequence[Path]) -> set[str]:
    """Paths (relative to RAW) of listed segments replaced by a merged segment that is itself
    in ``listed``: readers skip them. Only a merged file seen in the same listing hides its
    sources, so a listing never lacks both. Only pending records can name sources still on
    disk (usually there are none: a record is pending for the seconds a merge takes)."""
    root = Path(raw_dir)
    names = {str(p.relative_to(root)) for p in listed}
    hidden: set[str] = set()
    for record in read_records(root, pending_only=True):
        if record.merged in names:
            hidden.update(s.path for s in record.sources)
    return hidden & names


def adopted_stamps(raw_dir: str | Path, seen: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    """Merged segments to treat as already processed, with their stamps: those whose every
    source is in ``seen`` (path -> ``[size, mtime_ns]``) with the stamp it had when merged.
    Chains (a merged segment merged again) are followed."""
    root = Path(raw_dir)
    known = {k: list(v) for k, v in seen.items()}
    adopted: dict[str, list[int]] = {}
    # Merged segments already seen (adopted by an earlier run) need not be read again.
    waiting = read_records(root, skip={Path(k).name for k in known})
    progress = True
    while waiting and progress:
        progress = False
        for record in list(waiting):
            if not all(known.get(s.path) == s.stamp for s in record.sources):
                continue
            waiting.remove(record)
            stamp = _stamp(root / record.merged)
            if stamp is None and record.merged_stamp is not None:
                stamp = list(record.merged_stamp)  # merged again since: only a link of a chain
            if stamp is None or (record.merged_stamp and stamp != list(record.merged_stamp)):
                continue  # gone, or rewritten since (then it is new data to the pipeline)
            known[record.merged] = adopted[record.merged] = stamp
            progress = True
    return adopted


def _stamp(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


# ----------------------------------------------------------------------------- compaction


@dataclass(slots=True)
class CompactionReport:
    """What ``compact_raw`` did (or would do, with ``dry_run``)."""

    dry_run: bool = False
    partitions: list[str] = field(default_factory=list)
    """Partitions (``date=YYYY-MM-DD``) compacted."""
    segments_before: int = 0
    """Segments in those partitions before."""
    segments_after: int = 0
    """Segments in those partitions after (with ``dry_run``: would be)."""
    merged_sources: int = 0
    merged_files: int = 0
    rows: int = 0
    """Rows rewritten into merged segments."""
    bytes_before: int = 0
    """Bytes of the segments merged away."""
    bytes_after: int | None = 0
    """Bytes of the merged segments (None with ``dry_run``)."""
    rolled_forward: int = 0
    """Merges a crash interrupted after the commit point, finished now."""
    rolled_back: int = 0
    """Merges a crash interrupted before the commit point, undone now."""
    records_pruned: int = 0
    unreadable: list[str] = field(default_factory=list)
    """Segments that could not be read (left in place for the pipeline's quarantine)."""
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values."""
        return asdict(self)


def compact_raw(
    raw_dir: str | Path,
    *,
    min_age_s: float = 3600.0,
    target_rows: int = 1_000_000,
    now: datetime | None = None,
    dry_run: bool = False,
    keep_records_s: float = DEFAULT_KEEP_RECORDS_S,
) -> CompactionReport:
    """Merge each partition's segments older than ``min_age_s`` (by mtime) into as few
    segments as possible of up to ``target_rows`` rows, sorted by ``ts``; only partitions with
    two or more such segments are touched. First finishes or undoes what a crashed compaction
    left, and prunes completed records older than ``keep_records_s``. Holds the purge lock."""
    if target_rows < 1:
        raise ValueError("target_rows must be at least 1")
    started = time.monotonic()
    raw = Path(raw_dir)
    clock = (now or datetime.now(UTC)).timestamp()
    report = CompactionReport(dry_run=dry_run, bytes_after=None if dry_run else 0)
    with purge_lock(raw), import_lock(raw):
        if not dry_run:
            recover_compactions(raw, now=now, keep_records_s=keep_records_s, report=report)
        unfinished = _unfinished_import_prefixes(raw)
        by_partition: dict[Path, list[Path]] = {}
        for segment in list_segments(raw):
            if not segment.name.startswith(unfinished):
                by_partition.setdefault(segment.parent, []).append(segment)
        for folder, segments in sorted(by_partition.items()):
            batches = _plan(segments, clock - min_age_s, target_rows)
            done = [m for b in batches if (m := b if dry_run else _merge(raw, folder, b, report))]
            if not done:
                continue
            report.partitions.append(folder.name)
            report.segments_before += len(segments)
            report.segments_after += len(segments) - sum(len(m) - 1 for m in done)
            report.merged_files += len(done)
            for merged in done:
                report.merged_sources += len(merged)
                report.rows += sum(s.rows for s in merged)
                report.bytes_before += sum(s.size for s in merged)
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _unfinished_import_prefixes(raw: Path) -> tuple[str, ...]:
    """Name prefixes of the segments of every import recorded as started, never finished.

    With the import lock held, such an import was killed; the next ``import-log`` finds its
    segments by these names and removes them before importing the file again. Merged into
    another segment, they would escape that and their lines would be imported twice.
    """
    folder = RawLayout.at(raw).imports
    prefixes = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or data.get("status") != "started":
            continue
        fmt, import_id = data.get("format"), data.get("import_id")
        if isinstance(fmt, str) and isinstance(import_id, str):
            prefixes.append(f"import-{fmt}-{import_id}-")
    return tuple(prefixes)


@dataclass(frozen=True, slots=True)
class _Candidate:
    path: Path
    size: int
    mtime_ns: int
    rows: int


def _plan(segments: list[Path], cutoff: float, target_rows: int) -> list[list[_Candidate]]:
    """Batches of two or more old segments, each of at most ``target_rows`` rows, in mtime
    order (so merged files hold roughly consecutive time ranges)."""
    eligible = []
    for path in segments:
        try:
            stat = path.stat()
            if stat.st_mtime >= cutoff:
                continue  # young: a live writer may still be about to add its neighbours
            rows = pq.read_metadata(path).num_rows
        except (OSError, pa.ArrowException):
            continue  # vanished, or damaged: left for the pipeline's quarantine
        eligible.append(_Candidate(path, stat.st_size, stat.st_mtime_ns, rows))
    if len(eligible) < 2:
        return []
    eligible.sort(key=lambda c: (c.mtime_ns, c.path.name))
    batches: list[list[_Candidate]] = [[]]
    rows = 0
    for candidate in eligible:
        if batches[-1] and rows + candidate.rows > target_rows:
            batches.append([])
            rows = 0
        batches[-1].append(candidate)
        rows += candidate.rows
    return [b for b in batches if len(b) >= 2]


def _merge(
    raw: Path, folder: Path, batch: list[_Candidate], report: CompactionReport
) -> list[_Candidate]:
    """Steps (a)-(d) for one merged file; returns the sources merged (those of ``batch``
    that could be read: a damaged one is left for the pipeline's quarantine)."""
    # Decoding runs in Arrow, outside the GIL: two files at a time use both cores.
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        read = list(pool.map(_read_source, [c.path for c in batch]))
    tables = {c.path: t for c, t in zip(batch, read, strict=True) if t is not None}
    report.unreadable += [str(c.path.relative_to(raw)) for c in batch if c.path not in tables]
    batch = [c for c in batch if c.path in tables and tables[c.path].num_rows == c.rows]
    if len(batch) < 2:
        return []
    merged_path = folder / _segment_name("compact")
    record = CompactionRecord(
        merged=str(merged_path.relative_to(raw)),
        sources=tuple(
            Source(str(c.path.relative_to(raw)), c.size, c.mtime_ns, c.rows) for c in batch
        ),
        created_at=time.time(),
    )
    record_path = _pending_path(raw, record.merged)
    _write_record(record_path, record)
    fault_point("record")

    try:
        _write_merged(merged_path, [tables[c.path] for c in batch])
    except BaseException:
        record_path.unlink(missing_ok=True)  # before the commit point: nothing to undo
        raise
    _fsync_dir(folder)
    if pq.read_metadata(merged_path).num_rows != sum(c.rows for c in batch):
        # Never delete a source on a short write: undo instead (the sources stay).
        merged_path.unlink()
        record_path.unlink()
        raise OSError(f"merged segment {merged_path} is short; compaction undone")
    fault_point("merged")

    _delete_sources(raw, record)
    fault_point("sources")
    report.bytes_after = (report.bytes_after or 0) + _complete(raw, record)
    return batch


def _read_source(path: Path) -> pa.Table | None:
    """A source's rows in the contract's schema; None if it cannot be read."""
    try:
        # ParquetFile: far less overhead per small file than the dataset-based read_table.
        table = pq.ParquetFile(path).read(use_threads=False)
        return table.select(RAW_EVENT_SCHEMA.names).cast(RAW_EVENT_SCHEMA)
    except (OSError, pa.ArrowException, KeyError, ValueError):
        return None


def _write_merged(merged_path: Path, sources: list[pa.Table]) -> None:
    """Step (b): the sources' rows sorted by ``ts`` into one file, renamed into place."""
    table = pa.concat_tables(sources)
    # Sorted a row group at a time: peak memory is the sources plus one group, not twice
    # the sources (a stable sort: equal timestamps keep their order).
    order = pc.sort_indices(table, sort_keys=[("ts", "ascending")])

    def write(handle: BinaryIO) -> None:
        with pq.ParquetWriter(handle, RAW_EVENT_SCHEMA, compression="zstd") as writer:
            for offset in range(0, len(order), ROW_GROUP_ROWS):
                writer.write_table(table.take(order.slice(offset, ROW_GROUP_ROWS)))

    replace_atomically(merged_path, write)


def _delete_sources(raw: Path, record: CompactionRecord) -> None:
    # Exclusive: a pipeline run that listed these sources before the merged file appeared
    # finishes reading them first.
    with segment_readers_lock(raw, exclusive=True):
        for index, source in enumerate(record.sources, start=1):
            (raw / source.path).unlink(missing_ok=True)
            fault_point(f"source-{index}")
        folders = {(raw / s.path).parent for s in record.sources}
        for folder in folders:
            _fsync_dir(folder)


def _complete(raw: Path, record: CompactionRecord) -> int:
    """Step (d): the completed record replaces the pending one (kept for the pipeline)."""
    stamp = _stamp(raw / record.merged)
    done = CompactionRecord(
        merged=record.merged,
        sources=record.sources,
        created_at=record.created_at,
        completed_at=time.time(),
        merged_stamp=(stamp[0], stamp[1]) if stamp else None,
    )
    _write_record(_done_path(raw, record.merged), done)
    fault_point("completed")
    _pending_path(raw, record.merged).unlink(missing_ok=True)
    return stamp[0] if stamp else 0


def recover_compactions(
    raw_dir: str | Path,
    *,
    now: datetime | None = None,
    keep_records_s: float = DEFAULT_KEEP_RECORDS_S,
    report: CompactionReport | None = None,
) -> CompactionReport:
    """Roll forward (delete the leftover sources) or back (remove the record) what a crashed
    compaction left, and prune completed records older than ``keep_records_s``.

    The caller holds the purge lock (``compact_raw`` does; ``purge`` may call this first, so
    that the hidden leftover sources of a crashed merge are not kept until the next
    compaction). Counts go into ``report`` (a new one by default), which is returned.
    """
    raw = Path(raw_dir)
    report = report if report is not None else CompactionReport()
    clock = (now or datetime.now(UTC)).timestamp()
    folder = RawLayout.at(raw).compactions
    if not folder.is_dir():
        return report
    for tmp in folder.rglob(f"*{TEMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)  # a record never renamed: its step never happened
    for record in read_records(raw, pending_only=True):
        merged = raw / record.merged
        if _done_path(raw, record.merged).is_file():
            _pending_path(raw, record.merged).unlink(missing_ok=True)  # killed in step (d)
        elif merged.is_file():
            _delete_sources(raw, record)
            _complete(raw, record)
            report.rolled_forward += 1
        else:
            merged.with_name(merged.name + TEMP_SUFFIX).unlink(missing_ok=True)
            _pending_path(raw, record.merged).unlink(missing_ok=True)
            report.rolled_back += 1
    done = folder / "done"
    for path in sorted(done.glob("*.json")) if done.is_dir() else ():
        completed = _load(path)
        if completed is None or completed.completed_at is None:
            continue
        if clock - completed.completed_at > keep_records_s:
            path.unlink(missing_ok=True)
            report.records_pruned += 1
    return report


def _write_record(path: Path, record: CompactionRecord) -> None:
    text = record.as_json().encode()
    replace_atomically(path, lambda handle: handle.write(text))
    _fsync_dir(path.parent)  # the record is on disk before the merged file can be


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

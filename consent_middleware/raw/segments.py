"""Immutable segment files of raw events, each finished by an atomic rename."""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from consent_middleware.raw.layout import SEGMENT_SUFFIX, TEMP_SUFFIX, RawLayout
from consent_middleware.raw.schema import RAW_EVENT_SCHEMA

_sequence = itertools.count()
_HOST = "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:32] or "host"


def events_to_table(events: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Build an Arrow table in the raw-event schema from event mappings.

    Missing optional fields become null; unknown keys are ignored (they never reach RAW).
    """
    columns = {name: [event.get(name) for event in events] for name in RAW_EVENT_SCHEMA.names}
    return pa.Table.from_pydict(columns, schema=RAW_EVENT_SCHEMA)


def _segment_name(prefix: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in prefix)[:40] or "seg"
    return f"{safe}-{_HOST}-{os.getpid()}-{time.time_ns()}-{next(_sequence)}{SEGMENT_SUFFIX}"


def replace_atomically(
    final: Path, write: Callable[[BinaryIO], object], *, tmp: Path | None = None
) -> Path:
    """Create or replace ``final`` with what ``write`` puts into a temporary file.

    The temporary file (default: ``final`` + ``.tmp``, which no reader picks up) lives in
    the same folder; it is fsynced, then renamed over ``final`` with ``os.replace``, and
    removed if anything fails, so readers see the whole old file or the whole new one.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp or final.with_name(final.name + TEMP_SUFFIX)
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def write_atomic(table: pa.Table, final: Path, *, compression: str = "zstd") -> Path:
    """Write ``table`` as Parquet to ``final`` atomically (see :func:`replace_atomically`).

    ``compression`` is a Parquet codec name (``"zstd"``, ``"snappy"``, ``"none"``).
    """
    return replace_atomically(
        final, lambda handle: pq.write_table(table, handle, compression=compression)
    )


def write_segment(
    raw_dir: str | Path,
    events: pa.Table | Sequence[Mapping[str, Any]],
    *,
    prefix: str = "events",
    compression: str = "zstd",
) -> list[Path]:
    """Write raw events as new immutable segments, one per UTC date they fall on.

    ``events`` is an Arrow table in :data:`RAW_EVENT_SCHEMA` or a sequence of mappings
    with those fields. Returns the paths of the finished segment files. ``compression``
    is the Parquet codec (see :func:`write_atomic`).
    """
    table = events if isinstance(events, pa.Table) else events_to_table(events)
    table = table.select(RAW_EVENT_SCHEMA.names).cast(RAW_EVENT_SCHEMA)
    if table.num_rows == 0:
        return []
    layout = RawLayout.at(raw_dir)
    days = pc.cast(table["ts"], pa.date32())
    parts: list[tuple[pa.Table, Path]] = []
    for day in pc.unique(days).to_pylist():
        assert isinstance(day, date)
        part = table.filter(pc.equal(days, pa.scalar(day, pa.date32())))
        parts.append((part, layout.events_for(day) / _segment_name(prefix)))
    if len(parts) == 1:
        return [write_atomic(*parts[0], compression=compression)]
    # Several days (an import's batch): Parquet encoding and fsync release the GIL, so the
    # files are written side by side, one per core (at most 4: each holds its part's pages).
    workers = min(len(parts), os.cpu_count() or 1, 4)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: write_atomic(*p, compression=compression), parts))


def list_segments(raw_dir: str | Path) -> list[Path]:
    """Every finished segment under ``events/``, oldest partition first.

    Segments a compaction merged into a segment also listed are left out (after a crash
    between writing the merged file and deleting them, both are on disk for a while).
    """
    # Here, not at the top: compaction builds on this module.
    from consent_middleware.raw.compaction import superseded_sources

    events = RawLayout.at(raw_dir).events
    if not events.is_dir():
        return []
    # Listed before the records are read: a merged file hides its sources only when it is
    # in this same listing (see ``superseded_sources``).
    found = sorted(events.glob(f"date=*/*{SEGMENT_SUFFIX}"))
    hidden = superseded_sources(raw_dir, found)
    return [p for p in found if str(p.relative_to(raw_dir)) not in hidden] if hidden else found


def stale_temporaries(raw_dir: str | Path, older_than_s: float = 3600.0) -> Iterable[Path]:
    """Temporary files left by a crashed writer, older than ``older_than_s`` seconds."""
    root = Path(raw_dir)
    cutoff = time.time() - older_than_s
    for tmp in root.rglob(f"*{TEMP_SUFFIX}"):
        try:
            if tmp.stat().st_mtime < cutoff:
                yield tmp
        except FileNotFoundError:
            continue

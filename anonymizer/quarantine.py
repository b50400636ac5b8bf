"""Segment checks and the RAW quarantine: a damaged segment never breaks or skews a run.

Before a run reads a segment it has not seen, :func:`check_segment` makes sure the file is a
whole Parquet file in the raw-event contract: not empty, Parquet magic at both ends, a footer
that decodes, every :data:`RAW_EVENT_SCHEMA` column with its type, every row group decoding,
no null in a required column, and every ``ts`` on the UTC date its ``date=`` folder names
(segments are split by UTC date, so a row elsewhere is a corrupted timestamp). The full read
decodes every page of every column; string columns are read as dictionary arrays (their
pages decode just the same, without materialising each value) and each batch is then fully
validated, which also bounds-checks the dictionary indices a dense read would have resolved.
A run checks two new segments at a time: about 0.1 s per million events on two cores.

A segment that fails is moved by :func:`quarantine` to
``RAW/quarantine/<reason>/date=YYYY-MM-DD/<name>`` with a JSON note beside it (what failed,
when, where it was); nothing it holds is published. The operator may inspect, repair and move
it back into ``events/``, where the next run picks it up as new.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from consent_middleware.raw.layout import RawLayout
from consent_middleware.raw.schema import RAW_EVENT_SCHEMA

MAGIC: Final = b"PAR1"
READ_BATCH_ROWS: Final = 65_536
"""Rows decoded at a time by the full check: memory stays flat whatever the segment size."""

REASONS: Final[dict[str, str]] = {
    "empty": "the file is empty",
    "not-parquet": "the file is not Parquet",
    "truncated": "the file is cut short (no Parquet footer)",
    "unreadable": "the Parquet data does not decode",
    "schema": "the columns do not match the raw-event schema",
    "misplaced": "the rows do not belong to the date folder the file is in",
    "invalid-rows": "required fields are missing",
    "link": "the segment is a symbolic link",
}
"""Quarantine reasons (the folder names under ``RAW/quarantine/``) and what they mean."""

_REQUIRED = tuple(f.name for f in RAW_EVENT_SCHEMA if not f.nullable)
_UNIQUE_PER_VISITOR = frozenset({"visitor_hash", "aid"})
_AS_DICTIONARY = tuple(
    f.name if pa.types.is_string(f.type) else f"{f.name}.list.element"
    for f in RAW_EVENT_SCHEMA
    if f.name not in _UNIQUE_PER_VISITOR
    and (
        pa.types.is_string(f.type)
        or (pa.types.is_list(f.type) and pa.types.is_string(f.type.value_type))
    )
)
"""String columns (and string list elements) decoded as dictionaries: about half the cost of
building one string per value, and the checks need no value itself. Not the ids: with one
value per visitor their pages fall back to plain encoding, which a dictionary read would
have to hash value by value."""


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a segment cannot be used."""

    reason: str
    """A key of :data:`REASONS`."""
    detail: str
    """One line naming what exactly failed."""


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A segment moved aside by a run (paths relative to RAW)."""

    segment: str
    moved_to: str
    reason: str
    detail: str

    def describe(self) -> str:
        """One line for the run's output."""
        return f"{self.segment} -> {self.moved_to} ({self.reason}: {self.detail})"


def partition_day(segment: Path) -> date | None:
    """The UTC date named by the segment's ``date=YYYY-MM-DD`` folder, if it names one."""
    try:
        return date.fromisoformat(segment.parent.name.removeprefix("date="))
    except ValueError:
        return None


def _one_line(exc: BaseException) -> str:
    # Decoder messages may quote the damaged bytes: keep the line printable.
    text = "".join(c if c.isprintable() else "?" for c in " ".join(str(exc).split()))
    return (text[:200] + "...") if len(text) > 200 else text or type(exc).__name__


def _check_schema(schema: pa.Schema) -> Problem | None:
    for expected in RAW_EVENT_SCHEMA:
        index = schema.get_field_index(expected.name)
        if index < 0:
            return Problem("schema", f"column {expected.name!r} is missing")
        found = schema.field(index).type
        if not found.equals(expected.type):
            return Problem(
                "schema", f"column {expected.name!r} is {found}, expected {expected.type}"
            )
    return None


@dataclass(frozen=True, slots=True)
class Span:
    """What the full check of a sound segment saw: its rows and first and last event time."""

    rows: int
    first: datetime | None
    """Earliest ``ts`` (UTC); None when the segment has no rows."""
    last: datetime | None
    """Latest ``ts`` (UTC); None when the segment has no rows."""


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _instant(microseconds: int) -> datetime:
    return _EPOCH + timedelta(microseconds=microseconds)


def _check_rows(batch: pa.RecordBatch, start: int, end: int) -> Problem | tuple[int, int] | None:
    """The batch's problem, else its ``ts`` bounds in microseconds (None for an empty batch).

    Times are compared as integers: making a timestamp scalar from a Python datetime would
    make pyarrow import pandas (a quarter of a second) just to check its type.
    """
    for name in _REQUIRED:
        nulls = batch.column(name).null_count
        if nulls:
            return Problem("invalid-rows", f"{nulls} row(s) without {name!r}")
    if not batch.num_rows:
        return None
    bounds = pc.min_max(batch.column("ts").cast(pa.int64())).as_py()
    low, high = bounds["min"], bounds["max"]
    if low < start or high >= end:
        return Problem(
            "misplaced",
            f"ts from {_instant(low).isoformat()} to {_instant(high).isoformat()} "
            f"is outside {_instant(start).date().isoformat()} (UTC)",
        )
    return low, high


def check_segment(path: Path) -> Problem | None:
    """None when ``path`` is a whole segment in the raw-event contract; else the problem.

    Never raises for anything wrong with the file itself.
    """
    checked = inspect_segment(path)
    return checked if isinstance(checked, Problem) else None


def inspect_segment(path: Path) -> Problem | Span:
    """:func:`check_segment`, returning what a sound segment holds instead of None.

    The span comes from the decoded rows, not from footer statistics, which no check covers.
    """
    if path.is_symlink():
        return Problem("link", f"points to {os.readlink(path)}")
    day = partition_day(path)
    if day is None:
        return Problem("misplaced", f"folder {path.parent.name!r} is not date=YYYY-MM-DD")
    try:
        size = path.stat().st_size
        if size == 0:
            return Problem("empty", "0 bytes")
        with open(path, "rb") as handle:
            head = handle.read(4)
            handle.seek(max(size - 4, 0))
            tail = handle.read(4)
    except OSError as exc:
        return Problem("unreadable", _one_line(exc))
    if head != MAGIC:
        return Problem("not-parquet", f"starts with {head!r}, not {MAGIC!r}")
    if size < 12 or tail != MAGIC:
        return Problem("truncated", f"{size} bytes, no footer at the end")
    try:
        problem = _check_schema(pq.ParquetFile(path).schema_arrow)
        if problem:
            return problem
        # Opened again (the footer only) to decode the strings as dictionaries.
        parquet = pq.ParquetFile(path, read_dictionary=list(_AS_DICTIONARY))
        start = (datetime.combine(day, time(), UTC) - _EPOCH) // timedelta(microseconds=1)
        end = start + 86_400_000_000
        rows = 0
        first: int | None = None
        last: int | None = None
        for batch in parquet.iter_batches(
            batch_size=READ_BATCH_ROWS, columns=list(RAW_EVENT_SCHEMA.names)
        ):
            rows += batch.num_rows
            batch.validate(full=True)  # dictionary indices in bounds, offsets, UTF-8
            checked = _check_rows(batch, start, end)
            if isinstance(checked, Problem):
                return checked
            if checked is not None:
                first = checked[0] if first is None else min(first, checked[0])
                last = checked[1] if last is None else max(last, checked[1])
        if rows != parquet.metadata.num_rows:
            return Problem("unreadable", f"{rows} of {parquet.metadata.num_rows} rows decode")
    except (OSError, pa.ArrowException, ValueError, IndexError, OverflowError) as exc:
        # Thrift and page decoding errors surface as any of these, depending on where the
        # damage is.
        return Problem("unreadable", _one_line(exc))
    if first is None or last is None:
        return Span(rows, None, None)
    return Span(rows, _instant(first), _instant(last))


def _free_name(folder: Path, name: str) -> Path:
    target = folder / name
    number = 1
    while target.exists() or target.is_symlink():
        target = folder / f"{name}.{number}"
        number += 1
    return target


def quarantine(raw_dir: Path, segment: Path, problem: Problem, *, now: datetime) -> Quarantined:
    """Move ``segment`` into ``RAW/quarantine/<reason>/<date folder>/`` with a JSON note."""
    folder = RawLayout.at(raw_dir).quarantine / problem.reason / segment.parent.name
    folder.mkdir(parents=True, exist_ok=True)
    target = _free_name(folder, segment.name)
    note = {
        "segment": str(segment.relative_to(raw_dir)),
        "reason": problem.reason,
        "meaning": REASONS[problem.reason],
        "detail": problem.detail,
        "quarantined_at": now.astimezone(UTC).isoformat(),
    }
    # The note first: a run killed between the two steps leaves a note and the segment
    # still in place, which the next run quarantines again (the note is then replaced).
    note_path = target.with_name(target.name + ".json")
    tmp = note_path.with_name(note_path.name + ".tmp")
    tmp.write_text(json.dumps(note, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, note_path)
    os.replace(segment, target)
    return Quarantined(
        str(segment.relative_to(raw_dir)),
        str(target.relative_to(raw_dir)),
        problem.reason,
        problem.detail,
    )

"""The consent ledger, parsed once: each stream's decisions cached as Parquet chunks.

The ledger is evidence of consent and is never purged, so it only grows, and each stream
(``ledger/<stream>.jsonl``, one per writer process) is only ever appended to. Parsing every
stream's JSON on every run would make each run cost the whole history of consent. Instead a
stream's decisions are parsed once into chunks under ``RAW/pipeline/ledger-v1/``:
``<stream>.<start>-<end>.<hash>.parquet`` holds the decisions (``ts``, ``granted``,
``refused``) found in bytes ``[start, end)`` of the stream; a run parses only the complete
lines appended after its last chunk.

- Lines are parsed exactly as before: unparsable lines, other actions and unreadable times
  are skipped. A line still being written (no newline yet) is left for the next run.
- ``hash`` is a digest of the bytes just before ``end``: a stream rewritten or replaced under
  the same name no longer matches it, and is parsed again from its start.
- Which decisions are *new* for a STATS folder is decided by that folder's run state: the
  bytes of each stream it has already counted (:attr:`LedgerUpdate.offsets` of its last
  run). A chunk ending past them holds new decisions; one that straddles them counts as new
  as a whole, so at worst a day is recomputed and publishes the same figures again.
- Chunks are a cache of RAW, kept in RAW: a lost or damaged one is parsed again. A run adds
  at most one chunk per stream; once every STATS folder's state has counted past a run of
  small chunks, :func:`merge` writes them as one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from anonymizer.engines.views import ledger_records_sql, sql_string
from consent_middleware.raw.layout import TEMP_SUFFIX

CACHE_FOLDER: Final = "ledger-v1"
"""Under ``RAW/pipeline/``; a new name whenever what a chunk holds changes (columns, the
decision filter), so that chunks of another version are never read."""

MERGE_AT: Final = 8
"""Chunks of one stream that every state has counted are merged once there are this many."""

MERGE_ANYWAY_AT: Final = 64
"""A stream's chunks are all merged once there are this many, counted by every state or not."""

_HASHED_BYTES: Final = 4096
_READ_BACK: Final = 1 << 16
_MAX_LAST_LINE: Final = 1 << 20
_NAME = re.compile(r"(?P<stream>.+)\.(?P<start>\d+)-(?P<end>\d+)\.(?P<hash>[0-9a-f]{16})\.parquet")


@dataclass(frozen=True, slots=True)
class Chunk:
    """One cached range of one stream."""

    path: Path
    stream: str
    start: int
    end: int
    digest: str


@dataclass(frozen=True, slots=True)
class LedgerUpdate:
    """What :func:`update` found: the chunks to read, and which of them are new."""

    chunks: list[Path]
    """Every chunk of every ledger stream, in stream order."""
    new: list[Path]
    """The chunks holding decisions past the state's offsets."""
    offsets: dict[str, int]
    """Stream file name -> bytes parsed: the state's offsets once this run is saved."""


def cache_dir(raw_dir: Path) -> Path:
    """Where the chunks of ``raw_dir``'s ledger live."""
    return raw_dir / "pipeline" / CACHE_FOLDER


def update(
    raw_dir: Path,
    files: Sequence[Path],
    counted: Mapping[str, int],
    actions: Collection[str],
    con: duckdb.DuckDBPyConnection,
) -> LedgerUpdate:
    """Parse what the ledger ``files`` gained since their last chunk (with ``con``, whose
    time zone must be UTC) and say which chunks hold decisions past ``counted`` (stream
    file name -> bytes a STATS folder has counted)."""
    folder = cache_dir(raw_dir)
    on_disk = _chunks_on_disk(folder)
    chunks: list[Path] = []
    new: list[Path] = []
    offsets: dict[str, int] = {}
    for file in files:
        stream = file.name
        chain = _chain(on_disk.get(stream, []))
        base = counted.get(stream, 0)
        if chain and not _still_holds(file, chain):
            for chunk in on_disk.get(stream, []):
                chunk.path.unlink(missing_ok=True)
            chain, base = [], 0  # rewritten: every decision in it counts as new
        parsed = _parse_tail(con, file, chain[-1].end if chain else 0, actions, folder)
        if parsed is not None:
            chain.append(parsed)
        chunks += [chunk.path for chunk in chain]
        new += [chunk.path for chunk in chain if chunk.end > base]
        offsets[stream] = chain[-1].end if chain else 0
    return LedgerUpdate(chunks, new, offsets)


def merge(
    raw_dir: Path,
    streams: Collection[str],
    counted: Mapping[str, int],
    con: duckdb.DuckDBPyConnection,
) -> int:
    """Tidy the cache after a run: remove chunks of streams no longer in ``streams`` and
    chunks a merge superseded, and merge the chunks of a stream that end within
    ``counted`` (the smallest offset any STATS folder's state has for it) once there are
    :data:`MERGE_AT` of them (all of its chunks once there are :data:`MERGE_ANYWAY_AT`).
    Returns the number of chunk files removed."""
    removed = 0
    for stream, found in _chunks_on_disk(cache_dir(raw_dir)).items():
        chain = _chain(found) if stream in streams else []
        for chunk in found:
            if chunk not in chain:
                chunk.path.unlink(missing_ok=True)
                removed += 1
        done = [chunk for chunk in chain if chunk.end <= counted.get(stream, 0)]
        if len(done) < MERGE_AT and len(chain) >= MERGE_ANYWAY_AT:
            # A STATS folder no longer run holds the floor back: merged all the same. Its
            # next run, if any, takes the merged chunk as new and recomputes every non-final
            # day it names: more work, the same figures.
            done = chain
        if len(done) < MERGE_AT:
            continue
        last = done[-1]
        sources = ", ".join(sql_string(str(chunk.path)) for chunk in done)
        merged = _path(last.path.parent, stream, 0, last.end, last.digest)
        _copy_to(con, f"SELECT ts, granted, refused FROM read_parquet([{sources}])", merged)
        for chunk in done:  # only now: until here the chain still ran through them
            chunk.path.unlink(missing_ok=True)
            removed += 1
    return removed


# ----------------------------------------------------------------------------- chunks


def _path(folder: Path, stream: str, start: int, end: int, digest: str) -> Path:
    return folder / f"{stream}.{start}-{end}.{digest}.parquet"


def _chunks_on_disk(folder: Path) -> dict[str, list[Chunk]]:
    found: dict[str, list[Chunk]] = {}
    if not folder.is_dir():
        return found
    for path in folder.iterdir():
        match = _NAME.fullmatch(path.name)
        if match is None:
            continue
        chunk = Chunk(path, match["stream"], int(match["start"]), int(match["end"]), match["hash"])
        found.setdefault(chunk.stream, []).append(chunk)
    return found


def _chain(chunks: Sequence[Chunk]) -> list[Chunk]:
    """The chunks covering a stream from byte 0 without a gap, the longest at each step
    (after a merge that was interrupted, the merged chunk and the merged ones overlap)."""
    by_start: dict[int, Chunk] = {}
    for chunk in chunks:
        if chunk.end > chunk.start and (
            chunk.start not in by_start or chunk.end > by_start[chunk.start].end
        ):
            by_start[chunk.start] = chunk
    chain: list[Chunk] = []
    position = 0
    while position in by_start:
        chain.append(by_start[position])
        position = by_start[position].end
    return chain


def _digest(file: Path, end: int) -> str:
    """A digest of the bytes of ``file`` just before ``end``."""
    low = max(end - _HASHED_BYTES, 0)
    with open(file, "rb") as source:
        source.seek(low)
        return hashlib.sha256(source.read(end - low)).hexdigest()[:16]


def _still_holds(file: Path, chain: Sequence[Chunk]) -> bool:
    """Whether ``file`` still has the bytes ``chain`` was parsed from (checked on the bytes
    just before its end), and every chunk of it can still be read."""
    try:
        last = chain[-1]
        if file.stat().st_size < last.end or _digest(file, last.end) != last.digest:
            return False
        for chunk in chain:
            pq.read_metadata(chunk.path)
    except (OSError, pa.ArrowException):
        return False
    return True


def _complete_end(file: Path, start: int, size: int) -> int:
    """Where the complete lines of bytes ``[start, size)`` of ``file`` end (``start`` when
    there are none).

    A line ends at a newline. The last line may lack one: it is complete when it is a
    whole JSON object (the writer puts a record and its newline in one write, so a line cut
    short is never one); otherwise it is still being written and waits for the next run.
    """
    with open(file, "rb") as source:
        position = size
        while position > start:
            low = max(position - _READ_BACK, start)
            source.seek(low)
            found = source.read(position - low).rfind(b"\n")
            if found >= 0:
                position = low + found + 1
                break
            position = low
        if position < size and size - position <= _MAX_LAST_LINE:
            source.seek(position)
            try:
                if isinstance(json.loads(source.read(size - position)), dict):
                    return size
            except ValueError:  # also UnicodeDecodeError
                pass
    return position


def _parse_tail(
    con: duckdb.DuckDBPyConnection,
    file: Path,
    start: int,
    actions: Collection[str],
    folder: Path,
) -> Chunk | None:
    """Parse the complete lines of ``file`` after byte ``start`` into a new chunk."""
    size = file.stat().st_size
    end = _complete_end(file, start, size)
    if end <= start:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    digest = _digest(file, end)
    chunk = Chunk(_path(folder, file.name, start, end, digest), file.name, start, end, digest)
    if start == 0 and end == size:
        # The whole file, read in place; valid only if nothing was appended meanwhile.
        _copy_records(con, file, actions, chunk.path)
        if file.stat().st_size == size:
            return chunk
    # Exactly [start, end): copied, so that lines appended meanwhile wait for the next run
    # instead of being counted now and again then.
    copy = folder / f".{file.name}.{start}-{end}.jsonl{TEMP_SUFFIX}"
    try:
        with open(file, "rb") as source, open(copy, "wb") as target:
            source.seek(start)
            target.write(source.read(end - start))
        _copy_records(con, copy, actions, chunk.path)
    finally:
        copy.unlink(missing_ok=True)
    return chunk


def _copy_records(
    con: duckdb.DuckDBPyConnection, file: Path, actions: Collection[str], target: Path
) -> None:
    """Write the decisions of the ledger lines in ``file`` to ``target`` (atomically):
    DuckDB parses and writes in parallel, without a round trip through Python."""
    scan = (
        f"read_json({sql_string(str(file))}, format = 'newline_delimited',"
        "  ignore_errors = true, columns = {ts: 'VARCHAR',"
        "  action: 'VARCHAR', granted: 'VARCHAR[]', refused: 'VARCHAR[]'})"
    )
    _copy_to(con, ledger_records_sql(scan, actions), target)


def _copy_to(con: duckdb.DuckDBPyConnection, query: str, target: Path) -> None:
    """Write the rows of ``query`` to the Parquet file ``target``, atomically (fsynced,
    then renamed over it). Not :func:`~consent_middleware.raw.segments.replace_atomically`:
    DuckDB writes the file by its path, not through a handle that function could fsync."""
    tmp = target.with_name(target.name + TEMP_SUFFIX)
    try:
        con.execute(f"COPY ({query}) TO {sql_string(str(tmp))} (FORMAT parquet)")
        descriptor = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)

"""Import history: which bytes of which log were imported, so no line is imported twice.

``RAW/imports/<id>.json`` holds one record per imported file. A file is known by its
*identity*, the SHA-256 of its first 64 KiB once decompressed (a gzip-rotated copy of a
plain log is the same file; its name is kept for display only). A record says how many
decompressed bytes the import consumed and the SHA-256 of exactly those bytes, computed
while the blocks were read. A later import of a file with the same identity reads and
hashes the file's prefix up to each earlier record's end; where the running hash matches,
those bytes (and their lines) were imported already and only the rest is parsed. A file
whose head differs (another log, or one rewritten by logrotate ``copytruncate``) has
another identity and is imported whole. Nothing of the log lines is stored but hashes.

Crash safety. Before its first segment, a file's import writes its record with status
``started``; its segments carry the record's id in their names
(``import-<format>-<id>-...``); the record is rewritten ``finished`` after the last
segment. An import killed in between leaves a ``started`` record: the next import (which
holds the same lock, so the killed one is surely dead) removes that import's segments,
which hold only lines of that file from that import, then drops the record, so the file
is imported again from its last *finished* record. Segments are whole files (atomic
rename) and the record is rewritten atomically, so every kill point leaves either the
old state or a ``started`` record whose segments can all be found.

The record is written lazily, just before the file's first segment: a file that brings
no event (all lines already imported, rejected or blank) never needs undoing, and one
whose new lines were all rejected is recorded finished directly.

Limits. Matching is by prefix only: a copy that holds *less* than an earlier import read
(a truncated or damaged gzip) does not match and is imported whole. The prefix of each
known record is checked as the file is read, once; only when a longer record fails after
a shorter one matched is the matching prefix read a second time. A last line without its
newline counts as consumed: if the server later completes it, its tail comes in as a
line of its own (and is most likely rejected). Whatever rewrites segments (compaction)
must leave those of a ``started`` import alone (``import-<format>-<id>-*`` while
``imports/<id>.json`` says ``started``), or a crash could no longer be undone.

Concurrency. Every import holds an exclusive ``flock`` on ``RAW/imports/import.lock``
for its whole duration: a second import of the same file waits, then finds the first
one's record and skips what it imported.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import secrets
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from anonymizer.importers.lines import read_head
from anonymizer.importers.report import AlreadyImported
from anonymizer.journal import fault_point
from consent_middleware.raw.layout import IMPORT_LOCK, SEGMENT_SUFFIX, RawLayout
from consent_middleware.raw.locks import import_lock as import_lock  # the importer takes it here
from consent_middleware.raw.segments import replace_atomically

IDENTITY_BYTES: Final = 64 * 1024
"""How much of a file's decompressed head names it."""

LOCK_NAME: Final = IMPORT_LOCK
"""The lock file in ``RAW/imports/`` held by every running import."""

RECORD_SUFFIX: Final = ".json"

STARTED: Final = "started"
FINISHED: Final = "finished"

_COUNT_FIELDS: Final = frozenset(
    {
        "identity_bytes",
        "skipped_bytes",
        "skipped_lines",
        "consumed",
        "lines",
        "imported",
        "rejected",
        "blank",
    }
)
_NAME: Final = re.compile(r"[0-9a-z]+-[0-9a-z-]+", re.ASCII)
_SKIP_READ: Final = 1 << 22
_STREAM_ERRORS: Final = (EOFError, gzip.BadGzipFile, zlib.error)


def now_iso() -> str:
    """The current UTC time, ISO-8601 to the microsecond (records sort by it)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def new_import_id() -> str:
    """A fresh import id: 16 hex digits (segment names keep 40 characters of prefix)."""
    return secrets.token_hex(8)


def identity_of(head: bytes) -> str:
    """The identity of a file whose decompressed content starts with ``head``."""
    return hashlib.sha256(head[:IDENTITY_BYTES]).hexdigest()


class ConsumedDigest:
    """SHA-256 and count of the decompressed bytes of one file read so far."""

    __slots__ = ("sha", "size")

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes | memoryview) -> None:
        """Add the next bytes read."""
        self.sha.update(data)
        self.size += len(data)

    def hexdigest(self) -> str:
        """The hash of everything read so far (the digest can still grow)."""
        return self.sha.hexdigest()


@dataclass(frozen=True, slots=True)
class ImportRecord:
    """What one import of one file did (``RAW/imports/<import_id>.json``).

    ``consumed`` and ``consumed_sha256`` cover the file's decompressed bytes from its
    start to the end of the last line this import read (``skipped_bytes`` of them were
    imported by earlier imports); ``lines`` counts the lines this import read, after the
    ``skipped_lines`` it did not read again. A ``started`` record has no counts yet.
    """

    import_id: str
    status: str
    identity: str
    identity_bytes: int
    format: str
    site_host: str
    file: str
    started_at: str
    finished_at: str | None = None
    skipped_bytes: int = 0
    skipped_lines: int = 0
    consumed: int = 0
    consumed_sha256: str = ""
    lines: int = 0
    imported: int = 0
    rejected: int = 0
    blank: int = 0

    @property
    def total_lines(self) -> int:
        """Lines of the file up to ``consumed``: the next line's number minus one."""
        return self.skipped_lines + self.lines

    @property
    def when(self) -> str:
        """The date (UTC) this import finished, or started."""
        return (self.finished_at or self.started_at)[:10]

    @classmethod
    def from_json(cls, data: Any) -> ImportRecord | None:
        """The record in a decoded JSON object, or None if it is not one."""
        if not isinstance(data, dict):
            return None
        values = {k: data[k] for k in cls.__slots__ if k in data}
        for name, value in values.items():
            if name in _COUNT_FIELDS:
                if type(value) is not int or value < 0:
                    return None
            elif not (isinstance(value, str) or (value is None and name == "finished_at")):
                return None
        try:
            record = cls(**values)
        except TypeError:  # a field missing: not a record of this version
            return None
        # The id and format name segment files: never a glob or path character in them.
        if record.status not in (STARTED, FINISHED) or not _NAME.fullmatch(
            record.import_id + "-" + record.format
        ):
            return None
        return record


def imports_dir(raw_dir: str | Path) -> Path:
    """``RAW/imports/``."""
    return RawLayout.at(raw_dir).imports


def write_record(raw_dir: str | Path, record: ImportRecord) -> Path:
    """Create or replace ``record``'s file atomically (temp file, fsync, rename)."""
    body = json.dumps(asdict(record), sort_keys=True).encode() + b"\n"
    final = imports_dir(raw_dir) / f"{record.import_id}{RECORD_SUFFIX}"
    return replace_atomically(final, lambda handle: handle.write(body))


def load_records(raw_dir: str | Path) -> list[ImportRecord]:
    """Every readable record, oldest first."""
    folder = imports_dir(raw_dir)
    if not folder.is_dir():
        return []
    records = []
    for path in folder.glob(f"*{RECORD_SUFFIX}"):
        try:
            record = ImportRecord.from_json(json.loads(path.read_bytes()))
        except (OSError, ValueError):
            continue  # only atomic renames create these: a stray file is not ours
        if record is not None and path.stem == record.import_id:
            records.append(record)
    return sorted(records, key=lambda r: (r.started_at, r.import_id))


def segments_of(raw_dir: str | Path, record: ImportRecord) -> list[Path]:
    """The segments one import wrote (named after its format and id)."""
    events = RawLayout.at(raw_dir).events
    pattern = f"date=*/import-{record.format}-{record.import_id}-*{SEGMENT_SUFFIX}"
    return sorted(events.glob(pattern)) if events.is_dir() else []


def discard(raw_dir: str | Path, record: ImportRecord) -> int:
    """Remove an unfinished import's segments, then its record; returns segments removed.

    Segments go first: a kill in between leaves the record, and the next call removes
    whatever is left.
    """
    segments = segments_of(raw_dir, record)
    for segment in segments:
        segment.unlink(missing_ok=True)
    (imports_dir(raw_dir) / f"{record.import_id}{RECORD_SUFFIX}").unlink(missing_ok=True)
    return len(segments)


def recover_unfinished(raw_dir: str | Path) -> list[ImportRecord]:
    """Undo every import that started and never finished; call with the lock held.

    Holding the lock, no other import is running, so a ``started`` record belongs to an
    import that was killed (or failed) midway.
    """
    dead = [r for r in load_records(raw_dir) if r.status == STARTED]
    for record in dead:
        discard(raw_dir, record)
    return dead


def candidates(records: Sequence[ImportRecord], head: bytes) -> list[ImportRecord]:
    """Finished records of a file starting with ``head``, by end offset (ascending).

    A record made when its file was shorter than 64 KiB has a shorter identity: it matches
    a file that has grown since if the file starts with those bytes.
    """
    heads: dict[int, str] = {}
    found = []
    for record in records:
        if record.status != FINISHED or record.consumed <= 0:
            continue
        if record.identity_bytes > len(head):
            continue
        size = record.identity_bytes
        if size not in heads:
            heads[size] = hashlib.sha256(head[:size]).hexdigest()
        if heads[size] == record.identity:
            found.append(record)
    return sorted(found, key=lambda r: (r.consumed, r.started_at))


def _read_exactly(stream: io.BufferedIOBase, size: int, digest: ConsumedDigest) -> bool:
    """Read and hash ``size`` bytes; False if the data ends (or breaks) before."""
    while size > 0:
        try:
            piece = stream.read(min(size, _SKIP_READ))
        except _STREAM_ERRORS:
            return False
        if not piece:
            return False
        digest.update(piece)
        size -= len(piece)
    return True


class Resume:
    """Where one file's import starts: after the longest already-imported prefix."""

    def __init__(self, known: Sequence[ImportRecord]) -> None:
        self.known = list(known)
        self.digest = ConsumedDigest()
        self.matched: ImportRecord | None = None
        self._target: ImportRecord | None = None
        self._retry = False

    @property
    def skipped_bytes(self) -> int:
        """Bytes of the file imported before, not parsed again."""
        return 0 if self.matched is None else self.matched.consumed

    @property
    def skipped_lines(self) -> int:
        """Lines of the file imported before, not parsed again."""
        return 0 if self.matched is None else self.matched.total_lines

    def skip(self, stream: io.BufferedIOBase) -> bool:
        """Read and hash the already-imported prefix of a freshly opened ``stream``.

        Reads up to each candidate's end in turn, comparing the running hash there. True:
        the stream now stands right after the longest matching prefix (or at the start).
        False, only when a longer candidate failed after a shorter one matched: open the
        file again and call once more, which skips exactly the match (the only case
        that reads part of a file twice).
        """
        if self._retry:
            self._retry = False
            target = self._target
            if target is None:
                return True
            read = _read_exactly(stream, target.consumed, self.digest)
            if read and self.digest.hexdigest() == target.consumed_sha256:
                self.matched = target
                return True
            raise PrefixChanged("the file changed while it was being read")
        for record in self.known:
            if not _read_exactly(stream, record.consumed - self.digest.size, self.digest):
                break
            if self.digest.hexdigest() == record.consumed_sha256:
                self.matched = record
        if self.digest.size == self.skipped_bytes:
            return True
        self._target, self._retry = self.matched, True
        self.matched = None
        self.digest = ConsumedDigest()
        return False


class PrefixChanged(Exception):
    """Raised by :meth:`Resume.skip` when a prefix read twice differs the second time."""


class FileImport:
    """One file's import and its record in the import history (see :mod:`.history`)."""

    def __init__(
        self, raw_dir: str | Path, path: Path, fmt: str, site_host: str, known: list[ImportRecord]
    ) -> None:
        self.raw_dir = raw_dir
        head = read_head(path, IDENTITY_BYTES)
        self.resume = Resume(candidates(known, head))
        self.record = ImportRecord(
            import_id=new_import_id(),
            status=STARTED,
            identity=identity_of(head),
            identity_bytes=len(head),
            format=fmt,
            site_host=site_host,
            file=str(path),
            started_at=now_iso(),
        )
        self.started = False

    @property
    def prefix(self) -> str:
        """Name prefix of this import's segments: they can be found from the record."""
        return f"import-{self.record.format}-{self.record.import_id}"

    def start(self) -> None:
        """Record the import as started before its first segment is written."""
        if self.started:
            return
        self.record = replace(
            self.record,
            skipped_bytes=self.resume.skipped_bytes,
            skipped_lines=self.resume.skipped_lines,
        )
        write_record(self.raw_dir, self.record)
        self.started = True
        fault_point("import-started")

    def finish(self, lines: int, imported: int, rejected: int, blank: int) -> ImportRecord | None:
        """Record the import as finished (None: nothing new was read, nothing to record)."""
        digest = self.resume.digest
        if digest.size <= self.resume.skipped_bytes:
            return None
        self.record = replace(
            self.record,
            status=FINISHED,
            finished_at=now_iso(),
            skipped_bytes=self.resume.skipped_bytes,
            skipped_lines=self.resume.skipped_lines,
            consumed=digest.size,
            consumed_sha256=digest.hexdigest(),
            lines=lines,
            imported=imported,
            rejected=rejected,
            blank=blank,
        )
        write_record(self.raw_dir, self.record)
        return self.record

    def already_imported(self, new_lines: int, imported: int) -> AlreadyImported | None:
        """The report entry of a file read from past its start (None: read whole)."""
        matched = self.resume.matched
        if matched is None:
            return None
        return AlreadyImported(
            self.record.file, matched.total_lines, matched.when, new_lines, imported
        )

    def abandon(self) -> None:
        """Undo a failed import's segments, so nothing of it stays half-imported."""
        if self.started:
            discard(self.raw_dir, self.record)

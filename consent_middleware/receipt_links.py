"""Receipt links: which anonymous ids were issued under which receipt id.

A visitor who writes by post quotes only the receipt id shown in the banner's settings;
raw events carry the anonymous id, never the receipt. Each time a decision issues a new
anonymous id, the middleware appends one line to ``links/YYYY-MM-DD-<host>-<pid>.jsonl``::

    {"aid_sha256": "...", "receipt_sha256": "...", "ts": "2026-11-26T01:02:03+00:00"}

Both ids are stored only as SHA-256 digests: the link lets the operator go from a quoted
receipt to the events of its anonymous ids (``consent-admin export|erase --receipt``),
and nothing else. A file is appended to only on its own UTC day by its own process; the
purge rewrites files of finished days only (:func:`prune_links`), never one being written.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from consent_middleware.raw.layout import RawLayout
from consent_middleware.raw.segments import replace_atomically
from consent_middleware.tombstones import digest

LINK_SUFFIX = ".jsonl"
GRACE = timedelta(hours=1)
"""A day's link files are left alone this long after the day ends (appends in flight)."""

_HOST = "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:32] or "host"


def links_folder(raw_dir: str | Path) -> Path:
    """Where the receipt links of a RAW store live."""
    return RawLayout.at(raw_dir).links


def add_link(raw_dir: str | Path, receipt_id: str, aid: str, now: datetime | None = None) -> None:
    """Record that ``aid`` was issued under ``receipt_id`` (one fsynced append)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    folder = links_folder(raw_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{now.date().isoformat()}-{_HOST}-{os.getpid()}{LINK_SUFFIX}"
    line = json.dumps(
        {
            "aid_sha256": digest(aid),
            "receipt_sha256": digest(receipt_id),
            "ts": now.isoformat(timespec="seconds"),
        },
        sort_keys=True,
    )
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode() + b"\n")  # one short write: appended whole or not at all
        os.fsync(fd)
    finally:
        os.close(fd)


def _files(raw_dir: str | Path) -> list[Path]:
    folder = links_folder(raw_dir)
    return sorted(folder.glob(f"*{LINK_SUFFIX}")) if folder.is_dir() else []


def _records(path: Path) -> Iterator[dict[str, Any]]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    for raw in data.split(b"\n"):
        try:
            record = json.loads(raw)
        except ValueError:  # an empty or torn line
            continue
        if isinstance(record, dict):
            yield record


def all_links(raw_dir: str | Path) -> Iterator[dict[str, Any]]:
    """Every readable link record of the RAW store."""
    for path in _files(raw_dir):
        yield from _records(path)


def linked_aids(raw_dir: str | Path, receipt_id: str) -> set[str]:
    """``aid_sha256`` of every anonymous id issued under ``receipt_id``."""
    wanted = digest(receipt_id)
    return {
        str(r["aid_sha256"])
        for path in _files(raw_dir)
        for r in _records(path)
        if r.get("receipt_sha256") == wanted and isinstance(r.get("aid_sha256"), str)
    }


def _write_all(handle: BinaryIO, *, data: bytes) -> None:
    handle.write(data)


def _file_day(path: Path) -> date | None:
    try:
        return date.fromisoformat(path.name[:10])
    except ValueError:
        return None


def prune_links(
    raw_dir: str | Path,
    drop: Callable[[dict[str, Any]], bool],
    *,
    now: datetime,
    dry_run: bool = False,
) -> int:
    """Rewrite the link files of finished days without the lines ``drop`` selects; a file
    left empty is deleted. Each file is replaced atomically. Returns the lines removed."""
    removed = 0
    for path in _files(raw_dir):
        day = _file_day(path)
        if day is None:
            continue
        end = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
        if now < end + GRACE:
            continue  # its writer may still append
        records = list(_records(path))
        kept = [r for r in records if not drop(r)]
        if len(kept) == len(records):
            continue
        removed += len(records) - len(kept)
        if dry_run:
            continue
        if not kept:
            path.unlink(missing_ok=True)
            continue
        data = b"".join(json.dumps(r, sort_keys=True).encode() + b"\n" for r in kept)
        replace_atomically(path, partial(_write_all, data=data))
    return removed

"""Erasure tombstones: the durable "this anonymous id is erased" mark (design section 6).

A tombstone is ``tombstones/<aid_sha256>.json``, a JSON object with ``aid_sha256`` (hex
SHA-256 of the anonymous id's UTF-8 bytes; the plain id is never stored), ``ts``
(ISO-8601 UTC), ``request_id`` and ``receipt_sha256``. It is written at once when a
visitor asks for erasure; from then on the pipeline skips the id, the middleware never
records under it again (:class:`ErasedIds`), and the next purge removes its raw events.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from consent_middleware.raw.layout import RawLayout
from consent_middleware.raw.segments import replace_atomically

REFRESH_SECONDS = 1.0
"""How often :class:`ErasedIds` looks for tombstones written by other processes."""

_VERDICTS = 4096  # answers remembered per process (bounded)
_RACY_NS = 2_000_000_000  # a folder modified less than 2 s ago may change again unseen


def digest(value: str) -> str:
    """Hex SHA-256 of ``value``'s UTF-8 bytes: how anonymous and receipt ids are referred to."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _is_digest(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) == 64
        and all(c in "0123456789abcdef" for c in value.lower())
    )


def write_tombstone(
    raw_dir: str | Path,
    aid_sha256: str,
    *,
    request_id: str,
    receipt_sha256: str | None,
    now: datetime | None = None,
) -> Path:
    """Write the tombstone of one anonymous id (atomically); an existing one is kept, so the
    first erasure's time and request stay on record. Returns its path."""
    if not _is_digest(aid_sha256):
        raise ValueError("aid_sha256 must be a 64-character hex SHA-256 digest")
    folder = RawLayout.at(raw_dir).tombstones
    final = folder / f"{aid_sha256.lower()}.json"
    if final.exists():
        return final
    record = {
        "aid_sha256": aid_sha256.lower(),
        "ts": (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds"),
        "request_id": request_id,
        "receipt_sha256": receipt_sha256,
    }
    data = json.dumps(record, sort_keys=True).encode() + b"\n"
    tmp = folder / f".{aid_sha256[:16]}.{os.getpid()}.{threading.get_ident()}.tmp"
    return replace_atomically(final, lambda handle: handle.write(data), tmp=tmp)


def read_tombstones(raw_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Every readable tombstone, by ``aid_sha256`` (unreadable files are skipped)."""
    folder = RawLayout.at(raw_dir).tombstones
    found: dict[str, dict[str, Any]] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and _is_digest(record.get("aid_sha256")):
            found[str(record["aid_sha256"]).lower()] = record
    return found


class ErasedIds:
    """The set of erased anonymous ids of one RAW store, as the request path sees it.

    :meth:`contains` is a set lookup plus a clock read; every ``refresh_seconds`` it also
    checks the tombstone folder's modification time and reloads only when it changed, so
    erasures made by other worker processes take effect within that interval. Erasures
    made in this process (:meth:`add`) take effect at once.
    """

    def __init__(
        self,
        raw_dir: str | Path,
        *,
        refresh_seconds: float = REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._folder = RawLayout.at(raw_dir).tombstones
        self._raw_dir = Path(raw_dir)
        self._refresh = refresh_seconds
        self._clock = clock
        self._hashes: frozenset[str] = frozenset()
        self._verdicts: dict[str, bool] = {}  # recent answers by plain aid: no hash per request
        self._local: set[str] = set()
        self._stamp: int | None = None
        self._next_check = 0.0
        self._lock = threading.Lock()
        self._reload()

    @property
    def count(self) -> int:
        """How many anonymous ids are known to be erased."""
        return len(self._hashes)

    def _reload(self) -> None:
        try:
            stamp: int | None = self._folder.stat().st_mtime_ns
        except OSError:
            stamp = None
        if stamp is not None and stamp == self._stamp:
            return
        hashes = set(read_tombstones(self._raw_dir)) if stamp is not None else set()
        if stamp is not None and time.time_ns() - stamp < _RACY_NS:
            # A file added within the same timestamp tick would not change the stamp:
            # a folder changed this recently is read again at the next check.
            stamp = None
        with self._lock:
            self._hashes = frozenset(hashes | self._local)
            self._verdicts = {}
            self._stamp = stamp

    def _maybe_reload(self) -> None:
        now = self._clock()
        if now >= self._next_check:
            self._next_check = now + self._refresh
            try:
                self._reload()
            except Exception:  # a broken folder must not break requests: keep the old set
                return

    def contains(self, aid: str) -> bool:
        """Whether the anonymous id ``aid`` (plain) has been erased."""
        self._maybe_reload()
        verdicts = self._verdicts
        verdict = verdicts.get(aid)
        if verdict is None:
            hashes = self._hashes
            verdict = bool(hashes) and digest(aid) in hashes
            if len(verdicts) >= _VERDICTS:
                verdicts.clear()
            verdicts[aid] = verdict
        return verdict

    def add(self, aid_hashes: Iterable[str]) -> None:
        """Mark ids erased in this process right away (their tombstones are written)."""
        with self._lock:
            self._local.update(h.lower() for h in aid_hashes)
            self._hashes = self._hashes | self._local
            self._verdicts = {}

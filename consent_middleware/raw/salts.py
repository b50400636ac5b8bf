"""Daily salts for ``visitor_hash``: shared by every worker on the host, destroyed after the day.

A salt is 32 random bytes in ``salts/YYYY-MM-DD.salt``. The first process that needs the
day's salt creates it with an exclusive link so that concurrent workers agree on one value.
After the day ends plus a grace period, :meth:`SaltStore.destroy_expired` overwrites and
deletes it: from then on no one, the operator included, can recompute that day's hashes.
"""

from __future__ import annotations

import hmac
import os
import secrets
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from consent_middleware.raw.layout import RawLayout

SALT_BYTES = 32
DEFAULT_GRACE = timedelta(hours=2)
"""How long after midnight UTC a day's salt survives, for requests still in flight."""


def visitor_hash(salt: bytes, ip: str, user_agent: str, host: str) -> str:
    """Keyed hash of (IP, user agent, host) under a day's salt, 32 hex characters."""
    message = "\x1f".join((ip, user_agent, host.lower())).encode("utf-8", "surrogateescape")
    # hmac.digest is the one-shot C path: same value as hmac.new(...).hexdigest(), faster.
    return hmac.digest(salt, message, "sha256").hex()[:32]


class SaltStore:
    """The daily salts of one RAW store; thread-safe, and shared across processes."""

    def __init__(self, raw_dir: str | Path, *, grace: timedelta = DEFAULT_GRACE) -> None:
        self._dir = RawLayout.at(raw_dir).salts
        self._grace = grace
        self._cache: dict[date, bytes] = {}
        self._lock = threading.Lock()

    def _path(self, day: date) -> Path:
        return self._dir / f"{day.isoformat()}.salt"

    def salt_for(self, day: date) -> bytes:
        """The salt of ``day`` (UTC), created on first use by whichever process comes first."""
        cached = self._cache.get(day)
        if cached is not None:
            return cached
        with self._lock:
            cached = self._cache.get(day)
            if cached is not None:
                return cached
            salt = self._load_or_create(day)
            # Keep at most a couple of days in memory; older ones must be forgotten.
            for old in [d for d in self._cache if d < day - timedelta(days=1)]:
                del self._cache[old]
            self._cache[day] = salt
            return salt

    def _load_or_create(self, day: date) -> bytes:
        path = self._path(day)
        try:
            data = path.read_bytes()
            if len(data) == SALT_BYTES:
                return data
        except FileNotFoundError:
            pass
        self._dir.mkdir(parents=True, exist_ok=True)
        tmp = self._dir / f".{day.isoformat()}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(SALT_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            # link() fails if another process won the race: then everyone uses its salt.
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        data = path.read_bytes()
        if len(data) != SALT_BYTES:
            raise RuntimeError(f"salt file {path} is corrupt ({len(data)} bytes); delete it")
        return data

    def hash_for(self, ts: datetime, ip: str, user_agent: str, host: str) -> str:
        """``visitor_hash`` of a request made at ``ts``."""
        return visitor_hash(self.salt_for(ts.astimezone(UTC).date()), ip, user_agent, host)

    def destroy_expired(self, now: datetime | None = None) -> list[date]:
        """Overwrite and delete every salt whose day ended more than the grace period ago."""
        now = now or datetime.now(UTC)
        destroyed: list[date] = []
        if not self._dir.is_dir():
            return destroyed
        for path in sorted(self._dir.glob("*.salt")):
            try:
                day = date.fromisoformat(path.stem)
            except ValueError:
                continue
            end = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
            if now >= end + self._grace:
                _shred(path)
                destroyed.append(day)
        with self._lock:
            for day in destroyed:
                self._cache.pop(day, None)
        return destroyed


def _shred(path: Path) -> None:
    try:
        with open(path, "r+b") as handle:
            handle.write(b"\0" * SALT_BYTES)
            handle.flush()
            os.fsync(handle.fileno())
    except FileNotFoundError:
        return
    path.unlink(missing_ok=True)

"""Advisory file locks of the RAW store, shared by the processes that rewrite or read it.

Every lock is an ``flock`` on a small file: it blocks until granted and the operating
system releases it when its process dies, so a killed writer never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from consent_middleware.raw.layout import RawLayout


@contextmanager
def file_lock(path: Path, *, exclusive: bool = True) -> Iterator[None]:
    """Hold an ``flock`` on ``path`` (created with its folder if missing) while inside."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def import_lock(raw_dir: str | Path) -> AbstractContextManager[None]:
    """Hold the import lock of ``raw_dir``: ``anonymizer import-log`` holds it for a whole
    import, compaction while it merges, so neither sees the other's half-done work."""
    return file_lock(RawLayout.at(raw_dir).import_lock)

"""Where the recorder sends finished batches: the :class:`Sink` protocol and the file sink.

The recorder's background thread is the only caller of a sink, so a sink need not be
thread-safe. An app can send events elsewhere (a queue, object storage) by passing its
own sink to :class:`~consent_middleware.recorder.Recorder`; the default writes the RAW
store on local disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import pyarrow as pa

from consent_middleware.ledger import LEDGER_SUFFIX, SEAL_SUFFIX, LedgerRecord
from consent_middleware.raw.layout import RawLayout
from consent_middleware.raw.segments import replace_atomically, write_atomic, write_segment


@runtime_checkable
class Sink(Protocol):
    """Receives batches from the recorder's flush thread."""

    def write_events(self, table: pa.Table) -> int | None:
        """Persist a batch of raw events (an Arrow table in ``RAW_EVENT_SCHEMA``).

        Returns how many files or objects were written (for the ``files`` counter), or
        None. Raising makes the recorder keep the batch and try again at the next flush.
        """
        ...

    def write_decisions(self, records: Sequence[LedgerRecord]) -> None:
        """Persist signed ledger lines (and stream seals) in the order given."""
        ...

    def close(self) -> None:
        """Release resources; called once, after the last write."""
        ...


class WriteHealth:
    """The state of one kind of sink write (raw events, or the consent ledger).

    Counts failures, reports them to ``logger`` at most once per ``log_interval`` seconds
    (the first at once: an operator hears of an outage, not of every attempt), and
    reports the first success after an outage. Used by the recorder's flush thread only.
    """

    def __init__(self, what: str, *, log_interval: float, logger: logging.Logger) -> None:
        self.what = what
        self.log_interval = log_interval  # seconds between two reports of one outage
        self.logger = logger
        self.since: float | None = None  # monotonic time of the outage's first failure
        self.failures = 0  # failed writes of this kind, ever
        self._unreported = 0
        self._next_report = 0.0

    @property
    def failing(self) -> bool:
        """True from a failed write until the next successful one."""
        return self.since is not None

    def failed(self, error: str, holding: str) -> None:
        """A write failed with ``error``; ``holding`` says what is kept meanwhile."""
        now = time.monotonic()
        self.failures += 1
        self._unreported += 1
        if self.since is None:
            self.since = now
        if now >= self._next_report:
            self._next_report = now + self.log_interval
            self.logger.warning(
                "cannot write %s to the RAW store (%s): %d failed attempt(s) since the last "
                "report; %s; retrying at every flush",
                self.what,
                error,
                self._unreported,
                holding,
            )
            self._unreported = 0

    def succeeded(self, summary: str) -> None:
        """A write went through; after an outage, say so once (``summary``: the toll)."""
        if self.since is None:
            return
        outage = time.monotonic() - self.since
        self.since = None
        self._unreported = 0
        self._next_report = 0.0  # the next outage is reported at once
        self.logger.warning(
            "writing %s to the RAW store again after %.1f s; %s", self.what, outage, summary
        )


class FileSink:
    """The default sink: Parquet segments and JSONL ledger files under ``raw_dir``.

    Events go to ``events/date=YYYY-MM-DD/`` through :func:`write_segment` (temporary file,
    fsync, atomic rename). Ledger lines are appended to ``ledger/<stream>.jsonl`` and
    fsynced per batch; a seal is written atomically next to its stream. A failed write
    raises (the recorder keeps the batch and retries) and leaves no partial file or line.
    """

    def __init__(self, raw_dir: str | Path, *, compression: str = "zstd") -> None:
        self.raw_dir = Path(raw_dir)
        self._layout = RawLayout.at(raw_dir)
        self._compression = compression
        self._pid = os.getpid()
        self._fds: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"FileSink({str(self.raw_dir)!r})"

    def write_events(self, table: pa.Table) -> int:
        """Write one segment per UTC date in the batch; returns the number of files."""
        written = write_segment(self.raw_dir, table, prefix="mw", compression=self._compression)
        return len(written)

    def _fd(self, stream: str) -> int:
        if self._pid != os.getpid():
            # A forked child must not share its parent's files (one stream per process).
            self._fds.clear()
            self._pid = os.getpid()
        fd = self._fds.get(stream)
        if fd is None:
            self._layout.ledger.mkdir(parents=True, exist_ok=True)
            path = self._layout.ledger / f"{stream}{LEDGER_SUFFIX}"
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._fds[stream] = fd
        return fd

    def write_decisions(self, records: Sequence[LedgerRecord]) -> None:
        """Append each stream's lines in one write, then fsync so a decision is durable."""
        batches: dict[str, list[bytes]] = {}
        for record in records:
            if record.kind == "seal":
                self._write_seal(record)
            else:
                batches.setdefault(record.stream, []).append(record.line + b"\n")
        for stream, lines in batches.items():
            fd = self._fd(stream)
            start = os.fstat(fd).st_size
            data = memoryview(b"".join(lines))
            try:
                while data:
                    data = data[os.write(fd, data) :]
                os.fsync(fd)
            except OSError:
                # A disk that fills mid-write leaves part of a line. The recorder retries
                # the whole batch, so cut the file back to where it began: otherwise the
                # torn line would sit in the middle of the chain, not at its end.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise

    def _write_seal(self, record: LedgerRecord) -> None:
        final = self._layout.ledger / f"{record.stream}{SEAL_SUFFIX}"
        replace_atomically(final, lambda handle: handle.write(record.line + b"\n"))

    def close(self) -> None:
        """Close the ledger files this process opened."""
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds.clear()


__all__ = ["FileSink", "Sink", "WriteHealth", "write_atomic"]

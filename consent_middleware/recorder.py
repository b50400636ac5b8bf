"""The recorder: an in-memory buffer per process, flushed in batches by a background thread.

The request path (:meth:`Recorder.record_request`) only filters the path and appends a
small tuple to a deque; everything else (scrubbing, hashing, building Arrow tables,
signing ledger lines, file I/O) happens on one daemon thread per process. The thread
flushes when a batch is full, every ``flush_interval`` seconds, and on :meth:`close`
(called at ASGI lifespan shutdown, and at interpreter exit as a safety net).

Durability contract: a graceful shutdown loses nothing; a process killed with SIGKILL
loses at most what arrived since the last flush (one ``flush_interval``), and its
half-written temporary files are ignored by readers and removed by ``consent-admin purge``.

When the RAW store cannot be written (read-only, disk full, I/O error) requests are still
served: the batch that failed is kept in memory, the failure is counted (``write_errors``,
``last_error``) and logged at most once per ``error_log_interval``, new events wait in the
bounded buffer (and are dropped and counted once it is full), and one write is tried per
flush interval until the store accepts it again; then everything kept is written.
"""

from __future__ import annotations

import atexit
import fnmatch
import logging
import os
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import pyarrow as pa

from consent_middleware.decision import Decision
from consent_middleware.events import CapturedRequest, EventBuilder
from consent_middleware.ledger import LedgerRecord, LedgerWriter
from consent_middleware.raw.salts import SaltStore
from consent_middleware.sink import FileSink, Sink, WriteHealth
from consent_middleware.state import ConsentState

DEFAULT_EXCLUDE: tuple[str, ...] = (
    "/static/",
    "/favicon.ico",
    "*.css",
    "*.js",
    "*.map",
    "*.png",
    "*.jpg",
    "*.jpeg",
    "*.gif",
    "*.webp",
    "*.avif",
    "*.svg",
    "*.ico",
    "*.woff",
    "*.woff2",
    "*.ttf",
)
"""Static assets: not page requests, so not recorded unless an app says otherwise."""

logger = logging.getLogger("consent_middleware.recorder")

_Batch: TypeAlias = "pa.Table | list[CapturedRequest]"
"""Events kept after a failed write: a built table, or captured requests when building
them needed the RAW store too (the daily salt)."""


@dataclass(frozen=True, slots=True)
class RecordingOptions:
    """What the recorder records and how it buffers.

    Patterns in ``include`` and ``exclude`` are path prefixes (``/static/``; a prefix
    without a trailing slash also matches itself exactly: ``/consent`` matches
    ``/consent`` and ``/consent/x`` but not ``/consents``) or globs when they contain
    ``*``, ``?`` or ``[`` (``*.css``; ``*`` crosses slashes; suffix globs ignore case).
    A request is recorded when ``include`` is empty or matches, and ``exclude`` does not.
    """

    enabled: bool = True
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    flush_interval: float = 1.0  # seconds between flushes (also the most a crash loses)
    max_batch: int = 10_000  # events per segment file; a full batch is flushed at once
    max_buffer: int = 100_000  # events held in memory at most (bounded under overload)
    block_timeout: float = 0.005  # seconds a request waits for space before its event drops
    hash_unconsented: bool = True  # False: no visitor_hash unless statistics is granted
    compression: str = "zstd"  # Parquet codec of the file sink ("none" for debugging)
    error_log_interval: float = 60.0  # seconds between two log lines about failing writes

    def __post_init__(self) -> None:
        if self.flush_interval <= 0:
            raise ValueError("flush_interval must be > 0 seconds")
        if self.max_batch < 1 or self.max_buffer < self.max_batch:
            raise ValueError("need 1 <= max_batch <= max_buffer")
        if self.block_timeout < 0:
            raise ValueError("block_timeout must be >= 0 seconds")
        if self.error_log_interval < 0:
            raise ValueError("error_log_interval must be >= 0 seconds")


@dataclass(frozen=True, slots=True)
class RecorderStats:
    """Counters for monitoring, for this process since the recorder started.

    ``recorded`` events were accepted into the buffer, ``dropped`` were refused because the
    buffer stayed full (or could not be written before shutdown), ``flushed`` reached the
    sink in ``files`` files; ``buffered`` wait for the next flush and ``retained`` were in a
    write that failed and wait for the store to accept them. ``decisions`` /
    ``decisions_flushed`` count ledger records. ``write_errors`` counts failed sink writes
    (events or ledger), ``errors`` every failure (write errors included), the latest in
    ``last_error``; ``failing`` is true from a failed write until the next successful one.
    """

    recorded: int
    dropped: int
    flushed: int
    files: int
    buffered: int
    decisions: int
    decisions_flushed: int
    errors: int
    last_error: str | None
    write_errors: int = 0
    retained: int = 0
    failing: bool = False


class PathFilter:
    """Compiled include/exclude rules; :meth:`__call__` is on the request path."""

    def __init__(self, include: Sequence[str], exclude: Sequence[str]) -> None:
        self._include = _Rules(include) if include else None
        self._exclude = _Rules(exclude)

    def __call__(self, path: str) -> bool:
        """Whether a request for ``path`` is recorded."""
        if self._include is not None and not self._include.matches(path):
            return False
        return not self._exclude.matches(path)

    def fast(self) -> Callable[[str], bool]:
        """The same test with one call less when there is no include list (hot path)."""
        if self._include is not None:
            return self
        excluded = self._exclude.matches
        return lambda path: not excluded(path)


class _Rules:
    def __init__(self, patterns: Sequence[str]) -> None:
        exact: set[str] = set()
        prefixes: list[str] = []
        suffixes: list[str] = []
        globs: list[str] = []
        for pattern in patterns:
            if not any(c in pattern for c in "*?["):
                if not pattern.endswith("/"):
                    exact.add(pattern)
                    pattern += "/"
                prefixes.append(pattern)
            elif pattern.startswith("*") and not any(c in pattern[1:] for c in "*?["):
                suffixes.append(pattern[1:].lower())
            else:
                globs.append(fnmatch.translate(pattern))
        self._exact = frozenset(exact)
        self._prefixes = tuple(prefixes)
        self._suffixes = tuple(suffixes)
        self._glob = re.compile("|".join(globs)).match if globs else None

    def matches(self, path: str) -> bool:
        if path in self._exact or path.startswith(self._prefixes):
            return True
        if self._suffixes and path.lower().endswith(self._suffixes):
            return True
        return self._glob is not None and self._glob(path) is not None


_VERDICTS_SIZE = 4096  # paths whose include/exclude verdict is remembered

_live: weakref.WeakSet[Recorder] = weakref.WeakSet()


def _close_all() -> None:
    for recorder in list(_live):
        recorder.close(timeout=10.0)


def _after_fork_in_child() -> None:
    for recorder in list(_live):
        recorder._forget_parent()


atexit.register(_close_all)
os.register_at_fork(after_in_child=_after_fork_in_child)


class Recorder:
    """Records raw events and consent decisions of one app, one flush thread per process.

    ``sink`` receives the batches; ``salts`` computes ``visitor_hash`` (None: no hash);
    ``ledger`` signs decisions (None: decisions cannot be recorded and count as errors);
    ``excluded_prefixes`` are added to ``options.exclude`` (the middleware's own paths).
    """

    def __init__(
        self,
        sink: Sink,
        *,
        salts: SaltStore | None,
        options: RecordingOptions | None = None,
        ledger: LedgerWriter | None = None,
        excluded_prefixes: Sequence[str] = (),
    ) -> None:
        self.options = options or RecordingOptions()
        self._sink = sink
        self._ledger = ledger
        self._builder = EventBuilder(salts, hash_unconsented=self.options.hash_unconsented)
        self._capture = self._builder.capture
        rules = PathFilter(self.options.include, (*self.options.exclude, *excluded_prefixes))
        self._wants: Callable[[str], bool] = rules.fast()
        self._enabled = self.options.enabled
        self._max_batch = self.options.max_batch
        self._max_buffer = self.options.max_buffer
        self._verdicts: dict[str, bool] = {}  # path -> recorded? (the rules are fixed)
        self._lock = threading.Lock()
        self._init_process_state()
        _live.add(self)

    def _init_process_state(self) -> None:
        """Buffers, thread and counters of the current process."""
        self._pid = os.getpid()
        self._closed = False
        self._sealed = False
        self._flush_lock = threading.Lock()  # one flush at a time (thread, close, flush())
        self._pending: list[LedgerRecord] = []  # signed but not yet accepted by the sink
        self._events: deque[CapturedRequest] = deque()
        self._decisions: deque[Decision] = deque()
        self._retained: deque[_Batch] = deque()  # batches whose write failed, oldest first
        self._retained_rows = 0
        log_every = self.options.error_log_interval
        self._events_health = WriteHealth("raw events", log_interval=log_every, logger=logger)
        self._ledger_health = WriteHealth(
            "the consent ledger", log_interval=log_every, logger=logger
        )
        self._wake = threading.Event()
        self._drained = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._running = False  # a flush thread of this process is (about to be) running
        self._recorded = self._dropped = self._flushed = self._files = 0
        self._decided = self._decisions_flushed = self._errors = self._write_errors = 0
        self._last_error: str | None = None

    def _forget_parent(self) -> None:
        """In a forked child: the parent's buffer and thread are not ours (fork-safety)."""
        self._lock = threading.Lock()
        self._init_process_state()
        if self._ledger is not None:
            self._ledger = self._ledger.fresh()

    @classmethod
    def to_raw_dir(
        cls,
        raw_dir: str | Path,
        *,
        options: RecordingOptions | None = None,
        ledger_keys: Sequence[str | bytes] = (),
        excluded_prefixes: Sequence[str] = (),
    ) -> Recorder:
        """A recorder writing the RAW store at ``raw_dir`` with the default :class:`FileSink`.

        ``ledger_keys`` are the server secrets, oldest to newest (the newest signs).
        """
        options = options or RecordingOptions()
        return cls(
            FileSink(raw_dir, compression=options.compression),
            salts=SaltStore(raw_dir),
            options=options,
            ledger=LedgerWriter(ledger_keys) if ledger_keys else None,
            excluded_prefixes=excluded_prefixes,
        )

    def __repr__(self) -> str:
        return f"Recorder(sink={self._sink!r}, options={self.options!r})"

    # -- the request path -------------------------------------------------------------

    def record_request(
        self,
        scope: Mapping[str, Any],
        *,
        status: int,
        duration_ms: float,
        consent: ConsentState,
    ) -> None:
        """Buffer one served request's event; never raises, never does I/O.

        Only when the buffer is full does it wait, at most ``block_timeout`` seconds, for
        the flush thread to make room; then the event is dropped and counted.
        """
        try:
            path = scope["path"]
            wanted = self._verdicts.get(path)
            if wanted is None:
                wanted = self._verdict(path)
            if not wanted:
                return
            if not self._running:
                self.start()
            events = self._events
            queued = len(events)
            if queued >= self._max_batch:
                failing = self._events_health.failing
                if not failing and not self._wake.is_set():  # set() takes a lock: once is enough
                    self._wake.set()
                # While the store refuses writes no room will come: drop without waiting.
                if queued >= self._max_buffer and (failing or not self._wait_for_room(events)):
                    self._dropped += 1
                    return
            events.append(self._capture(scope, status, duration_ms, consent))
            self._recorded += 1
        except Exception as exc:  # recording must never break a response
            self._note_error(exc)

    def _verdict(self, path: str) -> bool:
        """Whether requests for ``path`` are recorded (remembered per path, bounded)."""
        wanted = self._enabled and self._wants(path)
        if len(self._verdicts) >= _VERDICTS_SIZE:
            self._verdicts.clear()
        self._verdicts[path] = wanted
        return wanted

    def _wait_for_room(self, queue: deque[Any]) -> bool:
        self._drained.clear()
        if len(queue) < self.options.max_buffer:
            return True
        self._drained.wait(self.options.block_timeout)
        return len(queue) < self.options.max_buffer

    def record_decision(self, decision: Decision) -> None:
        """Buffer one consent decision for the ledger; never raises."""
        try:
            if self._ledger is None:
                raise RuntimeError("no ledger key configured: consent decision not recorded")
            if not self._running:
                self.start()
            # Signed records wait in _pending while the store refuses them: bound both.
            if len(self._decisions) + len(self._pending) >= self.options.max_buffer:
                raise RuntimeError("ledger buffer full: consent decision dropped")
            self._decisions.append(decision)
            self._decided += 1
            self._wake.set()  # decisions are rare and matter: flush them promptly
        except Exception as exc:
            self._note_error(exc)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start this process's flush thread (idempotent and cheap: the middleware calls it
        per request; record_* call it lazily)."""
        if self._running:
            return
        if self._pid != os.getpid():  # a fork that register_at_fork did not see
            self._forget_parent()
        with self._lock:
            if self._running:
                return
            if self._sealed and self._ledger is not None:
                # A sealed stream is finished: a restarted recorder starts a new one.
                self._ledger = self._ledger.fresh()
                self._sealed = False
            self._closed = False
            self._stopping = False
            thread = threading.Thread(target=self._run, name="consent-recorder", daemon=True)
            self._thread = thread
            self._running = True
            thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Flush everything buffered, seal the ledger stream and stop (idempotent)."""
        with self._lock:
            thread = self._thread
            if self._closed or self._pid != os.getpid():
                return
            self._closed = True
            self._stopping = True
        if thread is not None and thread.is_alive():
            self._wake.set()
            thread.join(timeout)
        else:  # never started, or the thread died: flush from here
            self._flush(final=True)
        self._thread = None
        self._running = False

    def flush(self) -> None:
        """Write everything buffered now, from the calling thread (tests, admin tools)."""
        self._flush(final=False)

    @property
    def stats(self) -> RecorderStats:
        """The current counters (see :class:`RecorderStats`)."""
        return RecorderStats(
            recorded=self._recorded,
            dropped=self._dropped,
            flushed=self._flushed,
            files=self._files,
            buffered=len(self._events),
            decisions=self._decided,
            decisions_flushed=self._decisions_flushed,
            errors=self._errors,
            last_error=self._last_error,
            write_errors=self._write_errors,
            retained=self._retained_rows,
            failing=self._events_health.failing or self._ledger_health.failing,
        )

    # -- the flush thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            try:
                # Pay one-time costs now, not in the middle of the first flush: building
                # an Arrow array from Python objects imports pandas (pyarrow looks for
                # its types), hundreds of milliseconds holding the GIL.
                self._builder.table([])
            except Exception as exc:
                self._note_error(exc)
            self._loop()
        finally:
            self._running = False

    def _loop(self) -> None:
        interval = self.options.flush_interval
        next_flush = time.monotonic() + interval
        while True:
            self._wake.wait(max(0.0, next_flush - time.monotonic()))
            self._wake.clear()
            stopping = self._stopping
            due = time.monotonic() >= next_flush
            # While writes fail, try once per interval only, not on every full batch.
            eager = (len(self._events) >= self._max_batch and not self._events_health.failing) or (
                bool(self._decisions) and not self._ledger_health.failing
            )
            if stopping or due or eager:
                if due:
                    next_flush = time.monotonic() + interval
                self._flush(final=stopping)
            if stopping:
                return

    def _flush(self, *, final: bool) -> None:
        """Drain the buffers into the sink; on the final flush also seal and close it."""
        with self._flush_lock:
            for step in (self._flush_decisions, self._flush_events):
                try:
                    step(final=final)
                except Exception as exc:  # the thread must survive anything a sink does
                    self._note_error(exc)
            if final:
                try:
                    self._sink.close()
                except Exception as exc:
                    self._note_error(exc)

    def _flush_events(self, *, final: bool) -> None:
        healthy = self._write_retained()
        events = self._events
        # Everything buffered now is written; what arrives meanwhile waits for the next
        # flush (or is written too when closing), so a busy app cannot keep us here forever.
        # After a failed write the rest waits in the buffer for the next attempt.
        remaining = len(events)
        while (healthy or final) and (remaining or (final and events)):
            count = min(len(events), self._max_batch)
            batch = [events.popleft() for _ in range(count)]
            remaining = max(0, remaining - count)
            self._drained.set()
            healthy = self._write_batch(batch) and healthy
        if final:  # shutting down: what the store still refuses is lost, and counted
            if self._retained:
                self._write_retained()
            if self._retained_rows:
                logger.error(
                    "shutting down with %d event(s) the RAW store would not accept (%s): "
                    "they are lost and counted as dropped",
                    self._retained_rows,
                    self._last_error,
                )
            self._dropped += self._retained_rows
            self._retained.clear()
            self._retained_rows = 0

    def _write_retained(self) -> bool:
        """Write the batches kept from failed writes, oldest first; False while failing."""
        while self._retained:
            batch = self._retained.popleft()
            self._retained_rows -= _rows(batch)
            if not self._write_batch(batch):
                return False
        return True

    def _write_batch(self, batch: _Batch) -> bool:
        """Build (if needed) and write one batch; False when the store refused it."""
        rows = _rows(batch)
        try:
            table = batch if isinstance(batch, pa.Table) else self._builder.table(batch)
        except OSError as exc:  # the daily salt lives in RAW too: same failure, keep it
            self._write_failed(exc, batch)
            return False
        except Exception as exc:  # a bug in building: drop this batch, keep the thread
            self._dropped += rows
            self._note_error(exc)
            return True
        try:
            files = self._sink.write_events(table)
        except Exception as exc:
            self._write_failed(exc, table)
            return False
        self._flushed += rows
        self._files += files or 0
        self._write_succeeded()
        return True

    def _write_failed(self, exc: BaseException, batch: _Batch) -> None:
        """Count a refused events write and keep its batch while the bound allows."""
        self._note_error(exc)
        self._write_errors += 1
        rows = _rows(batch)
        if self._retained_rows + rows <= self._max_buffer:
            self._retained.appendleft(batch)  # it was the oldest: it is retried first
            self._retained_rows += rows
        else:
            self._dropped += rows
        held = self._retained_rows + len(self._events)
        self._events_health.failed(
            str(self._last_error), f"{held} event(s) kept in memory, {self._dropped} dropped"
        )

    def _write_succeeded(self) -> None:
        self._events_health.succeeded(
            f"{self._write_errors} failed write(s) and {self._dropped} dropped event(s) so far"
        )

    def _flush_decisions(self, *, final: bool) -> None:
        ledger = self._ledger
        if ledger is None:
            return
        decisions = self._decisions
        # Signed records stay pending until the sink accepts them: dropping one would
        # leave a gap in the chain that verify reports as a removed record.
        records = self._pending
        while decisions:
            records.append(ledger.encode(decisions.popleft()))
        self._drained.set()
        if final and ledger.count and not self._sealed:
            records.append(ledger.seal())
        if records:
            try:
                self._sink.write_decisions(records)
            except Exception as exc:  # kept in _pending (bounded by record_decision)
                self._note_error(exc)
                self._write_errors += 1
                self._ledger_health.failed(
                    str(self._last_error), f"{len(records)} signed record(s) kept in memory"
                )
                if final:
                    logger.error(
                        "shutting down with %d consent ledger record(s) the RAW store would "
                        "not accept (%s): they are lost",
                        len(records),
                        self._last_error,
                    )
                return
            self._ledger_health.succeeded(f"{len(records)} record(s) written")
            self._pending = []
            self._decisions_flushed += sum(r.kind == "record" for r in records)
            self._sealed = self._sealed or records[-1].kind == "seal"

    def _note_error(self, exc: BaseException) -> None:
        self._errors += 1
        self._last_error = f"{type(exc).__name__}: {exc}"


def _rows(batch: _Batch) -> int:
    return batch.num_rows if isinstance(batch, pa.Table) else len(batch)

"""The recorder: buffering, flushing on size/interval/close, overload policy, sinks, forks."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from recording_support import NEW, decision, state
from synthetic import crowd

from consent_middleware.ledger import LedgerRecord, LedgerWriter, ledger_files, verify_ledger
from consent_middleware.raw.layout import RawLayout
from consent_middleware.raw.salts import SaltStore
from consent_middleware.raw.segments import list_segments, write_segment
from consent_middleware.recorder import PathFilter, Recorder, RecordingOptions
from consent_middleware.sink import FileSink, Sink

WAIT = 30.0  # generous bound for background work; tests never assert on elapsed time
CONSENT = state("necessary", "statistics", aid="aid-7")


def scope(path: str = "/page", ua: str = "agent") -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "query_string": b"",
        "headers": [(b"user-agent", ua.encode()), (b"host", b"shop.example")],
        "client": ("192.0.2.1", 1234),
    }


class MemorySink:
    """A sink that keeps batches in memory; optionally blocks or fails on demand."""

    def __init__(self, fail_times: int = 0) -> None:
        self.tables: list[pa.Table] = []
        self.records: list[LedgerRecord] = []
        self.written = threading.Condition()
        self.gate = threading.Event()
        self.gate.set()
        self.fail_times = fail_times
        self.closed = False

    @property
    def rows(self) -> int:
        return sum(t.num_rows for t in self.tables)

    def write_events(self, table: pa.Table) -> int:
        self.gate.wait(WAIT)
        if self.fail_times:
            self.fail_times -= 1
            raise OSError("disk full")
        with self.written:
            self.tables.append(table)
            self.written.notify_all()
        return 1

    def write_decisions(self, records: Sequence[LedgerRecord]) -> None:
        self.records.extend(records)

    def close(self) -> None:
        self.closed = True

    def wait_rows(self, n: int) -> None:
        with self.written:
            assert self.written.wait_for(lambda: self.rows >= n, WAIT)


def test_memory_sink_satisfies_the_protocol(tmp_path: Path) -> None:
    assert isinstance(MemorySink(), Sink) and isinstance(FileSink(tmp_path), Sink)


def test_flush_on_size_before_the_interval() -> None:
    sink = MemorySink()
    options = RecordingOptions(flush_interval=3600, max_batch=100, max_buffer=1000)
    recorder = Recorder(sink, salts=None, options=options)
    for _ in range(250):
        recorder.record_request(scope(), status=200, duration_ms=1.0, consent=CONSENT)
    sink.wait_rows(200)
    assert all(t.num_rows <= 100 for t in sink.tables)
    recorder.close()
    assert sink.rows == 250 and sink.closed
    stats = recorder.stats
    assert (stats.recorded, stats.flushed, stats.dropped, stats.buffered) == (250, 250, 0, 0)


def test_flush_on_interval_without_close() -> None:
    sink = MemorySink()
    recorder = Recorder(sink, salts=None, options=RecordingOptions(flush_interval=0.05))
    for _ in range(3):
        recorder.record_request(scope(), status=200, duration_ms=1.0, consent=CONSENT)
    sink.wait_rows(3)
    assert recorder.stats.flushed == 3 and not sink.closed
    recorder.close()
    recorder.close()  # idempotent


def test_close_writes_everything_to_the_raw_store(tmp_path: Path) -> None:
    recorder = Recorder.to_raw_dir(
        tmp_path, options=RecordingOptions(flush_interval=3600), ledger_keys=[NEW]
    )
    for i in range(40):
        recorder.record_request(scope(ua=f"ua-{i}"), status=200, duration_ms=2.0, consent=CONSENT)
    recorder.record_decision(decision(0))
    recorder.close()
    glob = RawLayout.at(tmp_path).events_glob()
    rows = duckdb.execute(f"SELECT user_agent, aid, path FROM read_parquet('{glob}')").fetchall()
    assert sorted(r[0] for r in rows) == sorted(f"ua-{i}" for i in range(40))
    assert {(r[1], r[2]) for r in rows} == {("aid-7", "/page")}
    assert recorder.stats.files == 1 and len(ledger_files(tmp_path)) == 1
    assert verify_ledger(tmp_path, [NEW]).ok


def test_full_buffer_blocks_briefly_then_drops_and_counts() -> None:
    sink = MemorySink()
    sink.gate.clear()  # the sink hangs: the buffer cannot drain
    options = RecordingOptions(max_batch=10, max_buffer=20, block_timeout=0.001)
    recorder = Recorder(sink, salts=None, options=options)
    for _ in range(100):
        recorder.record_request(scope(), status=200, duration_ms=1.0, consent=CONSENT)
    stats = recorder.stats
    assert stats.dropped > 0 and stats.recorded + stats.dropped == 100
    assert stats.buffered <= 20
    sink.gate.set()
    recorder.close()
    assert sink.rows == recorder.stats.recorded == recorder.stats.flushed


def test_failing_sink_is_retried_and_counted() -> None:
    sink = MemorySink(fail_times=2)
    recorder = Recorder(sink, salts=None, options=RecordingOptions(flush_interval=0.02))
    for _ in range(5):
        recorder.record_request(scope(), status=200, duration_ms=1.0, consent=CONSENT)
    sink.wait_rows(5)
    recorder.close()
    stats = recorder.stats
    assert stats.errors == 2 and stats.last_error == "OSError: disk full"
    assert stats.flushed == 5 and stats.dropped == 0


def test_a_table_spanning_days_becomes_one_segment_per_utc_day(tmp_path: Path) -> None:
    # Written side by side (an import's batch spans many days): each file must still hold
    # exactly its own day's events, and the paths come back in the order the days first
    # appear (each visit crosses a UTC midnight).
    days = [datetime(2026, 3, d, 23, 59, 30, tzinfo=UTC) for d in (4, 1, 3, 2)]
    events = [e for i, day in enumerate(days) for e in crowd(day, 60, f"/p{i}")]
    written = write_segment(tmp_path, events, prefix="import-x")
    assert [p.parent.name for p in written] == [f"date=2026-03-0{d}" for d in (4, 5, 1, 2, 3)]
    for path in written:
        rows = pq.read_table(path, columns=["ts"]).column("ts").to_pylist()
        assert {ts.date().isoformat() for ts in rows} == {path.parent.name[5:]}
    assert sum(pq.ParquetFile(p).metadata.num_rows for p in written) == len(events)
    assert sorted(list_segments(tmp_path)) == sorted(written)


def test_bad_input_never_raises() -> None:
    sink = MemorySink()
    recorder = Recorder(sink, salts=None)
    recorder.record_request({"type": "http"}, status=200, duration_ms=1.0, consent=CONSENT)
    recorder.record_decision(decision(0))  # no ledger configured
    recorder.close()
    assert recorder.stats.errors == 2 and "no ledger key" in str(recorder.stats.last_error)


def test_include_exclude_rules() -> None:
    default = RecordingOptions()
    wants = PathFilter(default.include, (*default.exclude, "/consent", "/.well-known/"))
    recorded = ["/", "/items/3", "/consents", "/static-page", "/shop/app.JSX"]
    skipped = ["/static/a.txt", "/app.js", "/LOGO.PNG", "/consent", "/consent/x",
               "/favicon.ico", "/.well-known/gpc.json", "/fonts/a.woff2"]  # fmt: skip
    assert all(wants(p) for p in recorded) and not any(wants(p) for p in skipped)
    only_api = PathFilter(("/api/", "/v[12]/*"), ("*/health",))
    assert only_api("/api/items") and only_api("/v2/x") and not only_api("/v3/x")
    assert not only_api("/api/health") and not only_api("/")


def test_forked_child_records_on_its_own(tmp_path: Path) -> None:
    recorder = Recorder.to_raw_dir(tmp_path, ledger_keys=[NEW])
    recorder.record_request(scope(ua="parent"), status=200, duration_ms=1.0, consent=CONSENT)
    recorder.record_decision(decision(0))
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        try:
            recorder.record_request(scope(ua="child"), status=200, duration_ms=1.0, consent=CONSENT)
            recorder.record_decision(decision(1))
            recorder.close()
            os._exit(0 if recorder.stats.flushed == 1 else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    recorder.close()
    glob = RawLayout.at(tmp_path).events_glob()
    agents = duckdb.execute(f"SELECT user_agent FROM read_parquet('{glob}')").fetchall()
    assert sorted(a for (a,) in agents) == ["child", "parent"]
    assert len(ledger_files(tmp_path)) == 2  # one chained stream per process
    assert verify_ledger(tmp_path, [NEW]).ok


@pytest.mark.parametrize("bad", [{"flush_interval": 0}, {"max_batch": 10, "max_buffer": 5}])
def test_options_are_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RecordingOptions(**bad)


def test_hash_unconsented_option_reaches_the_events(tmp_path: Path) -> None:
    sink = MemorySink()
    options = RecordingOptions(hash_unconsented=False)
    recorder = Recorder(sink, salts=SaltStore(tmp_path), options=options)
    for consent in (state("necessary"), CONSENT):
        recorder.record_request(scope(), status=200, duration_ms=1.0, consent=consent)
    recorder.close()
    rows = pa.concat_tables(sink.tables).select(["visitor_hash", "aid"]).to_pylist()
    assert rows[0] == {"visitor_hash": None, "aid": None}
    assert rows[1]["visitor_hash"] is not None and rows[1]["aid"] == "aid-7"


class FlakyLedgerSink(FileSink):
    """Refuses the first ledger write, as a full disk would."""

    failed = False

    def write_decisions(self, records: Sequence[LedgerRecord]) -> None:
        if not self.failed:
            self.failed = True
            raise OSError("no space left on device")
        super().write_decisions(records)


def test_ledger_records_survive_a_failed_write_without_a_gap(tmp_path: Path) -> None:
    sink = FlakyLedgerSink(tmp_path)
    recorder = Recorder(sink, salts=None, ledger=LedgerWriter([NEW]))
    recorder.record_decision(decision(0))
    recorder.flush()  # fails: the signed record stays pending
    recorder.record_decision(decision(1))
    recorder.close()
    assert recorder.stats.errors == 1 and recorder.stats.decisions_flushed == 2
    (path,) = ledger_files(tmp_path)
    assert len(path.read_bytes().splitlines()) == 2
    assert verify_ledger(tmp_path, [NEW]).ok

"""Dense logic of the rights features: the per-client rate limit and the erased-id guard."""

from __future__ import annotations

import csv
import hashlib
import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consent_middleware.ratelimit import RateLimiter
from consent_middleware.rights import Disclosure
from consent_middleware.tombstones import ErasedIds, read_tombstones, write_tombstone


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def test_bucket_allows_a_burst_then_refills() -> None:
    clock = Clock()
    limiter = RateLimiter(burst=2, rate=0.5, clock=clock)
    assert [limiter.take("a"), limiter.take("a")] == [0.0, 0.0]
    wait = limiter.take("a")
    assert wait == pytest.approx(2.0) and RateLimiter.retry_after(wait) == "2"
    assert limiter.take("b") == 0.0  # other clients have their own bucket
    clock.now += 2.0
    assert limiter.take("a") == 0.0
    assert RateLimiter.retry_after(0.01) == "1"


def test_memory_is_bounded_and_recent_clients_stay() -> None:
    clock = Clock()
    limiter = RateLimiter(burst=1, rate=0.001, max_clients=3, clock=clock)
    limiter.take("busy")
    for i in range(10):
        limiter.take(f"c{i}")
        assert limiter.take("busy") > 0  # touched each time: never evicted, still empty
    assert limiter.clients == 3


def test_bad_limits_are_rejected() -> None:
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(burst=0)


@given(gaps=st.lists(st.floats(min_value=0, max_value=5), min_size=1, max_size=60))
def test_never_more_than_burst_plus_refill(gaps: list[float]) -> None:
    clock = Clock()
    limiter = RateLimiter(burst=3, rate=0.25, clock=clock)
    start = clock.now
    allowed = 0
    for gap in gaps:
        clock.now += gap
        allowed += limiter.take("x") == 0.0
    assert allowed <= 3 + (clock.now - start) * 0.25 + 1e-9


def test_erased_ids_see_other_processes_tombstones_after_the_refresh(tmp_path: Path) -> None:
    clock = Clock()
    erased = ErasedIds(tmp_path, refresh_seconds=1.0, clock=clock)
    assert not erased.contains("aid-1") and erased.count == 0
    write_tombstone(tmp_path, _sha("aid-1"), request_id="rq-1", receipt_sha256=None)
    clock.now += 1.0
    assert erased.contains("aid-1") and not erased.contains("aid-2")
    erased.add([_sha("aid-2")])  # this process's own erasure: at once
    assert erased.contains("aid-2") and erased.count == 2


def test_a_tombstone_is_written_once_and_bad_files_are_skipped(tmp_path: Path) -> None:
    first = write_tombstone(tmp_path, _sha("a"), request_id="rq-1", receipt_sha256=None)
    again = write_tombstone(tmp_path, _sha("a"), request_id="rq-2", receipt_sha256=None)
    assert first == again
    (first.parent / "junk.json").write_text("{not json")
    (first.parent / "other.json").write_text('{"aid_sha256": "short"}')
    assert read_tombstones(tmp_path)[_sha("a")]["request_id"] == "rq-1"
    assert list(read_tombstones(tmp_path)) == [_sha("a")]
    with pytest.raises(ValueError, match="digest"):
        write_tombstone(tmp_path, "aid-in-clear", request_id="rq-3", receipt_sha256=None)


def test_csv_cells_never_start_a_spreadsheet_formula() -> None:
    disclosure = Disclosure(
        receipt_id="r-1",
        generated_at=datetime(2026, 11, 26, tzinfo=UTC),
        consent_history=[],
        events=[{"user_agent": '=HYPERLINK("http://x")', "utm_source": "@x", "status": 200}],
    )
    rows = list(csv.DictReader(io.StringIO(disclosure.to_csv())))
    assert rows[1]["user_agent"] == '\'=HYPERLINK("http://x")' and rows[1]["utm_source"] == "'@x"
    assert rows[1]["status"] == "200" and rows[1]["record"] == "event"

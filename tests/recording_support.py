"""Shared helpers for the recording and ledger tests: decisions, ledgers, consent states."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from consent_middleware.decision import Decision
from consent_middleware.ledger import ledger_files
from consent_middleware.recorder import Recorder
from consent_middleware.state import ConsentState

OLD, NEW = b"old-secret", b"new-secret"
POLICY = "2026-04"
T0 = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)
PURPOSES = ("necessary", "statistics", "marketing", "third_party")


def decision(i: int, receipt: str = "r-1") -> Decision:
    """The ``i``-th of a series of grant decisions, one minute apart."""
    return Decision(
        ts=T0 + timedelta(minutes=i),
        receipt_id=receipt,
        action="grant",
        source="banner",
        granted=("necessary", "statistics"),
        refused=("marketing", "third_party"),
        policy_version=POLICY,
        notice_hash="ab" * 32,
    )


def write_ledger(raw: Path, count: int, keys: tuple[bytes, ...] = (NEW,)) -> Path:
    """Record ``count`` decisions (receipts r-0, r-1, r-2 in turn) through a recorder."""
    recorder = Recorder.to_raw_dir(raw, ledger_keys=keys)
    for i in range(count):
        recorder.record_decision(decision(i, receipt=f"r-{i % 3}"))
    recorder.close()
    assert recorder.stats.decisions_flushed == count
    return ledger_files(raw)[-1]


def state(*granted: str, aid: str | None = None, gpc: bool = False) -> ConsentState:
    """A consent state granting ``granted``."""
    return ConsentState(
        {n: n in granted for n in PURPOSES}, POLICY, needs_prompt=False, gpc=gpc, aid=aid
    )

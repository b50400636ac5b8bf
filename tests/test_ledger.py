"""The consent ledger: signed, chained records that survive key rotation and expose tampering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from recording_support import NEW, OLD, decision, write_ledger

from consent_middleware.ledger import (
    LedgerKey,
    LedgerWriter,
    ledger_files,
    read_ledger,
    receipt_history,
    verify_ledger,
)
from consent_middleware.recorder import Recorder


def test_records_have_the_shared_fields(tmp_path: Path) -> None:
    path = write_ledger(tmp_path, 3)
    lines = path.read_bytes().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["seq"] for r in records] == [0, 1, 2]
    for r in records:
        assert {
            "ts",
            "receipt_id",
            "action",
            "source",
            "granted",
            "refused",
            "policy_version",
            "notice_hash",
            "gpc",
            "seq",
            "prev",
            "sig",
            "kid",
        } == set(r)
        assert r["kid"] == LedgerKey.derive(NEW).kid
    assert records[0]["ts"] == "2026-04-01T09:00:00.000000+00:00"
    assert path.with_suffix(".seal").exists()
    assert verify_ledger(tmp_path, [NEW]).ok


def test_key_rotation_old_records_still_verify(tmp_path: Path) -> None:
    write_ledger(tmp_path, 2, keys=(OLD,))
    write_ledger_again = Recorder.to_raw_dir(tmp_path, ledger_keys=(OLD, NEW))
    write_ledger_again.record_decision(decision(5))
    write_ledger_again.close()
    assert len(ledger_files(tmp_path)) == 2
    assert verify_ledger(tmp_path, [OLD, NEW]).ok
    only_new = verify_ledger(tmp_path, [NEW])
    assert {p.kind for p in only_new.problems} == {"unknown-key"}
    # The key id never reveals the secret or the signing key.
    key = LedgerKey.derive(NEW)
    assert key.kid not in key.key.hex() and "new-secret" not in repr(key)


def test_writer_chain_is_per_stream() -> None:
    writer = LedgerWriter([NEW], stream="s1")
    a, b = writer.encode(decision(0)), writer.encode(decision(1))
    other = LedgerWriter([NEW], stream="s2").encode(decision(0))
    assert (a.seq, b.seq) == (0, 1)
    assert json.loads(b.line)["prev"] != json.loads(a.line)["prev"]
    assert json.loads(other.line)["prev"] != json.loads(a.line)["prev"]  # bound to the file
    with pytest.raises(ValueError, match="at least one secret"):
        LedgerWriter([])


def test_receipt_history_and_torn_tail(tmp_path: Path) -> None:
    path = write_ledger(tmp_path, 6)
    with path.open("ab") as handle:
        handle.write(b'{"action":"grant","receipt_id":"r-0","se')  # a crash mid-write
    history = receipt_history(tmp_path, "r-0", [NEW])
    assert [h["line"] for h in history] == [1, 4]
    assert all(h["verified"] is True for h in history)
    assert len(list(read_ledger(tmp_path))) == 6
    report = verify_ledger(tmp_path, [NEW])
    assert [p.kind for p in report.problems] == ["torn"] and report.torn[0].line == 7

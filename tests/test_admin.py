"""The consent-admin CLI: verify finds each kind of tampering, receipt, purge and stats."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner
from recording_support import NEW, OLD, write_ledger

from consent_middleware.admin import EXIT_PROBLEMS, EXIT_TORN, cli
from consent_middleware.raw.layout import RawLayout
from consent_middleware.raw.salts import SaltStore
from consent_middleware.raw.segments import write_segment
from consent_middleware.retention import purge

Lines = list[bytes]


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def tamper(path: Path, edit: Callable[[Lines], Lines]) -> None:
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"".join(line + b"\n" for line in edit(lines)))


def alter(lines: Lines) -> Lines:
    record = json.loads(lines[2])
    record["granted"] = [*record["granted"], "marketing"]  # claim a consent never given
    lines[2] = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    return lines


def delete(lines: Lines) -> Lines:
    return lines[:2] + lines[3:]


def reorder(lines: Lines) -> Lines:
    lines[2], lines[3] = lines[3], lines[2]
    return lines


def insert_copy(lines: Lines) -> Lines:
    return [*lines[:4], lines[1], *lines[4:]]


def insert_forged(lines: Lines) -> Lines:
    forged = json.loads(lines[1])
    forged.update(seq=2, receipt_id="r-9", sig="00" * 32)
    return [*lines[:2], json.dumps(forged).encode(), *lines[2:]]


def delete_last(lines: Lines) -> Lines:
    return lines[:-1]


@pytest.mark.parametrize(
    ("edit", "kind", "line"),
    [
        (alter, "altered", 3),
        (delete, "removed", 3),
        (reorder, "reordered", 4),
        (insert_copy, "inserted", 5),
        (insert_forged, "altered", 3),
        (delete_last, "removed", 5),
    ],
)
def test_verify_finds_tampering(
    tmp_path: Path, edit: Callable[[Lines], Lines], kind: str, line: int
) -> None:
    path = write_ledger(tmp_path, 6)
    assert run("verify", "--raw", str(tmp_path), "--key", NEW.decode())[0] == 0
    tamper(path, edit)
    code, out, err = run("verify", "--raw", str(tmp_path), "--key", NEW.decode())
    assert code == EXIT_PROBLEMS
    assert f"{path.name}:{line}: {kind}:" in err
    assert "problem(s)" in out
    code, out, _ = run("verify", "--raw", str(tmp_path), "--json", "--key", NEW.decode())
    found = json.loads(out)["problems"]
    assert code == EXIT_PROBLEMS and {"file": path.name, "line": line} in [
        {"file": p["file"], "line": p["line"]} for p in found if p["kind"] == kind
    ]


def test_verify_chain_without_seal_finds_middle_deletion(tmp_path: Path) -> None:
    path = write_ledger(tmp_path, 6)
    path.with_suffix(".seal").unlink()  # a crashed writer leaves no seal
    tamper(path, delete)
    code, _, err = run("verify", "--raw", str(tmp_path), "--key", NEW.decode())
    assert code == EXIT_PROBLEMS and "removed: seq 2 missing" in err


def test_verify_keys_from_env_torn_tail_and_usage(tmp_path: Path) -> None:
    path = write_ledger(tmp_path, 3, keys=(OLD,))
    write_ledger_path = write_ledger(tmp_path / "other", 1)
    assert write_ledger_path.exists()
    env = {"CONSENT_SECRET_KEY": f"{OLD.decode()} {NEW.decode()}"}
    assert run("verify", "--raw", str(tmp_path), env=env)[0] == 0
    with path.open("ab") as handle:
        handle.write(b'{"seq":3,"ac')
    code, _, err = run("verify", "--raw", str(tmp_path), env=env)
    assert code == EXIT_TORN and f"{path.name}:4: torn:" in err
    code, _, err = run("verify", "--raw", str(tmp_path), env={"CONSENT_SECRET_KEY": ""})
    assert code == 2 and "CONSENT_SECRET_KEY" in err


def test_receipt_history_json_and_table(tmp_path: Path) -> None:
    write_ledger(tmp_path, 7)
    code, out, _ = run("receipt", "--raw", str(tmp_path), "r-1", "--json", "--key", NEW.decode())
    history = json.loads(out)
    assert code == 0 and [h["line"] for h in history] == [2, 5]
    assert all(h["verified"] and h["receipt_id"] == "r-1" for h in history)
    assert history[0]["granted"] == ["necessary", "statistics"]
    code, out, _ = run("receipt", "--raw", str(tmp_path), "r-1")
    assert code == 0 and "receipt r-1" in out and out.count("banner") == 2
    code, _, err = run("receipt", "--raw", str(tmp_path), "nobody")
    assert code == 1 and "no ledger record" in err


def _event(ts: datetime) -> dict[str, object]:
    return {"ts": ts, "method": "GET", "status": 200, "path": "/", "source": "middleware"}


def test_purge_expires_events_temporaries_and_salts(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    today = now.date()
    for age in (0, 30, 31, 45):
        write_segment(tmp_path, [_event(now - timedelta(days=age))])
    partition = RawLayout.at(tmp_path).events_for(today)
    torn = partition / "mw-crashed.parquet.tmp"
    torn.write_bytes(b"PAR1 half a segment")
    fresh_tmp = partition / "mw-live.parquet.tmp"
    fresh_tmp.write_bytes(b"being written")
    old = time.time() - 7200
    os.utime(torn, (old, old))
    salts = SaltStore(tmp_path)
    salts.salt_for(today - timedelta(days=2))
    salts.salt_for(today)
    # A half-written temporary never breaks a reader.
    glob = RawLayout.at(tmp_path).events_glob()
    assert duckdb.execute(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall() == [(4,)]

    code, out, _ = run("purge", "--raw", str(tmp_path), "--dry-run", "--json")
    planned = json.loads(out)
    assert code == 0 and planned["dry_run"] and len(planned["expired_partitions"]) == 2
    assert torn.exists()

    code, out, _ = run("purge", "--raw", str(tmp_path))
    assert code == 0 and "2 event partition(s)" in out and "1 temporary file(s)" in out
    assert duckdb.execute(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall() == [(2,)]
    assert not torn.exists() and fresh_tmp.exists()
    remaining = sorted(p.stem for p in RawLayout.at(tmp_path).salts.glob("*.salt"))
    assert remaining == [today.isoformat()]
    report = purge(tmp_path, retention_days=0)
    assert report.expired_partitions == [f"date={(today - timedelta(days=30)).isoformat()}"]


def test_stats_counts_events_and_ledger(tmp_path: Path) -> None:
    write_ledger(tmp_path, 4)
    day = datetime(2026, 4, 2, 10, tzinfo=UTC)
    write_segment(tmp_path, [_event(day), _event(day), _event(day + timedelta(days=1))])
    code, out, _ = run("stats", "--raw", str(tmp_path), "--json")
    summary = json.loads(out)
    assert code == 0 and summary["events"] == 3 and summary["ledger_records"] == 4
    assert summary["events_per_day"] == {"2026-04-02": 2, "2026-04-03": 1}
    assert date.fromisoformat(next(iter(summary["events_per_day"])))


def test_every_command_has_help_with_an_example() -> None:
    for name, command in cli.commands.items():
        code, out, _ = run(name, "--help")
        assert code == 0 and "Example:" in out, name
        assert command.help

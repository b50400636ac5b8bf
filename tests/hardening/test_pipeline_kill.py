"""A pipeline run killed at any point, then run again, leaves STATS exactly as one
uninterrupted run does; while it lies dead, every file a reader can see is whole.

``anonymizer run`` runs in a subprocess that kills itself with SIGKILL at a named point
(``ANONYMIZER_FAULT_POINT``: after the journal opens, after quarantining a segment, after
the Nth partition, with a new partition staged but not renamed, after the manifest, after
the state). The rerun and the uninterrupted reference run use the same CLI; STATS is
compared table by table, file by file, and by manifest (run times aside).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import anonymizer
from anonymizer.cli import anonymizer_cli
from anonymizer.journal import FAULT_ENV, RunJournal
from consent_middleware.raw.layout import RawLayout
from consent_middleware.raw.segments import write_segment
from hardening.pipeline_support import DAY0, day_events, manifest, snapshot, write_days

pytestmark = pytest.mark.slow

CLI = "from anonymizer.cli import main; main()"


def first_raw(raw: Path) -> None:
    """Three days, a second segment on day 2, a ledger, and one damaged segment."""
    write_days(raw, 3)
    write_segment(raw, day_events(DAY0 + timedelta(days=1), tag="x"))
    (bad,) = write_segment(raw, day_events(DAY0, tag="bad"))
    bad.write_bytes(bad.read_bytes()[:100])
    ledger = RawLayout.at(raw).ledger
    ledger.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps(
            {
                "ts": f"{(DAY0 + timedelta(days=i % 3)).isoformat()}T0{i % 9}:00:00+00:00",
                "receipt_id": f"r{i}",
                "action": "grant" if i % 3 else "change",
                "source": "banner",
                "granted": ["necessary", "statistics"] if i % 2 else ["necessary"],
                "refused": [] if i % 2 else ["statistics"],
                "policy_version": "2026-01",
            }
        )
        for i in range(60)
    ]
    (ledger / "ledger-a.jsonl").write_text("\n".join(lines) + "\n")


def second_raw(raw: Path) -> None:
    """What arrives before the second run: two new days."""
    write_days(raw, 2, start=DAY0 + timedelta(days=3), tag="n")


def cli_run(raw: Path, stats: Path) -> str:
    result = CliRunner().invoke(anonymizer_cli, ["run", "--raw", str(raw), "--stats", str(stats)])
    assert result.exit_code == 0, result.output
    return result.output


def killed_run(raw: Path, stats: Path, point: str) -> None:
    """``anonymizer run`` in a child process that is SIGKILLed at ``point``."""
    child = subprocess.run(
        [sys.executable, "-c", CLI, "run", "--raw", str(raw), "--stats", str(stats)],
        env={**os.environ, FAULT_ENV: point},
        capture_output=True,
        text=True,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, (point, child.returncode, child.stderr[-2000:])


def files(stats: Path) -> list[str]:
    return sorted(str(p.relative_to(stats)) for p in stats.rglob("*") if p.is_file())


def published_state(stats: Path) -> dict[str, Any]:
    return {
        "tables": snapshot(stats),
        "manifest": manifest(stats),
        "files": files(stats),
        "notice": (stats / "notice.en.md").read_text(),
    }


def assert_readable_while_dead(stats: Path) -> None:
    """No torn file is visible: every Parquet file a reader can list decodes in full, and
    the sandbox answers over every table."""
    visible = [p for p in stats.rglob("*.parquet") if not any(s.startswith(".") for s in p.parts)]
    for path in visible:
        pq.read_table(path)
    if visible:
        con = anonymizer.connect(stats)
        try:
            for name in ("traffic_daily", "pages_daily", "consent_daily", "retention_weekly"):
                con.execute(f"SELECT COUNT(*) FROM {name}").fetchall()
        finally:
            con.close()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], ...]:
    """STATS after the first run and after the second, with no interruption."""
    base = tmp_path_factory.mktemp("uninterrupted")
    raw, stats = base / "raw", base / "stats"
    first_raw(raw)
    output = cli_run(raw, stats)
    assert "quarantined 1 damaged segment(s)" in output
    after_first = published_state(stats)
    second_raw(raw)
    cli_run(raw, stats)
    return after_first, published_state(stats)


FIRST_RUN_POINTS = [
    "journal",
    "quarantined",
    "published-1",
    "staged",
    "published-13",
    "published-25",
    "manifest",
    "state",
]


@pytest.mark.parametrize("point", FIRST_RUN_POINTS)
def test_first_run_killed_then_rerun(
    tmp_path: Path, uninterrupted: tuple[dict[str, Any], ...], point: str
) -> None:
    raw, stats = tmp_path / "raw", tmp_path / "stats"
    first_raw(raw)
    killed_run(raw, stats, point)
    assert_readable_while_dead(stats)

    output = cli_run(raw, stats)

    if point == "state":
        # The state was saved: that run was complete, only its output was lost.
        assert output.startswith("0 new segment(s)")
    else:
        # The rerun reports what the whole run did, the killed part included.
        assert "quarantined 1 damaged segment(s)" in output
        assert "3 day(s) published" in output
    assert published_state(stats) == uninterrupted[0]
    assert not list(stats.rglob(".*")) and not list((raw / "pipeline").glob("journal-*"))


@pytest.mark.parametrize("point", ["published-1", "published-9", "manifest"])
def test_incremental_run_killed_then_rerun(
    tmp_path: Path, uninterrupted: tuple[dict[str, Any], ...], point: str
) -> None:
    raw, stats = tmp_path / "raw", tmp_path / "stats"
    first_raw(raw)
    cli_run(raw, stats)
    second_raw(raw)
    killed_run(raw, stats, point)
    assert_readable_while_dead(stats)

    cli_run(raw, stats)

    assert published_state(stats) == uninterrupted[1]


def test_killed_twice_in_a_row(tmp_path: Path, uninterrupted: tuple[dict[str, Any], ...]) -> None:
    raw, stats = tmp_path / "raw", tmp_path / "stats"
    first_raw(raw)
    killed_run(raw, stats, "published-5")
    killed_run(raw, stats, "published-20")
    cli_run(raw, stats)
    assert published_state(stats) == uninterrupted[0]


def test_journal_survives_a_torn_line_and_ignores_other_runs(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    killed = RunJournal.open(path, "state-a")
    assert killed.partition("pages_daily/2026-03-02", "written") == "written"
    killed.close()
    with open(path, "a") as handle:
        handle.write('{"partition": "pages_daily/2026-03-0')  # the kill tore this line

    rerun = RunJournal.open(path, "state-a")
    assert rerun.partition("pages_daily/2026-03-02", "unchanged") == "written"
    assert rerun.partition("pages_daily/2026-03-03", "absent") == "absent"
    rerun.close()
    again = RunJournal.open(path, "state-a")
    assert again.outcomes == {
        "pages_daily/2026-03-02": "written",
        "pages_daily/2026-03-03": "absent",
    }
    again.close()

    # A journal left by a run whose state was saved belongs to the past.
    later = RunJournal.open(path, "state-b")
    assert later.outcomes == {} and later.quarantined == []
    later.finish()
    assert not path.exists()

"""The privacy budget ledger: epsilon and delta spent per local day and table, kept in STATS.

``STATS/_dp/budget.jsonl`` holds one JSON object per release of one table for one day
(``day``, ``table``, ``epsilon``, ``delta``, ``mechanism``, ``run`` (the run's time) and
``release``, a number counting the charging runs of this STATS folder). It is rewritten whole
through a temporary file and a rename, so it is never torn, and is charged *before* anything
is published: a run that crashes half-way has still spent its budget, which errs on the safe
side. Every release of a day is a new release: re-publishing a day that is not final yet
(new events, an erasure) spends its epsilon again. A run that would take any day beyond
``--budget`` is refused before it publishes anything.

The ledger describes releases, never people; like the manifest it is public. The folder
name starts with ``_`` so Parquet readers of STATS never see it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from anonymizer.dp.mechanism import MECHANISM
from anonymizer.dp.plan import ReleasePlan, public_number
from anonymizer.pipeline import PipelineError
from anonymizer.store import read_manifest, write_text_atomic

LEDGER = Path("_dp") / "budget.jsonl"
"""The ledger's path inside STATS."""
TOLERANCE = 1e-9
"""Relative slack for floating-point sums of shares (OpenDP rounds its maps upwards)."""


class BudgetExceededError(PipelineError):
    """A run would spend more than the per-day budget on some day; nothing was published."""


class PrivacyModeError(PipelineError):
    """A run would mix releases with and without differential privacy in one STATS folder."""


@dataclass(frozen=True, slots=True)
class Spent:
    """What the releases of one day have spent so far."""

    epsilon: float = 0.0
    delta: float = 0.0
    releases: int = 0
    """Runs that published the day."""


def ledger_path(stats_dir: Path) -> Path:
    """Where the ledger of ``stats_dir`` lives."""
    return stats_dir / LEDGER


def read_ledger(stats_dir: Path) -> list[dict[str, Any]]:
    """Every entry of the ledger, oldest first (empty before the first private run).

    An unreadable line is an error, never skipped: undercounting would overspend.
    """
    path = ledger_path(stats_dir)
    if not path.is_file():
        return []
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            date.fromisoformat(entry["day"])
            float(entry["epsilon"]), float(entry["delta"])
        except (ValueError, KeyError, TypeError) as exc:
            raise PipelineError(
                f"privacy budget ledger {path} line {number} is unreadable: restore it from a "
                "backup; runs with --epsilon are refused until then"
            ) from exc
        entries.append(entry)
    return entries


def spent_per_day(entries: Iterable[Mapping[str, Any]]) -> dict[date, Spent]:
    """Epsilon and delta summed per day (sequential composition of every release)."""
    totals: dict[date, Spent] = {}
    runs: dict[date, set[str]] = {}
    for entry in entries:
        day = date.fromisoformat(entry["day"])
        old = totals.get(day, Spent())
        runs.setdefault(day, set()).add(str(entry.get("release", entry.get("run"))))
        totals[day] = Spent(
            old.epsilon + float(entry["epsilon"]),
            old.delta + float(entry["delta"]),
            len(runs[day]),
        )
    return totals


def charge(
    stats_dir: Path, days: Iterable[date], plan: ReleasePlan, *, budget: float, run: str
) -> None:
    """Record the release of ``days`` under ``plan``, or refuse it when a day would exceed
    ``budget``; the check covers every day before anything is recorded or published."""
    days = sorted(set(days))
    if not days:
        return
    entries = read_ledger(stats_dir)
    spent = spent_per_day(entries)
    requested = plan.spent_epsilon
    over = [d for d in days if spent.get(d, Spent()).epsilon + requested > budget * (1 + TOLERANCE)]
    if over:
        day = over[0]
        already = spent.get(day, Spent())
        more = f" (and {len(over) - 1} more day(s))" if len(over) > 1 else ""
        raise BudgetExceededError(
            f"privacy budget exceeded for {day.isoformat()}{more}: spent epsilon "
            f"{already.epsilon:.6g} in {already.releases} release(s), this run requests "
            f"{requested:.6g}, budget {budget:.6g} per day. Nothing was published. Each "
            "release of a day that is not final yet spends again: lower --epsilon, raise "
            "--budget (weaker protection), or wait until the day is final"
        )
    lines = [json.dumps(e, sort_keys=True) for e in entries]
    release = 1 + max((int(e.get("release", 0)) for e in entries), default=0)
    for day in days:
        for table in plan.tables.values():
            entry = {
                "day": day.isoformat(),
                "table": table.name,
                "epsilon": public_number(table.epsilon),
                "delta": public_number(table.delta),
                "mechanism": MECHANISM,
                "run": run,
                "release": release,
            }
            lines.append(json.dumps(entry, sort_keys=True))
    write_text_atomic(ledger_path(stats_dir), "\n".join(lines) + "\n")


def check_mode(stats_dir: Path, epsilon: float | None) -> None:
    """Refuse to mix private and non-private releases in one STATS folder: one release
    without noise of a day voids the guarantee of every private release of it."""
    manifest = read_manifest(stats_dir)
    if not manifest:
        return
    private = manifest.get("differential_privacy") is not None
    published = any(t.get("partitions") for t in manifest.get("tables", {}).values())
    if epsilon is not None and not private and published:
        raise PrivacyModeError(
            f"STATS {stats_dir} holds statistics published without --epsilon: publish "
            "differentially private statistics into a new --stats folder"
        )
    if epsilon is None and private:
        raise PrivacyModeError(
            f"STATS {stats_dir} holds differentially private statistics: rerun with "
            "--epsilon, or publish into a new --stats folder"
        )

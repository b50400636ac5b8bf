"""Retention of the RAW store: what ``consent-admin purge`` deletes, and when.

A purge runs a sequence of steps over one RAW store; each step deletes one kind of data
that has outlived its purpose and reports what it did:

- :func:`expire_events`: raw event partitions older than the retention period (default 30
  days, counted in whole UTC days);
- :func:`clean_temporaries`: temporary files left by a writer that crashed mid-write;
- :func:`destroy_salts`: daily salts whose day is over (after that no ``visitor_hash`` of
  that day can be recomputed by anyone).

More steps plug in through ``steps=``; :func:`consent_middleware.erasure.purge_raw` adds
the one that applies erasure tombstones (what ``consent-admin purge`` runs). The consent ledger
is evidence of consent and is not purged here.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from consent_middleware.raw.layout import RawLayout
from consent_middleware.raw.salts import DEFAULT_GRACE, SaltStore
from consent_middleware.raw.segments import stale_temporaries

DEFAULT_RETENTION_DAYS = 30
"""Raw events are kept this many whole UTC days after the day they happened."""

DEFAULT_TEMP_AGE = timedelta(hours=1)
"""A temporary file this old belongs to no live writer (a flush takes seconds at most)."""


@dataclass(frozen=True, slots=True)
class PurgeContext:
    """What every purge step is given."""

    raw_dir: Path
    now: datetime
    retention_days: int
    temp_age: timedelta
    dry_run: bool


@dataclass(slots=True)
class PurgeReport:
    """What a purge deleted (or would delete, with ``dry_run``), by step."""

    dry_run: bool
    expired_partitions: list[str] = field(default_factory=list)
    expired_files: int = 0
    temporaries: list[str] = field(default_factory=list)
    destroyed_salts: list[str] = field(default_factory=list)
    # Erasure (consent_middleware.erasure.apply_erasures): events removed because their
    # anonymous id was erased, the segments rewritten without them, erasure requests
    # completed, receipt links removed, quarantined files that could not be checked.
    erased_events: int = 0
    rewritten_segments: list[str] = field(default_factory=list)
    completed_requests: list[str] = field(default_factory=list)
    removed_links: int = 0
    unchecked_files: list[str] = field(default_factory=list)
    extra: dict[str, list[str]] = field(default_factory=dict)  # results of added steps

    def as_dict(self) -> dict[str, object]:
        """A JSON-serialisable summary."""
        return {
            "dry_run": self.dry_run,
            "expired_partitions": self.expired_partitions,
            "expired_files": self.expired_files,
            "temporaries": self.temporaries,
            "destroyed_salts": self.destroyed_salts,
            "erased_events": self.erased_events,
            "rewritten_segments": self.rewritten_segments,
            "completed_requests": self.completed_requests,
            "removed_links": self.removed_links,
            "unchecked_files": self.unchecked_files,
            **self.extra,
        }


PurgeStep = Callable[[PurgeContext, PurgeReport], None]
"""One step of a purge: deletes what it is responsible for and notes it in the report."""


def _partition_day(folder: Path) -> date | None:
    name = folder.name
    if not name.startswith("date="):
        return None
    try:
        return date.fromisoformat(name[len("date=") :])
    except ValueError:
        return None


def expire_events(ctx: PurgeContext, report: PurgeReport) -> None:
    """Delete event partitions whose UTC date is more than ``retention_days`` before today."""
    events = RawLayout.at(ctx.raw_dir).events
    if not events.is_dir():
        return
    oldest_kept = ctx.now.astimezone(UTC).date() - timedelta(days=ctx.retention_days)
    for folder in sorted(events.iterdir()):
        day = _partition_day(folder)
        if day is None or day >= oldest_kept or not folder.is_dir():
            continue
        report.expired_partitions.append(folder.name)
        report.expired_files += sum(1 for p in folder.iterdir() if p.is_file())
        if not ctx.dry_run:
            shutil.rmtree(folder)


def clean_temporaries(ctx: PurgeContext, report: PurgeReport) -> None:
    """Delete temporary files older than ``temp_age`` (crashed writers' leftovers)."""
    age = ctx.temp_age.total_seconds()
    for tmp in list(stale_temporaries(ctx.raw_dir, older_than_s=age)):
        report.temporaries.append(str(tmp.relative_to(ctx.raw_dir)))
        if not ctx.dry_run:
            tmp.unlink(missing_ok=True)


def destroy_salts(ctx: PurgeContext, report: PurgeReport) -> None:
    """Overwrite and delete the salts of days that are over (plus the grace period)."""
    store = SaltStore(ctx.raw_dir)
    if ctx.dry_run:
        folder = RawLayout.at(ctx.raw_dir).salts
        for path in sorted(folder.glob("*.salt")) if folder.is_dir() else []:
            try:
                day = date.fromisoformat(path.stem)
            except ValueError:
                continue
            end = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
            if ctx.now >= end + DEFAULT_GRACE:
                report.destroyed_salts.append(path.stem)
        return
    report.destroyed_salts.extend(d.isoformat() for d in store.destroy_expired(ctx.now))


DEFAULT_STEPS: tuple[PurgeStep, ...] = (expire_events, clean_temporaries, destroy_salts)
"""The steps of a purge, in order."""


def purge(
    raw_dir: str | Path,
    *,
    retention_days: int = DEFAULT_RETENTION_DAYS,
    now: datetime | None = None,
    temp_age: timedelta = DEFAULT_TEMP_AGE,
    dry_run: bool = False,
    steps: Sequence[PurgeStep] = DEFAULT_STEPS,
) -> PurgeReport:
    """Delete what the RAW store at ``raw_dir`` must no longer hold; returns a report.

    Safe to run while apps are recording: it only touches past days' partitions, stale
    temporary files and finished days' salts.
    """
    if retention_days < 0:
        raise ValueError("retention_days must be >= 0")
    ctx = PurgeContext(
        raw_dir=Path(raw_dir),
        now=now or datetime.now(UTC),
        retention_days=retention_days,
        temp_age=temp_age,
        dry_run=dry_run,
    )
    report = PurgeReport(dry_run=dry_run)
    for step in steps:
        step(ctx, report)
    return report

"""Small RAW stores and STATS snapshots shared by the pipeline hardening tests."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import anonymizer
from anonymizer.tables import TABLES
from consent_middleware.raw.segments import write_segment

DAY0 = date(2026, 3, 2)
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"


def day_events(day: date, *, visitors: int = 12, tag: str = "v") -> list[dict[str, Any]]:
    """A small day of traffic: ``visitors`` browsers on two pages, some with consent."""
    start = datetime(day.year, day.month, day.day, 1, 0, tzinfo=UTC)
    events: list[dict[str, Any]] = []
    for i in range(visitors):
        consented = i % 2 == 0
        for j, path in enumerate(("/", f"/items/{i % 3}")):
            events.append(
                {
                    "ts": start + timedelta(minutes=7 * i + j),
                    "method": "GET",
                    "status": 200,
                    "duration_ms": 10.0 + i,
                    "path": path,
                    "referrer_host": "www.google.com" if i % 3 == 0 else None,
                    "user_agent": CHROME if i % 2 else FIREFOX,
                    "language": "ja" if i % 4 else "en",
                    "visitor_hash": f"{tag}{day.isoformat()}{i:020d}",
                    "aid": f"aid-{tag}-{i}" if consented else None,
                    "purposes": ["necessary", "statistics"] if consented else ["necessary"],
                    "policy_version": "2026-01",
                    "gpc": False,
                    "source": "middleware",
                }
            )
    return events


def write_days(raw: Path, days: int, *, start: date = DAY0, tag: str = "v") -> list[Path]:
    """One segment per day for ``days`` days from ``start``."""
    written: list[Path] = []
    for offset in range(days):
        written += write_segment(raw, day_events(start + timedelta(days=offset), tag=tag))
    return written


def snapshot(stats: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every published table's rows, sorted, as the analyst sees them."""
    con = anonymizer.connect(stats)
    try:
        return {
            name: sorted(
                con.execute(f"SELECT * FROM {name}").fetchall(),
                key=lambda row: json.dumps(row, default=str),
            )
            for name in TABLES
        }
    finally:
        con.close()


def without_generated_at(value: Any) -> Any:
    """``value`` (parsed JSON) minus every ``generated_at`` key, at any depth."""
    if isinstance(value, dict):
        return {k: without_generated_at(v) for k, v in value.items() if k != "generated_at"}
    if isinstance(value, list):
        return [without_generated_at(v) for v in value]
    return value


def manifest(stats: Path) -> Any:
    """The manifest without its run times."""
    return without_generated_at(json.loads((stats / "manifest.json").read_text()))

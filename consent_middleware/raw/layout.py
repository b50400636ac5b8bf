"""Where each kind of RAW data lives under the RAW directory."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

SEGMENT_SUFFIX = ".parquet"
"""Finished segment files end with this; anything else in ``events/`` is not a segment."""

TEMP_SUFFIX = ".tmp"
"""Files still being written end with this and are ignored by every reader."""

IMPORT_LOCK = "import.lock"
"""The lock file in ``imports/`` (see :func:`consent_middleware.raw.locks.import_lock`)."""


@dataclass(frozen=True, slots=True)
class RawLayout:
    """Paths of the RAW store rooted at ``root``."""

    root: Path

    @classmethod
    def at(cls, raw_dir: str | Path) -> RawLayout:
        """The layout rooted at ``raw_dir`` (not created)."""
        return cls(Path(raw_dir))

    @property
    def events(self) -> Path:
        """Raw access events, one Hive partition per UTC date."""
        return self.root / "events"

    def events_for(self, day: date) -> Path:
        """The partition folder of one UTC date."""
        return self.events / f"date={day.isoformat()}"

    @property
    def ledger(self) -> Path:
        """Consent ledger segments."""
        return self.root / "ledger"

    @property
    def tombstones(self) -> Path:
        """Erasure tombstones, one file per erased anonymous id."""
        return self.root / "tombstones"

    @property
    def salts(self) -> Path:
        """Daily salts for ``visitor_hash``; each is destroyed after its day."""
        return self.root / "salts"

    @property
    def requests(self) -> Path:
        """Visitors' rights requests (disclosure, erasure) and their status."""
        return self.root / "requests"

    @property
    def links(self) -> Path:
        """Receipt links: SHA-256 of (anonymous id, receipt id) pairs, for postal requests."""
        return self.root / "links"

    @property
    def imports(self) -> Path:
        """Import history of ``import-log``: one record per imported file, and its lock."""
        return self.root / "imports"

    @property
    def import_lock(self) -> Path:
        """The lock file every import, and compaction, holds."""
        return self.imports / IMPORT_LOCK

    @property
    def compactions(self) -> Path:
        """Compaction records: which segments a merged segment replaces (``compact``)."""
        return self.root / "compactions"

    @property
    def quarantine(self) -> Path:
        """Segments found unreadable, moved aside so they never break a run."""
        return self.root / "quarantine"

    def events_glob(self) -> str:
        """A glob that matches every finished segment (for DuckDB's ``read_parquet``)."""
        return str(self.events / "date=*" / f"*{SEGMENT_SUFFIX}")

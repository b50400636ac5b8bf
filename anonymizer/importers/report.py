"""What an import did: counts, the first rejected lines, and the errors a user can act on."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

MAX_LISTED_REJECTS = 20
"""How many rejected lines are reported one by one; the rest are only counted."""


class ImportLogError(Exception):
    """A log file cannot be imported at all (missing, unreadable, unknown format).

    The message names the file and what to do; ``path`` is the file concerned, if any.
    """

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)


class Reject(NamedTuple):
    """One line that did not become an event: where it was and why."""

    file: str
    line_number: int
    reason: str


class AlreadyImported(NamedTuple):
    """A file whose first ``lines`` lines were imported before (on ``on``, a UTC date)
    and were not read again; ``new_lines`` were read this time, ``imported`` of them
    became events."""

    file: str
    lines: int
    on: str
    new_lines: int
    imported: int

    def describe(self) -> str:
        """One line for the command line."""
        if not self.new_lines:
            return (
                f"{self.file}: all {self.lines:,} lines already imported on {self.on}; "
                "nothing new (--force imports it again)"
            )
        return (
            f"{self.file}: {self.lines:,} lines already imported on {self.on}, "
            f"{self.imported:,} new lines imported"
            + ("" if self.imported == self.new_lines else f" (of {self.new_lines:,} read)")
        )


@dataclass
class ImportReport:
    """Outcome of :func:`~anonymizer.importers.import_log`.

    ``lines`` counts every line read (blank lines included, they are skipped silently);
    ``imported + rejected + blank == lines``. ``rejects`` lists the first
    :data:`MAX_LISTED_REJECTS` rejected lines; ``by_reason`` counts all of them.
    ``already_imported`` counts the lines not read again because an earlier import took
    them (per file in ``skipped``); ``recovered`` names the files of interrupted earlier
    imports whose segments were removed before this one (their lines are imported again).
    """

    files: list[str] = field(default_factory=list)
    lines: int = 0
    imported: int = 0
    rejected: int = 0
    blank: int = 0
    rejects: list[Reject] = field(default_factory=list)
    by_reason: Counter[str] = field(default_factory=Counter)
    segments: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    already_imported: int = 0
    skipped: list[AlreadyImported] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)

    def reject(self, file: str, line_number: int, reason: str) -> None:
        """Count one rejected line, keeping its position if it is among the first ones."""
        self.rejected += 1
        self.by_reason[reason] += 1
        if len(self.rejects) < MAX_LISTED_REJECTS:
            self.rejects.append(Reject(file, line_number, reason))

    @property
    def lines_per_second(self) -> float:
        """Import throughput over all files."""
        return self.lines / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """A few human-readable lines for the command line."""
        out = [
            f"{len(self.files)} file(s), {self.lines} lines: {self.imported} imported, "
            f"{self.rejected} rejected, {self.blank} blank; "
            f"{len(self.segments)} segment(s) written in {self.seconds:.1f} s",
        ]
        for interrupted in self.recovered:
            out.append(
                f"{interrupted}: removed the partial events of an interrupted earlier import "
                "(its lines are imported when that file is imported again)"
            )
        out.extend(skipped.describe() for skipped in self.skipped)
        if self.by_reason:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in self.by_reason.most_common())
            out.append(f"rejected by reason: {reasons}")
        for file, line_number, reason in self.rejects:
            out.append(f"  {file}:{line_number}: {reason}")
        if self.rejected > len(self.rejects):
            out.append(f"  ... and {self.rejected - len(self.rejects)} more")
        return "\n".join(out)

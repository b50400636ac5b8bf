"""The run journal: what an unfinished run already did to STATS and RAW.

A run may be killed at any point. Each partition file it writes is whole (written under a
hidden temporary name, then renamed), and the pipeline state is saved only after the
manifest, so the next run recomputes the same days from the same input and writes the same
files. What it cannot see is what the killed run changed: a partition the killed run
already rewrote is now "unchanged", a segment it quarantined is gone. The journal keeps
that, one JSON line per event in ``RAW/pipeline/journal-<key>.jsonl``, so the run that
finishes the work reports (and records in the manifest) exactly what an uninterrupted run
would have. The journal is tied to the state the run started from and is deleted once the
new state is saved; a journal left from a run whose state was saved is ignored.
"""

from __future__ import annotations

import json
import os
import signal
from datetime import date
from pathlib import Path
from typing import IO, Any, Final

from anonymizer.quarantine import Quarantined, partition_day

FAULT_ENV: Final = "ANONYMIZER_FAULT_POINT"
"""Fault injection for the crash tests: when this names a point the run reaches (see
:func:`fault_point`), the process kills itself there with SIGKILL, as a crash would."""

_CHANGES: Final = frozenset({"written", "removed"})


def fault_point(name: str) -> None:
    """A named point of a run where the crash tests may kill it (no effect otherwise)."""
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


class RunJournal:
    """Partition outcomes and quarantined segments of the current run and of any killed
    run it completes."""

    def __init__(self, path: Path, base: str) -> None:
        self.path = path
        self.base = base
        self.outcomes: dict[str, str] = {}
        """Partition (``table/key``) to its outcome so far: a change is never forgotten."""
        self.quarantined: list[Quarantined] = []
        self.republish: set[date] = set()
        """UTC dates of segments quarantined after publishing began: their days are
        published again, so nothing read from the bad file before it failed stays."""
        self._handle: IO[str] | None = None

    @classmethod
    def open(cls, path: Path, base: str) -> RunJournal:
        """The journal at ``path`` continued when it was started from the state ``base``
        (a digest), else a new one."""
        journal = cls(path, base)
        earlier = _read_lines(path)
        if earlier and earlier[0].get("base") == base:
            for entry in earlier[1:]:
                journal._replay(entry)
            journal._handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in finish)
            if not path.read_bytes().endswith(b"\n"):
                journal._handle.write("\n")  # end a line torn by the kill
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            journal._handle = open(path, "w", encoding="utf-8")  # noqa: SIM115
            journal._append({"base": base})
        return journal

    def _replay(self, entry: dict[str, Any]) -> None:
        if isinstance(entry.get("partition"), str) and isinstance(entry.get("outcome"), str):
            self._merge(entry["partition"], entry["outcome"])
        elif isinstance(entry.get("quarantined"), dict):
            fields = entry["quarantined"]
            try:
                self.quarantined.append(Quarantined(**fields))
            except TypeError:
                return  # an entry from another version: only the report would miss it
            day = partition_day(Path(fields["segment"]))
            if entry.get("republish") and day is not None:
                self.republish.add(day)

    def _merge(self, partition: str, outcome: str) -> str:
        # A partition the killed run changed and this run finds already in place stays a
        # change: together the two runs are one run.
        if self.outcomes.get(partition) in _CHANGES and outcome not in _CHANGES:
            return self.outcomes[partition]
        self.outcomes[partition] = outcome
        return outcome

    def _append(self, entry: dict[str, Any]) -> None:
        assert self._handle is not None
        # Flushed to the OS at once: a killed process loses nothing written before it.
        self._handle.write(json.dumps(entry, sort_keys=True) + "\n")
        self._handle.flush()

    def partition(self, partition: str, outcome: str) -> str:
        """Record a partition outcome; returns it merged with the killed run's."""
        merged = self._merge(partition, outcome)
        self._append({"partition": partition, "outcome": outcome})
        return merged

    def quarantine(self, entry: Quarantined, *, republish: bool = False) -> None:
        """Record a segment moved to the quarantine (``republish``: after publishing began)."""
        self.quarantined.append(entry)
        day = partition_day(Path(entry.segment))
        if republish and day is not None:
            self.republish.add(day)
        fields = {
            "segment": entry.segment,
            "moved_to": entry.moved_to,
            "reason": entry.reason,
            "detail": entry.detail,
        }
        self._append({"quarantined": fields, "republish": republish})

    def close(self) -> None:
        """Close the file, keeping it (the run failed; the next run continues it)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def finish(self) -> None:
        """The run's state is saved: the journal has served its purpose."""
        self.close()
        self.path.unlink(missing_ok=True)


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """Every whole JSON object line of ``path`` (a torn last line is skipped)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    entries: list[dict[str, Any]] = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries

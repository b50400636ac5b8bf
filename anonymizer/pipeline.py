"""``anonymizer run``: RAW in, STATS out, incrementally and idempotently.

Steps, in order (design section 7; each engine step is in :mod:`anonymizer.engines.duckdb`):

1. erase: events of tombstoned anonymous ids never reach a statistic;
2. consent filter: ``retention_weekly`` only from events with ``statistics`` granted;
3. generalise: local date and hour, user agent and referrer categories, bots out;
4. sessionise: 30 minutes of inactivity end a visit;
5. bound contributions; 6. aggregate the ten tables; 7. k-threshold and ``(other)`` folding;
8. publish: one Parquet file per partition, manifest, public notice.

Incrementality: the state (which segment files were processed, which days are published
and which are final) lives in ``RAW/pipeline/state-<key>.json``, one per STATS folder; it
names RAW files, so it never goes into STATS. A run recomputes every non-final local day
touched by a new segment from *all* of that day's segments (distinct counts cannot be
merged). A day becomes final ``final_after_days`` after its end and is never published
again; late data for it is counted and reported as skipped. The consent ledger, which only
grows, is parsed once (:mod:`anonymizer.ledger_cache`): the state keeps how many bytes of
each stream it has counted, and ``consent_daily`` is recomputed for the days of the decisions
after them.

Faults: a segment not seen before is checked in full before the engine reads it, and a
damaged one is moved to ``RAW/quarantine/`` (:mod:`anonymizer.quarantine`). A run killed at
any point leaves only whole files in STATS; the next run removes its hidden temporaries,
redoes the same work and, through the run journal (:mod:`anonymizer.journal`), reports and
records exactly what one uninterrupted run would have.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from anonymizer import ledger_cache
from anonymizer.engines import (
    SPARK_INSTALL_HINT,
    DuckDBEngine,
    Engine,
    EngineName,
    EngineUnavailableError,
    make_engine,
    spark_available,
)
from anonymizer.journal import RunJournal, fault_point
from anonymizer.notice import (
    DEFAULT_CONTACT,
    LANGUAGES,
    Contact,
    PrivacyStatement,
    notice_filename,
    render_notice,
)
from anonymizer.privacy import DEFAULT_K, DEFAULT_MAX_PAGEVIEWS
from anonymizer.quarantine import (
    Problem,
    Quarantined,
    Span,
    check_segment,
    inspect_segment,
    quarantine,
)
from anonymizer.store import (
    MANIFEST,
    find_links,
    partition_keys,
    publish_partition,
    remove_stale_temporaries,
    summarize,
    write_manifest,
    write_text_atomic,
)
from anonymizer.tables import TABLES, TableDef
from anonymizer.tables.retention_weekly import MAX_WEEK_OFFSET
from consent_middleware.raw.compaction import adopted_stamps, segment_readers_lock
from consent_middleware.raw.layout import TEMP_SUFFIX, RawLayout
from consent_middleware.raw.segments import list_segments
from consent_middleware.tombstones import read_tombstones

PIPELINE_VERSION = "1"
"""Bumped when a change alters published figures for the same input."""

STATE_VERSION = 1
DECISION_ACTIONS = frozenset({"grant", "change", "withdraw", "gpc", "renewal"})
"""Ledger actions that are consent decisions (an ``erase`` is not)."""

ProgressCallback = Callable[[str, int, int], None]
"""``progress(step, done, total)``, called as days are processed."""


class PipelineError(ValueError):
    """Invalid options or a RAW/STATS pair that cannot be run; the message says what to do."""


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Options of one run (the ``anonymizer run`` flags)."""

    k: int = DEFAULT_K
    timezone: str = "UTC"
    site_hosts: tuple[str, ...] = ()
    final_after_days: int = 2
    max_pageviews: int = DEFAULT_MAX_PAGEVIEWS
    memory_limit: str = "1GB"
    threads: int | None = None
    batch_events: int = 1_000_000
    """Local days are processed in batches of about this many events (bounds memory)."""
    contact: Contact = DEFAULT_CONTACT
    now: datetime | None = None
    """The run's clock (tests set it to exercise finality); defaults to the current time."""
    epsilon: float | None = None
    """Differential privacy (:mod:`anonymizer.dp`): epsilon per day and run; None: off."""
    delta: float | None = None
    """Delta per day and run (default ``anonymizer.dp.plan.DEFAULT_DELTA``); needs epsilon."""
    budget_per_day: float = 1.0
    """Epsilon all private releases of one day may spend together (the ledger in STATS)."""
    max_rows_per_visitor: int = 5
    """Differential privacy: rows of each table one visitor contributes to per day."""
    engine: EngineName = "duckdb"
    """``duckdb`` (one machine) or ``spark`` (the ``spark`` extra; same tables, same files)."""
    spark_master: str | None = None
    """Spark master URL for ``engine="spark"`` (default ``local[*]``)."""


@dataclass(slots=True)
class RunReport:
    """What a run did; printed by ``anonymizer run``."""

    new_segments: int = 0
    input_rows: int = 0
    days_published: list[date] = field(default_factory=list)
    days_made_final: list[date] = field(default_factory=list)
    late_days_skipped: list[date] = field(default_factory=list)
    late_events_skipped: int = 0
    consent_decisions: int = 0
    retention_events: int = 0
    partitions: dict[str, int] = field(default_factory=dict)
    """Counts of partition outcomes: written, unchanged, removed."""

    quarantined: list[Quarantined] = field(default_factory=list)
    """Segments found damaged and moved to ``RAW/quarantine/`` (none of their rows is used)."""

    @property
    def changed(self) -> bool:
        """True when any file in STATS was written or removed."""
        return bool(self.partitions.get("written") or self.partitions.get("removed"))


def validate(raw_dir: Path, stats_dir: Path, options: RunOptions) -> None:
    """Reject unusable options up front with one actionable line."""
    if options.engine == "spark" and not spark_available():
        raise PipelineError(SPARK_INSTALL_HINT)
    if options.k < 2:
        raise PipelineError(f"--k must be at least 2 (got {options.k}): k=1 publishes anyone")
    try:
        ZoneInfo(options.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise PipelineError(
            f"unknown time zone {options.timezone!r}: use an IANA name such as Asia/Tokyo or UTC"
        ) from exc
    if options.final_after_days < 0:
        raise PipelineError("--final-after-days must be 0 or more")
    if options.max_pageviews < 1:
        raise PipelineError("--max-pageviews-per-visitor must be at least 1")
    from anonymizer.dp import release  # here: anonymizer.dp imports this module

    release.validate(options)
    if not raw_dir.is_dir():
        raise PipelineError(f"RAW folder {raw_dir} does not exist: check --raw")
    raw, stats = raw_dir.resolve(), stats_dir.resolve()
    if stats == raw or stats.is_relative_to(raw) or raw.is_relative_to(stats):
        raise PipelineError(
            f"--stats {stats_dir} and --raw {raw_dir} overlap: STATS must be a separate folder "
            "(it is shared; RAW is not)"
        )
    _refuse_links(raw_dir, stats_dir)


def _refuse_links(raw_dir: Path, stats_dir: Path) -> None:
    """The run writes under STATS and under RAW's ``pipeline/`` and ``quarantine/``; a
    symbolic link there could send those writes anywhere (RAW's state into STATS, say)."""
    layout = RawLayout.at(raw_dir)
    links = find_links(stats_dir)
    for folder in (raw_dir / "pipeline", layout.quarantine):
        # A quarantined segment may itself be a link (moved there as is): harmless.
        links += [folder] if folder.is_symlink() else [f for f in find_links(folder) if f.is_dir()]
    if links:
        shown = ", ".join(str(link) for link in links[:3])
        raise PipelineError(
            f"symbolic link(s) where the run writes: {shown}; remove them (the run never "
            "writes through a link)"
        )


# ----------------------------------------------------------------------------- state


def _state_path(raw_dir: Path, stats_dir: Path) -> Path:
    # One state per STATS folder fed from this RAW: a second STATS starts from scratch.
    key = hashlib.sha256(str(stats_dir.resolve()).encode()).hexdigest()[:16]
    return raw_dir / "pipeline" / f"state-{key}.json"


def load_state(raw_dir: Path, stats_dir: Path) -> dict[str, Any]:
    """The pipeline state of ``stats_dir`` kept in RAW (empty before the first run, or when
    STATS was emptied since: then everything is published again)."""
    path = _state_path(raw_dir, stats_dir)
    if not path.is_file() or not (stats_dir / MANIFEST).is_file():
        return {}
    loaded = json.loads(path.read_text(encoding="utf-8"))
    return loaded if isinstance(loaded, dict) else {}


def _save_state(raw_dir: Path, stats_dir: Path, state: Mapping[str, Any]) -> None:
    text = json.dumps(state, indent=1, sort_keys=True) + "\n"
    write_text_atomic(_state_path(raw_dir, stats_dir), text)


def _check_state(state: Mapping[str, Any], options: RunOptions, stats_dir: Path) -> None:
    for key, flag, value in (("timezone", "--timezone", options.timezone), ("k", "--k", options.k)):
        if key in state and state[key] != value:
            raise PipelineError(
                f"STATS {stats_dir} was published with {flag} {state[key]}; "
                f"rerun with {flag} {state[key]} or publish into a new --stats folder"
            )


def _file_stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


# ----------------------------------------------------------------------------- inputs


def _partition_date(segment: Path) -> date | None:
    name = segment.parent.name
    try:
        return date.fromisoformat(name.removeprefix("date="))
    except ValueError:
        return None


# ----------------------------------------------------------------------------- the run


class _Run:
    """One run's working set; :func:`run` is the public entry point."""

    def __init__(self, raw_dir: Path, stats_dir: Path, options: RunOptions) -> None:
        self.raw_dir = raw_dir
        self.stats_dir = stats_dir
        self.options = options
        self.now = options.now or datetime.now(UTC)
        self.generated_at = self.now.astimezone(UTC).replace(microsecond=0).isoformat()
        self.zone = ZoneInfo(options.timezone)
        self.report = RunReport()
        self.published: set[date] = set()
        """Days published and not yet final (from the state, plus this run's)."""
        self.journal: RunJournal | None = None
        """Set by :func:`_locked_run`: what a killed run left, what this run does."""
        self.publications = 0
        self.warmed_up = False
        """Whether :func:`_warm_up` has been started (once per run)."""

    def restart(self) -> None:
        """Start the steps over (after quarantining a segment the engine failed on)."""
        self.report = RunReport()
        self.published = set()

    def quarantine(self, segment: Path, problem: Problem, *, republish: bool = False) -> None:
        """Move a damaged segment aside and record it."""
        entry = quarantine(self.raw_dir, segment, problem, now=self.now)
        if self.journal is not None:
            self.journal.quarantine(entry, republish=republish)
        fault_point("quarantined")

    def is_final(self, day: date) -> bool:
        """A day is final ``final_after_days`` after its local end."""
        end = datetime.combine(day + timedelta(days=1), time(), self.zone)
        return self.now >= end + timedelta(days=self.options.final_after_days)

    def metadata(self, input_rows: int, policy_versions: Iterable[str]) -> dict[str, str]:
        """The ``anon.*`` Parquet schema metadata of one partition."""
        return {
            "anon.k": str(self.options.k),
            "anon.timezone": self.options.timezone,
            "anon.policy_versions": json.dumps(sorted(set(policy_versions))),
            "anon.pipeline_version": PIPELINE_VERSION,
            "anon.generated_at": self.generated_at,
            "anon.input_rows": str(input_rows),
            "anon.epsilon": "null",
            "anon.max_pageviews_per_visitor": str(self.options.max_pageviews),
        }

    def table_rows(self, engine: Any, table: TableDef, days: Iterable[date] = ()) -> pa.Table:
        """Steps 5-7 for ``table``: k-threshold, or the private release when epsilon is set."""
        if self.options.epsilon is None:
            return engine.run_table(
                table, k=self.options.k, max_pageviews=self.options.max_pageviews
            )
        from anonymizer.dp import release  # here: anonymizer.dp imports this module

        return release.release_table(engine, table, self.options, sorted(days))

    def publish(self, table: TableDef, key: date, rows: pa.Table, meta: dict[str, str]) -> None:
        """Publish one partition and count its outcome."""
        if self.options.epsilon is not None:
            from anonymizer.dp import release  # here: anonymizer.dp imports this module

            meta = meta | release.partition_metadata(table, self.options)
        part = rows.filter(pc.equal(rows[table.partition], pa.scalar(key, pa.date32())))
        outcome: str = publish_partition(self.stats_dir, table, key, part, meta)
        if self.journal is not None:
            outcome = self.journal.partition(f"{table.name}/{key.isoformat()}", outcome)
        self.report.partitions[outcome] = self.report.partitions.get(outcome, 0) + 1
        self.publications += 1
        fault_point(f"published-{self.publications}")


def run(
    raw_dir: str | Path,
    stats_dir: str | Path,
    options: RunOptions | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> RunReport:
    """Run the pipeline from ``raw_dir`` into ``stats_dir``; see the module docstring."""
    opts = options or RunOptions()
    raw, stats = Path(raw_dir), Path(stats_dir)
    validate(raw, stats, opts)
    # Shared: compaction waits for the run to finish before deleting segments it listed.
    with _exclusive(raw), segment_readers_lock(raw, exclusive=False):
        return _locked_run(raw, stats, opts, progress)


@contextmanager
def _exclusive(raw_dir: Path) -> Iterator[None]:
    """One run at a time per RAW store (released by the OS if the process dies)."""
    lock_path = raw_dir / "pipeline" / "run.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise PipelineError(
                f"another `anonymizer run` is using {raw_dir}: wait for it to finish"
            ) from exc
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _locked_run(
    raw: Path, stats: Path, opts: RunOptions, progress: ProgressCallback | None
) -> RunReport:
    state = load_state(raw, stats)
    _check_state(state, opts, stats)
    stats.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(raw, stats)
    work = _Run(raw, stats, opts)
    try:
        engine = make_engine(
            opts.engine,
            timezone=opts.timezone,
            site_hosts=opts.site_hosts,
            memory_limit=opts.memory_limit,
            threads=opts.threads,
            temp_directory=raw / "pipeline" / "spill",
            spark_master=opts.spark_master,
        )
    except EngineUnavailableError as exc:
        raise PipelineError(str(exc)) from exc
    work.journal = journal = RunJournal.open(_journal_path(raw, stats), _state_digest(state))
    fault_point("journal")
    try:
        new_state = _run_screened(work, engine, state, progress)
        work.report.quarantined = list(journal.quarantined)
        _publish_manifest_and_notice(work, new_state)
        fault_point("manifest")
        _save_state(raw, stats, new_state)
        fault_point("state")
        _tidy_ledger_cache(raw, engine)
    except BaseException:
        journal.close()  # kept: the next run completes this one
        raise
    finally:
        engine.close()
    journal.finish()
    return work.report


def _journal_path(raw_dir: Path, stats_dir: Path) -> Path:
    state = _state_path(raw_dir, stats_dir)
    return state.with_name(state.stem.replace("state-", "journal-") + ".jsonl")


def _state_digest(state: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


def _remove_leftovers(raw: Path, stats: Path) -> None:
    """What a killed run leaves: hidden temporaries in STATS and RAW/pipeline, spill files.
    Safe under the run lock: no other run is writing them."""
    remove_stale_temporaries(stats)
    pipeline = raw / "pipeline"
    for tmp in pipeline.glob(f".*{TEMP_SUFFIX}") if pipeline.is_dir() else ():
        tmp.unlink(missing_ok=True)
    cache = ledger_cache.cache_dir(raw)
    for tmp in cache.glob(f"*{TEMP_SUFFIX}") if cache.is_dir() else ():
        tmp.unlink(missing_ok=True)
    shutil.rmtree(pipeline / "spill", ignore_errors=True)


def _warm_up() -> None:
    """Load, on a thread of its own, what a run with new events needs a little later:
    pandas (pyarrow imports it on its first conversion of Python values, about 0.25 s) and
    ua-parser's rules (0.13 s, in calls that hold the GIL for up to 75 ms). Started just
    before the first batch is read: DuckDB's scans do not need the GIL, the Python steps
    before them do (started after the segment checks, it stalled them by 0.1 s on small
    runs; before the checks, it slowed them by as much as it saved). Whoever needs either
    first waits on its import or initialisation lock until the thread is done with it."""

    def load() -> None:
        try:
            import pandas  # noqa: F401  (the import is the point)
            import ua_parser

            ua_parser.parser  # noqa: B018  (building the global parser is the point)
        except Exception:  # noqa: S110  (the first real use reports any problem)
            pass

    threading.Thread(target=load, name="anonymizer-warm-up", daemon=True).start()


def _screen(
    work: _Run, segments: list[Path], seen: Mapping[str, list[int]]
) -> tuple[list[Path], dict[Path, Span]]:
    """The segments safe to read: each one not seen before (or changed since) is checked in
    full first, and a damaged one is quarantined, never read by the engine. Also returns
    what the checks saw of each sound new segment."""
    unchecked = [
        segment
        for segment in segments
        if segment.is_symlink()
        or seen.get(str(segment.relative_to(work.raw_dir))) != _file_stamp(segment)
    ]
    # Checks decode in Arrow, outside the GIL: two segments at a time use both cores.
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        checked = dict(zip(unchecked, pool.map(inspect_segment, unchecked), strict=True))
    kept = []
    spans: dict[Path, Span] = {}
    for segment in segments:
        result = checked.get(segment)
        if isinstance(result, Problem):
            work.quarantine(segment, result)
            continue
        kept.append(segment)
        if result is not None:
            spans[segment] = result
    return kept, spans


def _new_local_days(
    engine: Engine, files: Sequence[Path], spans: Mapping[Path, Span], zone: ZoneInfo
) -> dict[date, int]:
    """Local days (and event counts) of ``files``. A segment whose first and last event fall
    on one local day (most of them: a segment holds one flush) is counted from its check;
    only the others are scanned by the engine."""
    counts: dict[date, int] = {}
    scan = []
    for segment in files:
        span = spans.get(segment)
        if span is None:
            scan.append(segment)
        elif span.first is not None and span.last is not None:
            day = span.first.astimezone(zone).date()
            if day != span.last.astimezone(zone).date():
                scan.append(segment)
            else:
                counts[day] = counts.get(day, 0) + span.rows
    for day, count in engine.local_days(scan).items():
        counts[day] = counts.get(day, 0) + count
    return counts


def _run_screened(
    work: _Run, engine: Engine, state: Mapping[str, Any], progress: ProgressCallback | None
) -> dict[str, Any]:
    """The steps; when the engine fails, a seen segment may have been damaged since it was
    checked: every segment is checked again, damaged ones quarantined, and the steps run
    again (the days those held are published again). Any other failure is raised."""
    while True:
        try:
            return _run_steps(work, engine, state, progress)
        except PipelineError:
            raise
        except Exception:
            damaged = [(s, p) for s in list_segments(work.raw_dir) if (p := check_segment(s))]
            if not damaged:
                raise
            for segment, problem in damaged:
                work.quarantine(segment, problem, republish=True)
            work.restart()


def _run_steps(
    work: _Run, engine: Engine, state: Mapping[str, Any], progress: ProgressCallback | None
) -> dict[str, Any]:
    raw, report = work.raw_dir, work.report
    seen: dict[str, list[int]] = dict(state.get("segments", {}))
    final_days = {date.fromisoformat(d) for d in state.get("final_days", [])}
    published = work.published
    published |= {date.fromisoformat(d) for d in state.get("published_days", [])}

    segments, spans = _screen(work, list_segments(raw), seen)
    stamps = {str(p.relative_to(raw)): _file_stamp(p) for p in segments}
    # A segment `consent-admin compact` merged from segments all seen unchanged holds no new
    # data: adopted as seen (it was still checked above like any other new file).
    known = seen | adopted_stamps(raw, seen)
    new = [
        p for p in segments if known.get(str(p.relative_to(raw))) != stamps[str(p.relative_to(raw))]
    ]
    report.new_segments = len(new)

    erased = set(read_tombstones(raw))  # the same reader the middleware and purge use
    erased_digest = hashlib.sha256("\n".join(sorted(erased)).encode()).hexdigest()
    engine.register_erased(erased)

    new_days = _new_local_days(engine, new, spans, work.zone)
    for day, count in sorted(new_days.items()):
        if day in final_days:
            report.late_days_skipped.append(day)
            report.late_events_skipped += count
    todo = {d for d in new_days if d not in final_days}
    if erased_digest != state.get("tombstones"):
        todo |= published - final_days  # an erasure reaches every day not yet final
    if work.journal is not None and work.journal.republish:
        # Days a segment quarantined mid-run may have reached (local days overlap UTC +-1).
        near = {d + timedelta(days=o) for d in work.journal.republish for o in (-1, 0, 1)}
        todo |= near - final_days
    from anonymizer.dp import release  # here: anonymizer.dp imports this module

    # Before anything is published: one privacy mode per STATS, and the budget is charged.
    release.authorize(work.stats_dir, sorted(todo), work.options, work.generated_at)

    # Daily tables from events, one local day at a time: flat memory, linear time.
    by_partition: dict[date, list[Path]] = {}
    for seg in segments:
        key = _partition_date(seg)
        if key is not None:
            by_partition.setdefault(key, []).append(seg)
    batches = _batches(
        sorted(todo), by_partition, engine, work.options.batch_events, new_days, set(new), work.zone
    )
    # The ledger's new lines are parsed on a thread of its own while the daily batches run:
    # it needs nothing they make, and their scans leave a core idle now and then (the
    # summary, the lookups, publishing). The pool's exit waits for it whatever happens.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="anonymizer-ledger") as pool:
        ledger = pool.submit(_update_ledger_cache, work.raw_dir, engine, state)
        for index, days in enumerate(batches):
            if progress:
                progress(f"days {days[0].isoformat()}..{days[-1].isoformat()}", index, len(batches))
            _publish_days(work, engine, days, by_partition)
        if progress and batches:
            progress("days", len(batches), len(batches))
        found = ledger.result()
    ledger_state = _consent_step(work, engine, found, final_days, published)
    retention_state = _retention_step(
        work, engine, state, segments, bool(new) or erased_digest != state.get("tombstones")
    )

    for day in sorted(published - final_days):
        if work.is_final(day):
            final_days.add(day)
            report.days_made_final.append(day)
    return {
        "version": STATE_VERSION,
        "timezone": work.options.timezone,
        "k": work.options.k,
        "segments": stamps,
        "tombstones": erased_digest,
        "ledger": ledger_state,
        "final_cohorts": retention_state,
        "published_days": sorted(d.isoformat() for d in published - final_days),
        "final_days": sorted(d.isoformat() for d in final_days),
        "runs": state.get("runs", []),
    }


def _covering(
    days: list[date], by_partition: Mapping[date, list[Path]], zone: ZoneInfo
) -> list[Path]:
    """Segments of every UTC partition that a local day of ``days`` overlaps.

    Partitions are UTC dates (the segment checks hold every row to its folder's date), so
    a local day needs only the UTC dates between its first and last instant: one partition
    in UTC, two in most other zones, never more than its +-1 neighbours.
    """
    keys: set[date] = set()
    for day in days:
        first = datetime.combine(day, time(), zone).astimezone(UTC)
        after = datetime.combine(day + timedelta(days=1), time(), zone).astimezone(UTC)
        last = (after - timedelta(microseconds=1)).date()
        keys.update(first.date() + timedelta(days=n) for n in range((last - first.date()).days + 1))
    return [f for key in sorted(keys) for f in by_partition.get(key, [])]


def _batches(
    days: list[date],
    by_partition: Mapping[date, list[Path]],
    engine: Engine,
    batch_events: int,
    new_counts: Mapping[date, int],
    new: Collection[Path],
    zone: ZoneInfo,
) -> list[list[date]]:
    """Consecutive days grouped so that each batch holds about ``batch_events`` events:
    fewer, larger queries, with memory still bounded by the batch size."""
    if not days:
        return []
    counts = dict(new_counts)
    covering = _covering(days, by_partition, zone)
    if sum(counts.get(d, 0) for d in days) > batch_events and not set(covering) <= set(new):
        # Old segments count too (when every covering segment is new, ``new_counts``
        # already counted all of them: a day's events are only in its +-1 partitions).
        counts = engine.local_days(covering)
    batches: list[list[date]] = [[]]
    size = 0
    for day in days:
        n = counts.get(day, 0)
        if batches[-1] and size + n > batch_events:
            batches.append([])
            size = 0
        batches[-1].append(day)
        size += n
    return batches


def _publish_days(
    work: _Run, engine: Engine, days: list[date], by_partition: Mapping[date, list[Path]]
) -> None:
    """Steps 1-8 of the daily event tables for one batch of local days."""
    files = _covering(days, by_partition, work.zone)
    if files and not work.warmed_up:
        work.warmed_up = True
        _warm_up()
    batch = engine.load_days(files, days) if files else None
    per_day = batch.rows_per_day if batch else {}
    versions = batch.policy_versions if batch else ()
    work.report.input_rows += sum(per_day.values())
    results = {
        table.name: work.table_rows(engine, table, days) if batch else table.schema.empty_table()
        for table in TABLES.values()
        if table.partition == "date" and table.name != "consent_daily"
    }
    for day in days:
        meta = work.metadata(per_day.get(day, 0), versions)
        for name, rows in results.items():
            work.publish(TABLES[name], day, rows, meta)
        work.report.days_published.append(day)
        work.published.add(day)


def _update_ledger_cache(
    raw_dir: Path, engine: Engine, state: Mapping[str, Any]
) -> ledger_cache.LedgerUpdate:
    """Parse what the ledger gained since its last chunk (see :mod:`anonymizer.ledger_cache`)
    and say which chunks hold decisions this STATS folder has not counted."""
    folder = RawLayout.at(raw_dir).ledger
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    with _duckdb_connection(engine) as con:
        return ledger_cache.update(raw_dir, files, _ledger_offsets(state), DECISION_ACTIONS, con)


def _consent_step(
    work: _Run,
    engine: Engine,
    found: ledger_cache.LedgerUpdate,
    final_days: set[date],
    published: set[date],
) -> dict[str, int]:
    """consent_daily: recompute the non-final days of the decisions ``found`` new in the
    ledger since this STATS folder's last run; returns the bytes of each stream now
    counted."""
    if not found.new:
        return found.offsets
    engine.load_ledger(found.chunks)
    touched = engine.consent_days(found.new)
    days = {d for d in touched if d not in final_days}
    per_day = engine.select_consent(days)
    work.report.consent_decisions = sum(per_day.values())
    table = TABLES["consent_daily"]
    result = work.table_rows(engine, table)
    for day in sorted(days):
        work.publish(table, day, result, work.metadata(per_day.get(day, 0), ()))
        published.add(day)
    return found.offsets


def _ledger_offsets(state: Mapping[str, Any]) -> dict[str, int]:
    """Bytes of each ledger stream a state has counted (none in a state written before the
    ledger cache, which kept file stamps instead: then every decision counts as new)."""
    saved = state.get("ledger", {})
    return {
        name: value
        for name, value in (saved.items() if isinstance(saved, dict) else ())
        if isinstance(value, int) and not isinstance(value, bool)
    }


@contextmanager
def _duckdb_connection(engine: Engine) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection of its own (in UTC), safe to use beside the engine's queries on
    another thread: to the DuckDB engine's database (its threads and memory limit), or to a
    private one for another engine."""
    con = engine.con.cursor() if isinstance(engine, DuckDBEngine) else duckdb.connect(":memory:")
    try:
        con.execute("SET TimeZone = 'UTC'")
        yield con
    finally:
        con.close()


def _tidy_ledger_cache(raw_dir: Path, engine: Engine) -> None:
    """After a run is saved: merge the chunks every STATS folder's state has counted."""
    folder = RawLayout.at(raw_dir).ledger
    streams = {f.name for f in folder.glob("*.jsonl")} if folder.is_dir() else set()
    floors: dict[str, int] | None = None
    for path in sorted((raw_dir / "pipeline").glob("state-*.json")):
        try:
            offsets = _ledger_offsets(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, AttributeError):
            continue  # unreadable: its run starts over anyway
        floors = (
            offsets
            if floors is None
            else {name: min(n, offsets.get(name, 0)) for name, n in floors.items()}
        )
    # A cache: what a merge could not tidy is still read correctly, and tidied next time.
    with suppress(OSError, duckdb.Error), _duckdb_connection(engine) as con:
        ledger_cache.merge(raw_dir, streams, floors or {}, con)


def _retention_step(
    work: _Run, engine: Engine, state: Mapping[str, Any], segments: list[Path], dirty: bool
) -> list[str]:
    """retention_weekly: recomputed from every consented event when anything changed;
    only cohorts not yet final are (re)published."""
    final_cohorts = set(state.get("final_cohorts", []))
    if not dirty:
        return sorted(final_cohorts)
    table = TABLES["retention_weekly"]
    work.report.retention_events = engine.load_retention(segments)
    result = work.table_rows(engine, table)
    cohorts = {c for c in result[table.partition].to_pylist() if c is not None}
    cohorts |= set(partition_keys(work.stats_dir, table))
    for cohort in sorted(cohorts):
        if cohort.isoformat() in final_cohorts:
            continue
        work.publish(table, cohort, result, work.metadata(work.report.retention_events, ()))
        last_day = cohort + timedelta(days=7 * (MAX_WEEK_OFFSET + 1) - 1)
        if work.is_final(last_day):
            final_cohorts.add(cohort.isoformat())
    return sorted(final_cohorts)


def _publish_manifest_and_notice(work: _Run, state: dict[str, Any]) -> None:
    opts, report = work.options, work.report
    runs: list[dict[str, Any]] = list(state.get("runs", []))
    # Exact event counts are not differentially private: withheld when epsilon is set.
    exact = opts.epsilon is None
    if report.new_segments or report.changed or report.late_events_skipped:
        runs.append(
            {
                "generated_at": work.generated_at,
                "new_segments": report.new_segments,
                "input_rows": report.input_rows if exact else None,
                "days_published": len(report.days_published),
                "partitions_written": report.partitions.get("written", 0),
                "partitions_unchanged": report.partitions.get("unchanged", 0),
                "late_events_skipped": report.late_events_skipped if exact else None,
            }
        )
    state["runs"] = runs[-100:]
    tables: dict[str, Any] = {}
    for table in TABLES.values():
        summary = summarize(work.stats_dir, table)
        tables[table.name] = {
            "columns": [{"name": n, "type": t} for n, t in summary.columns],
            "partition": table.partition,
            "dimensions": list(table.dimensions),
            "rows": summary.rows,
            "partitions": summary.partitions,
            "first": summary.first.isoformat() if summary.first else None,
            "last": summary.last.isoformat() if summary.last else None,
        }
    manifest = {
        "pipeline_version": PIPELINE_VERSION,
        "k": opts.k,
        "timezone": opts.timezone,
        "epsilon": opts.epsilon,
        "max_pageviews_per_visitor": opts.max_pageviews,
        "tables": tables,
        "final_days": state["final_days"],
        "runs": state["runs"],
    }
    if opts.epsilon is not None:
        manifest["differential_privacy"] = _privacy_section(work)
    write_manifest(work.stats_dir, manifest)
    for lang in LANGUAGES:
        text = render_notice(
            lang,
            k=opts.k,
            timezone=opts.timezone,
            contact=opts.contact,
            privacy=_privacy_statement(opts),
        )
        write_text_atomic(work.stats_dir / notice_filename(lang), text)


def _privacy_section(work: _Run) -> dict[str, Any]:
    """The manifest's ``differential_privacy`` block (only written with epsilon)."""
    from anonymizer.dp import release  # here: anonymizer.dp imports this module

    return release.manifest_section(work.stats_dir, work.options)


def _privacy_statement(opts: RunOptions) -> PrivacyStatement | None:
    """What the notice says about differential privacy (None without epsilon)."""
    if opts.epsilon is None:
        return None
    from anonymizer.dp import release  # here: anonymizer.dp imports this module

    return release.notice_statement(opts)

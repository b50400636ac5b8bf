"""Applying erasure tombstones: the purge step that physically removes erased visitors' data.

What goes: every raw event whose anonymous id is erased, and every event *without* an
anonymous id that carries the same ``visitor_hash`` as one of those (the same browser on
the same day before it consented; the pipeline drops those too). Events of other
anonymous ids are never touched.

How, so that it is safe while apps write and after a crash:

- only finished segments are touched (writers only ever add new files, under new names);
  each affected segment is rewritten to a temporary file and renamed over the original
  (:func:`~consent_middleware.raw.segments.replace_atomically`), or deleted when nothing
  is left: a reader sees the whole old segment or the whole new one;
- two passes. Pass 1 removes the id-less events linked by ``visitor_hash``; pass 2 removes
  the events that carry an erased id. A purge killed during pass 1 leaves every erased
  id's events in place, so a rerun finds the same links again; killed during pass 2, pass 1
  was already complete. A rerun therefore ends in the same state as an uninterrupted run;
- one purge at a time (an exclusive lock on ``RAW/.purge.lock``); a killed purge's
  temporary files are removed by the next one.

An erasure request is marked completed once no segment holds any of its ids any more.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from consent_middleware.raw.layout import SEGMENT_SUFFIX, RawLayout
from consent_middleware.raw.locks import file_lock
from consent_middleware.raw.segments import list_segments, replace_atomically
from consent_middleware.receipt_links import all_links, prune_links
from consent_middleware.request_log import load_requests, save_request
from consent_middleware.retention import (
    DEFAULT_RETENTION_DAYS,
    DEFAULT_TEMP_AGE,
    PurgeContext,
    PurgeReport,
    PurgeStep,
    clean_temporaries,
    destroy_salts,
    expire_events,
    purge,
)
from consent_middleware.tombstones import digest, read_tombstones

PURGE_TMP_SUFFIX = ".purge.tmp"
"""Temporary name of a segment being rewritten (ends in ``.tmp``: no reader picks it up)."""

Hook = Callable[[str, Path], None]
"""Called with ("staged" | "replaced" | "deleted", segment) around each rewrite (tests use
it to kill a purge at a chosen point)."""


@contextmanager
def purge_lock(raw_dir: Path) -> Iterator[None]:
    """Hold the RAW store's purge lock (blocks while another purge runs)."""
    with file_lock(raw_dir / ".purge.lock"):
        yield


@dataclass(slots=True)
class _Scan:
    """Which segments hold erased data, and how the id-less rows are linked."""

    by_aid: dict[Path, int] = field(default_factory=dict)
    by_link: dict[Path, int] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)  # visitor_hash -> aid_sha256


def _duckdb_scan(files: Sequence[Path], erased: set[str]) -> _Scan:
    """Two streaming passes over the id columns (flat memory, however large RAW is)."""
    import duckdb

    scan = _Scan()
    if not files or not erased:
        return scan
    paths = [str(f) for f in files]
    gone = "aid IS NOT NULL AND sha256(aid) IN (SELECT h FROM erased)"
    with duckdb.connect() as con:
        con.register("erased", pa.table({"h": pa.array(sorted(erased), pa.string())}))
        for vh, h in con.execute(
            f"SELECT DISTINCT visitor_hash, sha256(aid) FROM read_parquet(?) "
            f"WHERE {gone} AND visitor_hash IS NOT NULL",
            [paths],
        ).fetchall():
            scan.links[str(vh)] = str(h)
        con.register("linked", pa.table({"vh": pa.array(sorted(scan.links), pa.string())}))
        rows = con.execute(
            f"SELECT filename, count(*) FILTER (WHERE {gone}), count(*) FILTER (WHERE "
            "aid IS NULL AND visitor_hash IN (SELECT vh FROM linked)) "
            "FROM read_parquet(?, filename = true) GROUP BY filename",
            [paths],
        ).fetchall()
    for name, by_aid, by_link in rows:
        if by_aid:
            scan.by_aid[Path(name)] = int(by_aid)
        if by_link:
            scan.by_link[Path(name)] = int(by_link)
    return scan


def present_ids(files: Sequence[Path], hashes: set[str]) -> set[str]:
    """Which of the ``aid_sha256`` in ``hashes`` still occur in ``files``."""
    import duckdb

    if not files or not hashes:
        return set()
    with duckdb.connect() as con:
        con.register("wanted", pa.table({"h": pa.array(sorted(hashes), pa.string())}))
        rows = con.execute(
            "SELECT DISTINCT sha256(aid) AS h FROM read_parquet(?) "
            "WHERE aid IS NOT NULL AND sha256(aid) IN (SELECT h FROM wanted)",
            [[str(f) for f in files]],
        ).fetchall()
    return {str(h) for (h,) in rows}


def _erased_mask(table: pa.Table, erased: set[str]) -> tuple[pa.ChunkedArray, Counter[str]]:
    """Rows whose aid is erased, and how many per ``aid_sha256``."""
    aids = table["aid"]
    plain = [a for a in pc.unique(aids).to_pylist() if a is not None and digest(a) in erased]
    mask = pc.fill_null(pc.is_in(aids, value_set=pa.array(plain, pa.string())), False)
    counts: Counter[str] = Counter()
    for item in pc.value_counts(aids.filter(mask)).to_pylist():
        counts[digest(item["values"])] += item["counts"]
    return mask, counts


def _linked_mask(table: pa.Table, links: dict[str, str]) -> tuple[pa.ChunkedArray, Counter[str]]:
    """Rows without aid whose visitor_hash links them to an erased id."""
    vh = table["visitor_hash"]
    linked = pc.fill_null(pc.is_in(vh, value_set=pa.array(sorted(links), pa.string())), False)
    mask = pc.and_(pc.is_null(table["aid"]), linked)
    counts: Counter[str] = Counter()
    for item in pc.value_counts(vh.filter(mask)).to_pylist():
        counts[links[item["values"]]] += item["counts"]
    return mask, counts


def _codec(path: Path) -> str:
    """The compression codec of a Parquet file, so a rewrite keeps the operator's choice."""
    meta = pq.ParquetFile(path).metadata
    if meta.num_row_groups == 0 or meta.num_columns == 0:
        return "zstd"
    codec = str(meta.row_group(0).column(0).compression).lower()
    return "none" if codec == "uncompressed" else codec


def _rewrite(path: Path, keep: pa.Table, hook: Hook | None) -> str:
    """Replace ``path`` by ``keep`` atomically, or delete it when ``keep`` is empty."""
    if keep.num_rows == 0:
        path.unlink(missing_ok=True)
        if hook:
            hook("deleted", path)
        return "deleted"

    codec = _codec(path)

    def write(handle: BinaryIO) -> None:
        pq.write_table(keep, handle, compression=codec)
        if hook:
            hook("staged", path)

    replace_atomically(path, write, tmp=path.with_name(path.name + PURGE_TMP_SUFFIX))
    if hook:
        hook("replaced", path)
    return "replaced"


def _pass(
    files: Sequence[Path],
    select: Callable[[pa.Table], tuple[pa.ChunkedArray, Counter[str]]],
    ctx: PurgeContext,
    report: PurgeReport,
    removed: Counter[str],
    hook: Hook | None,
) -> None:
    for path in files:
        try:
            table = pq.read_table(path)
        except FileNotFoundError:  # expired meanwhile
            continue
        mask, counts = select(table)
        gone = sum(counts.values())
        if not gone:
            continue
        removed.update(counts)
        report.erased_events += gone
        rel = str(path.relative_to(ctx.raw_dir))
        if rel not in report.rewritten_segments:
            report.rewritten_segments.append(rel)
        if not ctx.dry_run:
            _rewrite(path, table.filter(pc.invert(mask)), hook)


def _purge_quarantine(
    ctx: PurgeContext,
    report: PurgeReport,
    erased: set[str],
    links: dict[str, str],
    removed: Counter[str],
    hook: Hook | None,
) -> None:
    """Quarantined segments (``anonymizer`` moves damaged ones there) are cleaned one by one
    in memory, so a damaged file never stops the purge; a file that cannot be read whole is
    listed in ``report.unchecked_files`` for the operator to inspect or delete."""
    folder = RawLayout.at(ctx.raw_dir).quarantine
    for path in sorted(folder.rglob(f"*{SEGMENT_SUFFIX}")) if folder.is_dir() else []:
        rel = str(path.relative_to(ctx.raw_dir))
        try:
            table = pq.read_table(path)
            if "aid" not in table.column_names:
                continue  # nothing in it can be attributed to an anonymous id
            by_aid, aid_counts = _erased_mask(table, erased)
            own = {
                str(r["visitor_hash"]): digest(str(r["aid"]))
                for r in table.filter(by_aid).select(["aid", "visitor_hash"]).to_pylist()
                if r["visitor_hash"] is not None
            }
            by_link, link_counts = _linked_mask(table, {**links, **own})
        except Exception:  # pyarrow raises many kinds of errors for a damaged file
            report.unchecked_files.append(rel)
            continue
        gone = sum(aid_counts.values()) + sum(link_counts.values())
        if not gone:
            continue
        removed.update(aid_counts + link_counts)
        report.erased_events += gone
        report.rewritten_segments.append(rel)
        if not ctx.dry_run:
            _rewrite(path, table.filter(pc.invert(pc.or_(by_aid, by_link))), hook)


def _remove_own_temporaries(raw_dir: Path) -> None:
    """A killed purge's half-written rewrites (we hold the lock: no purge is writing)."""
    for tmp in raw_dir.rglob(f"*{PURGE_TMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)


def _complete_requests(
    ctx: PurgeContext, report: PurgeReport, removed: Counter[str], erased: set[str]
) -> None:
    pending = [r for r in load_requests(ctx.raw_dir) if r.kind == "erasure" and r.status == "open"]
    if not pending:
        return
    wanted = {h for r in pending for h in r.aid_sha256}
    still = present_ids(list_segments(ctx.raw_dir), wanted)
    for request in pending:
        ids = set(request.aid_sha256)
        if ids & still or not ids <= erased or ctx.dry_run:
            continue  # data left (a segment written meanwhile): the next purge finishes it
        count = sum(removed[h] for h in ids)
        save_request(ctx.raw_dir, request.completed_at(ctx.now, removed_events=count))
        report.completed_requests.append(request.request_id)


def _prune_links(ctx: PurgeContext, report: PurgeReport, erased: set[str]) -> None:
    """Drop links of erased ids, and links older than retention whose id has no event left."""
    cutoff = ctx.now - timedelta(days=ctx.retention_days)
    old = {
        str(r.get("aid_sha256"))
        for r in all_links(ctx.raw_dir)
        if str(r.get("ts", "")) < cutoff.isoformat(timespec="seconds")
    }
    alive = present_ids(list_segments(ctx.raw_dir), old - erased)

    def drop(record: dict[str, object]) -> bool:
        h = str(record.get("aid_sha256"))
        return h in erased or (h in old and h not in alive)

    report.removed_links += prune_links(ctx.raw_dir, drop, now=ctx.now, dry_run=ctx.dry_run)


def erasure_step(hook: Hook | None = None) -> PurgeStep:
    """The purge step that applies tombstones (``hook`` is for fault-injection tests)."""

    def apply_erasures(ctx: PurgeContext, report: PurgeReport) -> None:
        """Remove erased ids' events from RAW; complete their requests; prune links."""
        erased = set(read_tombstones(ctx.raw_dir))
        with purge_lock(ctx.raw_dir):
            if not ctx.dry_run:
                _remove_own_temporaries(ctx.raw_dir)
                # A compaction killed after its merged file appeared leaves its sources
                # hidden from every listing, erased visitors' rows included: finish it
                # first, so that nothing erased outlives this purge on disk.
                from consent_middleware.raw.compaction import recover_compactions

                recover_compactions(ctx.raw_dir, now=ctx.now)
            removed: Counter[str] = Counter()
            if erased:
                scan = _duckdb_scan(list_segments(ctx.raw_dir), erased)
                # Pass 1 before pass 2: the links must survive until every linked row is gone.
                linked = sorted(scan.by_link)
                _pass(linked, lambda t: _linked_mask(t, scan.links), ctx, report, removed, hook)
                by_aid = sorted(scan.by_aid)
                _pass(by_aid, lambda t: _erased_mask(t, erased), ctx, report, removed, hook)
                _purge_quarantine(ctx, report, erased, scan.links, removed, hook)
            _complete_requests(ctx, report, removed, erased)
            _prune_links(ctx, report, erased)

    return apply_erasures


apply_erasures: PurgeStep = erasure_step()
"""Apply every tombstone of the RAW store (see the module docstring)."""

PURGE_STEPS: tuple[PurgeStep, ...] = (
    expire_events,
    clean_temporaries,
    apply_erasures,
    destroy_salts,
)
"""Retention, then erasure (after expiry, so there is less to rewrite), then salts."""


def purge_raw(
    raw_dir: str | Path,
    *,
    retention_days: int = DEFAULT_RETENTION_DAYS,
    now: datetime | None = None,
    temp_age: timedelta = DEFAULT_TEMP_AGE,
    dry_run: bool = False,
    hook: Hook | None = None,
) -> PurgeReport:
    """Everything ``consent-admin purge`` does: retention and erasure, with a report."""
    steps = PURGE_STEPS
    if hook is not None:
        steps = (expire_events, clean_temporaries, erasure_step(hook), destroy_salts)
    return purge(
        raw_dir,
        retention_days=retention_days,
        now=now or datetime.now(UTC),
        temp_age=temp_age,
        dry_run=dry_run,
        steps=steps,
    )

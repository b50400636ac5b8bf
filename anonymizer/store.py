"""The STATS store: layout, atomic publishing, the manifest and the sandboxed connection.

Layout (one Parquet dataset per table, Hive-partitioned)::

    STATS/<table>/date=YYYY-MM-DD/part-0.parquet       (retention_weekly: cohort_week=...)
    STATS/manifest.json
    STATS/notice.en.md, STATS/notice.ja.md

A partition is always exactly one file, replaced with ``os.replace``: a reader sees the old
partition or the new one, never half. A new partition is staged in a dot-named folder and
renamed into place. Dot-named files and folders are invisible to Parquet readers.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from anonymizer.journal import fault_point
from anonymizer.sandbox import lock_down
from anonymizer.tables import TABLES, TableDef
from consent_middleware.raw.layout import TEMP_SUFFIX
from consent_middleware.raw.segments import replace_atomically

if TYPE_CHECKING:
    import pyarrow.dataset as ds

PART_FILE = "part-0.parquet"
MANIFEST = "manifest.json"
METADATA_PREFIX = "anon."
VOLATILE_METADATA = frozenset({"anon.generated_at"})
"""Metadata that may differ between two publications of the same content."""

Outcome = Literal["written", "unchanged", "removed", "absent"]


class StatsNotFoundError(FileNotFoundError):
    """The STATS folder holds no published table yet."""


def partition_dir(stats_dir: Path, table: TableDef, key: date) -> Path:
    """Folder of one partition of ``table``."""
    return stats_dir / table.name / f"{table.partition}={key.isoformat()}"


def _write_parquet_atomic(table: pa.Table, final: Path) -> None:
    # A hidden temporary name: DuckDB globs over STATS must never see it.
    replace_atomically(
        final,
        lambda handle: pq.write_table(table, handle, compression="zstd"),
        tmp=final.with_name("." + final.name + ".tmp"),
    )


def write_text_atomic(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` via a temporary file; False when it already held ``text``."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True


def _same_content(existing: Path, table: pa.Table, metadata: Mapping[str, str]) -> bool:
    try:
        old = pq.read_table(existing)
    except (OSError, pa.ArrowInvalid):
        return False  # unreadable: replace it
    old_meta = {
        k.decode(): v.decode()
        for k, v in (old.schema.metadata or {}).items()
        if k.decode().startswith(METADATA_PREFIX) and k.decode() not in VOLATILE_METADATA
    }
    new_meta = {k: v for k, v in metadata.items() if k not in VOLATILE_METADATA}
    return old_meta == new_meta and old.replace_schema_metadata(None).equals(table)


def publish_partition(
    stats_dir: Path,
    table: TableDef,
    key: date,
    rows: pa.Table,
    metadata: Mapping[str, str],
) -> Outcome:
    """Replace one partition with ``rows`` (the partition column dropped) atomically.

    Identical content (ignoring ``anon.generated_at``) is left untouched, so a second run
    changes no file. An empty ``rows`` removes the partition.
    """
    folder = partition_dir(stats_dir, table, key)
    final = folder / PART_FILE
    data = rows.drop_columns([table.partition]).cast(table.file_schema)
    if data.num_rows == 0:
        if not folder.exists():
            return "absent"
        # Renamed out of sight first, so the partition disappears whole.
        doomed = folder.with_name("." + folder.name + f".{os.getpid()}.tmp")
        os.rename(folder, doomed)
        shutil.rmtree(doomed)
        return "removed"
    if final.is_file() and _same_content(final, data, metadata):
        return "unchanged"
    with_meta = data.replace_schema_metadata({k: v for k, v in sorted(metadata.items())})
    if folder.is_dir():
        _write_parquet_atomic(with_meta, final)
        return "written"
    # A new partition appears whole: staged in a hidden folder, then renamed into place.
    staging = folder.with_name("." + folder.name + f".{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _write_parquet_atomic(with_meta, staging / PART_FILE)
        fault_point("staged")
        os.rename(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return "written"


def remove_stale_temporaries(stats_dir: Path) -> list[Path]:
    """Remove what a killed run left half-done in STATS: hidden ``.*.tmp`` files and staging
    folders (never visible to readers). Call only while holding the run lock."""
    removed: list[Path] = []
    if not stats_dir.is_dir():
        return removed
    for folder, dirs, files in os.walk(stats_dir):
        for name in [*files, *dirs]:
            if name.startswith(".") and name.endswith(TEMP_SUFFIX):
                path = Path(folder) / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed.append(path)
        dirs[:] = [d for d in dirs if not (d.startswith(".") and d.endswith(TEMP_SUFFIX))]
    return removed


def find_links(folder: Path) -> list[Path]:
    """Symbolic links anywhere under ``folder`` (not followed): writing through one could
    put files outside the folder."""
    links: list[Path] = []
    if not folder.is_dir():
        return links
    for parent, dirs, files in os.walk(folder):
        links.extend(Path(parent) / n for n in [*dirs, *files] if (Path(parent) / n).is_symlink())
    return links


def partition_keys(stats_dir: Path, table: TableDef) -> list[date]:
    """Published partition keys of ``table``, oldest first."""
    root = stats_dir / table.name
    if not root.is_dir():
        return []
    prefix = table.partition + "="
    keys = []
    for folder in root.iterdir():
        if folder.name.startswith(prefix) and (folder / PART_FILE).is_file():
            try:
                keys.append(date.fromisoformat(folder.name.removeprefix(prefix)))
            except ValueError:
                continue  # not a partition the pipeline wrote: never read
    return sorted(keys)


@dataclass(frozen=True, slots=True)
class TableSummary:
    """What ``anonymizer tables`` shows for one table."""

    name: str
    columns: tuple[tuple[str, str], ...]
    rows: int
    partitions: int
    first: date | None
    last: date | None


def summarize(stats_dir: Path, table: TableDef) -> TableSummary:
    """Row count (from Parquet footers, no data read) and date range of one table."""
    keys = partition_keys(stats_dir, table)
    rows = sum(
        pq.ParquetFile(partition_dir(stats_dir, table, key) / PART_FILE).metadata.num_rows
        for key in keys
    )
    columns = tuple((name, str(kind)) for name, kind in table.columns)
    return TableSummary(
        table.name, columns, rows, len(keys), keys[0] if keys else None, keys[-1] if keys else None
    )


def read_manifest(stats_dir: Path) -> dict[str, Any]:
    """The manifest, or an empty mapping before the first run."""
    path = stats_dir / MANIFEST
    if not path.is_file():
        return {}
    loaded = json.loads(path.read_text(encoding="utf-8"))
    return loaded if isinstance(loaded, dict) else {}


def write_manifest(stats_dir: Path, manifest: Mapping[str, Any]) -> bool:
    """Write the manifest atomically; False when unchanged."""
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return write_text_atomic(stats_dir / MANIFEST, text)


def _dataset(stats_dir: Path, table: TableDef) -> pa.Table | ds.Dataset:
    """The published files of ``table`` as one dataset, named file by file.

    Only ``part-0.parquet`` files that lie inside STATS through no symbolic link are read:
    a link planted in STATS (say, to RAW) is never followed by a query.
    """
    root = stats_dir.resolve()
    files = []
    for key in partition_keys(stats_dir, table):
        expected = partition_dir(root, table, key) / PART_FILE
        if (partition_dir(stats_dir, table, key) / PART_FILE).resolve() == expected:
            files.append(str(expected))
    if not files:
        return table.schema.empty_table()
    # Imported here: pyarrow.dataset pulls in pandas (a quarter second), which a run,
    # unlike a query, never needs.
    import pyarrow.dataset as ds

    partitioning = ds.partitioning(pa.schema([(table.partition, pa.date32())]), flavor="hive")
    return ds.dataset(
        files,
        format="parquet",
        partitioning=partitioning,
        partition_base_dir=str(root / table.name),
        schema=pa.schema([*table.file_schema, (table.partition, pa.date32())]),
    )


def connect(stats_dir: str | Path) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with every published table as a view by its name, locked down.

    The views read through Arrow datasets registered before the lock; afterwards the
    connection has no file system access at all (``read_parquet``, ``read_csv``, ``COPY``,
    ``ATTACH``, ``INSTALL`` and ``LOAD`` are refused) and its configuration cannot be changed
    (see :mod:`anonymizer.sandbox`). Use ``.df()`` on a result for pandas. The views live
    in this connection only: a ``cursor()`` of it does not have them.
    """
    root = Path(stats_dir)
    if not any(partition_keys(root, t) for t in TABLES.values()):
        raise StatsNotFoundError(
            f"no published statistics in {root}: run `anonymizer run --raw RAW --stats {root}` "
            "first"
        )
    con = duckdb.connect(":memory:")
    for table in TABLES.values():
        source = f"_stats_{table.name}"
        con.register(source, _dataset(root, table))
        columns = ", ".join(table.column_names)
        con.execute(f"CREATE VIEW {table.name} AS SELECT {columns} FROM {source}")
    lock_down(con)
    return con

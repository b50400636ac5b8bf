"""Engines that run the table definitions of :mod:`anonymizer.tables`.

An engine provides the intermediate views the definitions read (see
:mod:`anonymizer.tables.base`, built from :mod:`anonymizer.engines.views`) and runs
:func:`anonymizer.privacy.table_sql` over them. DuckDB (:mod:`anonymizer.engines.duckdb`)
is the default, on one machine; Spark (:mod:`anonymizer.engines.spark`, the ``spark``
extra) runs the same SQL, transpiled, on a cluster. :func:`make_engine` picks one.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import date
from pathlib import Path
from typing import Literal, Protocol

import pyarrow as pa

from anonymizer.engines.duckdb import DayBatch, DuckDBEngine
from anonymizer.tables.base import TableDef

EngineName = Literal["duckdb", "spark"]
ENGINES: tuple[EngineName, ...] = ("duckdb", "spark")

SPARK_INSTALL_HINT = (
    "the Spark engine needs PySpark and sqlglot: pip install 'consent-anonymizer[spark]'"
)


class EngineUnavailableError(RuntimeError):
    """The chosen engine's optional dependencies are not installed (message: how to)."""


class Engine(Protocol):
    """What the pipeline drives (:mod:`anonymizer.pipeline`); both engines implement it."""

    def register_erased(self, aid_hashes: Collection[str]) -> None:
        """Step 1 input: SHA-256 hex digests of erased anonymous ids."""

    def local_days(self, files: Sequence[Path]) -> dict[date, int]:
        """Local days (and their event counts) that ``files`` hold events for."""
        ...

    def load_days(self, files: Sequence[Path], days: Collection[date]) -> DayBatch:
        """Steps 1-4 for the local ``days`` from the segment ``files`` covering them."""
        ...

    def load_ledger(self, chunks: Sequence[Path]) -> None:
        """Every consent decision in the ledger ``chunks`` (:mod:`anonymizer.ledger_cache`)."""

    def consent_days(self, files: Sequence[Path]) -> dict[date, int]:
        """Local days named by decisions in ``files``."""
        ...

    def select_consent(self, days: Collection[date]) -> dict[date, int]:
        """The ``consent_decisions`` view over ``days``."""
        ...

    def load_retention(self, files: Sequence[Path]) -> int:
        """The ``retention_activity`` view; returns the consented events read."""
        ...

    def run_table(self, table: TableDef, *, k: int, max_pageviews: int) -> pa.Table:
        """Steps 5-7 for one table, as an Arrow table of its published schema."""
        ...

    def close(self) -> None:
        """Release what the engine holds."""


def spark_available() -> bool:
    """True when the Spark engine's dependencies (PySpark, sqlglot) can be imported."""
    try:
        import pyspark  # noqa: F401
        import sqlglot  # noqa: F401
    except ImportError:
        return False
    return True


def make_engine(
    name: EngineName,
    *,
    timezone: str = "UTC",
    site_hosts: Collection[str] = (),
    memory_limit: str = "1GB",
    threads: int | None = None,
    temp_directory: Path | None = None,
    spark_master: str | None = None,
) -> Engine:
    """The engine called ``name``.

    ``memory_limit``, ``threads`` and ``temp_directory`` configure DuckDB; ``spark_master``
    is Spark's master URL (default ``local[*]``). Raises :class:`EngineUnavailableError`
    with an install hint when ``spark`` is asked for without PySpark.
    """
    if name == "duckdb":
        return DuckDBEngine(
            timezone=timezone,
            site_hosts=site_hosts,
            memory_limit=memory_limit,
            threads=threads,
            temp_directory=temp_directory,
        )
    if name == "spark":
        try:
            from anonymizer.engines.spark import SparkEngine
        except ImportError as exc:
            raise EngineUnavailableError(SPARK_INSTALL_HINT) from exc
        return SparkEngine(timezone=timezone, site_hosts=site_hosts, master=spark_master)
    raise ValueError(f"unknown engine {name!r}: choose one of {', '.join(ENGINES)}")


__all__ = [
    "ENGINES",
    "SPARK_INSTALL_HINT",
    "DayBatch",
    "DuckDBEngine",
    "Engine",
    "EngineName",
    "EngineUnavailableError",
    "make_engine",
    "spark_available",
]

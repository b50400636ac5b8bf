"""Engines that run the table definitions of :mod:`anonymizer.tables`.

An engine provides the intermediate views the definitions read (see
:mod:`anonymizer.tables.base`) and runs :func:`anonymizer.privacy.table_sql` over them.
DuckDB (:mod:`anonymizer.engines.duckdb`) is the default, on one machine.
"""

from __future__ import annotations

from anonymizer.engines.duckdb import DayBatch, DuckDBEngine

__all__ = ["DayBatch", "DuckDBEngine"]

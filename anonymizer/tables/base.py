"""TableDef: one published statistic, defined once as portable SQL.

A definition names the rows that *contribute* to the table (its ``source``, one row per
visitor and dimension value, or per event) and the aggregates over them. The privacy
step (:mod:`anonymizer.privacy`) wraps that into the final query: contribution bounds are
part of each source, the k-threshold and ``(other)`` folding are added around it.

Sources read only these intermediate views, which every engine provides:

``pageviews``       date, hour, ts_s, visitor, page_id, tech_id, language, source_id,
                    channel_id, utm_id (null when the pageview has no campaign tag)
``visit_pageviews`` the pageviews sessionised: date, ts_s, visitor, page_id, source_id,
                    channel_id, utm_id, new_visit (1 on a visit's first pageview),
                    visit_seconds (time since the previous pageview of the same visit, else
                    0), bounce (1 on a one-pageview visit)
``visits``          the first pageview of each visit: date, visitor, visit_start_s,
                    entry_page_id, source_id, channel_id, utm_id, bounce
``requests``        date, visitor, page_id, status, duration_ms (every non-bot request)
``page_names``      page_id, page
``tech_names``      tech_id, device_type, browser, os
``source_names``    source_id, source
``channel_names``   channel_id, channel
``utm_ids``         utm_id, utm_source, utm_medium, utm_campaign (tagged combinations only)
``status_names``    status_digit (the status's hundreds), status_class (e.g. ``4xx``)
``daily_visitors``  date, visitors (distinct visitors with a pageview that day)
``consent_decisions`` date, decision, purpose, granted, refused (one row per purpose named)
``retention_activity`` visitor, week_start, week_index (consented anonymous ids only)

Pages, (device type, browser, OS) combinations, sources, channels, campaign tags and status
classes are integer ids in the per-event views: grouping and sorting integers is much
cheaper than strings. A table whose source gives an id declares it in
:attr:`TableDef.names`, and the privacy step names its cells after grouping them (one id per
name; page, source, channel and campaign ids are dense ranks of the names, so they also sort
as the names do).

The SQL avoids engine-only functions so that a second engine (Spark, via sqlglot) can run it.
``{max_pageviews}`` is the only template parameter a source may use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pyarrow as pa

Grain = Literal["visitor", "event", "decision"]
"""What one source row stands for: one visitor in one cell, one event, one consent decision."""


@dataclass(frozen=True, slots=True)
class Names:
    """Dimensions a source gives as one integer id, named from a lookup after grouping."""

    id_column: str
    """The source column holding the id (e.g. ``page_id``)."""
    lookup: str
    """The view mapping ids to names (e.g. ``page_names``), one row per id."""
    columns: tuple[str, ...]
    """The dimension columns the lookup names (e.g. ``("page",)``)."""


@dataclass(frozen=True, slots=True)
class TableDef:
    """One published table: name, schema, dimensions and the SQL that defines it."""

    name: str
    """Published name (design section 7); also the view name in :func:`anonymizer.connect`."""
    columns: tuple[tuple[str, pa.DataType], ...]
    """Every published column in order, with its Arrow type (the partition column included)."""
    partition: str
    """Column the STATS dataset is partitioned by (``date`` or ``cohort_week``)."""
    dimensions: tuple[str, ...]
    """Columns whose values are thresholded and folded into ``(other)``."""
    source: str
    """SQL yielding the contributing rows: partition, dimensions, visitor (unless decisions)
    and the inputs of :attr:`measures`. Contribution bounds are applied here."""
    measures: tuple[tuple[str, str], ...]
    """(column, aggregate SQL over the source rows) for every non-dimension column."""
    grain: Grain = "visitor"
    """``visitor``: one row per visitor and cell; ``event``: possibly many rows per visitor;
    ``decision``: one row per consent decision and purpose, thresholded on their count."""
    thresholded: bool = True
    """False only for ``traffic_daily``: a day's totals are published even when small."""
    gated: bool = True
    """True: days with fewer than k visitors in total publish no row of this table."""
    numeric_dimensions: frozenset[str] = field(default_factory=frozenset)
    """Dimensions whose folded ``(other)`` value is NULL instead of the text ``(other)``."""
    names: tuple[Names, ...] = ()
    """Dimensions the source gives as ids (its rows have the id column instead)."""

    @property
    def column_names(self) -> tuple[str, ...]:
        """Published column names, in order."""
        return tuple(name for name, _ in self.columns)

    @property
    def schema(self) -> pa.Schema:
        """Arrow schema of the whole table (partition column included)."""
        return pa.schema(list(self.columns))

    @property
    def file_schema(self) -> pa.Schema:
        """Arrow schema of one partition file (the partition column lives in the folder name)."""
        return pa.schema([(n, t) for n, t in self.columns if n != self.partition])

    def source_sql(self, *, max_pageviews: int) -> str:
        """The source query with its contribution bound filled in."""
        return self.source.replace("{max_pageviews}", str(int(max_pageviews)))


PAGE_NAMES = Names("page_id", "page_names", ("page",))
TECH_NAMES = Names("tech_id", "tech_names", ("device_type", "browser", "os"))
SOURCE_NAMES = Names("source_id", "source_names", ("source",))
CHANNEL_NAMES = Names("channel_id", "channel_names", ("channel",))
UTM_NAMES = Names("utm_id", "utm_ids", ("utm_source", "utm_medium", "utm_campaign"))
STATUS_NAMES = Names("status_digit", "status_names", ("status_class",))

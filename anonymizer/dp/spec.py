"""What differential privacy releases of each published table, and how the budget is split.

The privacy unit is a *visitor-day*: every event of one daily visitor key (the salted hash of
IP, user agent and host, or the anonymous id) on one local day. Two data sets are neighbours
when they differ by one visitor-day. A run's ``--epsilon E`` is spent on every day it
publishes, split explicitly:

- across tables: each table of :data:`DP_TABLES` gets ``E / len(DP_TABLES)`` (equal shares);
  ``delta`` is split equally across the tables that select keys (every table but
  ``traffic_daily``, whose one row per day needs no selection);
- inside a table: by the weights of :class:`Measure` (the noisy visitor count that selects
  keys weighs 2, every other noisy sum 1), normalised to the table's share.

``consent_daily`` and ``retention_weekly`` are withheld under differential privacy: a consent
decision carries no visitor key to bound, and retention follows one visitor across weeks, so
neither has a visitor-day unit. Measures with no private mechanism here (response-time
percentiles, average visit length) are published as NULL.
"""

from __future__ import annotations

from dataclasses import dataclass

SELECTION = "dp_visitors"
"""Name of the noisy distinct-visitor count that decides which keys are published."""


@dataclass(frozen=True, slots=True)
class Measure:
    """One noisy count: a column of :func:`anonymizer.privacy.bounded_sql`."""

    name: str
    expression: str
    """SQL summed per visitor and cell (clamped to ``[0, max_pageviews]``); unused for the
    selection count, where each visitor counts once."""
    weight: int = 1
    """Share of the table's epsilon, relative to the table's other measures."""
    at_least_visitors: bool = False
    """Every counted visitor adds at least 1 here (a pageview, a visit, a request): the noisy
    value is raised to the noisy visitor count (post-processing, no budget)."""


@dataclass(frozen=True, slots=True)
class TableSpec:
    """The private release of one table."""

    measures: tuple[Measure, ...]
    """Every noisy count, the selection count (or ``traffic_daily``'s visitors) first."""
    columns: tuple[tuple[str, str], ...]
    """(published column, what it shows): a measure name, ``ratio:NUM/DEN`` of two noisy
    measures (post-processing, no extra budget), or ``withheld`` (NULL)."""
    max_rows: int | None = None
    """A tighter bound than ``--max-rows-per-visitor`` for this table, enforced in SQL like
    it; for tables where a visitor is practically always in one row (the visitor key
    includes the user agent, so one device, browser and OS; one browser language)."""
    selects_keys: bool = True
    """False for ``traffic_daily``: one row per processed day, no key to select."""

    @property
    def sums(self) -> tuple[tuple[str, str], ...]:
        """(name, expression) of every measure but the selection count."""
        return tuple((m.name, m.expression) for m in self.measures if m.name != SELECTION)


_VISITORS = Measure(SELECTION, "", weight=2)

DP_SPECS: dict[str, TableSpec] = {
    "traffic_daily": TableSpec(
        measures=(
            Measure(SELECTION, ""),
            Measure("pageviews", "pageviews", at_least_visitors=True),
            Measure("visits", "visits", at_least_visitors=True),
            Measure("bounces", "bounces"),
        ),
        columns=(
            ("pageviews", "pageviews"),
            ("visits", "visits"),
            ("visitors", SELECTION),
            ("bounce_rate", "ratio:bounces/visits"),
            ("avg_visit_seconds", "withheld"),
        ),
        max_rows=1,
        selects_keys=False,
    ),
    "pages_daily": TableSpec(
        measures=(
            _VISITORS,
            Measure("pageviews", "pageviews", at_least_visitors=True),
            Measure("entries", "entries"),
        ),
        columns=(("pageviews", "pageviews"), ("visitors", SELECTION), ("entries", "entries")),
    ),
    "sources_daily": TableSpec(
        measures=(_VISITORS, Measure("visits", "visits", at_least_visitors=True)),
        columns=(("visits", "visits"), ("visitors", SELECTION)),
    ),
    "campaigns_daily": TableSpec(
        measures=(_VISITORS, Measure("visits", "visits", at_least_visitors=True)),
        columns=(("visits", "visits"), ("visitors", SELECTION)),
    ),
    "technology_daily": TableSpec(
        measures=(_VISITORS, Measure("pageviews", "pageviews", at_least_visitors=True)),
        columns=(("visitors", SELECTION), ("pageviews", "pageviews")),
        max_rows=1,
    ),
    "hourly_traffic": TableSpec(
        measures=(_VISITORS, Measure("pageviews", "pageviews", at_least_visitors=True)),
        columns=(("pageviews", "pageviews"), ("visitors", SELECTION)),
    ),
    "languages_daily": TableSpec(
        measures=(_VISITORS,),
        columns=(("visitors", SELECTION),),
        max_rows=1,
    ),
    "performance_daily": TableSpec(
        # The visitor count only selects keys (the table has no visitors column).
        measures=(_VISITORS, Measure("requests", "1", at_least_visitors=True)),
        columns=(("requests", "requests"), ("p50_ms", "withheld"), ("p95_ms", "withheld")),
    ),
}
"""The tables released under differential privacy, in the order of design section 7."""

DP_TABLES: tuple[str, ...] = tuple(DP_SPECS)
WITHHELD_TABLES: tuple[str, ...] = ("consent_daily", "retention_weekly")
"""Published without differential privacy only; under ``--epsilon`` they get no rows."""

"""The split of one run's epsilon and delta over tables and measures, fixed before any data
is read (it depends on the options only, so refusing a run costs no privacy).

For a run with ``epsilon`` E and ``delta`` D per day, bounds ``L`` (rows per visitor, table
and day) and ``B`` (count per visitor and row, ``--max-pageviews-per-visitor``):

- table share: ``E_t = E / 8`` for each of the eight tables of :data:`DP_TABLES`;
  ``D_t = D / 7`` for each table that selects keys;
- measure share: ``E_m = E_t * weight / sum(weights of the table)``;
- noise scale: ``L_t / E_m`` for the visitor count and ``L_t * B / E_m`` for a sum, where
  ``L_t = min(L, table bound)`` (OpenDP's privacy map confirms each ``E_m``);
- threshold: the smallest ``tau >= k`` whose delta (OpenDP's map of
  ``make_laplace_threshold`` for ``L_t`` keys per visitor) is at most ``D_t``; roughly
  ``1 + scale * ln(L_t / D_t)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from functools import cache

from anonymizer.dp import mechanism
from anonymizer.dp.spec import DP_SPECS, SELECTION, TableSpec

DEFAULT_DELTA = 1e-6
"""Delta per day when ``--delta`` is not given."""
DEFAULT_BUDGET = 1.0
"""Epsilon every day may spend over all its releases when ``--budget`` is not given."""
DEFAULT_MAX_ROWS = 5
"""Rows of one table a visitor reaches per day when ``--max-rows-per-visitor`` is not given."""


def public_number(value: float) -> float:
    """``value`` rounded *up* to 10 significant digits, as STATS shows it.

    Full float reprs (``0.06666666666666667``) are long digit runs that look like ids to
    anyone scanning STATS for identifiers; rounding up never understates a privacy loss.
    """
    if value == 0 or not math.isfinite(value):
        return value
    if float(f"{value:.10g}") == value:
        return value  # already short: its repr has at most 10 significant digits
    exact = Decimal(value)
    step = Decimal(1).scaleb(exact.adjusted() - 9)
    # The ceiling is at least one step above an inexact value: far more than a float's ulp.
    return float(exact.quantize(step, rounding=ROUND_CEILING))


@dataclass(frozen=True, slots=True)
class MeasurePlan:
    """Noise of one measure."""

    name: str
    epsilon: float
    """As charged by OpenDP's privacy map."""
    delta: float
    scale: float
    sensitivity: int
    """L1 sensitivity: how much one visitor-day changes this measure's vector at most."""


@dataclass(frozen=True, slots=True)
class TablePlan:
    """Noise, bounds and threshold of one table."""

    name: str
    spec: TableSpec
    max_rows: int
    measures: tuple[MeasurePlan, ...]
    threshold: int | None
    """Noisy visitor count a key needs to be published (None: no selection)."""

    @property
    def epsilon(self) -> float:
        """Epsilon of the table (sequential composition of its measures)."""
        return sum(m.epsilon for m in self.measures)

    @property
    def delta(self) -> float:
        """Delta of the table (only the selection has one)."""
        return sum(m.delta for m in self.measures)

    def measure(self, name: str) -> MeasurePlan:
        """The plan of measure ``name``."""
        return next(m for m in self.measures if m.name == name)


@dataclass(frozen=True, slots=True)
class ReleasePlan:
    """Everything one run's private release of one day spends."""

    epsilon: float
    delta: float
    max_rows: int
    max_pageviews: int
    tables: dict[str, TablePlan]

    @property
    def spent_epsilon(self) -> float:
        """Epsilon per day as OpenDP charges it (equals ``epsilon`` up to rounding)."""
        return sum(t.epsilon for t in self.tables.values())

    @property
    def spent_delta(self) -> float:
        """Delta per day as OpenDP charges it (at most ``delta``)."""
        return sum(t.delta for t in self.tables.values())


@cache
def plan_release(
    epsilon: float, delta: float, *, max_rows: int, max_pageviews: int, k: int
) -> ReleasePlan:
    """Split ``epsilon`` and ``delta`` (per day) over every table and measure."""
    if not (epsilon > 0 and epsilon < float("inf")):
        raise ValueError("epsilon must be a positive number")
    if not 0 < delta < 1:
        raise ValueError("delta must be between 0 and 1 (exclusive)")
    selecting = sum(1 for s in DP_SPECS.values() if s.selects_keys)
    tables = {}
    for name, spec in DP_SPECS.items():
        table_epsilon = epsilon / len(DP_SPECS)
        table_delta = delta / selecting if spec.selects_keys else 0.0
        rows = min(max_rows, spec.max_rows or max_rows)
        weights = sum(m.weight for m in spec.measures)
        measures = []
        threshold = None
        for measure in spec.measures:
            share = table_epsilon * measure.weight / weights
            if measure.name == SELECTION and spec.selects_keys:
                scale = rows / share
                threshold = mechanism.selection_threshold(scale, rows, table_delta, k)
                eps, dlt = mechanism.selection_privacy(scale, threshold, rows)
                measures.append(MeasurePlan(measure.name, eps, dlt, scale, rows))
            else:
                sensitivity = rows if measure.name == SELECTION else rows * max_pageviews
                scale = sensitivity / share
                eps = mechanism.laplace_epsilon(scale, sensitivity)
                measures.append(MeasurePlan(measure.name, eps, 0.0, scale, sensitivity))
        tables[name] = TablePlan(name, spec, rows, tuple(measures), threshold)
    return ReleasePlan(epsilon, delta, max_rows, max_pageviews, tables)

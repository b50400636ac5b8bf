"""The private release of one table: bounded aggregates, OpenDP noise, private key selection.

What the pipeline calls when ``RunOptions.epsilon`` is set (see :mod:`anonymizer.dp`):

- :func:`authorize` before anything is published: one mode per STATS folder, and the budget
  of every day the run will publish is charged in the ledger (or the run is refused);
- :func:`release_table` instead of the k-threshold query;
- :func:`partition_metadata`, :func:`manifest_section` and :func:`notice_statement` to say
  what was done.

A dimension table publishes a key only when its noisy visitor count reaches the plan's
threshold (OpenDP ``make_laplace_threshold``), so the *set* of published keys is private
too: a key held by one visitor alone appears with probability at most the table's delta.
There is no ``(other)`` row and no small-day gate under differential privacy: both would
depend on exact counts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa

from anonymizer.dp import budget, mechanism
from anonymizer.dp.plan import DEFAULT_DELTA, ReleasePlan, TablePlan, plan_release
from anonymizer.dp.plan import public_number as _num
from anonymizer.dp.spec import DP_SPECS, SELECTION, WITHHELD_TABLES
from anonymizer.engines.duckdb import DuckDBEngine
from anonymizer.notice import PrivacyStatement
from anonymizer.pipeline import PipelineError, RunOptions
from anonymizer.privacy import bounded_sql
from anonymizer.tables import TableDef

UNIT = "visitor-day"
"""The privacy unit: every event of one daily visitor key on one local day."""


def plan_for(options: RunOptions) -> ReleasePlan:
    """The budget split of a run with ``options`` (``options.epsilon`` must be set)."""
    if options.epsilon is None:
        raise ValueError("no epsilon: this run is not differentially private")
    return plan_release(
        options.epsilon,
        options.delta if options.delta is not None else DEFAULT_DELTA,
        max_rows=options.max_rows_per_visitor,
        max_pageviews=options.max_pageviews,
        k=options.k,
    )


def validate(options: RunOptions) -> None:
    """Reject unusable privacy options with one actionable line (OpenDP not needed)."""
    if options.epsilon is None:
        if options.delta is not None:
            raise PipelineError("--delta needs --epsilon")
        return
    if not 0 < options.epsilon < float("inf"):
        raise PipelineError(f"--epsilon must be a positive number (got {options.epsilon})")
    if options.delta is not None and not 0 < options.delta < 1e-3:
        raise PipelineError(
            f"--delta must be above 0 and below 0.001 (got {options.delta}); "
            "a delta of 1e-6 or less is usual"
        )
    if not options.budget_per_day > 0:
        raise PipelineError("--budget must be a positive number")
    if options.max_rows_per_visitor < 1:
        raise PipelineError("--max-rows-per-visitor must be at least 1")


def authorize(stats_dir: Path, days: Sequence[date], options: RunOptions, run: str) -> None:
    """Before publishing: refuse mixing modes in one STATS folder; with epsilon, charge the
    budget of ``days`` (or refuse the run, naming the day, spent, requested and budget)."""
    budget.check_mode(stats_dir, options.epsilon)
    if options.epsilon is None:
        return
    try:
        mechanism.opendp()  # fail early with the install hint, even when the plan is cached
        plan = plan_for(options)
    except mechanism.OpenDPMissingError as exc:
        raise PipelineError(str(exc)) from exc
    budget.charge(stats_dir, days, plan, budget=options.budget_per_day, run=run)


def _query(engine: object, sql: str) -> pa.Table:
    """Run ``sql`` on the engine's intermediate views: an engine with ``query(sql)`` (for
    example Spark) answers itself; DuckDB runs it on its connection."""
    query = getattr(engine, "query", None)
    if callable(query):
        result = query(sql)
        if isinstance(result, pa.Table):
            return result
        raise TypeError(f"{type(engine).__name__}.query must return a pyarrow Table")
    if isinstance(engine, DuckDBEngine):
        return engine.con.sql(sql).to_arrow_table()
    raise TypeError(f"{type(engine).__name__} cannot run differentially private queries")


def release_table(
    engine: object, table: TableDef, options: RunOptions, days: Sequence[date] = ()
) -> pa.Table:
    """The private rows of ``table`` over the engine's loaded views, in its published schema.

    ``days`` are the days being published: ``traffic_daily`` gets a (noisy) row for each,
    whether or not anyone visited, so that a row's presence reveals nothing either.
    """
    if table.name not in DP_SPECS:
        return table.schema.empty_table()
    plan = plan_for(options).tables[table.name]
    sql = bounded_sql(
        table, sums=plan.spec.sums, max_pageviews=options.max_pageviews, max_rows=plan.max_rows
    )
    data = _query(engine, sql).to_pylist()
    if not plan.spec.selects_keys:
        present = {row[table.partition] for row in data}
        zero = {m.name: 0 for m in plan.measures}
        data += [{table.partition: d, **zero} for d in days if d not in present]
        data.sort(key=lambda row: row[table.partition])
    return _noisy_rows(table, plan, data)


def _noisy_rows(table: TableDef, plan: TablePlan, data: list[dict[str, Any]]) -> pa.Table:
    selection = plan.measure(SELECTION)
    counts = [int(row[SELECTION]) for row in data]
    if plan.threshold is not None:
        kept = mechanism.noisy_selection(counts, selection.scale, plan.threshold)
        positions = sorted(kept)
        noisy: dict[str, list[int]] = {SELECTION: [kept[i] for i in positions]}
    else:
        positions = list(range(len(data)))
        noisy = {SELECTION: mechanism.noisy_counts(counts, selection.scale)}
    rows = [data[i] for i in positions]
    for measure in plan.measures:
        if measure.name != SELECTION:
            values = [int(row[measure.name]) for row in rows]
            noisy[measure.name] = mechanism.noisy_counts(values, measure.scale)
    # Post-processing (no budget): no count is below zero, and counts every visitor adds
    # to are at least the visitor count.
    noisy = {name: [max(0, v) for v in values] for name, values in noisy.items()}
    for spec in plan.spec.measures:
        if spec.at_least_visitors:
            noisy[spec.name] = [
                max(v, n) for v, n in zip(noisy[spec.name], noisy[SELECTION], strict=True)
            ]
    shows = dict(plan.spec.columns)
    columns: dict[str, list[Any]] = {}
    for name in table.column_names:
        show = shows.get(name)
        if show is None:
            columns[name] = [row[name] for row in rows]
        elif show == "withheld":
            columns[name] = [None] * len(rows)
        elif show.startswith("ratio:"):
            top, bottom = show.removeprefix("ratio:").split("/")
            columns[name] = [
                round(min(1.0, t / b), 4) if b > 0 else None
                for t, b in zip(noisy[top], noisy[bottom], strict=True)
            ]
        else:
            columns[name] = noisy[show]
    return pa.table(columns, schema=table.schema)


def partition_metadata(table: TableDef, options: RunOptions) -> dict[str, str]:
    """The ``anon.*`` metadata of one private partition of ``table``."""
    whole = plan_for(options)
    plan = whole.tables.get(table.name)
    if plan is None:
        return {"anon.epsilon": "null", "anon.mechanism": "withheld under --epsilon"}
    return {
        # Exact counts and the set of policy versions seen are not private: withheld.
        "anon.input_rows": "null",
        "anon.policy_versions": "null",
        "anon.epsilon": repr(_num(plan.epsilon)),
        "anon.delta": repr(_num(plan.delta)),
        "anon.epsilon_per_day": repr(_num(whole.epsilon)),
        "anon.delta_per_day": repr(_num(whole.delta)),
        "anon.mechanism": mechanism.MECHANISM,
        "anon.contribution_bounds": json.dumps(_bounds(whole, plan), sort_keys=True),
        "anon.noise_scales": json.dumps(
            {m.name: _num(m.scale) for m in plan.measures}, sort_keys=True
        ),
        "anon.threshold": "null" if plan.threshold is None else str(plan.threshold),
    }


def _bounds(whole: ReleasePlan, plan: TablePlan | None = None) -> dict[str, Any]:
    return {
        "unit": UNIT,
        "max_rows_per_visitor": plan.max_rows if plan else whole.max_rows,
        "max_count_per_visitor_and_row": whole.max_pageviews,
    }


def manifest_section(stats_dir: Path, options: RunOptions) -> dict[str, Any]:
    """The ``differential_privacy`` block of the manifest: mechanism, epsilon, delta,
    bounds, the split over tables and measures, thresholds, and the budget spent per day."""
    whole = plan_for(options)
    spent = budget.spent_per_day(budget.read_ledger(stats_dir))
    return {
        "mechanism": mechanism.MECHANISM,
        "unit": UNIT,
        "epsilon_per_day": _num(whole.epsilon),
        "delta_per_day": _num(whole.delta),
        "budget_per_day": options.budget_per_day,
        "contribution_bounds": _bounds(whole),
        "split": {
            name: {
                "epsilon": _num(plan.epsilon),
                "delta": _num(plan.delta),
                "threshold": plan.threshold,
                "max_rows_per_visitor": plan.max_rows,
                "measures": {
                    m.name: {
                        "epsilon": _num(m.epsilon),
                        "scale": _num(m.scale),
                        "sensitivity": m.sensitivity,
                    }
                    for m in plan.measures
                },
                "withheld_columns": [c for c, show in plan.spec.columns if show == "withheld"],
            }
            for name, plan in whole.tables.items()
        },
        "withheld_tables": list(WITHHELD_TABLES),
        "ledger": budget.LEDGER.as_posix(),
        "spent": {
            day.isoformat(): {
                "epsilon": _num(s.epsilon),
                "delta": _num(s.delta),
                "releases": s.releases,
            }
            for day, s in sorted(spent.items())
        },
        "note": "each release of a day spends budget again; a final day is never re-released",
    }


def notice_statement(options: RunOptions) -> PrivacyStatement:
    """What the public notice says about the noise."""
    whole = plan_for(options)
    return PrivacyStatement(
        epsilon=whole.epsilon,
        delta=whole.delta,
        budget_per_day=options.budget_per_day,
        max_rows=whole.max_rows,
        max_pageviews=whole.max_pageviews,
        withheld_tables=WITHHELD_TABLES,
    )

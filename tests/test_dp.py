"""Differential privacy: OpenDP noise of the planned scale, the budget ledger, private key
selection, contribution bounds, and what the manifest, metadata and notice say."""

from __future__ import annotations

import json
import math
import re
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from synthetic import crowd, event
from test_privacy import assert_nothing_identifying

import anonymizer
from anonymizer.cli import anonymizer_cli
from anonymizer.dp import mechanism
from anonymizer.dp.budget import LEDGER, BudgetExceededError, PrivacyModeError, read_ledger
from anonymizer.dp.plan import DEFAULT_DELTA, plan_release, public_number
from anonymizer.dp.spec import DP_SPECS, SELECTION, WITHHELD_TABLES
from anonymizer.notice import PrivacyStatement, render_notice
from anonymizer.pipeline import PipelineError, RunOptions
from anonymizer.privacy import bounded_sql
from anonymizer.tables import TABLES
from consent_middleware.raw.segments import write_segment

DAY1 = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)  # a Monday
DAY2 = DAY1 + timedelta(days=1)
SOON = DAY2 + timedelta(hours=2)  # neither day is final yet (final_after_days = 2)
LATER = datetime(2026, 6, 1, tzinfo=UTC)
Z = 5.5
"""Two-sided normal tail of 5.5 standard errors: about 4e-8 per check."""


def rows(stats: Path, sql: str) -> list[tuple[Any, ...]]:
    con = anonymizer.connect(stats)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def snapshot(stats: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(stats)): p.read_bytes() for p in sorted(stats.rglob("*")) if p.is_file()
    }


# ----------------------------------------------------------------------------- the noise


def _moments(scale: float) -> tuple[float, float, float, float]:
    """E|Z|, E Z^2, E Z^4 and the closed-form E|Z| of discrete Laplace(scale), by summing
    the probability mass function (the tail beyond 80 scales is below 1e-30)."""
    alpha = math.exp(-1 / scale)
    norm = (1 - alpha) / (1 + alpha)
    top = int(80 * scale) + 10
    p = [norm * alpha**z for z in range(top)]
    first = sum(2 * z * pz for z, pz in enumerate(p))
    second = sum(2 * z**2 * pz for z, pz in enumerate(p))
    fourth = sum(2 * z**4 * pz for z, pz in enumerate(p))
    return first, second, fourth, 2 * alpha / (1 - alpha**2)


@pytest.mark.parametrize(
    ("table", "measure"),
    [("languages_daily", SELECTION), ("pages_daily", "pageviews"), ("traffic_daily", "visits")],
)
def test_noise_is_discrete_laplace_of_the_planned_scale(table: str, measure: str) -> None:
    """Mean absolute noise and mean squared noise over 100,000 draws of OpenDP's mechanism
    at the planned scale match discrete Laplace(scale) within 5.5 standard errors (fails
    < 1e-7 of the time); the scale is the sensitivity over the measure's epsilon share."""
    plan = plan_release(1.0, 1e-6, max_rows=5, max_pageviews=20, k=10).tables[table]
    scale = plan.measure(measure).scale
    weights = sum(m.weight for m in plan.spec.measures)
    (weight,) = [m.weight for m in plan.spec.measures if m.name == measure]
    share = 1.0 / len(DP_SPECS) * weight / weights
    bound = plan.max_rows * (1 if measure == SELECTION else 20)
    assert math.isclose(scale, bound / share)
    n = 100_000
    draws = mechanism.noisy_counts([0] * n, scale)
    first, second, fourth, closed = _moments(scale)
    assert math.isclose(first, closed, rel_tol=1e-9)  # the summation is right
    assert all(isinstance(x, int) for x in draws[:100])  # integer (discrete) noise
    mad = sum(abs(x) for x in draws) / n
    assert abs(mad - first) <= Z * math.sqrt((second - first**2) / n)
    msq = sum(x * x for x in draws) / n
    assert abs(msq - second) <= Z * math.sqrt((fourth - second**2) / n)
    assert abs(sum(draws) / n) <= Z * math.sqrt(second / n)  # centred


def test_selection_noise_has_the_same_scale_and_drops_small_counts() -> None:
    scale, n = 4.0, 50_000
    released = mechanism.noisy_selection([10_000] * n + [0] * n, scale, threshold=100)
    assert sorted(released) == list(range(n))  # zeros never reach 100; 10,000 always does
    first, second, _, _ = _moments(scale)
    mad = sum(abs(v - 10_000) for v in released.values()) / n
    assert abs(mad - first) <= Z * math.sqrt((second - first**2) / n)


@pytest.mark.parametrize(("scale", "rows_", "delta"), [(8.0, 1, 1e-7), (60.0, 5, 1.4e-7)])
def test_threshold_is_the_smallest_meeting_delta(scale: float, rows_: int, delta: float) -> None:
    threshold = mechanism.selection_threshold(scale, rows_, delta)
    assert mechanism.selection_privacy(scale, threshold, rows_)[1] <= delta
    assert mechanism.selection_privacy(scale, threshold - 1, rows_)[1] > delta
    # The closed form for discrete Laplace: rows * P[Z >= tau - 1] <= delta.
    alpha = math.exp(-1 / scale)
    closed = 1 + math.ceil(scale * math.log(rows_ / (delta * (1 + alpha))))
    assert abs(threshold - closed) <= 1
    assert mechanism.selection_threshold(scale, rows_, delta, minimum=10 * threshold) == (
        10 * threshold
    )


def test_the_split_sums_to_epsilon_and_delta_per_day() -> None:
    plan = plan_release(2.0, 1e-6, max_rows=3, max_pageviews=10, k=10)
    assert set(plan.tables) == set(TABLES) - set(WITHHELD_TABLES) == set(DP_SPECS)
    assert math.isclose(plan.spent_epsilon, 2.0, rel_tol=1e-9)
    assert 0 < plan.spent_delta <= 1e-6
    for table in plan.tables.values():
        assert math.isclose(table.epsilon, 2.0 / len(DP_SPECS), rel_tol=1e-9)
        for measure in table.measures:  # OpenDP's map: epsilon = sensitivity / scale
            assert math.isclose(measure.epsilon, measure.sensitivity / measure.scale)
    assert plan.tables["pages_daily"].measure("pageviews").sensitivity == 3 * 10
    assert plan.tables["technology_daily"].max_rows == 1
    assert plan.tables["traffic_daily"].threshold is None
    assert all(
        t.threshold and t.threshold >= 10 for n, t in plan.tables.items() if n != "traffic_daily"
    )


@given(st.floats(min_value=1e-12, max_value=1e6, allow_nan=False))
def test_public_numbers_are_short_and_never_understate(value: float) -> None:
    shown = public_number(value)
    assert shown >= value and math.isclose(shown, value, rel_tol=1e-9)
    assert max(len(run) for run in re.findall(r"[0-9]+", repr(shown))) <= 13


# ----------------------------------------------------------------------------- bounds in SQL


def test_bounded_sql_caps_rows_per_visitor_and_counts_per_row() -> None:
    con = duckdb.connect()
    pv = [(date(2026, 3, 2), 1, i) for i in range(12) for _ in range(3)]  # 12 pages x3
    pv += [(date(2026, 3, 2), 2, 0)] * 50  # 50 views of one page
    con.register(
        "visit_pageviews",
        pa.table(
            {
                "date": [r[0] for r in pv],
                "visitor": [r[1] for r in pv],
                "page_id": [r[2] for r in pv],
                "new_visit": [0] * len(pv),
            }
        ),
    )
    con.register(
        "page_names", pa.table({"page_id": range(12), "page": [f"/p{i}" for i in range(12)]})
    )
    table = TABLES["pages_daily"]
    spec = DP_SPECS["pages_daily"]
    sql = bounded_sql(table, sums=spec.sums, max_pageviews=20, max_rows=4)
    out = con.sql(sql).to_arrow_table().to_pylist()
    assert sum(r[SELECTION] for r in out) == 4 + 1  # visitor 1 kept in 4 pages, visitor 2 in 1
    assert all(r["pageviews"] <= 3 * r[SELECTION] + 20 for r in out)
    assert sum(r["pageviews"] for r in out) == 4 * 3 + 20  # visitor 2's 50 views capped at 20
    assert con.sql(sql).fetchall() == con.sql(sql).fetchall()  # the choice is deterministic


# ----------------------------------------------------------------------------- the pipeline


def _secret_raw(raw: Path) -> None:
    """400 visitors on /popular; one visitor alone on a unique page, hour, language,
    referrer, campaign and browser."""
    events = crowd(DAY1, 400, "/popular", referrer_host="www.google.com")
    events.append(
        event(
            DAY1 + timedelta(hours=5),
            "secret" + "0" * 24,
            "/secret-only-one",
            language="xx",
            referrer_host="secret-referrer.example",
            utm_source="secret-source",
            utm_medium="secret-medium",
            utm_campaign="secret-campaign",
            user_agent="Mozilla/5.0 (X11; Linux x86_64; rv:60.0) Gecko/20100101 SeaMonkey/2.49.4",
        )
    )
    write_segment(raw, events)


def _all_values(stats: Path) -> list[Any]:
    values: list[Any] = []
    for part in stats.rglob("*.parquet"):
        table = pq.read_table(part)
        for name in table.column_names:
            values += table[name].to_pylist()
    return values


def test_a_value_held_by_one_visitor_is_never_published(tmp_path: Path) -> None:
    """Ten private releases (fresh STATS each), the weakest protection (epsilon 8) and a
    delta of 1e-8: the single visitor's page, hour, language, source and campaign never
    appear (each run leaks with probability < 1e-8), while /popular always does."""
    raw = tmp_path / "raw"
    _secret_raw(raw)
    plain = tmp_path / "plain"
    anonymizer.run(raw, plain, RunOptions(now=LATER, k=2))
    assert "/secret-only-one" not in _all_values(plain)  # folded into (other) already
    for repeat in range(10):
        stats = tmp_path / f"dp{repeat}"
        options = RunOptions(now=LATER, epsilon=8.0, delta=1e-8, budget_per_day=8.0, k=2)
        anonymizer.run(raw, stats, options)
        values = _all_values(stats)
        assert not [v for v in values if isinstance(v, str) and "secret" in v]
        assert rows(stats, "SELECT DISTINCT hour FROM hourly_traffic") == [(DAY1.hour,)]
        assert rows(stats, "SELECT page FROM pages_daily") == [("/popular",)]
        assert rows(stats, "SELECT language FROM languages_daily") == [("ja",)]
        assert rows(stats, "SELECT source FROM sources_daily") == [("Google",)]
        assert rows(stats, "SELECT COUNT(*) FROM technology_daily") == [(1,)]
        assert rows(stats, "SELECT COUNT(*) FROM campaigns_daily") == [(0,)]
        (popular,) = rows(stats, "SELECT visitors FROM pages_daily")[0]
        assert abs(popular - 400) < 200  # noisy, but the scale is about 10 here
    # Nothing in STATS looks like an identifier: no long digit runs from float reprs either.
    assert assert_nothing_identifying(stats) > 0
    assert not re.search(r"[0-9a-fA-F]{16,}", (stats / LEDGER).read_text())


def test_budget_refuses_overspending_before_publishing(tmp_path: Path) -> None:
    """Two releases of a day that is not final fit a budget of 1.0 at epsilon 0.4 each; a
    third is refused before anything changes. Real clock: the command line has no ``now``."""
    # Yesterday at noon: not final yet, and the later batches (+10, +20 min) stay on that day
    # whatever time the test runs.
    recent = (datetime.now(UTC) - timedelta(days=1)).replace(
        hour=12, minute=0, second=0, microsecond=0
    )
    day = recent.date().isoformat()
    raw, stats = tmp_path / "raw", tmp_path / "stats"
    options = RunOptions(epsilon=0.4, budget_per_day=1.0)
    write_segment(raw, crowd(recent, 30))
    anonymizer.run(raw, stats, options)
    write_segment(raw, crowd(recent + timedelta(minutes=10), 5, prefix="x"))
    report = anonymizer.run(raw, stats, options)  # the day again: 0.8 of 1.0 spent
    assert report.days_published == [recent.date()]
    spent = json.loads((stats / "manifest.json").read_text())["differential_privacy"]["spent"]
    assert math.isclose(spent[day]["epsilon"], 0.8) and spent[day]["releases"] == 2
    before = snapshot(stats)
    write_segment(raw, crowd(recent + timedelta(minutes=20), 5, prefix="y"))
    with pytest.raises(BudgetExceededError) as refused:
        anonymizer.run(raw, stats, options)  # a third release would reach 1.2
    message = str(refused.value)
    assert f"budget exceeded for {day}" in message and "spent epsilon 0.8" in message
    assert "requests 0.4" in message and "budget 1 per day" in message
    assert "Nothing was published" in message and "not final" in message
    assert snapshot(stats) == before  # not a byte changed, ledger included
    # The command line says the same on one line, exit status 1.
    command = ["run", "--raw", str(raw), "--stats", str(stats), "--budget", "1", "--epsilon"]
    result = CliRunner().invoke(anonymizer_cli, [*command, "0.4"])
    assert result.exit_code == 1 and f"privacy budget exceeded for {day}" in result.output
    assert snapshot(stats) == before
    # A smaller epsilon still fits.
    result = CliRunner().invoke(anonymizer_cli, [*command, "0.2"])
    assert result.exit_code == 0, result.output
    entries = [e for e in read_ledger(stats) if e["day"] == day]
    assert math.isclose(sum(e["epsilon"] for e in entries), 1.0)
    assert sorted({e["release"] for e in entries}) == [1, 2, 3]


def test_private_run_states_mechanism_epsilon_delta_and_bounds(tmp_path: Path) -> None:
    raw, stats = tmp_path / "raw", tmp_path / "stats"
    write_segment(raw, crowd(DAY1, 1000, "/a"))  # well above the threshold of about 390
    result = CliRunner().invoke(
        anonymizer_cli,
        [
            "run",
            "--raw",
            str(raw),
            "--stats",
            str(stats),
            "--epsilon",
            "2",
            "--budget",
            "3",
            "--max-rows-per-visitor",
            "3",
            "--max-pageviews-per-visitor",
            "10",
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((stats / "manifest.json").read_text())
    assert manifest["epsilon"] == 2.0
    block = manifest["differential_privacy"]
    assert "Laplace" in block["mechanism"] and "OpenDP" in block["mechanism"]
    assert block["epsilon_per_day"] == 2.0 and block["delta_per_day"] == DEFAULT_DELTA
    assert block["budget_per_day"] == 3.0 and block["unit"] == "visitor-day"
    assert block["contribution_bounds"]["max_rows_per_visitor"] == 3
    assert block["contribution_bounds"]["max_count_per_visitor_and_row"] == 10
    assert math.isclose(sum(t["epsilon"] for t in block["split"].values()), 2.0)
    assert sorted(block["withheld_tables"]) == sorted(WITHHELD_TABLES)
    assert (stats / LEDGER).is_file()
    meta = pq.read_schema(stats / "pages_daily" / "date=2026-03-02" / "part-0.parquet").metadata
    assert float(meta[b"anon.epsilon"]) == pytest.approx(2.0 / len(DP_SPECS))
    assert 0 < float(meta[b"anon.delta"]) <= DEFAULT_DELTA
    assert b"Laplace" in meta[b"anon.mechanism"]
    bounds = json.loads(meta[b"anon.contribution_bounds"])
    assert bounds == {
        "unit": "visitor-day",
        "max_rows_per_visitor": 3,
        "max_count_per_visitor_and_row": 10,
    }
    en = (stats / "notice.en.md").read_text()
    assert "Differential privacy" in en and "epsilon = 2 and delta = 1e-06" in en
    assert "at most 3 rows" in en and "OpenDP" in en
    ja = (stats / "notice.ja.md").read_text()
    assert "差分プライバシー" in ja and "ε（イプシロン）= 2" in ja and "δ（デルタ）= 1e-06" in ja
    # The manifest alone is enough to render the same statement again.
    statement = PrivacyStatement.from_manifest(manifest)
    assert statement is not None and statement.max_rows == 3
    assert render_notice("ja", k=10, timezone="UTC", privacy=statement) == ja
    assert not rows(stats, "SELECT * FROM consent_daily")  # withheld under DP
    (avg,) = rows(stats, "SELECT avg_visit_seconds FROM traffic_daily")[0]
    assert avg is None
    # Nothing new: a second run spends nothing and changes nothing.
    before = snapshot(stats)
    anonymizer.run(
        raw,
        stats,
        RunOptions(epsilon=2.0, budget_per_day=3.0, max_rows_per_visitor=3, max_pageviews=10),
    )
    assert snapshot(stats) == before


def test_one_stats_folder_never_mixes_private_and_plain_releases(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_segment(raw, crowd(DAY1, 20))
    plain, private = tmp_path / "plain", tmp_path / "private"
    anonymizer.run(raw, plain, RunOptions(now=SOON))
    anonymizer.run(raw, private, RunOptions(now=SOON, epsilon=1.0))
    write_segment(raw, crowd(DAY1 + timedelta(hours=1), 5, prefix="x"))
    with pytest.raises(PrivacyModeError, match="without --epsilon"):
        anonymizer.run(raw, plain, RunOptions(now=SOON, epsilon=1.0))
    with pytest.raises(PrivacyModeError, match="differentially private"):
        anonymizer.run(raw, private, RunOptions(now=SOON))


def test_dp_off_publishes_exactly_what_it_did_before(tmp_path: Path) -> None:
    """No epsilon: no ledger, no privacy block, ``anon.epsilon`` null, the k-threshold."""
    raw, stats = tmp_path / "raw", tmp_path / "stats"
    write_segment(raw, crowd(DAY1, 12, "/a") + crowd(DAY1, 3, "/b", prefix="b"))
    anonymizer.run(raw, stats, RunOptions(now=LATER))
    assert not (stats / LEDGER).exists()
    manifest = json.loads((stats / "manifest.json").read_text())
    assert manifest["epsilon"] is None and "differential_privacy" not in manifest
    meta = pq.read_schema(stats / "pages_daily" / "date=2026-03-02" / "part-0.parquet").metadata
    assert meta[b"anon.epsilon"] == b"null" and b"anon.mechanism" not in meta
    # /b (3 visitors) is folded into an (other) row that itself stays below k.
    assert rows(stats, "SELECT page, visitors FROM pages_daily") == [("/a", 12)]
    assert "Differential privacy" not in (stats / "notice.en.md").read_text()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"delta": 1e-6}, "--delta needs --epsilon"),
        ({"epsilon": 0.0}, "--epsilon must be a positive number"),
        ({"epsilon": float("nan")}, "--epsilon must be a positive number"),
        ({"epsilon": 1.0, "delta": 0.01}, "--delta must be above 0"),
        ({"epsilon": 1.0, "budget_per_day": 0.0}, "--budget must be a positive number"),
        ({"epsilon": 1.0, "max_rows_per_visitor": 0}, "--max-rows-per-visitor must be at least 1"),
    ],
)
def test_unusable_privacy_options_are_refused(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    (tmp_path / "raw").mkdir()
    with pytest.raises(PipelineError, match=message):
        anonymizer.run(tmp_path / "raw", tmp_path / "stats", RunOptions(**options))


def test_missing_opendp_gives_an_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = tmp_path / "raw"
    write_segment(raw, crowd(DAY1, 12))
    # A None entry in sys.modules makes the import fail as if OpenDP were not installed.
    monkeypatch.setitem(sys.modules, "opendp.prelude", None)
    mechanism.opendp.cache_clear()
    try:
        with pytest.raises(PipelineError, match=r"pip install 'consent-anonymizer\[dp\]'"):
            anonymizer.run(raw, tmp_path / "stats", RunOptions(now=SOON, epsilon=1.0))
    finally:
        mechanism.opendp.cache_clear()
    assert not (tmp_path / "stats" / LEDGER).exists()

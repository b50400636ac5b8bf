"""Privacy checks on everything published: synthetic data and the real sample access log."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from synthetic import CHROME, crowd, event, generate

import anonymizer
from anonymizer.pipeline import RunOptions
from anonymizer.tables import TABLES, TableDef
from consent_middleware.raw.segments import write_segment

SAMPLE_LOG = Path(__file__).resolve().parents[2] / "shared" / "data" / "apache_combined_sample.log"
K = 10

FORBIDDEN = {
    "hash or id": re.compile(r"[0-9a-fA-F]{16,}|aid-\d+|^v\d{20,}"),
    "IPv4 address": re.compile(r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b"),
    "IPv6 address": re.compile(r"\b[0-9a-fA-F]{1,4}(:[0-9a-fA-F]{0,4}){3,7}\b"),
    "raw user agent": re.compile(r"Mozilla/|AppleWebKit|Gecko/|compatible;"),
    "query string": re.compile(r"[?&][A-Za-z_]+="),
    "e-mail address": re.compile(r"[^\s@/]+@[^\s@/]+\.[A-Za-z]{2,}"),
}


def published_values(stats: Path) -> Iterator[tuple[str, Any]]:
    """Every value and every metadata value of every published file, and the manifest."""
    for part in sorted(stats.rglob("*.parquet")):
        table = pq.read_table(part)
        for key, value in (table.schema.metadata or {}).items():
            yield f"{part} metadata {key.decode()}", value.decode()
        for name in table.column_names:
            for value in table[name].to_pylist():
                yield f"{part}:{name}", value
        yield f"{part} path", str(part.relative_to(stats))
    yield "manifest", (stats / "manifest.json").read_text()


def assert_nothing_identifying(stats: Path) -> int:
    checked = 0
    for where, value in published_values(stats):
        checked += 1
        if isinstance(value, str):
            for label, pattern in FORBIDDEN.items():
                assert not pattern.search(value), f"{label} in {where}: {value!r}"
    return checked


def assert_k_anonymous(stats: Path, k: int) -> None:
    con = anonymizer.connect(stats)
    for table in TABLES.values():
        if not table.dimensions or "visitors" not in table.column_names:
            continue
        small = con.execute(f"SELECT count(*) FROM {table.name} WHERE visitors < {k}").fetchall()
        assert small == [(0,)], table.name
    small = con.execute(
        f"SELECT count(*) FROM consent_daily WHERE granted + refused < {k}"
    ).fetchall()
    assert small == [(0,)]
    # Every breakdown is of a day whose total reaches k.
    for table in TABLES.values():
        if table.gated:
            bad = con.execute(
                f"SELECT count(*) FROM {table.name} WHERE date IN "
                f"(SELECT date FROM traffic_daily WHERE visitors < {k})"
            ).fetchall()
            assert bad == [(0,)], table.name


@pytest.fixture(scope="module")
def synthetic_stats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate(root / "raw", 60_000, days=3)
    anonymizer.run(root / "raw", root / "stats", RunOptions(k=K, site_hosts=("shop.example.com",)))
    return root / "stats"


def test_synthetic_stats_hold_no_identifier(synthetic_stats: Path) -> None:
    assert assert_nothing_identifying(synthetic_stats) > 1000


def test_synthetic_stats_are_k_anonymous(synthetic_stats: Path) -> None:
    assert_k_anonymous(synthetic_stats, K)
    con = anonymizer.connect(synthetic_stats)
    folded = con.execute("SELECT count(*) FROM pages_daily WHERE page = '(other)'").fetchall()
    assert folded[0][0] >= 1  # the Zipf tail was folded, not dropped


def test_a_one_day_visitor_on_a_rare_page_cannot_be_found(tmp_path: Path) -> None:
    t0 = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)
    events = crowd(t0, 30, "/")
    lone = "lone" + "0" * 28
    events += [
        event(t0 + timedelta(minutes=1), lone, "/secret-page", language="fi"),
        event(t0 + timedelta(minutes=2), lone, "/secret-page", status=500),
        event(
            t0 + timedelta(minutes=3),
            lone,
            "/",
            referrer_host="tiny-blog.example",
            utm_campaign="lonely",
            user_agent=CHROME.replace("Windows NT 10.0; Win64; x64", "X11; FreeBSD amd64"),
        ),
    ]
    raw, stats = tmp_path / "raw", tmp_path / "stats"
    write_segment(raw, events)
    anonymizer.run(raw, stats, RunOptions(k=K))
    text = "\n".join(str(v) for _, v in published_values(stats))
    for trace in ("secret-page", "fi", "tiny-blog", "lonely", "FreeBSD"):
        assert not re.search(rf"\b{re.escape(trace)}\b", text), trace


@pytest.fixture(scope="module")
def sample_stats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sample")
    report = anonymizer.import_log(
        root / "raw", [SAMPLE_LOG], "combined", site_host="semicomplete.com"
    )
    assert report.imported > 9000
    anonymizer.run(root / "raw", root / "stats", RunOptions(k=K, site_hosts=("semicomplete.com",)))
    return root / "stats"


def test_sample_log_stats_hold_no_identifier(sample_stats: Path) -> None:
    assert assert_nothing_identifying(sample_stats) > 100


def test_sample_log_stats_are_k_anonymous_and_bot_free(sample_stats: Path) -> None:
    assert_k_anonymous(sample_stats, K)
    con = anonymizer.connect(sample_stats)
    days = con.execute("SELECT count(*), sum(pageviews) FROM traffic_daily").fetchall()
    assert days[0][0] == 4 and days[0][1] > 0
    kinds = {r[0] for r in con.execute("SELECT device_type FROM technology_daily").fetchall()}
    assert "bot" not in kinds
    manifest = json.loads((sample_stats / "manifest.json").read_text())
    assert manifest["tables"]["pages_daily"]["rows"] > 0


# ------------------------------------------------------------------ cells grouped by ids


def _grouped_by_names(table: TableDef, *replacements: tuple[str, str]) -> TableDef:
    """``table`` with its source rewritten (each ``(old, new)`` in turn) to group by the
    names themselves, without ``TableDef.names``."""
    import dataclasses

    source = table.source
    for old, new in replacements:
        source = source.replace(old, new)
    return dataclasses.replace(table, names=(), source=source)


@pytest.mark.parametrize("seed", range(5))
def test_cells_grouped_by_ids_publish_what_cells_grouped_by_names_would(seed: int) -> None:
    """``pages_daily`` groups pages by id and names its cells afterwards (``TableDef.names``):
    the published rows must be exactly those of grouping by the page names, including a
    real page named ``(other)``, which merges into the folded row."""
    import random

    import duckdb
    import pyarrow as pa

    from anonymizer.privacy import table_sql

    rng = random.Random(seed)
    names = ["(other)", "/a", "/b", "/c", "/d", "/e", "/f"]
    rows = []
    for visitor in range(60):
        for _ in range(rng.randint(1, 4)):
            page = rng.choices(range(len(names)), weights=[3, 20, 8, 3, 2, 1, 1])[0]
            rows.append((visitor, page, rng.randint(0, 1)))
    con = duckdb.connect()
    con.register(
        "daily_visitors", pa.table({"date": [datetime(2026, 3, 2).date()], "visitors": [60]})
    )
    con.register(
        "page_names",
        pa.table({"page_id": range(len(names)), "page": names}),
    )
    columns = {
        "date": [datetime(2026, 3, 2).date()] * len(rows),
        "visitor": [r[0] for r in rows],
        "page_id": [r[1] for r in rows],
        "new_visit": [r[2] for r in rows],
    }
    con.register("visit_pageviews", pa.table(columns))
    con.register(
        "visit_pageviews_named",
        pa.table({**columns, "page": [names[r[1]] for r in rows]}),
    )
    by_id = TABLES["pages_daily"]
    by_name = _grouped_by_names(
        by_id, ("page_id", "page"), ("FROM visit_pageviews", "FROM visit_pageviews_named")
    )
    for k in (3, 10, 25):
        got = con.sql(table_sql(by_id, k=k, max_pageviews=2)).fetchall()
        assert got == con.sql(table_sql(by_name, k=k, max_pageviews=2)).fetchall()
        assert got and all(row[1] in names for row in got)


@pytest.mark.parametrize("seed", range(5))
def test_campaign_and_channel_ids_publish_what_their_names_would(seed: int) -> None:
    """``campaigns_daily`` groups by one id per tag combination (three names, nulls among
    them) and ``sources_daily`` by two ids (source, channel): the published rows must be
    those of grouping by the names, including a real ``(other)`` combination."""
    import random

    import duckdb
    import pyarrow as pa

    from anonymizer.privacy import table_sql

    rng = random.Random(seed)
    day = datetime(2026, 3, 2).date()
    tags = [
        ("(other)", "(other)", "(other)"),
        ("news", "email", "spring"),
        ("news", "email", None),
        ("ads", None, "spring"),
        (None, "cpc", None),
        ("ads", "cpc", "spring"),
    ]
    sources = ["(other)", "google", "t.co", "example.org"]
    channels = ["(other)", "campaign", "direct", "search"]
    visits = []
    for visitor in range(80):
        for _ in range(rng.randint(1, 3)):
            utm = rng.choices([None, *range(len(tags))], weights=[10, 2, 20, 6, 3, 2, 1])[0]
            source = rng.choices(range(len(sources)), weights=[2, 20, 6, 1])[0]
            channel = rng.choices(range(len(channels)), weights=[2, 10, 10, 3])[0]
            visits.append((visitor, utm, source, channel))
    con = duckdb.connect()
    con.register("daily_visitors", pa.table({"date": [day], "visitors": [80]}))
    con.register(
        "utm_ids",
        pa.table(
            {
                "utm_id": range(len(tags)),
                "utm_source": [t[0] for t in tags],
                "utm_medium": [t[1] for t in tags],
                "utm_campaign": [t[2] for t in tags],
            }
        ),
    )
    con.register("source_names", pa.table({"source_id": range(len(sources)), "source": sources}))
    con.register(
        "channel_names", pa.table({"channel_id": range(len(channels)), "channel": channels})
    )
    ids = {
        "date": [day] * len(visits),
        "visitor": [v[0] for v in visits],
        "utm_id": [v[1] for v in visits],
        "source_id": [v[2] for v in visits],
        "channel_id": [v[3] for v in visits],
    }
    con.register("visits", pa.table(ids))
    named = {
        **ids,
        "utm_source": [None if v[1] is None else tags[v[1]][0] for v in visits],
        "utm_medium": [None if v[1] is None else tags[v[1]][1] for v in visits],
        "utm_campaign": [None if v[1] is None else tags[v[1]][2] for v in visits],
        "source": [sources[v[2]] for v in visits],
        "channel": [channels[v[3]] for v in visits],
    }
    con.register("visits_named", pa.table(named))
    campaigns, sources_table = TABLES["campaigns_daily"], TABLES["sources_daily"]
    campaigns_by_name = _grouped_by_names(
        campaigns,
        ("utm_id", "utm_source, utm_medium, utm_campaign"),
        ("utm_source, utm_medium, utm_campaign IS NOT NULL", "utm_id IS NOT NULL"),
        ("FROM visits", "FROM visits_named"),
    )
    sources_by_name = _grouped_by_names(
        sources_table,
        ("source_id", "source"),
        ("channel_id", "channel"),
        ("FROM visits", "FROM visits_named"),
    )
    for by_id, by_name in ((campaigns, campaigns_by_name), (sources_table, sources_by_name)):
        for k in (3, 10, 25):
            got = con.sql(table_sql(by_id, k=k, max_pageviews=2)).fetchall()
            assert got == con.sql(table_sql(by_name, k=k, max_pageviews=2)).fetchall()
            assert got

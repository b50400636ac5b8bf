"""``anonymizer report``: the marketing report from real pipeline runs, checked against SQL
on the published tables, for self-containment, in Japanese, and in a real Chromium."""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st
from playwright.sync_api import Route, sync_playwright
from synthetic import crowd, generate

import anonymizer
from anonymizer.cli import anonymizer_cli
from anonymizer.reporting import FORMULA_START, ReportResult, csv_dir_for, to_csv
from anonymizer.reporting.charts import CJK_FAMILY, bar_chart, chart_style, cjk_font, find_font
from anonymizer.reporting.data import Column, ReportTable
from anonymizer.reporting.html import render_table
from consent_middleware.raw.segments import write_segment

SAMPLE_LOG = Path(__file__).resolve().parents[2] / "shared" / "data" / "apache_combined_sample.log"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
START = date(2026, 1, 5)  # synthetic data: two weeks from here
WEEK2 = ("2026-01-12", "2026-01-18")  # reported period; the previous one is the first week
SECTIONS = (
    "summary",
    "traffic",
    "hourly",
    "pages",
    "channels",
    "sources",
    "campaigns",
    "devices",
    "browsers",
    "os",
    "consent",
)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(anonymizer_cli, list(args))


@pytest.fixture(scope="module")
def stats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """STATS from a real pipeline run over two weeks of synthetic RAW events and a ledger."""
    root = tmp_path_factory.mktemp("synthetic")
    generate(root / "raw", 20_000, start=START, days=14)
    result = invoke(
        "run",
        "--raw",
        str(root / "raw"),
        "--stats",
        str(root / "stats"),
        "--timezone",
        "Asia/Tokyo",
        "--site-host",
        "shop.example.com",
    )
    assert result.exit_code == 0, result.output
    return root / "stats"


@pytest.fixture(scope="module")
def week2(stats: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The English report for the second week, made through the CLI."""
    out = tmp_path_factory.mktemp("report") / "report.html"
    result = invoke(
        "report", "--stats", str(stats), "--out", str(out), "--from", WEEK2[0], "--to", WEEK2[1]
    )
    assert result.exit_code == 0, result.output
    assert f"for {WEEK2[0]} .. {WEEK2[1]} (7 day(s) with data)" in result.output
    assert "compared with 2026-01-05 .. 2026-01-11" in result.output
    return out


def sql(stats: Path, query: str, *params: Any) -> list[tuple[Any, ...]]:
    con = anonymizer.connect(stats)
    try:
        return con.execute(query, list(params)).fetchall()
    finally:
        con.close()


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle))


class Page(HTMLParser):
    """Every tag with its attributes, the section ids and the text of an HTML page."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.html = html
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def attr_values(self, name: str) -> list[str]:
        return [a[name] or "" for _, a in self.tags if name in a]

    def sections(self) -> list[str]:
        return [a.get("id") or "" for tag, a in self.tags if tag == "section"]

    def card_value(self, metric: str) -> str:
        """The big number of the summary card for ``metric``."""
        start = self.html.index('<div class="value">', self.html.index(f'data-metric="{metric}"'))
        return self.html[start + len('<div class="value">') : self.html.index("</div>", start)]


def period_sum(stats: Path, column: str, table: str, start: str, end: str) -> int:
    rows = sql(
        stats,
        f"SELECT SUM({column}) FROM {table} WHERE date BETWEEN ? AND ?",
        date.fromisoformat(start),
        date.fromisoformat(end),
    )
    return int(rows[0][0])


def test_sections_and_csvs_hold_the_numbers_of_the_published_tables(
    stats: Path, week2: Path
) -> None:
    page = Page(week2.read_text(encoding="utf-8"))
    assert page.sections() == list(SECTIONS)
    folder = csv_dir_for(week2)
    assert folder == week2.parent / "report_files"
    for name in SECTIONS:
        assert (folder / f"{name}.csv").is_file()
        assert f"report_files/{name}.csv" in page.attr_values("href")
    # UTF-8 with a byte order mark and CRLF line ends, as spreadsheet programs expect.
    assert (folder / "summary.csv").read_bytes().startswith(b"\xef\xbb\xbfmetric,kind,")
    assert b"\r\n" in (folder / "summary.csv").read_bytes()
    summary = {row["metric"]: row for row in read_csv(folder / "summary.csv")}
    for metric in ("pageviews", "visits", "visitors"):
        now = period_sum(stats, metric, "traffic_daily", *WEEK2)
        before = period_sum(stats, metric, "traffic_daily", "2026-01-05", "2026-01-11")
        assert int(summary[metric]["current"]) == now
        assert int(summary[metric]["previous"]) == before
        assert float(summary[metric]["change"]) == pytest.approx((now - before) / before, abs=1e-4)
        assert page.card_value(metric) == f"{now:,}"
    granted, refused = sql(
        stats,
        "SELECT SUM(granted), SUM(refused) FROM consent_daily WHERE purpose = 'statistics' "
        "AND date BETWEEN ? AND ?",
        date.fromisoformat(WEEK2[0]),
        date.fromisoformat(WEEK2[1]),
    )[0]
    rate = float(summary["statistics_consent_rate"]["current"])
    assert rate == pytest.approx(granted / (granted + refused), abs=1e-4)

    daily = sql(
        stats,
        "SELECT date, pageviews, visits, visitors FROM traffic_daily "
        "WHERE date BETWEEN ? AND ? ORDER BY date",
        date.fromisoformat(WEEK2[0]),
        date.fromisoformat(WEEK2[1]),
    )
    traffic = read_csv(folder / "traffic.csv")
    assert [
        (r["date"], int(r["pageviews"]), int(r["visits"]), int(r["visitors"])) for r in traffic
    ] == [(d.isoformat(), pv, v, u) for d, pv, v, u in daily]


@pytest.mark.parametrize(
    ("name", "table", "dims", "measure"),
    [
        ("pages", "pages_daily", ("page",), "pageviews"),
        ("channels", "sources_daily", ("channel",), "visits"),
        ("sources", "sources_daily", ("source", "channel"), "visits"),
        ("campaigns", "campaigns_daily", ("utm_source", "utm_medium", "utm_campaign"), "visits"),
        ("devices", "technology_daily", ("device_type",), "visitors"),
        ("browsers", "technology_daily", ("browser",), "visitors"),
    ],
)
def test_breakdown_csvs_match_sql_and_fold_other_last(
    stats: Path, week2: Path, name: str, table: str, dims: tuple[str, ...], measure: str
) -> None:
    keys = ", ".join(dims)
    expected = {
        tuple(row[:-1]): row[-1]
        for row in sql(
            stats,
            f"SELECT {keys}, SUM({measure}) FROM {table} "
            f"WHERE date BETWEEN ? AND ? GROUP BY {keys}",
            date.fromisoformat(WEEK2[0]),
            date.fromisoformat(WEEK2[1]),
        )
    }
    rows = read_csv(csv_dir_for(week2) / f"{name}.csv")
    assert expected  # the synthetic traffic fills every breakdown
    assert {tuple(r[d] for d in dims): int(r[measure]) for r in rows} == expected
    named = [int(r[measure]) for r in rows if "(other)" not in [r[d] for d in dims]]
    assert named == sorted(named, reverse=True)
    others = [i for i, r in enumerate(rows) if "(other)" in [r[d] for d in dims]]
    assert others == list(range(len(rows) - len(others), len(rows)))  # folded rows last


def test_consent_rates_compare_with_the_previous_period(stats: Path, week2: Path) -> None:
    rows = {r["purpose"]: r for r in read_csv(csv_dir_for(week2) / "consent.csv")}
    assert set(rows) >= {"necessary", "statistics"}
    for purpose, row in rows.items():
        for period, column in ((WEEK2, "rate"), (("2026-01-05", "2026-01-11"), "previous_rate")):
            granted, refused = sql(
                stats,
                "SELECT SUM(granted), SUM(refused) FROM consent_daily "
                "WHERE purpose = ? AND date BETWEEN ? AND ?",
                purpose,
                date.fromisoformat(period[0]),
                date.fromisoformat(period[1]),
            )[0]
            if granted is None:  # e.g. an (other) row that only this period has
                assert row[column] == "" and row["change"] == ""
                continue
            assert float(row[column]) == pytest.approx(granted / (granted + refused), abs=1e-4)
        if row["change"]:
            assert float(row["change"]) == pytest.approx(
                float(row["rate"]) - float(row["previous_rate"]), abs=2e-4
            )


def svg_documents(page: Page) -> Iterator[str]:
    for src in page.attr_values("src"):
        assert src.startswith("data:image/svg+xml;base64,")
        yield base64.b64decode(src.split(",", 1)[1]).decode("utf-8")


def test_the_page_is_self_contained(week2: Path) -> None:
    html = week2.read_text(encoding="utf-8")
    page = Page(html)
    assert "<script" not in html.lower() and "@import" not in html and "url(" not in html
    assert len(page.attr_values("src")) >= 8  # one embedded chart per section with rows
    for svg in svg_documents(page):
        # Inside a chart, links only point at its own elements.
        assert "<image" not in svg
        for marker in ('href="', "href='"):
            for part in svg.split(marker)[1:]:
                assert part.startswith("#"), part[:60]
    for href in page.attr_values("href"):
        # Only relative links to the CSV files written beside the page.
        assert "://" not in href and not href.startswith("//")
        assert (week2.parent / unquote(href)).is_file(), href
    csp = [
        a.get("content") or ""
        for t, a in page.tags
        if a.get("http-equiv") == "Content-Security-Policy"
    ]
    assert csp == ["default-src 'none'; img-src data:; style-src 'unsafe-inline'"]


def test_japanese_report(stats: Path, tmp_path: Path) -> None:
    out = tmp_path / "レポート.html"
    result = invoke(
        "report", "--stats", str(stats), "--out", str(out), "--lang", "ja",
        "--from", WEEK2[0], "--to", WEEK2[1],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    html = out.read_text(encoding="utf-8")
    page = Page(html)
    assert '<html lang="ja">' in html
    text = "".join(page.text)
    for words in (
        "マーケティングレポート",
        "人気ページ",
        "チャネル",
        "同意率",
        "検索",
        "ページビュー",
    ):
        assert words in text
    assert (tmp_path / "レポート_files" / "pages.csv").is_file()
    # Links to the CSVs are percent-encoded and resolve to the files.
    for href in page.attr_values("href"):
        assert href.startswith(quote("レポート_files") + "/")
        assert (tmp_path / unquote(href)).is_file()
    # Chart text is drawn with the CJK font (pytest turns a missing-glyph warning into an error).
    assert cjk_font() == CJK_FAMILY
    assert len(page.attr_values("src")) >= 8


def test_a_period_without_data_gives_an_empty_report(stats: Path, tmp_path: Path) -> None:
    result = anonymizer.report(
        stats, tmp_path / "r.html", start=date(2030, 1, 1), end=date(2030, 1, 7)
    )
    assert isinstance(result, ReportResult)
    assert result.days_with_data == 0
    html = result.html.read_text(encoding="utf-8")
    assert "No statistics are published for this period." in html
    assert "<img" not in html
    assert Page(html).sections() == list(SECTIONS)
    assert read_csv(result.csv_dir / "traffic.csv") == []
    assert read_csv(result.csv_dir / "pages.csv") == []
    assert {r["current"] for r in read_csv(result.csv_dir / "summary.csv")} == {""}


def test_the_default_period_is_the_last_four_weeks_with_data(stats: Path, tmp_path: Path) -> None:
    result = anonymizer.report(stats, tmp_path / "r.html")
    first, last = sql(stats, "SELECT MIN(date), MAX(date) FROM traffic_daily")[0]
    assert result.period.end == last
    assert result.period.start == max(first, last - timedelta(days=27))
    assert result.previous.end == result.period.start - timedelta(days=1)
    assert result.previous.end - result.previous.start == result.period.end - result.period.start
    assert "No data for the previous period" in result.html.read_text(encoding="utf-8")
    only_from = anonymizer.report(stats, tmp_path / "from.html", start=date(2026, 1, 12))
    assert (only_from.period.start, only_from.period.end) == (date(2026, 1, 12), last)


def test_a_one_day_period(stats: Path, tmp_path: Path) -> None:
    out = tmp_path / "day.html"
    result = invoke(
        "report",
        "--stats",
        str(stats),
        "--out",
        str(out),
        "--from",
        "2026-01-12",
        "--to",
        "2026-01-12",
    )
    assert result.exit_code == 0, result.output
    summary = {r["metric"]: r for r in read_csv(csv_dir_for(out) / "summary.csv")}
    one = sql(stats, "SELECT pageviews FROM traffic_daily WHERE date = ?", date(2026, 1, 12))
    before = sql(stats, "SELECT pageviews FROM traffic_daily WHERE date = ?", date(2026, 1, 11))
    assert int(summary["pageviews"]["current"]) == one[0][0]
    assert int(summary["pageviews"]["previous"]) == before[0][0]


def test_unusable_stats_and_periods_are_one_line_errors(stats: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    result = invoke("report", "--stats", str(missing), "--out", str(tmp_path / "r.html"))
    assert result.exit_code == 1
    assert f"STATS folder {missing} does not exist" in result.output
    assert "anonymizer run --raw RAW --stats" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("report", "--stats", str(empty), "--out", str(tmp_path / "r.html"))
    assert result.exit_code == 1
    assert f"no published statistics in {empty}" in result.output
    result = invoke(
        "report", "--stats", str(stats), "--out", str(tmp_path / "r.html"),
        "--from", "2026-01-18", "--to", "2026-01-12",
    )  # fmt: skip
    assert result.exit_code == 1 and "starts after it ends" in result.output
    for period, message in (
        (("--from", "0001-01-01", "--to", "0001-01-02"), "no previous period before 0001-01-01"),
        (("--from", "2000-01-01"), "a report covers at most 1098 days"),
    ):
        result = invoke("report", "--stats", str(stats), "--out", str(tmp_path / "r.html"), *period)
        assert result.exit_code == 1 and message in result.output, result.output
    assert not (tmp_path / "r.html").exists()


def test_values_from_urls_are_escaped_in_html_and_defused_in_csv(tmp_path: Path) -> None:
    hostile = "<script>alert(1)</script>"
    formula = '=HYPERLINK("http://evil.example/","x")'
    t0 = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)
    raw, stats = tmp_path / "raw", tmp_path / "stats"
    write_segment(
        raw,
        crowd(t0, 12, "/", utm_source=formula, utm_medium="email", utm_campaign=hostile)
        + crowd(t0, 11, "/b", prefix="b"),
    )
    assert invoke("run", "--raw", str(raw), "--stats", str(stats)).exit_code == 0
    published = sql(stats, "SELECT utm_source, utm_campaign FROM campaigns_daily")
    assert published == [(formula, hostile)]  # k visitors made them publishable
    out = tmp_path / "r.html"
    assert invoke("report", "--stats", str(stats), "--out", str(out)).exit_code == 0
    html = out.read_text(encoding="utf-8")
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    row = read_csv(csv_dir_for(out) / "campaigns.csv")[0]
    assert row["utm_source"] == "'" + formula and row["utm_campaign"] == hostile


def test_report_from_the_real_sample_log(tmp_path: Path) -> None:
    raw, stats, out = tmp_path / "raw", tmp_path / "stats", tmp_path / "log.html"
    assert (
        invoke("import-log", "--raw", str(raw), "--format", "combined", str(SAMPLE_LOG)).exit_code
        == 0
    )
    assert invoke("run", "--raw", str(raw), "--stats", str(stats), "--k", "5").exit_code == 0
    result = invoke(
        "report", "--stats", str(stats), "--out", str(out),
        "--from", "2015-05-19", "--to", "2015-05-20",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = {r["metric"]: r for r in read_csv(csv_dir_for(out) / "summary.csv")}
    assert int(summary["pageviews"]["current"]) == period_sum(
        stats, "pageviews", "traffic_daily", "2015-05-19", "2015-05-20"
    )
    assert int(summary["pageviews"]["previous"]) == period_sum(
        stats, "pageviews", "traffic_daily", "2015-05-17", "2015-05-18"
    )
    pages = read_csv(csv_dir_for(out) / "pages.csv")
    assert pages and pages[0]["page"] != "(other)"
    # A web server log has no consent ledger: the section says so instead of failing.
    assert read_csv(csv_dir_for(out) / "consent.csv") == []
    assert "No rows in this period." in out.read_text(encoding="utf-8")


def assert_not_blank(shot: Path) -> None:
    """The screenshot shows a long page with charts: many non-white pixels and colours."""
    from matplotlib import image

    pixels = image.imread(str(shot))
    assert pixels.shape[0] > 2000  # the whole page, not just the first screen
    rgb = (pixels[..., :3] * 255).astype("uint8").reshape(-1, 3)
    non_white = (rgb < 240).any(axis=1).mean()
    colours = {tuple(c) for c in rgb[::7]}
    assert non_white > 0.05 and len(colours) > 200


def blocker(report: Path, attempted: list[str]) -> Callable[[Route], None]:
    """A route handler that lets ``report`` itself load and aborts (and records) the rest."""

    def block(route: Route) -> None:
        if route.request.url == report.as_uri():
            route.continue_()
            return
        attempted.append(route.request.url)
        route.abort()

    return block


@pytest.mark.slow
def test_chromium_renders_the_report_without_any_request(
    stats: Path, week2: Path, tmp_path: Path
) -> None:
    japanese = anonymizer.report(
        stats, tmp_path / "ja.html", start=START + timedelta(days=7), lang="ja"
    ).html
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium")
        try:
            for report, shot in ((week2, "report.png"), (japanese, "report-ja.png")):
                attempted: list[str] = []
                page = browser.new_page(viewport={"width": 1000, "height": 1400})
                page.route("**/*", blocker(report, attempted))
                page.goto(report.as_uri())
                page.wait_for_load_state("load")
                # Every embedded chart decoded and laid out.
                sizes = page.eval_on_selector_all(
                    "img.chart", "els => els.map(e => [e.complete, e.naturalWidth, e.clientHeight])"
                )
                page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
                page.close()
                assert attempted == [], report
                assert len(sizes) >= 8
                assert all(done and width > 0 and height > 50 for done, width, height in sizes)
                assert_not_blank(ARTIFACTS / shot)
        finally:
            browser.close()


def test_charts_fall_back_to_the_default_font_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING", logger="anonymizer.reporting.charts"):
        assert find_font("No Such Font Family 0") is None
        assert find_font("No Such Font Family 0") is None  # cached: logged once
    assert [r.getMessage() for r in caplog.records if "not found" in r.getMessage()] == [
        "font 'No Such Font Family 0' not found: Japanese text in charts will not render "
        "(install fonts-noto-cjk); charts are drawn with the default font"
    ]
    # Without the font a Japanese chart still renders (missing glyphs are not errors).
    with chart_style(None):
        uri = bar_chart(["検索", "直接"], [3, 2], "ja", metric="visits", previous=[1, None])
    assert uri.startswith("data:image/svg+xml;base64,")
    assert b"<svg" in base64.b64decode(uri.split(",", 1)[1])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=5))
def test_any_published_text_is_shown_verbatim_and_never_markup(values: list[str]) -> None:
    columns = (Column("campaign", "text"), Column("visits", "int"))
    table = ReportTable("campaigns", columns, tuple((v, 10 + i) for i, v in enumerate(values)))
    page = Page(render_table(table, "en"))
    assert {tag for tag, _ in page.tags} <= {"table", "thead", "tbody", "tr", "th", "td", "p"}
    shown = "".join(page.text)
    for value in values:
        assert value in shown  # escaped in the markup, verbatim once parsed
    parsed = list(csv.reader(io.StringIO(to_csv(table), newline="")))
    assert parsed[0] == ["campaign", "visits"]
    for value, row in zip(values, parsed[1:], strict=True):
        assert not row[0].startswith(FORMULA_START)
        assert row[0] == (("'" + value) if value.startswith(FORMULA_START) else value)


def test_report_refuses_a_linked_csv_folder(stats: Path, tmp_path: Path) -> None:
    """A symbolic link planted where the CSV folder goes is refused, nothing written there."""
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "r_files").symlink_to(target)
    result = CliRunner().invoke(
        anonymizer_cli, ["report", "--stats", str(stats), "--out", str(tmp_path / "r.html")]
    )
    assert result.exit_code == 1
    assert "must be a plain folder" in result.output
    assert list(target.iterdir()) == []
    assert not (tmp_path / "r.html").exists()

"""Generalisation rules: user agents, referrers, channels and asset paths (design section 7)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from anonymizer.generalize import (
    ASSET_EXTENSIONS,
    ASSET_SQL,
    CHANNEL_SQL,
    PAGEVIEW_SQL,
    channel_for,
    classify_referrers,
    classify_user_agents,
    device_type,
    is_asset_path,
    is_pageview,
)

# The shared data folder sits beside the checkout (../shared), in CI as here.
SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "apache_combined_sample.log"
_UA_AT_END = re.compile(r'"([^"]*)"$')


def sample_user_agents() -> Counter[str]:
    counts: Counter[str] = Counter()
    with SAMPLE.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            match = _UA_AT_END.search(line.rstrip("\n"))
            if match:
                counts[match.group(1)] += 1
    return counts


def classified(user_agents: list[str | None]) -> dict[str | None, dict[str, object]]:
    table = classify_user_agents(user_agents)
    return {row["user_agent"]: row for row in table.to_pylist()}


# --------------------------------------------------------------------------- user agents

CHROME_WIN = (
    "Mozilla/5.0 (Windows NT 6.1; WOW64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/32.0.1700.107 Safari/537.36"
)
FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:27.0) Gecko/20100101 Firefox/27.0"
SAFARI_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_9_1) AppleWebKit/537.73.11 (KHTML, like Gecko) "
    "Version/7.0.1 Safari/537.73.11"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 7_0_4 like Mac OS X) AppleWebKit/537.51.1 "
    "(KHTML, like Gecko) Version/7.0 Mobile/11B554a Safari/9537.53"
)
IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 7_0_4 like Mac OS X) AppleWebKit/537.51.1 (KHTML, like Gecko) "
    "Version/7.0 Mobile/11B554a Safari/9537.53"
)
ANDROID_PHONE = (
    "Mozilla/5.0 (Linux; Android 4.4.2; Nexus 5 Build/KOT49H) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/32.0.1700.99 Mobile Safari/537.36"
)
ANDROID_TABLET = (
    "Mozilla/5.0 (Linux; Android 4.4.2; Nexus 7 Build/KOT49H) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/32.0.1700.99 Safari/537.36"
)


def test_browsers_are_classified_with_family_os_and_device() -> None:
    rows = classified([CHROME_WIN, FIREFOX_LINUX, SAFARI_MAC, IPHONE, IPAD, ANDROID_PHONE])
    expected = {
        CHROME_WIN: ("Chrome", "Windows", "desktop"),
        FIREFOX_LINUX: ("Firefox", "Linux", "desktop"),
        SAFARI_MAC: ("Safari", "Mac OS X", "desktop"),
        IPHONE: ("Mobile Safari", "iOS", "mobile"),
        IPAD: ("Mobile Safari", "iOS", "tablet"),
        ANDROID_PHONE: ("Chrome Mobile", "Android", "mobile"),
    }
    for ua, (browser, os_family, kind) in expected.items():
        row = rows[ua]
        assert (row["browser"], row["os"], row["device_type"], row["is_bot"]) == (
            browser,
            os_family,
            kind,
            False,
        ), ua


def test_android_without_mobile_token_is_a_tablet() -> None:
    assert classified([ANDROID_TABLET])[ANDROID_TABLET]["device_type"] == "tablet"


def test_one_row_per_distinct_user_agent_with_the_documented_columns() -> None:
    table = classify_user_agents([CHROME_WIN, None, CHROME_WIN, IPHONE, None])
    assert table.column_names == ["user_agent", "browser", "os", "device_type", "is_bot"]
    assert table.schema.field("is_bot").type == pa.bool_()
    assert table["user_agent"].to_pylist() == [CHROME_WIN, None, IPHONE]


def test_missing_or_empty_user_agent_is_a_bot() -> None:
    rows = classified([None, "", "-"])
    assert all(row["is_bot"] and row["device_type"] == "bot" for row in rows.values())


@pytest.mark.parametrize(
    "user_agent",
    [
        "curl/7.88.1",
        "Wget/1.21.3",
        "python-requests/2.31.0",
        "Go-http-client/2.0",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "HeadlessChrome/120.0.0.0 Safari/537.36",
        "Mozilla/5.0 (Linux; Android 11; moto g power (2022)) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/112.0.0.0 Mobile Safari/537.36 Chrome-Lighthouse",
        "Pingdom.com_bot_version_1.4_(http://www.pingdom.com/)",
        "Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)",
        "Feedly/1.0 (+http://www.feedly.com/fetcher.html; 3 subscribers)",
        "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
        "Mozilla/5.0",
    ],
)
def test_tools_monitors_and_feed_readers_are_bots(user_agent: str) -> None:
    row = classified([user_agent])[user_agent]
    assert row["is_bot"] is True
    assert row["device_type"] == "bot"


def test_real_sample_crawlers_are_bots_and_browsers_are_not() -> None:
    uas = sample_user_agents()
    rows = classified(list(uas))
    for marker in ("Googlebot/", "bingbot/", "Baiduspider", "YandexBot/"):
        matching = [ua for ua in uas if marker in ua]
        assert matching, marker
        assert all(rows[ua]["is_bot"] for ua in matching), marker
    browsers = [ua for ua in (CHROME_WIN, FIREFOX_LINUX, SAFARI_MAC, IPHONE, IPAD) if ua in uas]
    assert len(browsers) >= 3  # the sample really contains these browsers
    assert not any(rows[ua]["is_bot"] for ua in browsers)
    # The sample is a technical blog: about a third of its requests come from automation.
    bot_share = sum(n for ua, n in uas.items() if rows[ua]["is_bot"]) / sum(uas.values())
    assert 0.2 < bot_share < 0.6


def test_device_type_rules() -> None:
    assert device_type(CHROME_WIN, "Windows", None) == "desktop"
    assert device_type("x", "iOS", "iPhone") == "mobile"
    assert device_type("x", "iOS", "iPad") == "tablet"
    assert device_type("SmartTV/1.0", "Other", None) == "other"
    assert device_type(CHROME_WIN, "Windows", None, is_bot=True) == "bot"


# --------------------------------------------------------------------------- referrers


def referrer_rows(hosts: list[str | None], site: tuple[str, ...] = ()) -> dict[str | None, tuple]:
    table = classify_referrers(hosts, site_hosts=site)
    assert table.column_names == ["referrer_host", "source", "channel"]
    return {r["referrer_host"]: (r["source"], r["channel"]) for r in table.to_pylist()}


def test_referrers_map_to_source_and_channel() -> None:
    rows = referrer_rows(
        [
            None,
            "www.google.com",
            "www.google.co.jp",
            "images.google.de",
            "www.bing.com",
            "search.yahoo.co.jp",
            "r.duckduckgo.com",
            "yandex.ru",
            "t.co",
            "m.facebook.com",
            "www.linkedin.com",
            "plus.google.com",
            "news.ycombinator.com",
            "mail.google.com",
            "outlook.live.com",
            "stackoverflow.com",
            "www.example.org",
            "192.0.2.7",
            "www.semicomplete.com",
            "blog.semicomplete.com",
        ],
        site=("semicomplete.com",),
    )
    assert rows == {
        None: ("(direct)", "direct"),
        "www.google.com": ("Google", "search"),
        "www.google.co.jp": ("Google", "search"),
        "images.google.de": ("Google", "search"),
        "www.bing.com": ("Bing", "search"),
        "search.yahoo.co.jp": ("Yahoo", "search"),
        "r.duckduckgo.com": ("DuckDuckGo", "search"),
        "yandex.ru": ("Yandex", "search"),
        "t.co": ("Twitter", "social"),
        "m.facebook.com": ("Facebook", "social"),
        "www.linkedin.com": ("LinkedIn", "social"),
        "plus.google.com": ("Google+", "social"),
        "news.ycombinator.com": ("Hacker News", "social"),
        "mail.google.com": ("Gmail", "email"),
        "outlook.live.com": ("Outlook", "email"),
        "stackoverflow.com": ("stackoverflow.com", "referral"),
        "www.example.org": ("example.org", "referral"),
        "192.0.2.7": ("(ip address)", "referral"),
        "www.semicomplete.com": ("(internal)", "internal"),
        "blog.semicomplete.com": ("(internal)", "internal"),
    }


def test_brand_names_inside_other_domains_are_referrals() -> None:
    rows = referrer_rows(["google.example.com", "notgoogle.com", "mygoogle.co.uk.evil.net"])
    assert {channel for _, channel in rows.values()} == {"referral"}


def test_site_host_match_is_by_label_not_by_substring() -> None:
    rows = referrer_rows(["evilsemicomplete.com"], site=("semicomplete.com",))
    assert rows["evilsemicomplete.com"] == ("evilsemicomplete.com", "referral")


# --------------------------------------------------------------------------- campaigns

CHANNEL_CASES = [
    ("search", None, None, None, "search"),
    ("direct", "newsletter", "email", "spring", "email"),
    ("referral", "twitter", "social", None, "social"),
    ("search", "google", "cpc", "brand", "campaign"),
    ("direct", None, None, "launch", "campaign"),
    ("direct", "partner", None, None, "campaign"),
]


@pytest.mark.parametrize(("channel", "source", "medium", "campaign", "expected"), CHANNEL_CASES)
def test_channel_for(
    channel: str, source: str | None, medium: str | None, campaign: str | None, expected: str
) -> None:
    assert channel_for(channel, source, medium, campaign) == expected


utm_values = st.one_of(
    st.none(), st.sampled_from(["email", "E-Mail", "social", "cpc", "", "x'y"]), st.text()
)


@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["direct", "search", "social", "referral", "internal"]),
            utm_values,
            utm_values,
            utm_values,
        ),
        max_size=30,
    )
)
def test_channel_sql_agrees_with_channel_for(rows: list[tuple]) -> None:
    table = pa.table(
        {
            "channel": [r[0] for r in rows],
            "utm_source": pa.array([r[1] for r in rows], pa.string()),
            "utm_medium": pa.array([r[2] for r in rows], pa.string()),
            "utm_campaign": pa.array([r[3] for r in rows], pa.string()),
        }
    )
    with duckdb.connect() as con:
        con.register("t", table)
        got = [r[0] for r in con.execute(f"SELECT {CHANNEL_SQL} FROM t").fetchall()]
    assert got == [channel_for(*r) for r in rows]


# --------------------------------------------------------------------------- assets


@pytest.mark.parametrize(
    ("path", "asset"),
    [
        ("/css/site.css", True),
        ("/js/APP.JS", True),
        ("/images/kibana-search.png", True),
        ("/favicon.ico", True),
        ("/fonts/a.woff2", True),
        ("/robots.txt", True),
        ("/", False),
        ("/blog/tags/puppet", False),
        ("/about.html", False),
        ("/papers/paper.pdf", False),
        ("/css/", False),
        ("/notes.cssx", False),
    ],
)
def test_is_asset_path(path: str, asset: bool) -> None:
    assert is_asset_path(path) is asset


def test_asset_extensions_cover_the_usual_static_files() -> None:
    assert {"css", "js", "png", "jpg", "jpeg", "gif", "svg", "ico", "webp", "woff", "woff2"} <= (
        ASSET_EXTENSIONS
    )
    assert {"ttf", "map"} <= ASSET_EXTENSIONS


@given(
    paths=st.lists(
        st.one_of(
            st.text(max_size=30),
            st.builds(
                lambda stem, ext, upper: "/" + stem + "." + (ext.upper() if upper else ext),
                st.text(max_size=10),
                st.sampled_from([*sorted(ASSET_EXTENSIONS), "html", "php", "cs", "jsx"]),
                st.booleans(),
            ),
        ),
        max_size=30,
    )
)
def test_asset_sql_agrees_with_is_asset_path(paths: list[str]) -> None:
    table = pa.table({"path": pa.array(paths, pa.string())})
    with duckdb.connect() as con:
        con.register("t", table)
        got = [r[0] for r in con.execute(f"SELECT {ASSET_SQL} FROM t").fetchall()]
    assert got == [is_asset_path(p) for p in paths]


def test_pageview_sql_agrees_with_is_pageview() -> None:
    rows = [
        ("GET", 200, "/blog/", True),
        ("GET", 304, "/blog/", False),
        ("POST", 200, "/blog/", False),
        ("GET", 200, "/style.css", False),
        ("GET", 204, "/api/x", True),
        ("GET", 404, "/missing", False),
    ]
    table = pa.table(
        {
            "method": [r[0] for r in rows],
            "status": pa.array([r[1] for r in rows], pa.int32()),
            "path": [r[2] for r in rows],
        }
    )
    with duckdb.connect() as con:
        con.register("t", table)
        got = [r[0] for r in con.execute(f"SELECT {PAGEVIEW_SQL} FROM t").fetchall()]
    assert got == [r[3] for r in rows]
    assert [is_pageview(m, s, p, is_bot=False) for m, s, p, _ in rows] == got
    assert not is_pageview("GET", 200, "/blog/", is_bot=True)

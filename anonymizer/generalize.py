"""Generalisation: user agent, referrer and request details reduced to coarse categories.

Design section 7: user agent to browser family, OS family and device type (ua-parser, one
parse per distinct user agent); bots excluded; referrer host to a source and a channel
(direct, search, social, email, referral, internal, campaign); static assets are not pages.

Every rule that the pipeline also runs in SQL (:data:`CHANNEL_SQL`, :data:`ASSET_SQL`) has a
Python twin here (:func:`channel_for`, :func:`is_asset_path`) with the same semantics, and the
tests check that they agree.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Collection, Iterable
from typing import Final, Literal

import pyarrow as pa
import ua_parser

DeviceType = Literal["desktop", "mobile", "tablet", "bot", "other"]
Channel = Literal["direct", "search", "social", "email", "referral", "internal", "campaign"]

UNKNOWN: Final = "Other"
"""Browser or OS family when ua-parser recognises none (ua-parser's own default)."""

DIRECT_SOURCE: Final = "(direct)"
"""Source of a request without a referrer."""

INTERNAL_SOURCE: Final = "(internal)"
"""Source of a request referred by the site itself (its host or a subdomain of it)."""

IP_SOURCE: Final = "(ip address)"
"""Source of a referrer given as an IP literal: an address is never published."""

# --------------------------------------------------------------------------- user agents

BOT_MARKERS: Final[tuple[str, ...]] = (
    # generic words crawlers put in their names
    "bot",
    "crawl",
    "spider",
    "slurp",
    "scraper",
    "archiver",
    "fetcher",
    "indexer",
    "+http",  # "(+http://example.com/bot.html)": browsers never carry a contact URL
    "http://",
    "https://",
    # command-line tools and HTTP libraries
    "curl",
    "wget",
    "python-requests",
    "python-urllib",
    "python-httpx",
    "aiohttp",
    "go-http-client",
    "okhttp",
    "java/",
    "apache-httpclient",
    "libwww-perl",
    "lwp::",
    "httpclient",
    "node-fetch",
    "axios/",
    "ruby",
    "scrapy",
    "httrack",
    "nutch",
    "chef client",
    # headless browsers and page auditors
    "headless",
    "phantomjs",
    "lighthouse",
    "pagespeed",
    "gtmetrix",
    # uptime and performance monitoring
    "monitor",
    "pingdom",
    "uptime",
    "statuscake",
    "site24x7",
    "newrelic",
    "datadog",
    "nagios",
    "zabbix",
    "check_http",
    # feed readers and link previews (they fetch for someone, they are not a visit)
    "feed",
    "rss",
    "facebookexternalhit",
    "embedly",
    "preview",
    "ezooms",
    "yahoo pipes",
    "theoldreader",
    "scout",
    "validator",
    "checker",
    "indy library",
    "protocol discovery",
    "robosourcer",
    "binlar",
    "libfetch",
    "newsify",
    "reeder",
)
"""Case-insensitive substrings that mark a user agent as automated.

Added to ua-parser's own ``Spider`` device family, which knows the big search engines but
misses tools, monitors and feed readers. Extend this list when a crawler shows up in
``technology_daily``; an empty or missing user agent is also treated as a bot, since every
browser sends one.
"""

# Matched against the lower-cased user agent: Python's re tries a case-insensitive
# alternation position by position, ten times slower than this for ASCII markers.
_BOT_RE: Final = re.compile("|".join(re.escape(m.lower()) for m in BOT_MARKERS))
_BARE_MOZILLA: Final = re.compile(r"^\s*Mozilla/\d+(\.\d+)?\s*(\(compatible;?\s*\))?\s*$", re.I)

DESKTOP_OS: Final[frozenset[str]] = frozenset(
    {
        "Windows",
        "Mac OS X",
        "Linux",
        "Ubuntu",
        "Debian",
        "Fedora",
        "Red Hat",
        "CentOS",
        "SUSE",
        "openSUSE",
        "Mint",
        "Arch Linux",
        "Gentoo",
        "Slackware",
        "Chrome OS",
        "FreeBSD",
        "OpenBSD",
        "NetBSD",
        "Solaris",
    }
)
"""OS families (as ua-parser names them) of desktop and laptop computers."""

MOBILE_OS: Final[frozenset[str]] = frozenset(
    {
        "iOS",
        "Android",
        "Windows Phone",
        "BlackBerry OS",
        "BlackBerry Tablet OS",
        "Symbian OS",
        "Firefox OS",
        "KaiOS",
        "Tizen",
        "HarmonyOS",
    }
)
"""OS families of phones and tablets; :func:`device_type` tells the two apart."""

_TABLET_DEVICES: Final = re.compile(r"ipad|tablet|kindle|playbook|nexus (7|9|10)", re.IGNORECASE)
_TABLET_UA: Final = re.compile(r"ipad|tablet|kindle|silk/|playbook", re.IGNORECASE)
_DESKTOP_UA: Final = re.compile(r"Windows NT|Macintosh|X11|CYGWIN")
_MOBILE_DEVICES: Final = re.compile(r"iphone|ipod|smartphone|phone", re.IGNORECASE)


def is_bot_user_agent(user_agent: str | None, device_family: str | None = None) -> bool:
    """True for crawlers, tools and monitors.

    That is: ua-parser's ``Spider`` family, a :data:`BOT_MARKERS` hit, a missing user agent,
    or a bare ``Mozilla/N.N`` with no platform (HTTP libraries' placeholder).
    """
    if user_agent is None or not user_agent.strip() or user_agent.strip() == "-":
        return True
    if device_family == "Spider":
        return True
    if _BOT_RE.search(user_agent.lower()) is not None:
        return True
    return _BARE_MOZILLA.match(user_agent) is not None


def device_type(
    user_agent: str | None,
    os_family: str | None,
    device_family: str | None,
    *,
    is_bot: bool = False,
) -> DeviceType:
    """``desktop``, ``mobile``, ``tablet``, ``bot`` or ``other`` (TVs, consoles, unknown).

    Android without "Mobile" in the user agent is a tablet: that is Google's own rule for
    telling Android tablets from phones.
    """
    if is_bot:
        return "bot"
    ua = user_agent or ""
    device = device_family or ""
    os_name = os_family or ""
    if _TABLET_DEVICES.search(device) or _TABLET_UA.search(ua):
        return "tablet"
    if os_name == "Android":
        return "mobile" if "Mobile" in ua else "tablet"
    if _MOBILE_DEVICES.search(device) or os_name in MOBILE_OS or "Mobi" in ua:
        return "mobile"
    if os_name in DESKTOP_OS or _DESKTOP_UA.search(ua):
        return "desktop"
    return "other"


@functools.lru_cache(maxsize=65536)
def classify_user_agent(user_agent: str | None) -> tuple[str, str, DeviceType, bool]:
    """``(browser, os, device_type, is_bot)`` of one user agent; cached per distinct value."""
    if user_agent is None or not user_agent.strip():
        return UNKNOWN, UNKNOWN, "bot", True
    result = ua_parser.parse(user_agent)
    browser = result.user_agent.family if result.user_agent else UNKNOWN
    os_family = result.os.family if result.os else UNKNOWN
    device_family = result.device.family if result.device else None
    bot = is_bot_user_agent(user_agent, device_family)
    kind = device_type(user_agent, os_family, device_family, is_bot=bot)
    return browser, os_family, kind, bot


USER_AGENT_SCHEMA: Final = pa.schema(
    [
        pa.field("user_agent", pa.string()),
        pa.field("browser", pa.string(), nullable=False),
        pa.field("os", pa.string(), nullable=False),
        pa.field("device_type", pa.string(), nullable=False),
        pa.field("is_bot", pa.bool_(), nullable=False),
    ]
)
"""Columns of :func:`classify_user_agents`."""


def classify_user_agents(user_agents: Iterable[str | None]) -> pa.Table:
    """One row per distinct user agent: browser, OS, device type and whether it is a bot.

    Meant to be joined back on ``user_agent`` by the pipeline, so each distinct string is
    parsed once however many events carry it. ``None`` yields one row with a null key.
    """
    distinct = list(dict.fromkeys(user_agents))
    browsers: list[str] = []
    systems: list[str] = []
    kinds: list[str] = []
    bots: list[bool] = []
    for ua in distinct:
        browser, os_family, kind, bot = classify_user_agent(ua)
        browsers.append(browser)
        systems.append(os_family)
        kinds.append(kind)
        bots.append(bot)
    return pa.Table.from_arrays(
        [
            pa.array(distinct, pa.string()),
            pa.array(browsers, pa.string()),
            pa.array(systems, pa.string()),
            pa.array(kinds, pa.string()),
            pa.array(bots, pa.bool_()),
        ],
        schema=USER_AGENT_SCHEMA,
    )


# --------------------------------------------------------------------------- referrers

KNOWN_HOSTS: Final[dict[str, tuple[str, Channel]]] = {
    # webmail (listed before the search engines that share their domain)
    "mail.google.com": ("Gmail", "email"),
    "inbox.google.com": ("Gmail", "email"),
    "outlook.live.com": ("Outlook", "email"),
    "outlook.office.com": ("Outlook", "email"),
    "outlook.office365.com": ("Outlook", "email"),
    "mail.live.com": ("Outlook", "email"),
    "mail.yahoo.com": ("Yahoo Mail", "email"),
    "mail.yahoo.co.jp": ("Yahoo Mail", "email"),
    "mail.aol.com": ("AOL Mail", "email"),
    "mail.proton.me": ("Proton Mail", "email"),
    "mail.protonmail.com": ("Proton Mail", "email"),
    "mail.zoho.com": ("Zoho Mail", "email"),
    "mail.yandex.ru": ("Yandex Mail", "email"),
    "mail.yandex.com": ("Yandex Mail", "email"),
    "e.mail.ru": ("Mail.ru", "email"),
    "fastmail.com": ("Fastmail", "email"),
    "icloud.com": ("iCloud Mail", "email"),
    # social networks and communities
    "facebook.com": ("Facebook", "social"),
    "fb.com": ("Facebook", "social"),
    "fb.me": ("Facebook", "social"),
    "messenger.com": ("Facebook", "social"),
    "instagram.com": ("Instagram", "social"),
    "threads.net": ("Threads", "social"),
    "twitter.com": ("Twitter", "social"),
    "t.co": ("Twitter", "social"),
    "x.com": ("Twitter", "social"),
    "linkedin.com": ("LinkedIn", "social"),
    "lnkd.in": ("LinkedIn", "social"),
    "plus.google.com": ("Google+", "social"),
    "plus.url.google.com": ("Google+", "social"),
    "reddit.com": ("Reddit", "social"),
    "news.ycombinator.com": ("Hacker News", "social"),
    "pinterest.com": ("Pinterest", "social"),
    "pin.it": ("Pinterest", "social"),
    "tumblr.com": ("Tumblr", "social"),
    "youtube.com": ("YouTube", "social"),
    "youtu.be": ("YouTube", "social"),
    "tiktok.com": ("TikTok", "social"),
    "vk.com": ("VKontakte", "social"),
    "ok.ru": ("Odnoklassniki", "social"),
    "weibo.com": ("Weibo", "social"),
    "line.me": ("LINE", "social"),
    "b.hatena.ne.jp": ("Hatena Bookmark", "social"),
    "mixi.jp": ("mixi", "social"),
    "bsky.app": ("Bluesky", "social"),
    "mastodon.social": ("Mastodon", "social"),
    "quora.com": ("Quora", "social"),
    "discord.com": ("Discord", "social"),
    "slack.com": ("Slack", "social"),
    "telegram.org": ("Telegram", "social"),
    "t.me": ("Telegram", "social"),
    "whatsapp.com": ("WhatsApp", "social"),
    # search engines with one domain (the ones with country domains are in SEARCH_BRANDS)
    "duckduckgo.com": ("DuckDuckGo", "search"),
    "search.brave.com": ("Brave Search", "search"),
    "ecosia.org": ("Ecosia", "search"),
    "startpage.com": ("Startpage", "search"),
    "search.naver.com": ("Naver", "search"),
    "search.daum.net": ("Daum", "search"),
    "search.goo.ne.jp": ("goo", "search"),
    "search.nifty.com": ("nifty", "search"),
    "search.aol.com": ("AOL", "search"),
    "ask.com": ("Ask", "search"),
    "seznam.cz": ("Seznam", "search"),
    "sogou.com": ("Sogou", "search"),
    "so.com": ("360 Search", "search"),
    "kagi.com": ("Kagi", "search"),
    "perplexity.ai": ("Perplexity", "search"),
    "chatgpt.com": ("ChatGPT", "search"),
}
"""Referrer domains with a fixed source and channel; a host matches its domain or any
subdomain of it (``m.facebook.com`` is Facebook), the longest listed suffix winning."""

SEARCH_BRANDS: Final[dict[str, str]] = {
    "google": "Google",
    "bing": "Bing",
    "yahoo": "Yahoo",
    "yandex": "Yandex",
    "baidu": "Baidu",
    "qwant": "Qwant",
    "naver": "Naver",
}
"""Search engines that run under many country domains: the brand label followed by a public
suffix (``www.google.co.jp``, ``yandex.ru``) is that search engine."""

_COUNTRY_SUFFIX: Final = re.compile(r"^(?:[a-z]{2,3}\.)?[a-z]{2,6}$")


def _lookup_host(host: str) -> tuple[str, Channel] | None:
    labels = host.split(".")
    for i in range(len(labels)):
        known = KNOWN_HOSTS.get(".".join(labels[i:]))
        if known is not None:
            return known
    for i, label in enumerate(labels[:-1]):
        brand = SEARCH_BRANDS.get(label)
        if brand is not None and _COUNTRY_SUFFIX.match(".".join(labels[i + 1 :])):
            return brand, "search"
    return None


def _is_internal(host: str, site_hosts: Collection[str]) -> bool:
    return any(host == site or host.endswith("." + site) for site in site_hosts)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def classify_referrer(host: str | None, site_hosts: Collection[str] = ()) -> tuple[str, Channel]:
    """``(source, channel)`` of one referrer host.

    No host is ``(direct)``/direct; the site's own hosts and their subdomains are internal;
    known hosts and search brands get their name; any other host is a referral whose source
    is the host without a leading ``www.``. An IP literal becomes ``(ip address)``.
    """
    if host is None or not host.strip():
        return DIRECT_SOURCE, "direct"
    host = host.strip().lower().rstrip(".")
    sites = [s.strip().lower().rstrip(".") for s in site_hosts if s and s.strip()]
    if _is_internal(host, sites):
        return INTERNAL_SOURCE, "internal"
    known = _lookup_host(host)
    if known is not None:
        return known
    if _is_ip(host):
        return IP_SOURCE, "referral"
    return host.removeprefix("www."), "referral"


REFERRER_SCHEMA: Final = pa.schema(
    [
        pa.field("referrer_host", pa.string()),
        pa.field("source", pa.string(), nullable=False),
        pa.field("channel", pa.string(), nullable=False),
    ]
)
"""Columns of :func:`classify_referrers`."""


def classify_referrers(
    hosts: Iterable[str | None], *, site_hosts: Collection[str] = ()
) -> pa.Table:
    """One row per distinct referrer host with its source and channel (see
    :func:`classify_referrer`). ``site_hosts`` are the site's own hosts (internal)."""
    sites = tuple(site_hosts)
    distinct = list(dict.fromkeys(hosts))
    sources: list[str] = []
    channels: list[str] = []
    for host in distinct:
        source, channel = classify_referrer(host, sites)
        sources.append(source)
        channels.append(channel)
    return pa.Table.from_arrays(
        [
            pa.array(distinct, pa.string()),
            pa.array(sources, pa.string()),
            pa.array(channels, pa.string()),
        ],
        schema=REFERRER_SCHEMA,
    )


# --------------------------------------------------------------------------- campaigns

EMAIL_MEDIUMS: Final[tuple[str, ...]] = ("email", "e-mail", "e_mail", "mail", "newsletter")
"""``utm_medium`` values that make a visit an e-mail visit."""

SOCIAL_MEDIUMS: Final[tuple[str, ...]] = ("social", "social-media", "social_media", "sm", "sns")
"""``utm_medium`` values that make a visit a social visit."""


def channel_for(
    channel: str,
    utm_source: str | None,
    utm_medium: str | None,
    utm_campaign: str | None,
) -> str:
    """The channel once campaign tags are taken into account.

    ``utm_medium`` in :data:`EMAIL_MEDIUMS` gives ``email``, in :data:`SOCIAL_MEDIUMS`
    ``social``; any other tagged visit (``cpc``, ``paid``, ``banner``, ...) is ``campaign``;
    untagged visits keep the referrer's channel. Same rule as :data:`CHANNEL_SQL`.
    """
    medium = utm_medium.lower() if utm_medium is not None else None
    if medium in EMAIL_MEDIUMS:
        return "email"
    if medium in SOCIAL_MEDIUMS:
        return "social"
    if utm_source is not None or utm_medium is not None or utm_campaign is not None:
        return "campaign"
    return channel


def _sql_list(values: Iterable[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


CHANNEL_SQL: Final = (
    "CASE"
    f" WHEN lower(utm_medium) IN ({_sql_list(EMAIL_MEDIUMS)}) THEN 'email'"
    f" WHEN lower(utm_medium) IN ({_sql_list(SOCIAL_MEDIUMS)}) THEN 'social'"
    " WHEN utm_source IS NOT NULL OR utm_medium IS NOT NULL OR utm_campaign IS NOT NULL"
    " THEN 'campaign'"
    " ELSE channel END"
)
"""Portable SQL (DuckDB, Spark SQL) for :func:`channel_for` over the columns ``channel``,
``utm_source``, ``utm_medium`` and ``utm_campaign``."""

# --------------------------------------------------------------------------- assets

ASSET_EXTENSIONS: Final[frozenset[str]] = frozenset(
    {
        # style, script and source maps
        "css",
        "js",
        "mjs",
        "map",
        # images
        "png",
        "jpg",
        "jpeg",
        "gif",
        "svg",
        "ico",
        "webp",
        "avif",
        "bmp",
        "tif",
        "tiff",
        # fonts
        "woff",
        "woff2",
        "ttf",
        "otf",
        "eot",
        # media
        "mp3",
        "mp4",
        "webm",
        "ogg",
        "wav",
        "m4a",
        # data and downloads fetched by programs rather than read as pages
        "json",
        "xml",
        "txt",
        "wasm",
        "zip",
        "gz",
        "tgz",
        "bz2",
        "xz",
        "tar",
        "rpm",
        "deb",
        "dmg",
        "exe",
        "msi",
    }
)
"""File extensions of paths that are never pageviews (compared case-insensitively).

``html``, ``php`` and ``pdf`` are not here: those are documents people read. ``txt`` and
``xml`` are: ``robots.txt``, sitemaps and feeds are read by programs.
"""

_ASSET_SUFFIXES: Final = tuple(sorted("." + ext for ext in ASSET_EXTENSIONS))


def is_asset_path(path: str) -> bool:
    """True when ``path`` ends in an :data:`ASSET_EXTENSIONS` suffix; twin of :data:`ASSET_SQL`."""
    return path.lower().endswith(_ASSET_SUFFIXES)


ASSET_SQL: Final = "(" + " OR ".join(f"lower(path) LIKE '%{s}'" for s in _ASSET_SUFFIXES) + ")"
"""Portable SQL predicate over a ``path`` column, true for asset paths (:func:`is_asset_path`).

A pageview is ``method = 'GET' AND status BETWEEN 200 AND 299 AND NOT {ASSET_SQL}`` from a
user agent whose ``is_bot`` is false.
"""

PAGEVIEW_SQL: Final = f"(method = 'GET' AND status BETWEEN 200 AND 299 AND NOT {ASSET_SQL})"
"""Portable SQL predicate for a pageview, bots aside (they are removed by a join on
:func:`classify_user_agents`)."""


def is_pageview(method: str, status: int, path: str, *, is_bot: bool) -> bool:
    """A GET with a 2xx status for a non-asset path from a non-bot user agent."""
    return method == "GET" and 200 <= status <= 299 and not is_bot and not is_asset_path(path)

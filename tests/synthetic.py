"""A deterministic synthetic RAW store for tests and benchmarks.

Vectorised with numpy and pyarrow so that 10 million events take seconds: Zipf-distributed
pages, a few thousand user agents (bots included), referrers, campaigns, a consent mix with
anonymous ids, several days, clustered visits, and consent ledger records. Everything is a
function of ``seed``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from consent_middleware.raw.layout import RawLayout
from consent_middleware.raw.schema import RAW_EVENT_SCHEMA
from consent_middleware.raw.segments import write_segment

BROWSERS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/{v}.0.{b}.100 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/{v2}.1 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS {v2}_0 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/{v2}.0 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android {v3}; Pixel {v3}) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/{v}.0.{b}.80 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
    "Mozilla/5.0 (iPad; CPU OS {v2}_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/{v2}.0 Mobile/15E148 Safari/604.1",
)
BOTS = (
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "curl/8.{b}.0",
    "python-requests/2.{b}.1",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
)
REFERRERS = (
    None,
    None,
    None,
    "www.google.com",
    "www.google.co.jp",
    "search.yahoo.co.jp",
    "www.bing.com",
    "t.co",
    "www.facebook.com",
    "mail.google.com",
    "shop.example.com",
    "blog-{n}.example.net",
)
CAMPAIGNS = (
    ("newsletter", "email", "spring-sale"),
    ("google", "cpc", "brand"),
    ("facebook", "social", "launch"),
    ("partner-{n}", "referral", "affiliate"),
)
ASSETS = ("/static/app.js", "/static/app.css", "/img/logo.png", "/favicon.ico")
SITE_HOST = "shop.example.com"


@dataclass(frozen=True, slots=True)
class Synthetic:
    """What :func:`generate` wrote."""

    events: int
    days: tuple[date, ...]
    segments: int
    ledger_records: int


def user_agents(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct user agents: mostly browsers in many versions, about 5% bots."""
    rng = np.random.default_rng(seed)
    agents: list[str] = []
    for i in range(count):
        template = BOTS[i // 20 % len(BOTS)] if i % 20 == 0 else BROWSERS[i % len(BROWSERS)]
        agents.append(
            template.format(
                v=90 + i % 40, v2=13 + i % 5, v3=10 + i % 5, b=int(rng.integers(1000, 9999))
            )
        )
    return list(dict.fromkeys(agents))


def _choice(values: list[str | None], index: np.ndarray) -> pa.Array:
    return pa.array(values, pa.string()).take(pa.array(index))


def events_table(
    events: int,
    *,
    start: date = date(2026, 1, 5),
    days: int = 7,
    pages: int = 5000,
    agents: int = 3000,
    seed: int = 0,
) -> tuple[pa.Table, pa.Array, pa.Array]:
    """``events`` raw events sorted by time, plus each event's visitor number and whether the
    visitor consented to statistics (for the ledger)."""
    rng = np.random.default_rng(seed)
    n_visitors = max(events // 6, 20)
    # A few heavy visitors and many light ones; bots are the heaviest.
    heavy = (rng.zipf(1.5, events) - 1) % n_visitors
    visitor = np.where(rng.random(events) < 0.1, heavy, rng.integers(0, n_visitors, events))
    visitor = rng.permutation(n_visitors)[visitor]
    day = rng.integers(0, days, events)
    base = (visitor.astype(np.int64) * 2654435761 + day * 97) % 86400
    offset = rng.exponential(400.0, events).astype(np.int64)
    seconds = (base + offset) % 86400
    epoch0 = int(datetime(start.year, start.month, start.day, tzinfo=UTC).timestamp())
    ts_us = (epoch0 + day * 86400 + seconds) * 1_000_000 + rng.integers(0, 1_000_000, events)

    ua_list = user_agents(agents, seed)
    ua_index = visitor % len(ua_list)
    page_index = (rng.zipf(1.15, events) - 1) % pages
    page_list: list[str | None] = [f"/catalog/page-{i}" for i in range(pages)]
    page_list[0] = "/"
    asset = rng.random(events) < 0.15
    paths = pc.if_else(
        pa.array(asset),
        _choice(list(ASSETS), rng.integers(0, len(ASSETS), events)),
        _choice(page_list, page_index),
    )
    status = np.where(rng.random(events) < 0.05, 404, 200)
    status = np.where(rng.random(events) < 0.01, 500, status)
    method = np.where(rng.random(events) < 0.03, "POST", "GET")
    ref_list = [r.format(n=i % 50) if r else None for i, r in enumerate(REFERRERS * 5)]
    referrer = _choice(ref_list, rng.integers(0, len(ref_list), events))
    campaign = rng.random(events) < 0.05
    camp = rng.integers(0, len(CAMPAIGNS), events)
    utm = [
        pc.if_else(
            pa.array(campaign),
            _choice([c[j].format(n=i % 30) for i, c in enumerate(CAMPAIGNS * 8)], camp),
            pa.nulls(events, pa.string()),
        )
        for j in range(3)
    ]
    consented = (visitor % 5) < 2  # 40% of visitors granted statistics
    visitor_str = pc.cast(pa.array(visitor), pa.string())
    day_str = pc.cast(pa.array(day), pa.string())
    vhash = pc.utf8_lpad(pc.binary_join_element_wise(visitor_str, day_str, "d"), 32, "0")
    aid = pc.if_else(
        pa.array(consented),
        pc.binary_join_element_wise(pa.scalar("aid"), visitor_str, "-"),
        pa.nulls(events, pa.string()),
    )
    purposes_list = pa.array(
        [["necessary"], ["necessary", "statistics"], ["necessary", "statistics", "marketing"]],
        pa.list_(pa.string()),
    )
    purposes = purposes_list.take(pa.array(np.where(consented, 1 + (visitor % 2), 0)))
    languages = _choice(["ja", "en", None, "zh"], np.array([0, 0, 0, 1, 1, 2, 3])[visitor % 7])
    table = pa.table(
        {
            "ts": pa.array(ts_us, pa.timestamp("us", tz="UTC")),
            "method": pa.array(method),
            "status": pa.array(status.astype(np.int32)),
            "duration_ms": pa.array(rng.lognormal(3.5, 0.8, events)),
            "path": paths,
            "utm_source": utm[0],
            "utm_medium": utm[1],
            "utm_campaign": utm[2],
            "utm_term": pa.nulls(events, pa.string()),
            "utm_content": pa.nulls(events, pa.string()),
            "referrer_host": referrer,
            "user_agent": _choice(list(ua_list), ua_index),
            "language": languages,
            "visitor_hash": vhash,
            "aid": aid,
            "purposes": purposes,
            "policy_version": pa.array(["2026-01"] * events),
            "gpc": pa.array(np.zeros(events, dtype=bool)),
            "source": pa.array(["middleware"] * events),
        }
    ).cast(RAW_EVENT_SCHEMA)
    order = pc.sort_indices(table, [("ts", "ascending")])
    return (
        table.take(order),
        pa.array(visitor).take(order),
        pa.array(consented).take(order),
    )


def write_ledger(raw_dir: Path, table: pa.Table, visitor: pa.Array, seed: int = 0) -> int:
    """One decision per visitor (on its first event): statistics granted or refused."""
    first = {}
    ts_list = table["ts"].to_pylist()
    aids = table["aid"].to_pylist()
    for i, v in enumerate(visitor.to_pylist()):
        if v not in first:
            first[v] = i
    folder = RawLayout.at(raw_dir).ledger
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for seq, (v, i) in enumerate(sorted(first.items(), key=lambda kv: kv[1])):
        granted = ["necessary", "statistics"] if aids[i] else ["necessary"]
        refused = [] if aids[i] else ["statistics", "marketing", "third_party"]
        record = {
            "ts": ts_list[i].isoformat(),
            "receipt_id": f"r{seed}-{v}",
            "action": "grant",
            "source": "banner",
            "granted": granted,
            "refused": refused,
            "policy_version": "2026-01",
            "notice_hash": "0" * 64,
            "gpc": False,
            "seq": seq,
            "prev": "",
            "sig": "",
            "kid": "k1",
        }
        lines.append(json.dumps(record))
    (folder / f"ledger-{seed}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def generate(
    raw_dir: Path,
    events: int,
    *,
    start: date = date(2026, 1, 5),
    days: int = 7,
    seed: int = 0,
    chunk: int = 1_000_000,
    ledger: bool = True,
) -> Synthetic:
    """Write ``events`` synthetic events (segments of at most ``chunk`` rows) and a ledger."""
    table, visitor, _ = events_table(events, start=start, days=days, seed=seed)
    written = 0
    for offset in range(0, table.num_rows, chunk):
        written += len(write_segment(raw_dir, table.slice(offset, chunk), prefix=f"syn{seed}"))
    records = write_ledger(raw_dir, table, visitor, seed) if ledger and events <= 2_000_000 else 0
    return Synthetic(
        events, tuple(start + timedelta(days=d) for d in range(days)), written, records
    )


CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def event(
    ts: datetime,
    visitor: str,
    path: str = "/",
    *,
    aid: str | None = None,
    statistics: bool = False,
    **fields: object,
) -> dict[str, object]:
    """One raw event with browser-like defaults; ``fields`` override any contract field."""
    record: dict[str, object] = {
        "ts": ts,
        "method": "GET",
        "status": 200,
        "duration_ms": 20.0,
        "path": path,
        "user_agent": CHROME,
        "language": "ja",
        "visitor_hash": visitor,
        "aid": aid,
        "purposes": ["necessary", "statistics"] if statistics else ["necessary"],
        "policy_version": "2026-01",
        "gpc": False,
        "source": "middleware",
    }
    record.update(fields)
    return record


def crowd(
    ts: datetime, count: int, path: str = "/", *, prefix: str = "v", **fields: object
) -> list[dict[str, object]]:
    """``count`` distinct visitors with one pageview each on ``path``, a second apart."""
    return [
        event(ts + timedelta(seconds=i), f"{prefix}{i:030d}", path, **fields) for i in range(count)
    ]

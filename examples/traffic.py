"""Drive realistic traffic through real HTTP against a running app, on loopback only.

Each simulated browser has a real user-agent string, arrives from a referrer or a campaign,
makes a consent choice in realistic proportions (or ignores the banner), browses a few
pages, and keeps its cookies like a browser would. A few crawlers visit too. Both the
number of browsers and the wall time are bounded, and only loopback targets are accepted.

    python -m examples.traffic --url http://127.0.0.1:8000 --browsers 300 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlencode, urlsplit

import httpx

USER_AGENTS: tuple[tuple[str, float], ...] = (
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Safari/537.36",
        0.30,
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
        0.22,
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Mobile Safari/537.36",
        0.15,
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/17.4 Safari/605.1.15",
        0.12,
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
        0.08,
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51",
        0.07,
    ),
    (
        "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.4 Mobile/15E148 Safari/604.1",
        0.04,
    ),
    (
        "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
        0.02,
    ),
)

BOT_USER_AGENTS: tuple[str, ...] = (
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
)

REFERRERS: tuple[tuple[str | None, float], ...] = (
    (None, 0.35),
    ("https://www.google.com/", 0.25),
    ("https://www.google.co.jp/", 0.08),
    ("https://www.bing.com/search?q=shop", 0.04),
    ("https://search.yahoo.co.jp/search?p=shop", 0.05),
    ("https://t.co/abc123", 0.06),
    ("https://www.facebook.com/", 0.05),
    ("https://mail.google.com/mail/u/0/", 0.03),
    ("https://blog.example.org/2024/best-shops", 0.09),
)

CAMPAIGNS: tuple[tuple[dict[str, str] | None, float], ...] = (
    (None, 0.80),
    ({"utm_source": "newsletter", "utm_medium": "email", "utm_campaign": "spring_sale"}, 0.10),
    ({"utm_source": "google", "utm_medium": "cpc", "utm_campaign": "brand"}, 0.07),
    ({"utm_source": "twitter", "utm_medium": "social", "utm_campaign": "launch"}, 0.03),
)

# Shares seen on sites with an equally prominent "reject all" button.
CONSENT_CHOICES: tuple[tuple[str, float], ...] = (
    ("accept_all", 0.45),
    ("reject_all", 0.30),
    ("statistics_only", 0.10),
    ("ignore", 0.15),
)

LANGUAGES: tuple[tuple[str, float], ...] = (
    ("ja-JP,ja;q=0.9,en;q=0.8", 0.65),
    ("en-US,en;q=0.9", 0.25),
    ("zh-CN,zh;q=0.9", 0.05),
    ("ko-KR,ko;q=0.9", 0.05),
)

PRODUCT_IDS = tuple(range(1, 41))

T = TypeVar("T")


def _pick(rng: random.Random, weighted: tuple[tuple[T, float], ...]) -> T:
    values = [value for value, _ in weighted]
    weights = [weight for _, weight in weighted]
    return rng.choices(values, weights=weights, k=1)[0]


def _zipf_product(rng: random.Random) -> int:
    # A few products get most views, like a real catalogue.
    weights = [1.0 / rank for rank in range(1, len(PRODUCT_IDS) + 1)]
    return rng.choices(PRODUCT_IDS, weights=weights, k=1)[0]


# Documentation address ranges (RFC 5737): the browsers' addresses are only ever sent as an
# X-Forwarded-For value, so an app behind `uvicorn --proxy-headers` sees many visitors while
# every packet still goes to loopback.
_DOC_NETS = ("192.0.2", "198.51.100", "203.0.113")


def synthetic_client_ip(rng: random.Random) -> str:
    """A made-up client address from the documentation ranges, for X-Forwarded-For."""
    return f"{rng.choice(_DOC_NETS)}.{rng.randint(1, 254)}"


def ensure_loopback(url: str) -> None:
    """Refuse any target that is not on this machine's loopback interface."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise SystemExit(f"refusing to send traffic to {host!r}: only loopback targets are allowed")


@dataclass
class TrafficReport:
    """What the driver did: requests sent, answers by status, consent choices, errors."""

    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    choices: Counter[str] = field(default_factory=Counter)
    rights: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    browsers: int = 0
    bots: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        """One paragraph for the terminal."""
        statuses = ", ".join(f"{code}: {n}" for code, n in sorted(self.statuses.items()))
        choices = ", ".join(f"{name}: {n}" for name, n in sorted(self.choices.items()))
        rights = ", ".join(f"{name}: {n}" for name, n in sorted(self.rights.items())) or "none"
        errors = sum(self.errors.values())
        return (
            f"{self.requests} requests from {self.browsers} browsers and {self.bots} bots "
            f"in {self.seconds:.1f} s; statuses {statuses}; consent {choices}; "
            f"rights requests {rights}; errors {errors}"
        )


async def _browse(
    base: str,
    rng: random.Random,
    report: TrafficReport,
    deadline: float,
) -> None:
    ua = _pick(rng, USER_AGENTS)
    headers = {
        "user-agent": ua,
        "accept-language": _pick(rng, LANGUAGES),
        "x-forwarded-for": synthetic_client_ip(rng),
    }
    if rng.random() < 0.08:
        headers["sec-gpc"] = "1"
    referrer = _pick(rng, REFERRERS)
    campaign = _pick(rng, CAMPAIGNS)
    choice = _pick(rng, CONSENT_CHOICES)
    report.browsers += 1
    report.choices[choice] += 1
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=10.0) as browser:
        landing = "/" if rng.random() < 0.6 else f"/products/{_zipf_product(rng)}"
        if campaign:
            landing += "?" + urlencode(campaign)
        first_headers = {"referer": referrer} if referrer else {}
        await _get(browser, landing, report, first_headers)
        if choice != "ignore":
            body: dict[str, object] = (
                {"accept": "all"}
                if choice == "accept_all"
                else {"accept": "necessary"}
                if choice == "reject_all"
                else {"purposes": {"statistics": True, "marketing": False, "third_party": False}}
            )
            await _send(browser, "POST", "/consent", report, json=body, headers={"origin": base})
        for _ in range(int(rng.expovariate(1 / 3))):
            if time.monotonic() > deadline:
                return
            roll = rng.random()
            path = (
                f"/products/{_zipf_product(rng)}"
                if roll < 0.6
                else "/cart"
                if roll < 0.75
                else "/"
                if roll < 0.9
                else "/widgets/recommendations"
            )
            await _get(browser, path, report, {"referer": base + "/"})
        # A few visitors who consented use their rights: download what is held, or erase it.
        if choice in ("accept_all", "statistics_only"):
            roll = rng.random()
            if roll < 0.03:
                report.rights["disclosure"] += 1
                await _get(browser, "/privacy/data", report, {})
            elif roll < 0.045:
                report.rights["erasure"] += 1
                await _send(browser, "DELETE", "/privacy/data", report, headers={"origin": base})


async def _crawl(base: str, rng: random.Random, report: TrafficReport) -> None:
    report.bots += 1
    headers = {
        "user-agent": rng.choice(BOT_USER_AGENTS),
        "x-forwarded-for": synthetic_client_ip(rng),
    }
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=10.0) as bot:
        for path in ["/", *(f"/products/{pid}" for pid in rng.sample(PRODUCT_IDS, 5))]:
            await _get(bot, path, report, {})


async def _get(
    browser: httpx.AsyncClient, path: str, report: TrafficReport, headers: dict[str, str]
) -> None:
    await _send(browser, "GET", path, report, headers=headers)


async def _send(
    browser: httpx.AsyncClient,
    method: str,
    path: str,
    report: TrafficReport,
    **kwargs: object,
) -> None:
    report.requests += 1
    try:
        response = await browser.request(method, path, **kwargs)  # type: ignore[arg-type]
    except httpx.HTTPError as exc:
        report.errors[type(exc).__name__] += 1
        return
    report.statuses[response.status_code] += 1


async def drive(
    url: str,
    *,
    browsers: int = 200,
    bots: int = 5,
    seconds: float = 60.0,
    concurrency: int = 16,
    seed: int = 7,
) -> TrafficReport:
    """Simulate ``browsers`` visitors and ``bots`` crawlers against ``url``, within ``seconds``."""
    ensure_loopback(url)
    base = url.rstrip("/")
    rng = random.Random(seed)
    report = TrafficReport()
    started = time.monotonic()
    deadline = started + seconds
    semaphore = asyncio.Semaphore(concurrency)
    seeds = [rng.random() for _ in range(browsers + bots)]

    # Each simulated browser has its own client, so its own cookie jar, like a browser.
    async def one(index: int) -> None:
        async with semaphore:
            if time.monotonic() > deadline:
                return
            local = random.Random(seeds[index])
            if index < bots:
                await _crawl(base, local, report)
            else:
                await _browse(base, local, report, deadline)

    await asyncio.gather(*(one(i) for i in range(browsers + bots)))
    report.seconds = time.monotonic() - started
    return report


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="loopback base URL")
    parser.add_argument("--browsers", type=int, default=200, help="simulated visitors")
    parser.add_argument("--bots", type=int, default=5, help="simulated crawlers")
    parser.add_argument("--seconds", type=float, default=60.0, help="stop after this long")
    parser.add_argument("--concurrency", type=int, default=16, help="browsers at once")
    parser.add_argument("--seed", type=int, default=7, help="random seed (repeatable runs)")
    args = parser.parse_args(argv)
    report = asyncio.run(
        drive(
            args.url,
            browsers=args.browsers,
            bots=args.bots,
            seconds=args.seconds,
            concurrency=args.concurrency,
            seed=args.seed,
        )
    )
    print(report.summary())


if __name__ == "__main__":
    main()

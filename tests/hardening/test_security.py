"""Security cases (issue 7), one test each: forged cookies, rotated-out keys, cross-site
requests to ``/consent``, HTML in purpose texts, and header injection through cookies.

(Replaying a pre-erasure cookie is covered with the rights endpoints.)
"""

from __future__ import annotations

import dataclasses
import html
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from consent_support import ORIGIN, SECRET, TestClient, cookie_value, make_app, set_cookies

from consent_middleware import (
    DEFAULT_PURPOSES,
    ConsentPayload,
    ConsentStats,
    CookieCodec,
    Decision,
    PurposeRegistry,
)
from consent_middleware.raw.layout import RawLayout
from hardening.asgi_driver import Driver, assert_clean_headers

ALL = frozenset(p.name for p in DEFAULT_PURPOSES)
REGISTRY = PurposeRegistry()
APP_COOKIES = {"ad_id": "marketing", "stats_id": "statistics"}


def forged(key: str, *, aid: str = "forgedAid0000000000000") -> str:
    """What an attacker who knows the code (it is open source) signs with a guessed key:
    every purpose granted, for a receipt and an anonymous id of their choosing."""
    payload = ConsentPayload(
        policy_version="2026-04",
        decided_at=int(time.time()),
        receipt_id="forgedReceipt001",
        granted=ALL,
        aid=aid,
    )
    return CookieCodec(key, REGISTRY).encode(payload)


GUESSES = [
    "dev-only-insecure-key-change-me",  # the example app's documented development key
    "secret",
    "changeme",
    "consent",
    "test-secret-key ",  # the real key with a trailing space
    "TEST-SECRET-KEY",
]


def test_a_cookie_forged_with_a_guessed_key_is_no_decision_and_never_recorded(
    tmp_path: Path,
) -> None:
    stats = ConsentStats()
    app = make_app(raw_dir=tmp_path, stats=stats, cookie_purposes=APP_COOKIES)
    with TestClient(app) as client:
        for i, key in enumerate(GUESSES):
            client.cookies.set("consent", forged(key, aid=f"forgedAid{i:013d}"))
            state = client.get("/").json()
            assert state["has_decision"] is False and state["needs_prompt"] is True
            assert state["purposes"] == {
                "necessary": True, "statistics": False, "marketing": False, "third_party": False
            }  # fmt: skip
            assert state["aid"] is None and state["receipt_id"] is None
            cookies = set_cookies(client.get("/cookies"))  # marketing cookies stay blocked
            assert not any(c.startswith(("ad_id=", "stats_id=")) for c in cookies)
        assert stats.invalid_cookies == 2 * len(GUESSES)
        # Control: the same forgery with the real key is accepted, so the test forges right.
        client.cookies.set("consent", forged(SECRET, aid="realKeyAid000000000000"))
        assert client.get("/").json()["has_decision"] is True
    glob = RawLayout.at(tmp_path).events_glob()
    rows = duckdb.execute(f"SELECT aid, purposes FROM read_parquet('{glob}')").fetchall()
    assert len(rows) == 2 * len(GUESSES) + 1
    assert {aid for aid, _ in rows} == {None, "realKeyAid000000000000"}
    assert all(list(purposes) == ["necessary"] for aid, purposes in rows if aid is None)


def test_a_cookie_signed_by_a_rotated_out_key_is_no_decision() -> None:
    old, new = "old-signing-key-2025", "new-signing-key-2026"
    with TestClient(make_app(secret_key=old)) as before_rotation:
        response = before_rotation.post("/consent", json={"accept": "all"})
        old_cookie = cookie_value(set_cookies(response)[0])
        receipt = response.json()["receipt_id"]

    # During the rotation both keys verify: nobody is logged out.
    with TestClient(make_app(secret_key=[old, new])) as rotating:
        rotating.cookies.set("consent", old_cookie)
        state = rotating.get("/").json()
        assert state["has_decision"] is True and state["receipt_id"] == receipt
        new_cookie = cookie_value(
            set_cookies(rotating.post("/consent", json={"accept": "necessary"}))[0]
        )

    # Once the old key is removed, its cookies are worth nothing; the new key's still work.
    stats = ConsentStats()
    with TestClient(make_app(secret_key=[new], stats=stats)) as after_rotation:
        after_rotation.cookies.set("consent", old_cookie)
        state = after_rotation.get("/").json()
        assert state["has_decision"] is False and state["purposes"]["marketing"] is False
        assert stats.invalid_cookies == 1
        after_rotation.cookies.set("consent", new_cookie)
        assert after_rotation.get("/").json()["has_decision"] is True


EVIL = "https://evil.example"
FORM = {"content-type": "application/x-www-form-urlencoded"}
JSON = {"content-type": "application/json"}
CROSS_SITE: list[tuple[str, dict[str, str], bytes]] = [
    ("POST", {**JSON, "origin": EVIL}, b'{"accept": "all"}'),
    ("POST", {**FORM, "origin": EVIL}, b"accept=all"),
    ("POST", FORM, b"accept=all"),  # a form post without Origin or Referer
    ("POST", {**FORM, "referer": f"{EVIL}/page"}, b"accept=all"),
    ("POST", {"content-type": "text/plain"}, b'{"accept": "all"}'),  # a "simple" request
    ("POST", {**JSON, "origin": "null"}, b'{"accept": "all"}'),  # sandboxed iframe
    ("POST", {**FORM, "origin": "http://testserver.evil.example"}, b"accept=all"),
    ("POST", {**FORM, "origin": "http://testserver:8080"}, b"accept=all"),
    ("POST", {**FORM, "origin": "https://testserver"}, b"accept=all"),
    ("POST", {**FORM, "referer": "http://evil.example/http://testserver/"}, b"accept=all"),
    ("DELETE", {"origin": EVIL}, b""),
    ("DELETE", {"referer": f"{EVIL}/withdraw"}, b""),
    ("DELETE", {"origin": "null"}, b""),
]


@pytest.mark.parametrize(("method", "headers", "body"), CROSS_SITE)
def test_cross_site_requests_cannot_change_consent(
    method: str, headers: dict[str, str], body: bytes
) -> None:
    decisions: list[Decision] = []
    stats = ConsentStats()
    with TestClient(make_app(decisions, stats=stats)) as client:
        # The visitor chose "statistics only"; the attacker tries to grant or withdraw.
        client.post("/consent", json={"purposes": {"statistics": True}})
        cookie = client.cookies.get("consent")
        before = client.get("/").json()

        response = client.request(method, "/consent", content=body, headers=headers)
        assert response.status_code == 403, response.text
        assert "cross-origin" in response.json()["reason"] or "Origin" in response.json()["reason"]
        assert not set_cookies(response)
        assert len(decisions) == 1 and stats.refused["cross_origin"] == 1
        assert client.cookies.get("consent") == cookie
        assert client.get("/").json() == before
        # Control: the same change from the site itself is accepted.
        same_site = {**headers, **ORIGIN}
        same_site.pop("referer", None)
        if same_site.get("content-type") == "text/plain":
            same_site["content-type"] = "application/json"
        allowed = client.request(method, "/consent", content=body, headers=same_site)
        assert allowed.status_code in (200, 303) and len(decisions) == 2


HOSTILE_LABEL = '<script>alert("label")</script>'
HOSTILE_DESCRIPTION = '"><img src=x onerror=alert(1)>'
HOSTILE_CONTACT = "</script><script>alert('contact')</script>\n<b>Privacy office</b>"
HOSTILE_NOTICE = "<iframe src=javascript:alert(1)></iframe>"


def hostile_registry() -> PurposeRegistry:
    """The default purposes with HTML and script in every text an app may configure."""
    return PurposeRegistry(
        dataclasses.replace(
            p,
            labels={"en": f"{p.name} {HOSTILE_LABEL}", "ja": f"{p.name} {HOSTILE_LABEL}"},
            descriptions={"en": HOSTILE_DESCRIPTION, "ja": HOSTILE_DESCRIPTION},
        )
        for p in DEFAULT_PURPOSES
    )


@pytest.fixture
def hostile_client() -> Iterator[TestClient]:
    app = make_app(purposes=hostile_registry(), contact=HOSTILE_CONTACT, notice_text=HOSTILE_NOTICE)
    with TestClient(app) as client:
        yield client


RAW_MARKUP = ("<script", "<img", "<iframe", "<b>")  # the pages' own markup has none


def assert_no_markup_from_texts(page: str) -> None:
    for fragment in RAW_MARKUP:
        # The page's own markup has no <script> or <img> at all: any found came from a text.
        assert fragment not in page, fragment


def test_purpose_texts_are_data_in_json_and_escaped_in_the_settings_page(
    hostile_client: TestClient,
) -> None:
    state = hostile_client.get("/consent")
    assert state.headers["content-type"] == "application/json"
    available = {p["name"]: p for p in state.json()["available"]}
    # JSON carries the texts as data, unchanged; a banner shows them with textContent.
    assert available["marketing"]["labels"]["en"] == f"marketing {HOSTILE_LABEL}"

    for query, headers in (("?lang=en", {}), ("?lang=ja", {}), ("", {"sec-gpc": "1"})):
        page = hostile_client.get(f"/consent/settings{query}", headers=headers)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src" not in page.headers["content-security-policy"]  # no inline script
        assert page.headers["content-security-policy"].startswith("default-src 'none'")
        assert page.headers["x-content-type-options"] == "nosniff"
        text = page.text
        assert html.escape(f"statistics {HOSTILE_LABEL}") in text
        assert html.escape(HOSTILE_DESCRIPTION) in text
        assert html.escape(HOSTILE_CONTACT) in text
        assert_no_markup_from_texts(text)
    # The GPC note names the purposes the signal turned off, escaped too.
    gpc_page = hostile_client.get("/consent/settings", headers={"sec-gpc": "1"}).text
    assert html.escape(f"marketing {HOSTILE_LABEL}") in gpc_page


def test_hostile_texts_never_leave_the_script_context_of_the_banner(
    hostile_client: TestClient,
) -> None:
    script = hostile_client.get("/consent/banner.js")
    assert script.status_code == 200
    body = script.text
    # The configuration is JSON with <, > and & escaped: no "</script>" can close a block.
    assert HOSTILE_CONTACT not in body and "</script>" not in body
    assert "\\u003c/script\\u003e" in body


def test_banner_noscript_block_is_escaped(hostile_client: TestClient) -> None:
    from starlette.requests import Request
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    from consent_middleware.banner import banner_tags

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(f"<body>{banner_tags(request)}</body>")

    app = make_app(
        routes=[Route("/page", page)],
        purposes=hostile_registry(),
        contact=HOSTILE_CONTACT,
    )
    with TestClient(app) as client:
        text = client.get("/page", headers={"sec-gpc": "1"}).text
    assert "<noscript>" in text  # no decision yet: the fallback forms are there
    body = text.split("<noscript>", 1)[1]
    assert html.escape(f"marketing {HOSTILE_LABEL}") in body
    assert_no_markup_from_texts(body)


# Header injection: the raw ASGI driver sends what HTTP clients refuse to.
INJECTIONS = [
    b"x\r\nSet-Cookie: injected=1",
    b"x\nX-Injected: 1",
    b"x\rX-Injected: 1",
    b"abc; consent=x\r\n\r\n<html>injected",
    b"\xc3\xa9t\xc3\xa9\r\nX-Injected: caf\xc3\xa9",  # UTF-8, not Latin-1 text
    b"\xff\xfe\x00injected",
    b"a;b;c;;;=injected=;",
    b'"quoted\r\n injected"',
]
PATHS: list[tuple[str, str, dict[str, str], bytes]] = [
    ("GET", "/", {}, b""),
    ("GET", "/cookies", {}, b""),
    ("GET", "/consent", {}, b""),
    ("GET", "/consent/settings", {}, b""),
    ("POST", "/consent", {"content-type": "application/json"}, b'{"accept": "all"}'),
    (
        "POST",
        "/consent",
        {"content-type": "application/x-www-form-urlencoded", "origin": "http://testserver"},
        b"accept=necessary&next=/",
    ),
    ("DELETE", "/consent", {}, b""),
    ("GET", "/.well-known/gpc.json", {}, b""),
]


@pytest.fixture(scope="module")
def driver() -> Iterator[Driver]:
    driver = Driver(make_app(cookie_purposes=APP_COOKIES))
    yield driver
    driver.close()


@pytest.mark.parametrize("value", INJECTIONS)
def test_cookie_values_are_never_reflected_into_response_headers(
    driver: Driver, value: bytes
) -> None:
    names = [b"consent", b"__Host-consent", b"ad_id", b"stats_id", b"injected"]
    for method, path, extra, body in PATHS:
        for name in names:
            headers: list[tuple[bytes, bytes]] = [
                (k.encode(), v.encode()) for k, v in extra.items()
            ]
            headers.append((b"cookie", name + b"=" + value))
            headers.append((b"cookie", b"ad_id=" + value + b"; " + name + b"=" + value))
            answer = driver.request(method, path, headers, body)
            assert answer.status < 500, (method, path, name, answer.status)
            assert_clean_headers(answer, b"injected", b"Injected", b"\xc3\xa9", b"\xff")
            # Set-Cookie carries a freshly signed consent value, a deletion, or the app's
            # own fixed cookie: never a byte the client sent.
            for cookie in answer.header_values(b"set-cookie"):
                assert cookie.startswith(
                    (b"consent=", b"ad_id=; Max-Age=0", b"stats_id=; Max", b"session=x;")
                ), cookie


def test_an_invalid_cookie_does_not_change_what_is_served(driver: Driver) -> None:
    plain = driver.request("GET", "/", [])
    for value in INJECTIONS:
        answer = driver.request("GET", "/", [(b"cookie", b"consent=" + value)])
        assert answer.status == plain.status and answer.json() == plain.json()
        assert {k for k, _ in answer.headers} == {k for k, _ in plain.headers}

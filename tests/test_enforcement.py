"""Enforcement: requires_consent, Set-Cookie stripping, and Consent Mode defaults."""

from __future__ import annotations

import pytest
from consent_support import ORIGIN, TestClient, make_app, set_cookies
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from consent_middleware import (
    ConsentState,
    ConsentStats,
    consent_mode_defaults,
    get_consent,
    render_consent_mode,
    requires_consent,
)

COOKIES = {"ad_id": "marketing", "stats_id": "statistics"}


@requires_consent("marketing")
async def widget(request: Request) -> Response:
    return JSONResponse({"widget": "ads"})


@requires_consent("statistics")
def sync_widget(request: Request) -> Response:
    return PlainTextResponse("sync ok")


def no_widget(request: Request) -> Response:
    return PlainTextResponse("widget hidden", status_code=200)


@requires_consent("marketing", fallback=no_widget)
async def widget_with_fallback(request: Request) -> Response:
    return PlainTextResponse("widget shown")


ROUTES = [
    Route("/widget", widget),
    Route("/sync", sync_widget),
    Route("/fallback", widget_with_fallback),
]


def test_requires_consent_answers_403_json() -> None:
    client = TestClient(make_app(routes=ROUTES))
    response = client.get("/widget")
    assert response.status_code == 403
    body = response.json()
    assert body["error"] == "consent_required" and body["purpose"] == "marketing"
    assert "/consent" in body["detail"]
    client.post("/consent", json={"accept": "all"})
    assert client.get("/widget").json() == {"widget": "ads"}


def test_requires_consent_sync_endpoint_and_fallback() -> None:
    client = TestClient(make_app(routes=ROUTES))
    assert client.get("/sync").status_code == 403
    assert client.get("/fallback").text == "widget hidden"
    client.post("/consent", json={"purposes": {"statistics": True, "marketing": True}})
    assert client.get("/sync").text == "sync ok"
    assert client.get("/fallback").text == "widget shown"


def test_requires_consent_follows_gpc() -> None:
    client = TestClient(make_app(routes=ROUTES))
    client.post("/consent", json={"accept": "all"})
    assert client.get("/widget", headers={"sec-gpc": "1"}).status_code == 403


def test_get_consent_without_middleware_is_a_clear_error() -> None:
    async def page(request: Request) -> Response:
        get_consent(request)
        return PlainTextResponse("unreachable")

    client = TestClient(Starlette(routes=[Route("/", page)]))
    with pytest.raises(RuntimeError, match="add ConsentMiddleware"):
        client.get("/")


def test_set_cookie_stripping_and_counting() -> None:
    stats = ConsentStats()
    client = TestClient(make_app(cookie_purposes=COOKIES, stats=stats))
    names = [h.split("=")[0] for h in set_cookies(client.get("/cookies"))]
    assert names == ["session"]  # undeclared cookies are the app's business
    assert stats.stripped_cookies == {"marketing": 1, "statistics": 1}
    client.post("/consent", json={"purposes": {"statistics": True}})
    names = [h.split("=")[0] for h in set_cookies(client.get("/cookies"))]
    assert names == ["stats_id", "session"]
    assert stats.stripped_total == 3
    client.post("/consent", json={"accept": "all"})
    assert len(set_cookies(client.get("/cookies"))) == 3
    assert stats.snapshot()["stripped_cookies"] == {"marketing": 2, "statistics": 1}


def test_cookie_deletions_always_pass() -> None:
    async def forget(request: Request) -> Response:
        response = PlainTextResponse("forgotten")
        response.delete_cookie("ad_id")
        response.set_cookie("stats_id", "", expires="Thu, 01 Jan 1970 00:00:00 GMT")
        return response

    stats = ConsentStats()
    client = TestClient(
        make_app(routes=[Route("/forget", forget)], cookie_purposes=COOKIES, stats=stats)
    )
    assert [h.split("=")[0] for h in set_cookies(client.get("/forget"))] == ["ad_id", "stats_id"]
    assert stats.stripped_total == 0


def test_withdrawal_expires_declared_cookies_the_browser_holds() -> None:
    client = TestClient(make_app(cookie_purposes=COOKIES))
    client.post("/consent", json={"accept": "all"})
    client.get("/cookies")
    response = client.delete("/consent", headers=ORIGIN)
    headers = set_cookies(response)
    assert "ad_id=; Max-Age=0; Path=/" in headers and "stats_id=; Max-Age=0; Path=/" in headers
    assert "ad_id" not in client.cookies and "stats_id" not in client.cookies


def _state(**purposes: bool) -> ConsentState:
    return ConsentState(purposes=purposes, policy_version="v", needs_prompt=False, gpc=False)


def test_consent_mode_defaults() -> None:
    assert consent_mode_defaults(_state(necessary=True)) == {
        "ad_storage": "denied",
        "analytics_storage": "denied",
        "ad_user_data": "denied",
        "ad_personalization": "denied",
    }
    assert consent_mode_defaults(_state(statistics=True, marketing=True)) == {
        "ad_storage": "granted",
        "analytics_storage": "granted",
        "ad_user_data": "denied",
        "ad_personalization": "denied",
    }
    everything = _state(statistics=True, marketing=True, third_party=True)
    assert set(consent_mode_defaults(everything).values()) == {"granted"}


def test_render_consent_mode_is_script_safe() -> None:
    html = render_consent_mode(_state(statistics=True), nonce='n"<x>', wait_for_update=500)
    assert html.startswith('<script nonce="n&quot;&lt;x&gt;">')
    assert "gtag('consent','default',{" in html and '"analytics_storage":"granted"' in html
    assert '"wait_for_update":500' in html
    hostile = render_consent_mode(_state(), mapping={"</script><b>": ("x",)})
    assert hostile.count("</script>") == 1 and "\\u003c/script\\u003e" in hostile


def test_consent_mode_from_a_request() -> None:
    async def page(request: Request) -> Response:
        return PlainTextResponse(render_consent_mode(get_consent(request)))

    client = TestClient(make_app(routes=[Route("/page", page)]))
    assert '"ad_storage":"denied"' in client.get("/page").text
    client.post("/consent", json={"accept": "all"})
    assert '"ad_personalization":"granted"' in client.get("/page").text

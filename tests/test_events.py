"""Building one raw event from an ASGI scope: exactly the contract's fields, nothing more."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.routing import Mount, Route, Router

from consent_middleware.events import build_event, route_template
from consent_middleware.raw.salts import SaltStore, visitor_hash
from consent_middleware.raw.schema import RAW_EVENT_FIELDS
from consent_middleware.state import ConsentState

POLICY = "2026-04"
IP = "198.51.100.23"


def state(*granted: str, aid: str | None = None, gpc: bool = False) -> ConsentState:
    names = ("necessary", "statistics", "marketing", "third_party")
    return ConsentState(
        {n: n in granted for n in names}, POLICY, needs_prompt=False, gpc=gpc, aid=aid
    )


def scope(path: str = "/", query: bytes = b"", **extra: Any) -> dict[str, Any]:
    headers = [
        (b"host", b"shop.example"),
        (b"user-agent", b"Mozilla/5.0 Test"),
        (b"referer", b"https://news.example.org/articles/42?ref=mail&uid=777"),
        (b"accept-language", b"ja-JP,ja;q=0.9,en;q=0.5"),
    ]
    base = {
        "type": "http",
        "method": "GET",
        "path": path,
        "root_path": "",
        "query_string": query,
        "headers": headers,
        "client": (IP, 40000),
    }
    base.update(extra)
    return base


def test_event_has_exactly_the_contract_fields(tmp_path: Path) -> None:
    salts = SaltStore(tmp_path)
    consent = state("necessary", "statistics", aid="aid-1")
    end = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    q = b"utm_source=Mail&utm_campaign=spring&email=a%40b.example&token=abc"
    event = build_event(
        scope("/cart/12345", q),
        status=201,
        duration_ms=250.0,
        consent=consent,
        salts=salts,
        end=end,
    )
    assert tuple(event) == RAW_EVENT_FIELDS
    assert event["ts"] == datetime(2026, 5, 1, 11, 59, 59, 750000, tzinfo=UTC)
    assert (event["method"], event["status"], event["duration_ms"]) == ("GET", 201, 250.0)
    assert event["path"] == "/cart/{id}"
    assert (event["utm_source"], event["utm_campaign"], event["utm_medium"]) == (
        "mail",
        "spring",
        None,
    )
    assert event["referrer_host"] == "news.example.org"
    assert event["user_agent"] == "Mozilla/5.0 Test"
    assert event["language"] == "ja"
    expected = visitor_hash(
        salts.salt_for(event["ts"].date()), IP, "Mozilla/5.0 Test", "shop.example"
    )
    assert event["visitor_hash"] == expected
    assert event["aid"] == "aid-1"
    assert event["purposes"] == ["necessary", "statistics"]
    assert (event["policy_version"], event["gpc"], event["source"]) == (POLICY, False, "middleware")
    text = repr(event)
    assert IP not in text and "articles" not in text and "uid=" not in text
    assert "email" not in text and "token" not in text


def test_aid_only_with_statistics_and_hash_option(tmp_path: Path) -> None:
    salts = SaltStore(tmp_path)
    # A stale aid on a state without statistics must not be recorded.
    refused = state("necessary", aid="stale-aid", gpc=True)
    event = build_event(scope(), status=200, duration_ms=1.0, consent=refused, salts=salts)
    assert event["aid"] is None and event["gpc"] is True
    assert event["visitor_hash"] is not None  # hash_unconsented defaults to True
    strict = build_event(
        scope(),
        status=200,
        duration_ms=1.0,
        consent=refused,
        salts=salts,
        hash_unconsented=False,
    )
    assert strict["visitor_hash"] is None
    granted = build_event(
        scope(),
        status=200,
        duration_ms=1.0,
        consent=state("statistics", aid="a"),
        salts=salts,
        hash_unconsented=False,
    )
    assert granted["visitor_hash"] is not None
    no_salts = build_event(scope(), status=200, duration_ms=1.0, consent=refused)
    assert no_salts["visitor_hash"] is None


async def _endpoint(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
    raise AssertionError("not called")


def _routed(router: Router, path: str, root_path: str = "") -> dict[str, Any]:
    """Match like Starlette's router does, mutating the scope the middleware sees."""
    s = scope(path, root_path=root_path)
    routes: Any = router.routes
    while True:
        for route in routes:
            match, child = route.matches(s)
            if match.name == "FULL":
                s["route"] = route
                s.update(child)
                break
        else:
            return s
        if not isinstance(route, Mount) or not isinstance(route.app, Router):
            return s
        routes = route.app.routes


def test_route_templates_with_mounts() -> None:
    router = Router(
        [
            Route("/items/{item_id}", _endpoint),
            Mount("/api", routes=[Route("/users/{user_id:int}/orders", _endpoint)]),
            Mount("/files", app=_endpoint),
        ]
    )
    cases = {
        "/items/8d1f3c2a-0000-4000-8000-123456789abc": "/items/{item_id}",
        "/api/users/42/orders": "/api/users/{user_id}/orders",
        "/files/reports/2024/alice@example.com.pdf": "/files/reports/{id}/{email}",
        "/nowhere/123": "/nowhere/{id}",
    }
    for raw, template in cases.items():
        s = _routed(router, raw)
        got = route_template(s["path"], s["root_path"], s.get("app_root_path"), s.get("route"))
        assert got == template, raw
    # A server root path (uvicorn --root-path) stays in front of the template.
    s = _routed(router, "/shop/items/7", root_path="/shop")
    got = route_template(s["path"], s["root_path"], s.get("app_root_path"), s.get("route"))
    assert got == "/shop/items/{item_id}"
    s = _routed(router, "/shop/api/users/5/orders", root_path="/shop")
    got = route_template(s["path"], s["root_path"], s.get("app_root_path"), s.get("route"))
    assert got == "/shop/api/users/{user_id}/orders"


headers_text = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=80)


@settings(max_examples=150, deadline=None)
@given(
    path=st.text(max_size=60),
    query=st.binary(max_size=120),
    referer=headers_text,
    language=headers_text,
    agent=st.binary(max_size=300),
)
def test_untrusted_input_never_raises_and_never_leaks(
    path: str, query: bytes, referer: str, language: str, agent: bytes
) -> None:
    s = scope("/" + path, query)
    s["headers"] = [
        (b"referer", referer.encode("latin-1")),
        (b"accept-language", language.encode("latin-1")),
        (b"user-agent", agent),
        (b"host", b"h"),
    ]
    event = build_event(s, status=200, duration_ms=0.5, consent=state("necessary"))
    assert event["path"].startswith("/") and "?" not in event["path"]
    assert IP not in repr(event)
    for name in ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content"):
        value = event[name]
        assert value is None or ("&" not in value and len(value) <= 200)
    host = event["referrer_host"]
    assert host is None or ("/" not in host and "?" not in host)


def test_route_converters_are_dropped_from_the_template() -> None:
    from starlette.routing import Route

    from consent_middleware.events import route_template

    async def endpoint(scope: object, receive: object, send: object) -> None:
        return None

    route = Route("/items/{item_id:int}", endpoint)
    assert route_template("/items/42", "", None, route) == "/items/{item_id}"

"""ConsentMiddleware through HTTP: state, modes, GPC, policy versions, scopes, errors."""

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from consent_support import ORIGIN, SECRET, TestClient, cookie_value, make_app, set_cookies
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from consent_middleware import ConsentMiddleware, ConsentStats, Decision, Purpose, PurposeRegistry

GPC = {"sec-gpc": "1"}


def test_no_cookie_opt_in_defaults() -> None:
    response = TestClient(make_app()).get("/")
    assert response.json() == {
        "purposes": {
            "necessary": True,
            "statistics": False,
            "marketing": False,
            "third_party": False,
        },
        "needs_prompt": True,
        "gpc": False,
        "receipt_id": None,
        "aid": None,
        "has_decision": False,
        "policy_version": "2026-04",
    }
    assert set_cookies(response) == []  # no cookie before a decision


def test_opt_out_mode_defaults_and_refusal() -> None:
    client = TestClient(make_app(mode="opt_out"))
    state = client.get("/").json()
    assert all(state["purposes"].values()) and state["needs_prompt"]
    client.post("/consent", json={"purposes": {"marketing": False}})
    after = client.get("/").json()
    assert after["purposes"] == {
        "necessary": True,
        "statistics": True,
        "marketing": False,
        "third_party": True,
    }
    assert not after["needs_prompt"]


def test_opt_out_mode_under_gpc_keeps_marketing_off() -> None:
    state = TestClient(make_app(mode="opt_out")).get("/", headers=GPC).json()
    assert state["gpc"] and state["purposes"]["statistics"]
    assert not state["purposes"]["marketing"] and not state["purposes"]["third_party"]


def test_decision_persists_and_aid_follows_statistics() -> None:
    client = TestClient(make_app())
    client.post("/consent", json={"accept": "all"})
    first = client.get("/").json()
    assert first["has_decision"] and all(first["purposes"].values())
    assert len(first["receipt_id"]) == 16 and len(first["aid"]) == 22
    client.post("/consent", json={"purposes": {"marketing": False}})
    second = client.get("/").json()
    assert second["aid"] == first["aid"] and second["receipt_id"] == first["receipt_id"]
    client.post("/consent", json={"purposes": {"statistics": False}})
    withdrawn = client.get("/").json()
    assert withdrawn["aid"] is None and withdrawn["receipt_id"] == first["receipt_id"]
    client.post("/consent", json={"purposes": {"statistics": True}})
    regranted = client.get("/").json()
    assert regranted["aid"] not in (None, first["aid"])  # a re-grant makes a new id


def test_older_policy_version_reprompts() -> None:
    old = TestClient(make_app(policy_version="2025-01"))
    old_cookie = cookie_value(set_cookies(old.post("/consent", json={"accept": "all"}))[0])
    decisions: list[Decision] = []
    client = TestClient(make_app(decisions, policy_version="2026-04"))
    state = client.get("/", headers={"cookie": f"consent={old_cookie}"}).json()
    assert state["needs_prompt"] and not state["has_decision"]
    assert state["purposes"] == {
        "necessary": True,
        "statistics": False,
        "marketing": False,
        "third_party": False,
    }
    assert state["aid"] is None and state["receipt_id"] is not None
    renewed = client.post(
        "/consent", json={"accept": "all"}, headers={"cookie": f"consent={old_cookie}"}
    )
    assert renewed.json()["receipt_id"] == state["receipt_id"]  # the receipt stays
    assert not renewed.json()["needs_prompt"]
    assert [d.action for d in decisions] == ["change"]
    assert decisions[0].policy_version == "2026-04"


def test_gpc_overrides_an_earlier_grant_once() -> None:
    decisions: list[Decision] = []
    client = TestClient(make_app(decisions))
    client.post("/consent", json={"accept": "all"})
    response = client.get("/", headers=GPC)
    state = response.json()
    assert state["gpc"] and state["purposes"]["statistics"]
    assert not state["purposes"]["marketing"] and not state["purposes"]["third_party"]
    assert len(set_cookies(response)) == 1  # the override is written back to the cookie
    assert [(d.action, d.source, d.gpc) for d in decisions] == [
        ("grant", "api", False),
        ("gpc", "gpc", True),
    ]
    assert decisions[1].refused == ("marketing", "third_party")
    # Recorded once: later requests with the signal find nothing left to override.
    again = client.get("/", headers=GPC)
    assert set_cookies(again) == [] and len(decisions) == 2
    # Without the signal the override stays: it was written to the cookie.
    assert not client.get("/").json()["purposes"]["marketing"]


def test_grant_made_under_gpc_is_kept() -> None:
    client = TestClient(make_app())
    client.post("/consent", json={"purposes": {"marketing": True}}, headers=GPC)
    state = client.get("/", headers=GPC).json()
    assert state["gpc"] and state["purposes"]["marketing"]


@pytest.mark.parametrize("value", ["0", "true", "yes", "11", "", "1, 1", "1;"])
def test_other_gpc_values_are_no_signal(value: str) -> None:
    client = TestClient(make_app())
    client.post("/consent", json={"accept": "all"})
    state = client.get("/", headers={"sec-gpc": value}).json()
    assert not state["gpc"] and state["purposes"]["marketing"]


def test_gpc_value_is_stripped() -> None:
    assert TestClient(make_app()).get("/", headers={"sec-gpc": " 1 "}).json()["gpc"]


def test_duplicate_cookies_first_that_verifies_wins() -> None:
    client = TestClient(make_app())
    good = cookie_value(set_cookies(client.post("/consent", json={"accept": "all"}))[0])
    bad = good[:-3] + "xyz"
    fresh = TestClient(make_app())
    state = fresh.get("/", headers={"cookie": f"consent={bad}; consent={good}"}).json()
    assert state["has_decision"]
    necessary_only = cookie_value(
        set_cookies(TestClient(make_app()).post("/consent", json={"accept": "necessary"}))[0]
    )
    first = fresh.get("/", headers={"cookie": f"consent={necessary_only}; consent={good}"})
    assert not first.json()["purposes"]["marketing"]


def test_host_prefixed_cookie_is_read_first() -> None:
    client = TestClient(make_app(), base_url="https://testserver")
    secure = cookie_value(set_cookies(client.post("/consent", json={"accept": "all"}))[0])
    plain = cookie_value(
        set_cookies(TestClient(make_app()).post("/consent", json={"accept": "necessary"}))[0]
    )
    fresh = TestClient(make_app(), base_url="https://testserver")
    state = fresh.get("/", headers={"cookie": f"consent={plain}; __Host-consent={secure}"})
    assert state.json()["purposes"]["marketing"]


def test_invalid_cookies_are_counted_not_raised() -> None:
    stats = ConsentStats()
    client = TestClient(make_app(stats=stats))
    for value in ["garbage", "a.b.c", "W10.AAAA.BBBB", "%ff%fe", '"quoted"']:
        response = client.get("/", headers={"cookie": f"consent={value}"})
        assert response.status_code == 200 and not response.json()["has_decision"]
    assert stats.invalid_cookies == 5


def test_websocket_passes_through_untouched() -> None:
    client = TestClient(make_app())
    with client.websocket_connect("/ws", headers={"sec-gpc": "1"}) as websocket:
        websocket.send_text("hello")
        assert websocket.receive_json() == {"echo": "hello", "consent_in_scope": False}


def test_lifespan_passes_through() -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    app = Starlette(
        routes=[Route("/", lambda request: PlainTextResponse("ok"))],
        lifespan=lifespan,
        middleware=[Middleware(ConsentMiddleware, secret_key=SECRET, policy_version="v1")],
    )
    with TestClient(app) as client:
        assert client.get("/").text == "ok"
    assert events == ["startup", "shutdown"]


def test_app_errors_propagate_unchanged() -> None:
    client = TestClient(make_app(), raise_server_exceptions=False)
    assert client.get("/boom").status_code == 500
    with pytest.raises(RuntimeError, match="the app failed"):
        TestClient(make_app()).get("/boom")


def test_custom_purposes_and_registry() -> None:
    registry = PurposeRegistry()
    registry.add(Purpose("personalization", labels={"en": "Personalization", "ja": "個人化"}))
    client = TestClient(make_app(purposes=registry))
    assert client.get("/consent").json()["available"][-1]["labels"]["ja"] == "個人化"
    client.post("/consent", json={"purposes": {"personalization": True}}, headers=ORIGIN)
    assert client.get("/").json()["purposes"]["personalization"]
    with pytest.raises(ValueError, match="already registered"):
        registry.add(Purpose("personalization", labels={"en": "again"}))
    with pytest.raises(ValueError, match="English label"):
        Purpose("nolabel", labels={"ja": "ラベル"})


def test_configuration_errors_are_clear() -> None:
    app = make_app()
    with pytest.raises(ValueError, match="unknown purpose"):
        ConsentMiddleware(app, secret_key="k", policy_version="v", cookie_purposes={"x": "ads"})
    with pytest.raises(ValueError, match="mode"):
        ConsentMiddleware(app, secret_key="k", policy_version="v", mode="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prefix"):
        ConsentMiddleware(app, secret_key="k", policy_version="v", prefix="consent/")
    middleware = ConsentMiddleware(app, secret_key="sekrit-value", policy_version="v")
    assert "sekrit" not in repr(middleware) and "masked" in repr(middleware)


def _read_events(raw_dir: Path) -> list[dict[str, Any]]:
    files = sorted(raw_dir.glob("events/date=*/*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def _read_ledger(raw_dir: Path) -> list[dict[str, Any]]:
    lines = [
        line for f in sorted(raw_dir.glob("ledger/*.jsonl")) for line in f.read_text().splitlines()
    ]
    return [json.loads(line) for line in lines if line.strip()]


def test_recording_through_the_lifespan(tmp_path: Path) -> None:
    """raw_dir turns recording on; the lifespan shutdown flushes events and decisions."""
    app = make_app(raw_dir=tmp_path)
    with TestClient(app, raise_server_exceptions=False) as client:
        client.get("/?utm_source=news&session=secret")
        client.post("/consent", json={"accept": "all"}, headers=ORIGIN)
        client.get("/", headers={"sec-gpc": "1"})
        client.get("/boom")
        client.get("/.well-known/gpc.json")
    events = _read_events(tmp_path)
    assert [(e["path"], e["status"]) for e in events] == [("/", 200), ("/", 200), ("/boom", 500)]
    assert events[0]["aid"] is None and events[0]["purposes"] == ["necessary"]
    assert events[1]["gpc"] is True and events[1]["aid"] is not None
    assert events[1]["purposes"] == ["necessary", "statistics"]
    ledger = _read_ledger(tmp_path)
    assert [(r["action"], r["source"]) for r in ledger] == [("grant", "api"), ("gpc", "gpc")]
    assert ledger[1]["refused"] == ["marketing", "third_party"] and ledger[1]["gpc"] is True


def test_shop_example_serves_and_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSENT_RAW_DIR", str(tmp_path))
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))  # examples/
    shop = importlib.reload(importlib.import_module("examples.shop_app"))
    with TestClient(shop.app, follow_redirects=False) as client:
        home = client.get("/")
        assert home.status_code == 200 and 'action="/consent"' in home.text
        assert "gtag('consent','default'" in home.text
        assert set_cookies(home) == []  # the marketing cookie was stripped
        assert client.get("/widgets/recommendations").status_code == 403
        form = client.post(
            "/consent", data={"accept": "all", "next": "/products/3"}, headers=ORIGIN
        )
        assert form.status_code == 303 and form.headers["location"] == "/products/3"
        assert client.get("/products/3").status_code == 200
        assert client.get("/widgets/recommendations").json() == {"recommended": [3, 7, 12]}
        assert any(h.startswith("ad_seen=") for h in set_cookies(client.get("/")))
    paths = [e["path"] for e in _read_events(tmp_path)]
    assert "/products/{product_id}" in paths
    assert [r["source"] for r in _read_ledger(tmp_path)] == ["form"]

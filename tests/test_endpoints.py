"""The consent endpoints: GET/POST/DELETE {prefix}, the form flow, origin checks, bad input,
and /.well-known/gpc.json."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import anyio
import pytest
from consent_support import ORIGIN, TestClient, make_app, set_cookies
from starlette.types import Message

from consent_middleware import ConsentMiddleware, Decision, PurposeRegistry

FORM = {"content-type": "application/x-www-form-urlencoded"}


def test_get_reports_state_and_purposes() -> None:
    response = TestClient(make_app()).get("/consent")
    body = response.json()
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    assert body["purposes"] == {
        "necessary": True,
        "statistics": False,
        "marketing": False,
        "third_party": False,
    }
    assert body["policy_version"] == "2026-04" and body["needs_prompt"] is True
    assert body["gpc"] is False and body["receipt_id"] is None and body["mode"] == "opt_in"
    assert [p["name"] for p in body["available"]] == [
        "necessary",
        "statistics",
        "marketing",
        "third_party",
    ]
    assert body["available"][2]["labels"] == {"en": "Marketing", "ja": "マーケティング"}


def test_custom_prefix() -> None:
    client = TestClient(make_app(prefix="/api/privacy/consent"))
    assert client.get("/api/privacy/consent").json()["mode"] == "opt_in"
    assert client.get("/consent").status_code == 404  # now the app's path


def test_post_json_purposes_and_decision_record() -> None:
    decisions: list[Decision] = []
    client = TestClient(make_app(decisions))
    response = client.post(
        "/consent", json={"purposes": {"statistics": True, "marketing": False}}, headers=ORIGIN
    )
    assert response.status_code == 200
    assert response.json()["purposes"]["statistics"] is True
    assert response.json()["needs_prompt"] is False
    [decision] = decisions
    assert decision.action == "grant" and decision.source == "api"
    assert decision.granted == ("necessary", "statistics")
    assert decision.refused == ("marketing", "third_party")
    assert decision.receipt_id == response.json()["receipt_id"]
    expected_notice = PurposeRegistry().notice_hash("2026-04")
    assert decision.notice_hash == expected_notice == response.json()["notice_hash"]
    assert len(decision.notice_hash) == 64 and hashlib.sha256(b"").hexdigest() != expected_notice


def test_notice_hash_follows_the_notice() -> None:
    registry = PurposeRegistry()
    assert registry.notice_hash("v1") != registry.notice_hash("v2")
    assert registry.notice_hash("v1") != registry.notice_hash("v1", notice_text="We changed.")


def test_accept_all_then_necessary_then_delete() -> None:
    decisions: list[Decision] = []
    client = TestClient(make_app(decisions))
    assert all(client.post("/consent", json={"accept": "all"}).json()["purposes"].values())
    necessary = client.post("/consent", json={"accept": "necessary", "source": "banner"})
    assert necessary.json()["purposes"]["statistics"] is False
    deleted = client.delete("/consent", headers=ORIGIN)
    assert deleted.status_code == 200
    assert [p for p, on in deleted.json()["purposes"].items() if on] == ["necessary"]
    assert [(d.action, d.source) for d in decisions] == [
        ("grant", "api"),
        ("change", "banner"),
        ("withdraw", "api"),
    ]
    assert len({d.receipt_id for d in decisions}) == 1


def test_form_post_redirects_back_without_javascript() -> None:
    decisions: list[Decision] = []
    client = TestClient(make_app(decisions), follow_redirects=False)
    response = client.post(
        "/consent",
        content="purposes=statistics&purposes=marketing&next=%2Fproducts%2F3%3Fa%3D1",
        headers={**FORM, "referer": "http://testserver/products/3"},
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/products/3?a=1"
    assert len(set_cookies(response)) == 1
    assert decisions[0].source == "form"
    assert decisions[0].granted == ("necessary", "statistics", "marketing")
    state = client.get("/consent").json()["purposes"]
    assert state["marketing"] and not state["third_party"]
    accept = client.post("/consent", data={"accept": "necessary"}, headers=ORIGIN)
    assert accept.status_code == 303 and accept.headers["location"] == "/"
    assert not client.get("/consent").json()["purposes"]["marketing"]


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/", "/\\evil", "javascript:alert(1)", "x"]
)
def test_form_next_must_be_a_local_path(target: str) -> None:
    response = TestClient(make_app()).post(
        "/consent", data={"accept": "all", "next": target}, headers=ORIGIN
    )
    assert response.status_code == 400 and "next" in response.json()["reason"]


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "https://evil.example"},
        {"origin": "null"},
        {"origin": "http://testserver.evil.example"},
        {"origin": "https://testserver"},  # another scheme is another origin
        {"referer": "https://evil.example/page"},
        {"referer": "not a url"},
    ],
)
def test_cross_origin_changes_are_refused(headers: dict[str, str]) -> None:
    client = TestClient(make_app())
    for method, kwargs in (
        ("POST", {"json": {"accept": "all"}}),
        ("POST", {"data": {"accept": "all"}}),
        ("DELETE", {}),
    ):
        response = client.request(method, "/consent", headers=headers, **kwargs)
        assert response.status_code == 403, (method, headers)
        assert response.json()["error"] == "forbidden"
        assert set_cookies(response) == []


def test_same_origin_rules_without_origin_header() -> None:
    client = TestClient(make_app())
    # A JSON API client without Origin/Referer: allowed (cross-site pages cannot send it).
    assert client.post("/consent", json={"accept": "all"}).status_code == 200
    # A form post without either header could come from anywhere: refused.
    assert client.post("/consent", content="accept=all", headers=FORM).status_code == 403
    # DELETE cannot be sent cross-site without a preflight: allowed.
    assert client.delete("/consent").status_code == 200
    # A same-site Referer is enough.
    referer = {"referer": "http://testserver/cart"}
    response = client.post(
        "/consent", data={"accept": "all"}, headers=referer, follow_redirects=False
    )
    assert response.status_code == 303


def test_trusted_origins_and_forced_secure() -> None:
    client = TestClient(make_app(trusted_origins=["https://shop.example"]))
    trusted = client.post(
        "/consent", json={"accept": "all"}, headers={"origin": "https://shop.example"}
    )
    assert trusted.status_code == 200
    behind_proxy = TestClient(make_app(secure=True))
    https_origin = {"origin": "https://testserver"}
    assert (
        behind_proxy.post("/consent", json={"accept": "all"}, headers=https_origin).status_code
        == 200
    )


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{", "malformed JSON"),
        (b"\xff\xfe{}", "malformed JSON"),
        (b"[]", "JSON object"),
        (b'{"purposes": {"ads": true}}', "unknown purpose"),
        (b'{"purposes": {"marketing": "yes"}}', "true or false"),
        (b'{"purposes": {"marketing": 1}}', "true or false"),
        (b'{"purposes": ["marketing"]}', "'purposes' must be an object"),
        (b'{"purposes": {"necessary": false}}', "cannot be refused"),
        (b'{"accept": "some"}', "'accept' must be"),
        (b'{"accept": "all", "purposes": {}}', "exactly one"),
        (b"{}", "exactly one"),
        (b'{"accept": "all", "extra": 1}', "unknown field"),
        (b'{"accept": "all", "source": "gpc"}', "source"),
        (b"[" * 4000 + b"]" * 4000, "malformed JSON"),
    ],
)
def test_bad_json_gets_400_with_reason(body: bytes, reason: str) -> None:
    decisions: list[Decision] = []
    client = TestClient(make_app(decisions))
    response = client.post(
        "/consent", content=body, headers={**ORIGIN, "content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"
    assert reason in response.json()["reason"]
    assert decisions == [] and set_cookies(response) == []


def test_bad_forms_get_400() -> None:
    client = TestClient(make_app())
    for body, reason in (
        (b"accept=maybe", "'accept' must be"),
        (b"purposes=ads", "unknown purpose"),
        (b"purposes=%ff", "malformed form"),
        (b"\xff=1", "malformed form"),
    ):
        response = client.post("/consent", content=body, headers={**FORM, **ORIGIN})
        assert response.status_code == 400 and reason in response.json()["reason"], body


def test_oversized_bodies_are_refused_early() -> None:
    client = TestClient(make_app())
    big = json.dumps({"accept": "all", "pad": "x" * 9000}).encode()
    declared = client.post(
        "/consent", content=big, headers={**ORIGIN, "content-type": "application/json"}
    )
    assert declared.status_code == 400 and "8192" in declared.json()["reason"]

    def stream() -> Iterator[bytes]:  # chunked: no Content-Length to trust
        for _ in range(1000):
            yield b" " * 1024

    chunked = client.post(
        "/consent", content=stream(), headers={**ORIGIN, "content-type": "application/json"}
    )
    assert chunked.status_code == 400 and "8192" in chunked.json()["reason"]


def test_body_reading_stops_early() -> None:
    """Driven as raw ASGI to count how many body chunks the middleware pulls."""
    pulled: list[int] = []
    sent: list[Message] = []

    async def receive() -> Message:
        pulled.append(1)
        return {"type": "http.request", "body": b" " * 1024, "more_body": True}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/consent",
        "scheme": "http",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json")],
        "server": ("testserver", 80),
    }
    middleware = ConsentMiddleware(make_app(), secret_key="k", policy_version="v")
    anyio.run(middleware, scope, receive, send)
    assert sent[0]["status"] == 400
    assert len(pulled) == 9  # 9 KiB read, then it stopped (the client would send 1000 more)


def test_other_methods_and_content_types() -> None:
    client = TestClient(make_app())
    put = client.put("/consent", json={"accept": "all"}, headers=ORIGIN)
    assert put.status_code == 405 and "POST" in put.headers["allow"]
    text = client.post(
        "/consent", content=b"accept=all", headers={**ORIGIN, "content-type": "text/plain"}
    )
    assert text.status_code == 415
    assert client.post("/.well-known/gpc.json", headers=ORIGIN).status_code == 405


def test_well_known_gpc() -> None:
    client = TestClient(make_app(gpc_last_update="2026-04-01"))
    assert client.get("/.well-known/gpc.json").json() == {"gpc": True, "lastUpdate": "2026-04-01"}


def test_get_under_gpc_reports_the_signal() -> None:
    client = TestClient(make_app())
    body = client.get("/consent", headers={"sec-gpc": "1"}).json()
    assert body["gpc"] is True and body["purposes"]["marketing"] is False


def test_unparsable_host_and_origin_never_match() -> None:
    client = TestClient(make_app())
    response = client.post(
        "/consent",
        json={"accept": "all"},
        headers={"host": "[bad", "origin": "http://[worse"},
    )
    assert response.status_code == 403


def test_consent_answers_forbid_type_sniffing() -> None:
    """Every answer of the consent endpoint says nosniff and no-store."""
    client = TestClient(make_app())
    for response in (client.get("/consent"), client.delete("/consent", headers=ORIGIN)):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"

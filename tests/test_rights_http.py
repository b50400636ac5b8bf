"""Visitors' rights over HTTP: disclosure, erasure, termination of use, and their protections."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import tempfile
from pathlib import Path

import anyio
import pytest
from consent_support import TestClient, make_app
from hypothesis import given, settings
from hypothesis import strategies as st
from rights_support import ORIGIN, SECRET, Site, all_events
from starlette.types import Message

from consent_middleware.ledger import receipt_history, verify_ledger
from consent_middleware.ratelimit import RateLimiter
from consent_middleware.raw.layout import RawLayout
from consent_middleware.request_log import load_requests
from consent_middleware.rights import CONSENT_FIELDS, EVENT_FIELDS


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def test_disclosure_returns_exactly_this_browsers_data(tmp_path: Path) -> None:
    site = Site(tmp_path)
    a = site.visitor("Browser-A", pages=0)
    b = site.visitor("Browser-B", pages=0, host="198.51.100.7")
    words = ("one", "two", "three", "four")
    for word in words:  # interleaved
        a.get(f"/a/{word}")
        b.get(f"/b/{word}")
        b.get(f"/b/{word}/more")
    b.post("/consent", json={"purposes": {"marketing": False}}, headers=ORIGIN)
    mine = {name: c.get("/consent").json() for name, c in (("a", a), ("b", b))}
    aid_a = a.get("/").json()["aid"]
    site.flush()

    data = a.get("/privacy/data")
    assert data.status_code == 200 and data.headers["cache-control"] == "no-store"
    assert "attachment" in data.headers["content-disposition"]
    body = data.json()
    assert body["receipt_id"] == mine["a"]["receipt_id"] != mine["b"]["receipt_id"]
    assert [e["path"] for e in body["events"]] == [*(f"/a/{w}" for w in words), "/"]
    assert {e["aid"] for e in body["events"]} == {aid_a}
    assert {e["user_agent"] for e in body["events"]} == {"Browser-A"}
    assert [r["action"] for r in body["consent_history"]] == ["grant"]
    assert set(body["fields"]["events"]) == set(EVENT_FIELDS)
    assert set(body["consent_history"][0]) == set(CONSENT_FIELDS)

    other = b.get("/privacy/data").json()
    assert len(other["events"]) == 8 and "Browser-A" not in json.dumps(other)
    assert [r["action"] for r in other["consent_history"]] == ["grant", "change"]
    # Every disclosure is logged, completed at once.
    assert [(r.kind, r.channel, r.status) for r in load_requests(tmp_path)] == [
        ("disclosure", "online", "completed")
    ] * 2


def test_csv_disclosure_has_an_explanation_row_and_the_same_records(tmp_path: Path) -> None:
    site = Site(tmp_path)
    a = site.visitor("Browser-A", pages=3)
    site.flush()
    response = a.get("/privacy/data", params={"format": "csv"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert rows[0]["record"] == "explanation" and rows[0]["visitor_hash"]
    assert [r["record"] for r in rows[1:]] == ["consent"] + ["event"] * 3
    assert rows[1]["granted"] == "necessary|statistics|marketing|third_party"
    assert a.get("/privacy/data", params={"format": "xml"}).status_code == 400


@pytest.mark.parametrize("cookie", [None, "consent=forged.value.sig", "consent="])
def test_without_a_valid_cookie_the_answer_is_401_with_a_reason(
    tmp_path: Path, cookie: str | None
) -> None:
    site = Site(tmp_path)
    site.visitor("Browser-A", pages=2)
    site.flush()
    client = site.browser("Browser-A")
    headers = {"cookie": cookie} if cookie else {}
    for method in ("GET", "DELETE"):
        response = client.request(method, "/privacy/data", headers={**headers, **ORIGIN})
        assert response.status_code == 401
        assert "receipt id" in response.json()["reason"] and "events" not in response.json()
    assert not RawLayout.at(tmp_path).tombstones.exists()


def test_erasure_answers_202_clears_the_cookie_and_is_recorded(tmp_path: Path) -> None:
    site = Site(tmp_path)
    a = site.visitor("Browser-A", pages=2)
    state = a.get("/").json()
    response = a.delete("/privacy/data", headers=ORIGIN)
    assert response.status_code == 202
    request_id = response.json()["request_id"]
    assert response.headers.get_list("set-cookie") == [
        "consent=; Max-Age=0; Path=/; SameSite=Lax; HttpOnly"
    ]
    tombstone = RawLayout.at(tmp_path).tombstones / f"{_sha(state['aid'])}.json"
    record = json.loads(tombstone.read_text())
    assert record["request_id"] == request_id and record["aid_sha256"] == _sha(state["aid"])
    assert record["receipt_sha256"] == _sha(state["receipt_id"]) and record["ts"]
    assert [d.action for d in site.decisions][-1] == "erase"
    site.flush()
    history = receipt_history(tmp_path, state["receipt_id"])
    assert [(r["action"], r["source"]) for r in history][-1] == ("erase", "api")
    assert verify_ledger(tmp_path, [SECRET]).ok
    (request,) = [r for r in load_requests(tmp_path) if r.kind == "erasure"]
    assert request.request_id == request_id and request.status == "open"
    # The browser dropped the cookie: it is a new visitor now.
    assert a.get("/").json()["has_decision"] is False


def test_a_replayed_cookie_records_nothing_under_the_erased_id(tmp_path: Path) -> None:
    site = Site(tmp_path)
    a = site.visitor("Browser-A", pages=1)
    old = a.cookies["consent"]
    aid = a.get("/").json()["aid"]
    assert a.delete("/privacy/data", headers=ORIGIN).status_code == 202
    site.flush()
    before = sum(e["aid"] == aid for e in all_events(tmp_path))

    replay = site.browser("Browser-A")
    replay.cookies.set("consent", old)
    state = replay.get("/").json()
    assert state["aid"] is None and state["has_decision"] is False
    replay.get("/after")
    assert replay.get("/privacy/data").status_code == 401
    # Another worker process that never saw the erasure reads the tombstone from RAW.
    worker = TestClient(make_app(raw_dir=tmp_path), cookies={"consent": old})
    assert worker.get("/").json()["aid"] is None
    site.flush()
    assert sum(e["aid"] == aid for e in all_events(tmp_path)) == before
    assert any(e["path"] == "/after" and e["aid"] is None for e in all_events(tmp_path))


@pytest.mark.parametrize(
    "headers",
    [{"origin": "https://evil.example"}, {"origin": "null"}, {"referer": "https://evil.example/"}],
)
def test_cross_site_erasure_is_refused(tmp_path: Path, headers: dict[str, str]) -> None:
    site = Site(tmp_path)
    a = site.visitor("Browser-A", pages=1)
    response = a.delete("/privacy/data", headers=headers)
    assert response.status_code == 403 and "cross-origin" in response.json()["reason"]
    assert not RawLayout.at(tmp_path).tombstones.exists()
    assert a.get("/").json()["aid"] is not None


def test_rate_limit_answers_429_with_retry_after_per_client(tmp_path: Path) -> None:
    site = Site(tmp_path, privacy_rate_limit=RateLimiter(burst=3, rate=1 / 30))
    a = site.visitor("Browser-A", pages=0)
    codes = [a.get("/privacy/data").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    limited = a.delete("/privacy/data", headers=ORIGIN)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "30"
    assert not RawLayout.at(tmp_path).tombstones.exists()
    other = site.visitor("Browser-B", pages=0, host="198.51.100.9")
    assert other.get("/privacy/data").status_code == 200


def test_other_methods_get_405(tmp_path: Path) -> None:
    site = Site(tmp_path)
    response = site.browser("Browser-A").post("/privacy/data", headers=ORIGIN)
    assert response.status_code == 405 and response.headers["allow"] == "GET, HEAD, DELETE"


def test_without_a_raw_store_there_is_no_privacy_endpoint() -> None:
    assert TestClient(make_app()).get("/privacy/data").status_code == 404


@pytest.mark.parametrize(
    "terminate",
    [
        lambda c: c.delete("/consent", headers=ORIGIN),
        lambda c: c.post("/consent", json={"purposes": {"statistics": False}}, headers=ORIGIN),
        lambda c: c.post("/consent", json={"accept": "necessary"}, headers=ORIGIN),
    ],
    ids=["delete", "statistics-off", "necessary-only"],
)
def test_termination_of_use_records_nothing_under_the_id(tmp_path: Path, terminate: object) -> None:
    site = Site(tmp_path)
    a = site.visitor("Browser-A", pages=2)
    shown = a.get("/consent").json()
    aid = a.get("/").json()["aid"]
    assert shown["receipt_id"] and aid  # the settings page can show the receipt id
    assert callable(terminate)
    answer = terminate(a)
    assert answer.status_code == 200 and answer.json()["receipt_id"] == shown["receipt_id"]
    for i in range(3):
        a.get(f"/later/{i}")
    site.flush()
    later = [e for e in all_events(tmp_path) if e["path"].startswith("/later/")]
    assert len(later) == 3 and all(e["aid"] is None for e in later)
    assert all("statistics" not in e["purposes"] for e in later)
    assert [d.action for d in site.decisions][-1] in ("withdraw", "change")


def test_erasure_without_statistics_completes_at_once(tmp_path: Path) -> None:
    site = Site(tmp_path)
    a = site.browser("Browser-A")
    a.post("/consent", json={"accept": "necessary"}, headers=ORIGIN)
    response = a.delete("/privacy/data", headers=ORIGIN)
    assert response.status_code == 202 and response.json()["status"] == "completed"
    assert not RawLayout.at(tmp_path).tombstones.exists()


@settings(max_examples=40, deadline=None)
@given(query=st.binary(max_size=60))
def test_any_query_string_gets_a_clear_answer(query: bytes) -> None:
    """Whatever follows ``?`` never causes a 500 (``format`` is the only parameter read)."""
    with tempfile.TemporaryDirectory() as raw:
        app = make_app(raw_dir=raw)
        client = TestClient(app)
        client.post("/consent", json={"accept": "all"}, headers=ORIGIN)
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/privacy/data",
            "raw_path": b"/privacy/data",
            "query_string": query,
            "headers": [(b"cookie", f"consent={client.cookies['consent']}".encode())],
            "client": ("203.0.113.5", 1),
            "server": ("testserver", 80),
            "scheme": "http",
            "root_path": "",
            "http_version": "1.1",
        }
        statuses: list[int] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        anyio.run(app, scope, receive, send)
        assert statuses in ([200], [400])

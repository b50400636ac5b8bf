"""The request path's caches and the batched event building keep behaviour unchanged.

ConsentMiddleware remembers how a cookie header resolved; these tests show that what
depends on time (expiry, decisions dated in the future), on other requests (erasure, in
this process or another) or writes something back (the GPC override) is never served from
that memory, that invalid cookies are still counted, and that every cache is bounded.
The event builder groups identical requests of a batch; its output must equal building
each request alone.
"""

from __future__ import annotations

import gc
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from consent_support import ORIGIN, POLICY, SECRET, TestClient, cookie_value, set_cookies
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

import consent_middleware.events as events_module
import consent_middleware.middleware as middleware_module
import consent_middleware.recorder as recorder_module
from consent_middleware import ConsentMiddleware, Decision, get_consent
from consent_middleware.cookies import ConsentPayload, CookieCodec, new_receipt_id
from consent_middleware.events import EventBuilder
from consent_middleware.purposes import PurposeRegistry
from consent_middleware.raw.salts import SaltStore
from consent_middleware.raw.schema import RAW_EVENT_SCHEMA
from consent_middleware.raw.segments import list_segments
from consent_middleware.recorder import Recorder
from consent_middleware.state import ConsentState
from consent_middleware.stats import ConsentStats
from consent_middleware.tombstones import ErasedIds

GPC = {"sec-gpc": "1"}


class Site:
    """A Starlette app behind a ConsentMiddleware built directly (so tests can reach it);
    every ConsentState the app sees is kept in ``seen``."""

    def __init__(self, **options: Any) -> None:
        self.seen: list[ConsentState] = []
        self.decisions: list[Decision] = []
        self.stats = ConsentStats()

        async def state(request: Request) -> Response:
            consent = get_consent(request)
            self.seen.append(consent)
            return JSONResponse(
                {"aid": consent.aid, "has_decision": consent.has_decision,
                 "needs_prompt": consent.needs_prompt,
                 "marketing": consent.granted("marketing")}
            )  # fmt: skip

        inner = Starlette(routes=[Route("/", state), Route("/{page}", state)])
        options.setdefault("secret_key", SECRET)
        options.setdefault("policy_version", POLICY)
        self.middleware = ConsentMiddleware(
            inner, on_decision=self.decisions.append, stats=self.stats, **options
        )

    def client(self, **kwargs: Any) -> TestClient:
        return TestClient(self.middleware, **kwargs)


def _granted_cookie(site: Site, **kwargs: Any) -> str:
    response = site.client(**kwargs).post("/consent", json={"accept": "all"}, headers=ORIGIN)
    return cookie_value(set_cookies(response)[0])


def test_repeat_requests_share_one_resolved_state() -> None:
    site = Site()
    cookie = _granted_cookie(site)
    client = site.client(cookies={"consent": cookie})
    first, second = client.get("/").json(), client.get("/").json()
    assert first == second and first["has_decision"]
    assert site.seen[0] is site.seen[1]  # resolved once, then remembered


def test_an_erased_aid_is_never_served_from_the_cache(tmp_path: Path) -> None:
    site = Site(raw_dir=tmp_path)
    browser = site.client()
    browser.post("/consent", json={"accept": "all"}, headers=ORIGIN)
    old = browser.cookies["consent"]
    aid = browser.get("/").json()["aid"]
    assert aid and browser.get("/").json()["aid"] == aid  # now remembered
    assert browser.delete("/privacy/data", headers=ORIGIN).status_code == 202
    replay = site.client(cookies={"consent": old})
    for _ in range(3):
        state = replay.get("/").json()
        assert state["aid"] is None and not state["has_decision"]


def test_an_erasure_by_another_worker_reaches_a_cached_cookie(tmp_path: Path) -> None:
    eraser, worker = Site(raw_dir=tmp_path), Site(raw_dir=tmp_path)
    # This worker looks at the tombstone folder on every request (default: once a second).
    worker.middleware.erased = ErasedIds(tmp_path, refresh_seconds=0.0)
    browser = eraser.client()
    browser.post("/consent", json={"accept": "all"}, headers=ORIGIN)
    old = browser.cookies["consent"]
    replay = worker.client(cookies={"consent": old})
    aid = replay.get("/").json()["aid"]
    assert aid and replay.get("/").json()["aid"] == aid
    assert browser.delete("/privacy/data", headers=ORIGIN).status_code == 202
    assert replay.get("/").json()["aid"] is None


def test_a_remembered_cookie_still_expires() -> None:
    now = [1_800_000_000.0]
    site = Site(clock=lambda: now[0], max_age=3600)
    client = site.client(cookies={"consent": _granted_cookie(site)})
    assert client.get("/").json()["has_decision"]
    now[0] += 3600  # the last second of its life
    assert client.get("/").json()["has_decision"]
    now[0] += 1
    state = client.get("/").json()
    assert not state["has_decision"] and state["needs_prompt"]
    assert site.stats.invalid_cookies == 1  # an expired cookie counts as invalid, as before
    now[0] -= 1  # a clock stepping back makes it valid again: nothing stale was remembered
    assert client.get("/").json()["has_decision"]


def test_a_decision_dated_in_the_future_is_refused_from_the_cache_too() -> None:
    now = [1_800_000_000.0]
    site = Site(clock=lambda: now[0])
    client = site.client(cookies={"consent": _granted_cookie(site)})
    assert client.get("/").json()["has_decision"]
    now[0] -= 300  # still within the allowed clock skew
    assert client.get("/").json()["has_decision"]
    now[0] -= 1
    assert not client.get("/").json()["has_decision"]


def test_invalid_cookies_are_counted_on_every_request() -> None:
    site = Site()
    client = site.client(cookies={"consent": "garbage"})
    for _ in range(3):
        assert not client.get("/").json()["has_decision"]
    assert site.stats.invalid_cookies == 3


def test_a_gpc_override_is_written_back_on_every_replay() -> None:
    site = Site()
    old = _granted_cookie(site)
    for _ in range(2):
        response = site.client(cookies={"consent": old}).get("/", headers=GPC)
        assert not response.json()["marketing"] and len(set_cookies(response)) == 1
    assert [d.action for d in site.decisions] == ["grant", "gpc", "gpc"]


def test_the_resolution_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(middleware_module, "RESOLVED_CACHE_SIZE", 4)
    site = Site()
    good = _granted_cookie(site)
    for i in range(10):
        client = site.client(cookies={"consent": good, "other": str(i)})
        assert client.get("/").json()["has_decision"]
        assert not site.client(cookies={"other": str(i)}).get("/").json()["has_decision"]
        assert len(site.middleware._resolved) <= 4
    long = site.client(cookies={"consent": good, "big": "x" * 5000})
    before = dict(site.middleware._resolved)
    assert long.get("/").json()["has_decision"]
    assert site.middleware._resolved == before  # too long to remember


def test_the_dispatch_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(middleware_module, "_TARGETS_SIZE", 3)
    site = Site()
    client = site.client()
    for i in range(8):
        assert client.get(f"/page{i}").status_code == 200
        assert len(site.middleware._targets) <= 3
    assert client.get("/consent").status_code == 200  # still the middleware's own endpoint
    assert client.get("/consent/banner.js").status_code == 200


def test_fresh_window_agrees_with_decode() -> None:
    now = [1_800_000_000.0]
    codec = CookieCodec(SECRET, PurposeRegistry(), max_age=600, clock=lambda: now[0])
    payload = ConsentPayload(POLICY, int(now[0]) - 100, new_receipt_id(), frozenset({"necessary"}))
    value = codec.encode(payload)
    verified = codec.verify(value)
    assert verified is not None and verified[0] == payload
    not_before, not_after = codec.fresh_window(*verified)
    assert (not_before, not_after) == (payload.decided_at - 300, payload.decided_at + 600)
    for moment, accepted in [
        (not_before - 1, False),
        (not_before, True),
        (not_after, True),
        (not_after + 0.5, False),
    ]:
        now[0] = moment
        assert (codec.decode(value) is not None) is accepted
    assert codec.verify(value[:-2] + "zz") is None and codec.verify("é" * 5) is None


# -- the event builder -------------------------------------------------------------------


async def _endpoint(request: Request) -> Response:
    return PlainTextResponse("")


ROUTES = [Route("/items/{item_id:int}", _endpoint), Route("/about", _endpoint)]
MOUNT = Mount("/static", routes=[])
STATES = [
    ConsentState({"necessary": True, "statistics": True}, POLICY, False, False, aid="a" * 22),
    ConsentState({"necessary": True, "statistics": False}, POLICY, True, True),
    ConsentState({"necessary": True, "statistics": True, "x,y": True}, "old", False, False),
]


def _scope(path: str, route: Any, qs: bytes, ua: bytes, ip: str, referer: bytes | None) -> Any:
    headers = [(b"host", b"shop.example"), (b"user-agent", ua), (b"accept-language", b"ja")]
    if referer is not None:
        headers.append((b"referer", referer))
    return {
        "type": "http", "method": "GET", "path": path, "root_path": "", "route": route,
        "query_string": qs, "headers": headers, "client": (ip, 1234),
    }  # fmt: skip


requests = st.tuples(
    st.sampled_from(["/items/7", "/about", "/static/a.css", "/u/12345/x"]),
    st.sampled_from([None, *ROUTES, MOUNT]),
    st.sampled_from([b"", b"utm_source=news&id=3", b"q=secret"]),
    st.sampled_from([b"UA-1", b"UA-2", b"\xff" * 1100]),
    st.sampled_from(["192.0.2.1", "192.0.2.2"]),
    st.sampled_from([None, b"https://search.example/?q=1", b"not a url"]),
    st.sampled_from(STATES),
    st.sampled_from([200, 404]),
    st.floats(0.0, 50.0),
    # Around midnight UTC, so that requests of one batch fall on two days (two salts).
    st.floats(1_800_057_500.0, 1_800_057_700.0),
)


@settings(deadline=None, max_examples=60)  # no wall-clock limits in tests
@given(st.lists(requests, max_size=30))
def test_a_batch_builds_exactly_what_each_request_builds_alone(batch: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as raw:
        salts = SaltStore(raw)
        builder = EventBuilder(salts)
        items, alone = [], []
        for path, route, qs, ua, ip, referer, state, status, duration, end in batch:
            scope = _scope(path, route, qs, ua, ip, referer)
            items.append(builder.capture(scope, status, duration, state, end))
            single = EventBuilder(salts)
            alone.append(single.rows([single.capture(scope, status, duration, state, end)]))
        columns = builder.rows(items)
        ends = [(request[-2], request[-1]) for request in batch]
        assert columns["ts"] == [int(end * 1_000_000 - duration * 1000.0) for duration, end in ends]
        for i, one in enumerate(alone):
            assert {name: values[i] for name, values in columns.items()} == {
                name: values[0] for name, values in one.items()
            }
        table = builder.table(items)
        assert table.schema == RAW_EVENT_SCHEMA and table.num_rows == len(items)
        expected = pa.Table.from_pydict(
            {**columns, "ts": pa.array(columns["ts"], pa.int64()).cast(pa.timestamp("us", "UTC"))},
            schema=RAW_EVENT_SCHEMA,
        )
        assert table.equals(expected)


def test_captured_requests_are_not_tracked_by_the_garbage_collector() -> None:
    builder = EventBuilder(None)
    scope = _scope("/items/7", ROUTES[0], b"utm_source=x", b"UA-1", "192.0.2.1", None)
    items = [builder.capture(scope, 200, 1.0, STATES[0]) for _ in range(3)]
    gc.collect()
    assert not any(gc.is_tracked(item) for item in items)
    assert builder.rows(items)["path"] == ["/items/{item_id}"] * 3


def test_routes_past_the_bound_are_kept_as_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events_module, "_ROUTES_SIZE", 1)
    builder = EventBuilder(None)
    routes = [Route(f"/r{i}/{{n:int}}", _endpoint) for i in range(4)]
    items = [
        builder.capture(_scope(f"/r{i}/5", route, b"", b"UA", "192.0.2.1", None), 200, 1.0,
                        STATES[1])
        for i, route in enumerate(routes)
    ]  # fmt: skip
    assert builder.rows(items)["path"] == [f"/r{i}/{{n}}" for i in range(4)]


def test_odd_cookie_header_types_never_break_a_request() -> None:
    site = Site()
    good = _granted_cookie(site)
    value = f"consent={good}".encode()

    def read(*headers: tuple[Any, Any]) -> ConsentState:
        scope = {"type": "http", "scheme": "http", "path": "/", "headers": list(headers)}
        return site.middleware.read(scope).state

    assert read((b"cookie", bytearray(value))).has_decision
    assert read((b"Cookie", value)).has_decision  # names are matched case-insensitively
    assert read((b"cookie", b"a=1"), (b"cookie", value)).has_decision  # joined like one header
    assert not read((b"cookie", f"consent={good}")).has_decision  # a str is not a header value
    assert read((b"sec-gpc", b"1"), (b"sec-gpc", b"0")).gpc  # the first GPC header counts


def test_path_verdicts_are_bounded_and_right(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recorder_module, "_VERDICTS_SIZE", 2)
    recorder = Recorder.to_raw_dir(tmp_path)
    paths = ["/a", "/b.css", "/static/x", "/c", "/a", "/favicon.ico", "/d"]
    for path in paths:
        scope = _scope(path, None, b"", b"UA", "192.0.2.1", None)
        recorder.record_request(scope, status=200, duration_ms=1.0, consent=STATES[1])
        assert len(recorder._verdicts) <= 2
    recorder.flush()
    recorded = [e for p in list_segments(tmp_path) for e in pq.read_table(p).to_pylist()]
    assert sorted(e["path"] for e in recorded) == ["/a", "/a", "/c", "/d"]
    recorder.close()


def test_consent_summaries_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events_module, "_SUMMARIES_SIZE", 2)
    builder = EventBuilder(None)
    states = [
        ConsentState({"necessary": True, "statistics": True}, POLICY, False, False, aid=f"{i:022d}")
        for i in range(5)
    ]
    scope = _scope("/about", ROUTES[1], b"", b"UA", "192.0.2.1", None)
    items = [builder.capture(scope, 200, 1.0, state) for state in [*states, *states]]
    assert len(builder._summaries) <= 2
    assert builder.rows(items)["aid"] == [state.aid for state in [*states, *states]]

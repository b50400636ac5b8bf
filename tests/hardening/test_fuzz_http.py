"""Hostile input at volume (issue 7): tens of thousands of generated requests.

Cookie headers, consent bodies and whole header sets, sent as raw bytes through the ASGI
interface (what a socket can deliver, CR/LF included), thousands of cases per test with a
fixed seed (``derandomize``) so CI runs are repeatable. Generating an input costs more
than serving it, so each generated input is sent in several combinations (paths, methods,
content types, schemes): tens of thousands of requests in all, on one event loop with no
thread hop and no HTTP client. Checked every time: no
exception escapes, no 5xx, no header that could split a response, every refusal says
why and changes nothing, and every raw event the recorder builds is well formed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
import pytest
from consent_support import make_app
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from consent_middleware import Decision, Recorder, RecordingOptions
from consent_middleware.ledger import LedgerRecord
from consent_middleware.raw.schema import RAW_EVENT_SCHEMA, UTM_FIELDS
from hardening.asgi_driver import Answer, Driver, assert_clean_headers

EXAMPLES = 2000  # generated inputs per test; each is sent 4 to 6 times: ~30,000 requests
many = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class TableSink:
    """Keeps the last batch the recorder built, in memory (the Sink protocol)."""

    def __init__(self) -> None:
        self.tables: list[pa.Table] = []

    def write_events(self, table: pa.Table) -> int:
        self.tables.append(table)
        return 1

    def write_decisions(self, records: Sequence[LedgerRecord]) -> None:
        return None

    def close(self) -> None:
        return None


async def item(request: Request) -> Response:
    return PlainTextResponse(f"item {request.path_params['item_id']}")


DECISIONS: list[Decision] = []
SINK = TableSink()
RECORDER = Recorder(SINK, salts=None, options=RecordingOptions(flush_interval=3600))
APP = make_app(
    DECISIONS,
    routes=[Route("/items/{item_id}", item)],
    cookie_purposes={"ad_id": "marketing"},
    recorder=RECORDER,
)


@pytest.fixture(scope="module")
def driver() -> Iterator[Driver]:
    driver = Driver(APP)
    yield driver
    driver.close()
    RECORDER.close()


def valid_cookie() -> str:
    driver = Driver(APP)
    try:
        answer = driver.request(
            "POST", "/consent", [(b"content-type", b"application/json")], b'{"accept": "all"}'
        )
    finally:
        driver.close()
    return answer.header_values(b"set-cookie")[0].split(b";")[0].split(b"=", 1)[1].decode()


VALID = valid_cookie()
DECISIONS.clear()

anything = st.binary(max_size=400)
mutated = st.tuples(
    st.integers(0, len(VALID) - 1), st.sampled_from(list('Aa0_-.=;," \r\n\x00é'))
).map(lambda e: (VALID[: e[0]] + e[1] + VALID[e[0] + 1 :]).encode("utf-8"))
cookie_values = st.one_of(
    anything,
    mutated,
    st.integers(0, len(VALID)).map(lambda n: VALID[:n].encode()),
    st.just(VALID.encode()),
    st.just(b"A" * 5000),
    st.text(max_size=80).map(lambda t: t.encode("utf-8")),
)
cookie_names = st.sampled_from([b"consent", b"__Host-consent", b"Consent", b" consent", b"ad_id"])
cookie_header = st.lists(
    st.tuples(cookie_names, cookie_values).map(lambda c: c[0] + b"=" + c[1]), max_size=3
).map(b"; ".join)


SET_BY_SERVER = (b"consent=", b"ad_id=; Max-Age=0", b"ad_id=a1;", b"stats_id=s1;", b"session=x;")


def check_answer(answer: Answer) -> None:
    assert answer.status < 500, answer.status
    assert_clean_headers(answer)


@many
@given(
    cookies=st.lists(cookie_header, min_size=1, max_size=2),
    gpc=st.one_of(st.none(), st.sampled_from([b"1", b" 1 ", b"0", b"1,1", b"\xff"]), anything),
)
def test_any_cookie_header_is_answered(
    driver: Driver, cookies: list[bytes], gpc: bytes | None
) -> None:
    headers = [(b"cookie", c) for c in cookies]
    if gpc is not None:
        headers.append((b"sec-gpc", gpc))
    for path in ("/", "/consent", "/consent/settings", "/cookies", "/privacy/data"):
        answer = driver.request("GET", path, headers)
        check_answer(answer)
        if path == "/":
            state = answer.json()
            assert state["purposes"]["necessary"] is True
            assert state["gpc"] is (gpc is not None and gpc.strip() == b"1")
            if not state["has_decision"]:
                assert not any(v for k, v in state["purposes"].items() if k != "necessary")
        for cookie in answer.header_values(b"set-cookie"):
            # The middleware's own value, the deletion of a refused app cookie, or the app's
            # fixed cookies: never bytes the client sent.
            assert cookie.startswith(SET_BY_SERVER), (path, cookie)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=6,
)
consent_like = st.fixed_dictionaries(
    {},
    optional={
        "purposes": st.dictionaries(
            st.sampled_from(["necessary", "statistics", "marketing", "third_party", "x", ""]),
            json_values,
            max_size=5,
        ),
        "accept": json_values | st.sampled_from(["all", "necessary"]),
        "source": st.sampled_from(["api", "banner", "form", "gpc"]),
    },
).map(lambda v: json.dumps(v).encode())
form_like = st.lists(
    st.tuples(
        st.sampled_from(["accept", "purposes", "next", "x"]),
        st.sampled_from(["all", "necessary", "statistics", "marketing", "/a", "//evil", "", "\r"]),
    ),
    max_size=6,
).map(lambda fields: "&".join(f"{k}={v}" for k, v in fields).encode("utf-8"))
CONTENT_TYPES = [
    b"application/json",
    b"application/json; charset=utf-8",
    b"APPLICATION/JSON",
    b"application/x-www-form-urlencoded",
    b"text/plain",
    b"",
    b"\xff\xfe",
    b"multipart/form-data",
]
origins = st.one_of(
    st.none(),
    st.sampled_from([b"http://testserver", b"https://evil.example", b"null", b"http://[::1"]),
    anything,
)


@many
@given(
    body=st.one_of(anything, consent_like, form_like, st.just(b"x" * 9000)),
    content_type=st.sampled_from(CONTENT_TYPES),
    origin=origins,
    referer=origins,
    length=st.one_of(st.none(), st.integers(-1, 20000).map(lambda n: str(n).encode()), anything),
)
def test_any_consent_request_is_answered_and_refusals_change_nothing(
    driver: Driver,
    body: bytes,
    content_type: bytes,
    origin: bytes | None,
    referer: bytes | None,
    length: bytes | None,
) -> None:
    optional = [(b"host", b"testserver")]
    for name, value in ((b"origin", origin), (b"referer", referer), (b"content-length", length)):
        if value is not None:
            optional.append((name, value))
    for method in ("POST", "DELETE", "PUT", "GET"):
        kinds = (content_type, b"application/json", b"application/x-www-form-urlencoded")
        for kind in kinds if method == "POST" else (content_type,):
            before = len(DECISIONS)
            answer = driver.request(method, "/consent", [(b"content-type", kind), *optional], body)
            check_answer(answer)
            if answer.status >= 400:
                assert answer.json()["reason"]  # every refusal says why
                assert len(DECISIONS) == before and not answer.header_values(b"set-cookie")
            elif method in ("POST", "DELETE"):
                assert len(DECISIONS) == before + 1, (method, kind)
                for location in answer.header_values(b"location"):  # no open redirect
                    assert location.startswith(b"/") and not location.startswith((b"//", b"/\\"))
            else:
                assert len(DECISIONS) == before


SEGMENTS = [
    "items", "a.css", "static", "consent", "12345", "user@example.com", "%2F", "..",
    "%E2%80%AE", "abc123def456ghi789jkl", "日本", "0x1f", "1.5", "-",
]  # fmt: skip
_LANGUAGE = re.compile(r"[a-z]{1,8}")
_HOST = re.compile(r"[a-z0-9._-]{1,200}")
_HASH = re.compile(r"[0-9a-f]{32}")
_EMAIL = re.compile(r"[^/@\s]+@[^/@\s]+\.[^/@\s]+")


def check_row(row: dict[str, Any], query: bytes) -> None:
    """The raw-event contract for a request without consent (design section 5)."""
    path = row["path"]
    assert path.startswith("/") and len(path) <= 512, path
    assert "?" not in path and "#" not in path and path.isprintable(), path
    assert not _EMAIL.search(path), path
    assert not any(re.fullmatch(r"[0-9]+", seg) for seg in path.split("/")), path
    for field in UTM_FIELDS:
        value = row[field]
        if value is not None:
            assert field.encode() in query.lower() and value.isprintable() and len(value) <= 200
            assert value == value.lower()
    host = row["referrer_host"]
    assert host is None or _HOST.fullmatch(host), host
    assert row["language"] is None or _LANGUAGE.fullmatch(row["language"]), row["language"]
    assert row["visitor_hash"] is None or _HASH.fullmatch(row["visitor_hash"])
    assert row["aid"] is None and row["purposes"] == ["necessary"]
    assert isinstance(row["user_agent"], str) and len(row["user_agent"]) <= 1024
    assert row["source"] == "middleware" and 100 <= row["status"] <= 599


segments = st.one_of(
    st.sampled_from(SEGMENTS),
    st.text(
        st.characters(exclude_categories=("Cs",), exclude_characters="/?#%"),
        max_size=12,
    ),
)
paths = st.lists(segments, min_size=0, max_size=5).map(lambda s: "/" + "/".join(s))
queries = st.one_of(
    st.just(b""),
    anything,
    st.lists(
        st.tuples(
            st.sampled_from(["utm_source", "UTM_Medium", "utm_campaign", "utm_term", "q", "id"]),
            st.text(max_size=30),
        ),
        max_size=4,
    ).map(lambda kv: "&".join(f"{k}={v}" for k, v in kv).encode("utf-8", "surrogateescape")),
)
header_value = st.one_of(anything, st.text(max_size=60).map(lambda t: t.encode("utf-8")))

SCHEMES = ("http", "https")
REFERERS = [b"https://www.google.com/search?q=x", b"http://[::1]:80/", b"javascript:alert(1)"]
LANGUAGES = [b"ja-JP,ja;q=0.9", b"*", b"en_US", b"x" * 50]


@many
@given(
    method=st.sampled_from(["HEAD", "POST", "OPTIONS", "get", "BREW"]),
    path=st.one_of(paths, st.sampled_from(["/", "/items/42", "/items/x@y.z", "/cookies"])),
    query=queries,
    user_agent=st.one_of(st.none(), header_value, st.just(b"M" * 3000)),
    referer=st.one_of(st.none(), header_value, st.sampled_from(REFERERS)),
    language=st.one_of(st.none(), header_value, st.sampled_from(LANGUAGES)),
    host=st.one_of(st.none(), header_value),
)
def test_any_request_leaves_only_well_formed_rows_in_raw(
    driver: Driver,
    method: str,
    path: str,
    query: bytes,
    user_agent: bytes | None,
    referer: bytes | None,
    language: bytes | None,
    host: bytes | None,
) -> None:
    headers = [
        (name, value)
        for name, value in (
            (b"user-agent", user_agent),
            (b"referer", referer),
            (b"accept-language", language),
            (b"host", host),
        )
        if value is not None
    ]
    rows = serve_and_collect(
        driver,
        [(verb, path, headers, query, scheme) for verb in ("GET", method) for scheme in SCHEMES],
    )
    for row in rows:
        check_row(row, query)


def serve_and_collect(
    driver: Driver, requests: list[tuple[str, str, list[tuple[bytes, bytes]], bytes, str]]
) -> list[dict[str, Any]]:
    """Serve ``requests``, flush the recorder, return the raw events it built for them."""
    RECORDER.flush()  # what the other tests recorded is not this test's business
    SINK.tables.clear()
    errors = RECORDER.stats.errors
    for method, path, headers, query, scheme in requests:
        check_answer(driver.request(method, path, headers, query=query, scheme=scheme))
    RECORDER.flush()
    assert RECORDER.stats.errors == errors, RECORDER.stats.last_error
    rows: list[dict[str, Any]] = []
    for table in SINK.tables:
        assert table.schema.equals(RAW_EVENT_SCHEMA, check_metadata=False)
        rows += table.to_pylist()
    assert len(rows) in (0, len(requests))  # all recorded, or an excluded path
    return rows


def test_a_non_printable_character_cannot_smuggle_an_id(driver: Driver) -> None:
    # "/orders/1234%00567" as the server decodes it into the ASGI path.
    (row,) = serve_and_collect(driver, [("GET", "/orders/1234\x00567", [], b"", "http")])
    check_row(row, b"")

"""Property-based tests: no cookie, header or body a client can send produces a 5xx."""

from __future__ import annotations

import json

from consent_support import TestClient, cookie_value, make_app, set_cookies
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consent_middleware import Decision

DECISIONS: list[Decision] = []
APP = make_app(DECISIONS, cookie_purposes={"ad_id": "marketing"}, mode="opt_in")
CLIENT = TestClient(APP, raise_server_exceptions=True)
VALID = cookie_value(set_cookies(TestClient(APP).post("/consent", json={"accept": "all"}))[0])

# Header bytes a server can deliver: anything but CR, LF and NUL (servers reject those).
header_bytes = st.binary(max_size=600).map(
    lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b"")
)
mutated_valid = st.tuples(st.integers(0, len(VALID) - 1), st.sampled_from('Aa0_-.=;," é')).map(
    lambda edit: VALID[: edit[0]] + edit[1] + VALID[edit[0] + 1 :]
)
cookie_text = st.one_of(
    mutated_valid,
    st.integers(0, len(VALID)).map(lambda n: VALID[:n]),  # truncated
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300),
    st.just("A" * 5000),  # oversized
)
settings_ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _no_5xx(status: int) -> None:
    assert status < 500, status


@settings_
@given(
    cookie=st.one_of(cookie_text.map(lambda t: t.encode("latin-1", "replace")), header_bytes),
    name=st.sampled_from([b"consent", b"__Host-consent", b"consent ", b"Consent"]),
    duplicate=st.booleans(),
    gpc=st.one_of(st.none(), header_bytes, st.sampled_from([b"1", b" 1", b"0", b"1,1"])),
)
def test_any_cookie_and_gpc_header_is_answered(
    cookie: bytes, name: bytes, duplicate: bool, gpc: bytes | None
) -> None:
    header = name + b"=" + cookie
    if duplicate:
        header += b"; consent=" + VALID.encode()
    headers = {b"cookie": header}
    if gpc is not None:
        headers[b"sec-gpc"] = gpc
    for path in ("/", "/consent", "/cookies"):
        response = CLIENT.get(path, headers=headers)
        _no_5xx(response.status_code)
        if path == "/":
            state = response.json()
            assert state["purposes"]["necessary"] is True
            assert state["gpc"] is (gpc is not None and gpc.strip() == b"1")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)
consent_like = st.fixed_dictionaries(
    {},
    optional={
        "purposes": st.dictionaries(
            st.sampled_from(["necessary", "statistics", "marketing", "third_party", "ads", ""]),
            json_values,
            max_size=5,
        ),
        "accept": json_values | st.sampled_from(["all", "necessary"]),
        "source": st.sampled_from(["api", "banner", "form"]),
    },
)


@settings_
@given(
    body=st.one_of(
        st.binary(max_size=9000),
        json_values.map(lambda v: json.dumps(v).encode()),
        consent_like.map(lambda v: json.dumps(v).encode()),
        st.text(max_size=300).map(lambda t: t.encode("utf-8")),
    ),
    content_type=st.sampled_from(
        [
            b"application/json",
            b"application/json; charset=utf-8",
            b"application/x-www-form-urlencoded",
            b"text/plain",
            b"",
            b"\xff\xfe",
        ]
    ),
    method=st.sampled_from(["POST", "DELETE", "PUT"]),
    origin=st.one_of(
        st.none(), st.just(b"http://testserver"), header_bytes, st.just(b"http://[::1")
    ),
)
def test_any_body_is_answered(
    body: bytes, content_type: bytes, method: str, origin: bytes | None
) -> None:
    before = len(DECISIONS)
    headers = {b"content-type": content_type}
    if origin is not None:
        headers[b"origin"] = origin
    response = CLIENT.request(method, "/consent", content=body, headers=headers)
    _no_5xx(response.status_code)
    if response.status_code >= 400:
        assert response.json()["reason"]  # every refusal says why
        assert len(DECISIONS) == before  # and changes nothing
    elif method != "PUT":
        assert len(DECISIONS) == before + 1
